"""A trained VAE's figures: model outputs turned into arrays for `plots`."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfp_vae import plots
from tfp_vae.pca import PCA

FIGURES = ("reconstructions", "samples", "latent_manifold", "latent_scatter", "interpolation",
           "training_curves")
CONDITIONAL_FIGURES = ("reconstructions", "samples_by_class", "training_curves")


def _np(t) -> np.ndarray:
    return t.numpy() if hasattr(t, "numpy") else np.asarray(t)


def manifold_images(vae, n: int = 15) -> np.ndarray:
    """Decoder means over an n×n grid of N(0, 1) quantiles: `[n·n, *data]`.

    For K > 2 it is the slice through the first two latent axes, the others 0.
    """
    z2 = plots.manifold_latents(n)                                   # [n*n, 2]
    z = np.zeros((n * n, vae.latent_dim), np.float32)
    z[:, :2] = z2
    return _np(vae.decode(tf.constant(z)).mean())


def interpolation_images(vae, x_a, x_b, steps: int = 10) -> np.ndarray:
    """Decoder means along the line between two images' posterior means: `[steps, *data]`."""
    mu = _np(vae.encode(np.stack([x_a, x_b])).mean())                  # [2, K]
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    z = (1 - t) * mu[0] + t * mu[1]
    return _np(vae.decode(tf.constant(z)).mean())


def latent_codes_2d(vae, x, batch_size: int = 500) -> np.ndarray:
    """Posterior means `[N, K]`, projected on their top two principal axes when K > 2."""
    codes = np.concatenate([_np(vae.encode(x[i:i + batch_size]).mean())
                            for i in range(0, len(x), batch_size)])
    if codes.shape[1] <= 2:
        return codes
    return PCA(2).fit(codes).transform(codes)


def class_rows(cvae, per_class: int = 10, seed: int = 0) -> np.ndarray:
    """Decoder means of `per_class` prior draws for each class, class-major:
    `[C·per_class, *data]`. The same z in every row, so a column shows one
    latent code rendered as each class (style held, label varied)."""
    z = cvae.prior_distribution().sample(per_class, seed=(seed, 11))           # [n, K]
    rows = [_np(cvae.decode(z, tf.fill([per_class], c)).mean())
            for c in range(cvae.num_classes)]
    return np.concatenate(rows)


def _training_curves(history: dict, path) -> str | None:
    if not history or not any(len(v) for v in history.values()):
        return None
    keys = [k for k in ("elbo", "reconstruction", "kl", "val_elbo") if history.get(k)]
    return plots.training_curves({k: history[k] for k in keys}, path,
                                 title="Per epoch, nats per example")


def write_conditional(cvae, x, y, history: dict, directory: str, seed: int = 0) -> dict:
    """The conditional VAE's figures (CONDITIONAL_FIGURES) into `directory`."""
    path = lambda name: os.path.join(directory, f"{name}.png")          # noqa: E731
    out = {"reconstructions": plots.reconstructions(
        x[:10], _np(cvae((x[:10], y[:10]))), path("reconstructions"),
        title="Test images (top) and reconstructions given their labels (bottom)")}
    out["samples_by_class"] = plots.rows_by_class(
        class_rows(cvae, 10, seed), 10, path("samples_by_class"),
        row_labels=[str(c) for c in range(cvae.num_classes)],
        title="p(x | z, y): one row per class y, one prior draw z per column")
    curves = _training_curves(history, path("training_curves"))
    if curves:
        out["training_curves"] = curves
    return out


def write_all(vae, x, y, history: dict, directory: str, seed: int = 0) -> dict[str, str]:
    """Writes every figure of FIGURES into `directory`; returns name -> path.

    x: test images `[N, *data]` in [0, 1]; y: their labels `[N]` or None;
    history: per-epoch lists (elbo, reconstruction, kl, ...).
    """
    path = lambda name: os.path.join(directory, f"{name}.png")          # noqa: E731
    out = {}
    originals = x[:10]
    out["reconstructions"] = plots.reconstructions(
        originals, _np(vae(originals)), path("reconstructions"),
        title="Test images (top) and reconstructions E[x | z = μ(x)] (bottom)")
    out["samples"] = plots.samples(
        _np(vae.sample(64, seed=(seed, 7)).mean()), path("samples"),
        title="Decoder means for z ~ p(z)")
    title = ("Latent manifold: decoder means over N(0,1) quantiles" if vae.latent_dim == 2 else
             f"Latent manifold, slice (z1, z2) with z3..z{vae.latent_dim} = 0")
    out["latent_manifold"] = plots.latent_manifold(
        manifold_images(vae), path("latent_manifold"),
        grid_values=plots.manifold_grid_values(15), title=title)
    out["latent_scatter"] = plots.latent_scatter(
        latent_codes_2d(vae, x), y, path("latent_scatter"),
        title="Posterior means of test images" + (
            "" if vae.latent_dim <= 2 else " (top two principal axes)"))
    # Two test images of different classes when labels are known.
    j = 1 if y is None else int(np.argmax(y != y[0]))
    out["interpolation"] = plots.interpolation(
        interpolation_images(vae, x[0], x[j]), path("interpolation"),
        title="Decoding the line between two posterior means")
    curves = _training_curves(history, path("training_curves"))
    if curves:
        out["training_curves"] = curves
    return out
