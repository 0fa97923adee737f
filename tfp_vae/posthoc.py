"""A post-hoc sampler: a Gaussian mixture fitted to a trained VAE's posterior means.

    fit = fit_em(codes_train, num_components=10, seed=0)    # codes [N, K] = E_q[z|x]
    q = fit.mixture.distribution()                          # tfd.MixtureSameFamily, event [K]
    images = vae.decode(q.sample(64, seed=(0, 1))).mean()
    held_out_log_density(q, codes_val)                      # nats per code, vs N(0, I)

A VAE's decoder is trained on codes drawn from q(z|x), and the aggregate
posterior (1/N) Σ q(z|xₙ) is seldom the prior N(0, I): prior draws fall in
regions no image encodes to. Fitting a mixture to the training set's
posterior means after training and sampling from it instead (Ghosh et al.
2020; pythae's `GaussianMixtureSampler`) keeps the draws where the decoder
was trained. `posthoc_workdir` does it for a run: fit, score on a held-out
split, draw the figure, export the SavedModel with a `sample_posthoc`
signature.

Covariances are full (`tfd.MultivariateNormalTriL`), not diagonal: the
encoder factorises q(z|x) for each x, but the means of different images are
correlated within a cluster (a digit class is an elongated, tilted cloud),
and a diagonal mixture needs many more components to follow that. A full
covariance costs K(K + 1)/2 numbers per component, a few thousand for K = 32
to 40, well determined by the ~400+ codes per component of the data sets here.

EM runs in numpy, float64, on the host: it is a few dozen passes over an
[N, K] array, deterministic for a seed, and needs no graph.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from threadpoolctl import threadpool_limits     # installed with scikit-learn

from tfp_vae import (evaluate, export, files, plots, workdir as workdir_lib)
from tfp_vae.errors import ConfigError, EvaluationError

tfd = tfp.distributions

__all__ = ["DEFAULT_COMPONENTS", "DEFAULT_REG", "EMFit", "GaussianMixtureParams", "MixtureLayer",
           "fit_em", "fit_gaussian_mixture", "held_out_log_density", "kmeans_plus_plus",
           "load_mixture", "posthoc_dir", "posthoc_workdir", "save_mixture"]

DEFAULT_COMPONENTS = 10
# The floor on every covariance eigenvalue (squared latent units): far below
# the spread of an active unit's codes (~0.1 to 1), so it binds only on
# directions the codes do not vary in (inactive units, duplicated codes).
DEFAULT_REG = 1e-6
_LOG_2PI = math.log(2.0 * math.pi)


# -- the mixture -----------------------------------------------------------------------


class GaussianMixtureParams(NamedTuple):
    """Σ_c π_c N(z; m_c, L_c L_cᵀ): the parameters of a fitted mixture, numpy float64."""

    weights: np.ndarray      # [C]        mixing proportions π_c, summing to 1
    means: np.ndarray        # [C, K]     component means m_c
    scale_tril: np.ndarray   # [C, K, K]  lower Cholesky factors L_c of the covariances

    @property
    def covariances(self) -> np.ndarray:
        """L_c L_cᵀ: `[C, K, K]`."""
        return self.scale_tril @ np.swapaxes(self.scale_tril, -1, -2)

    def distribution(self, dtype=tf.float32) -> tfd.MixtureSameFamily:
        """The mixture as TFP's `MixtureSameFamily(Categorical, MultivariateNormalTriL)`:
        batch `[]`, event `[K]`."""
        return _mixture(tf.constant(np.log(self.weights), dtype),
                        tf.constant(self.means, dtype), tf.constant(self.scale_tril, dtype))

    def log_prob(self, codes) -> np.ndarray:
        """ln p(z) for codes `[N, K]`: `[N]` nats, float64 (numpy)."""
        return _logsumexp(_log_joint(np.asarray(codes, np.float64), self), axis=1)


def _mixture(logits, locs, scale_tril) -> tfd.MixtureSameFamily:
    return tfd.MixtureSameFamily(
        mixture_distribution=tfd.Categorical(logits=logits),
        components_distribution=tfd.MultivariateNormalTriL(loc=locs, scale_tril=scale_tril))


def save_mixture(path: str, params: GaussianMixtureParams, **extra) -> str:
    """Writes the parameters (and any `extra` arrays) to the `.npz` file `path`, atomically."""
    with files.atomic_write(path, "wb") as f:
        np.savez(f, weights=params.weights, means=params.means, scale_tril=params.scale_tril,
                 **extra)
    return path


def load_mixture(path: str) -> GaussianMixtureParams:
    """The parameters `save_mixture` wrote to `path`."""
    with np.load(path, allow_pickle=False) as npz:
        return GaussianMixtureParams(npz["weights"], npz["means"], npz["scale_tril"])


@keras.saving.register_keras_serializable(package="tfp_vae")
class MixtureLayer(keras.layers.Layer):
    """A fitted mixture held as (non-trainable) Keras weights, so that an export
    archive that tracks the layer saves them as variables of the SavedModel.

    `distribution()` -> `tfd.MixtureSameFamily`, batch `[]`, event `[K]`;
    `call(z)` -> ln p(z) `[...]` for z `[..., K]`.

    >>> layer = MixtureLayer.from_params(fit_em(np.eye(3), 1).mixture)
    >>> layer.distribution().event_shape
    TensorShape([3])
    """

    def __init__(self, num_components: int, latent_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_components, self.latent_dim = int(num_components), int(latent_dim)
        c, k = self.num_components, self.latent_dim
        self.logits = self.add_weight(name="logits", shape=(c,), initializer="zeros",
                                      trainable=False)
        self.locs = self.add_weight(name="locs", shape=(c, k), initializer="zeros",
                                    trainable=False)
        self.scale_tril = self.add_weight(
            name="scale_tril", shape=(c, k, k), trainable=False,
            initializer=lambda shape, dtype=None: tf.eye(k, batch_shape=[c], dtype=dtype))
        self.built = True

    @classmethod
    def from_params(cls, params: GaussianMixtureParams, **kwargs) -> "MixtureLayer":
        layer = cls(*params.means.shape, **kwargs)
        layer.logits.assign(np.log(params.weights).astype(np.float32))
        layer.locs.assign(params.means.astype(np.float32))
        layer.scale_tril.assign(params.scale_tril.astype(np.float32))
        return layer

    def distribution(self) -> tfd.MixtureSameFamily:
        return _mixture(self.logits, self.locs, self.scale_tril)

    def call(self, z):
        return self.distribution().log_prob(z)

    def get_config(self):
        return {**super().get_config(), "num_components": self.num_components,
                "latent_dim": self.latent_dim}


# -- EM ----------------------------------------------------------------------------------


class EMFit(NamedTuple):
    """What `fit_em` returns."""

    mixture: GaussianMixtureParams
    log_likelihood: np.ndarray  # [T + 1] mean ln p(codes) per code, nats: at the k-means
    #                             start, then after each of the T EM iterations
    converged: bool             # the last iteration raised it by less than `tol`
    iterations: int             # T


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def _log_joint(x: np.ndarray, params: GaussianMixtureParams) -> np.ndarray:
    """ln π_c + ln N(x_n; m_c, L_c L_cᵀ): `[N, C]`."""
    n, k = x.shape
    out = np.empty((n, len(params.weights)))
    for c, (m, tril) in enumerate(zip(params.means, params.scale_tril)):
        # ‖L⁻¹(x − m)‖²: one small inverse per component, then one [N, K] @ [K, K].
        inverse = np.linalg.inv(tril).T
        y = x @ inverse
        y -= m @ inverse
        out[:, c] = (-0.5 * np.einsum("nk,nk->n", y, y) - np.sum(np.log(np.diag(tril)))
                     - 0.5 * k * _LOG_2PI)
    return out + np.log(params.weights)


def _m_step(x: np.ndarray, resp: np.ndarray, reg: float) -> GaussianMixtureParams:
    """The parameters that maximise E_resp[ln p(x, c)] subject to every covariance
    eigenvalue >= reg. resp: `[N, C]` responsibilities."""
    counts = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps       # [C]; no 0/0 when empty
    means = resp.T @ x / counts[:, None]
    trils = []
    for c in range(resp.shape[1]):
        # Σ_n r_nc (x_n − m_c)(x_n − m_c)ᵀ / n_c, without an [N, K] difference per component.
        scatter = (resp[:, c, None] * x).T @ x / counts[c] - np.outer(means[c], means[c])
        # Over {Σ : Σ ⪰ reg·I} the maximiser of -ln|Σ| - tr(Σ⁻¹S) is S with its
        # eigenvalues clipped at reg: so each M-step is exact, the likelihood
        # never decreases, and no covariance is ever singular.
        values, vectors = np.linalg.eigh(0.5 * (scatter + scatter.T))
        cov = (vectors * np.maximum(values, reg)) @ vectors.T
        trils.append(np.linalg.cholesky(0.5 * (cov + cov.T)))
    return GaussianMixtureParams(counts / counts.sum(), means, np.stack(trils))


def kmeans_plus_plus(x: np.ndarray, num_clusters: int, rng: np.random.Generator,
                     max_iter: int = 100) -> np.ndarray:
    """Hard cluster labels `[N]` of x `[N, K]`: k-means++ seeding (Arthur &
    Vassilvitskii 2007), then Lloyd's iterations until no label changes."""
    n = len(x)
    centres = [x[rng.integers(n)]]
    nearest = np.sum((x - centres[0]) ** 2, axis=1)
    for _ in range(1, num_clusters):
        total = nearest.sum()
        # All points on the centres already (duplicates): any point will do.
        i = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        centres.append(x[i])
        nearest = np.minimum(nearest, np.sum((x - x[i]) ** 2, axis=1))
    centres = np.stack(centres)
    labels = None
    for _ in range(max_iter):
        distances = (np.sum(x * x, axis=1)[:, None] - 2 * x @ centres.T
                     + np.sum(centres * centres, axis=1))               # [N, C]
        new = np.argmin(distances, axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for c in range(num_clusters):
            members = x[labels == c]
            if len(members):
                centres[c] = members.mean(axis=0)
    return labels


def fit_em(codes, num_components: int = DEFAULT_COMPONENTS, *, seed: int = 0,
           reg: float = DEFAULT_REG, max_iter: int = 500, tol: float = 1e-5,
           restarts: int = 1) -> EMFit:
    """A full-covariance Gaussian mixture fitted to codes `[N, K]` by EM.

    Starts from k-means++ clusters (`seed` draws the seeding), then iterates
    EM until the mean log-likelihood per code rises by less than `tol` nats
    or `max_iter` iterations have run. Each covariance's eigenvalues are kept
    >= `reg` (> 0). With `restarts` > 1, runs that many starts (drawn in turn
    from the one seeded generator) and keeps the best final likelihood. The
    same codes and seed give the same mixture.
    """
    x = np.asarray(codes, np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"codes must be a finite [N, K] array; got shape {x.shape}")
    num_components = int(num_components)
    if not 1 <= num_components <= len(x):
        raise ValueError(f"num_components must be in [1, N = {len(x)}]; got {num_components}")
    if not reg > 0:
        raise ValueError(f"reg must be > 0 (it keeps the covariances invertible); got {reg}")
    if int(max_iter) < 0 or int(restarts) < 1:
        raise ValueError(f"need max_iter >= 0 and restarts >= 1; got {max_iter}, {restarts}")
    rng = np.random.default_rng(seed)
    best = None
    # EM's products are small ([N, K] @ [K, K]): BLAS threads cost more in
    # wake-ups than they gain, and far more on a machine shared with training.
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(int(restarts)):
            labels = kmeans_plus_plus(x, num_components, rng)
            fit = _em_from(x, np.eye(num_components)[labels], reg, int(max_iter), tol)
            if best is None or fit.log_likelihood[-1] > best.log_likelihood[-1]:
                best = fit
    return best


def _em_from(x: np.ndarray, resp: np.ndarray, reg: float, max_iter: int, tol: float) -> EMFit:
    """EM started from the M-step of responsibilities `resp` `[N, C]`."""
    params = _m_step(x, resp, reg)
    history, converged = [], False
    for iteration in range(max_iter + 1):
        log_joint = _log_joint(x, params)                                       # [N, C]
        log_px = _logsumexp(log_joint, axis=1)                                  # [N]
        history.append(float(np.mean(log_px)))
        if iteration and history[-1] - history[-2] < tol:
            converged = True
            break
        if iteration == max_iter:
            break
        params = _m_step(x, np.exp(log_joint - log_px[:, None]), reg)
    return EMFit(params, np.array(history), converged, len(history) - 1)


def fit_gaussian_mixture(codes, num_components: int = DEFAULT_COMPONENTS,
                         **kwargs) -> tfd.MixtureSameFamily:
    """`fit_em(codes, num_components, **kwargs)`'s mixture as a TFP distribution
    (float32, event `[K]`)."""
    return fit_em(codes, num_components, **kwargs).mixture.distribution()


# -- held-out log-density ------------------------------------------------------------------


def _mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    stderr = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(np.mean(values)), stderr


def held_out_log_density(mixture: tfd.Distribution, codes, prior: tfd.Distribution | None = None
                         ) -> dict:
    """How well the mixture, N(0, I) and (if given) the model's own learned prior
    describe codes `[N, K]` it was not fitted to: nats per code.

    Returns a flat dict: `mixture`, `standard_normal` and `prior` (each the mean
    ln q(z) over the codes, with `<name>_stderr` = sd / √N), and the paired
    differences `mixture_minus_standard_normal` / `mixture_minus_prior` with
    their standard errors (the same codes under both densities); `num_codes`.
    Scored in the mixture's dtype (float64 if given one).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [N, K]; got shape {codes.shape}")
    dtype = mixture.dtype
    z = tf.constant(codes, dtype)
    scores = {"mixture": mixture.log_prob(z).numpy().astype(np.float64),
              "standard_normal": tfd.MultivariateNormalDiag(
                  tf.zeros([codes.shape[1]], dtype)).log_prob(z).numpy().astype(np.float64)}
    if prior is not None:
        scores["prior"] = prior.log_prob(tf.cast(z, prior.dtype)).numpy().astype(np.float64)
    out = {"num_codes": int(len(codes))}
    for name, values in scores.items():
        out[name], out[f"{name}_stderr"] = _mean_and_stderr(values)
        if name != "mixture":
            key = f"mixture_minus_{name}"
            out[key], out[f"{key}_stderr"] = _mean_and_stderr(scores["mixture"] - values)
    return out


# -- a run's post-hoc sampler ----------------------------------------------------------------


def posthoc_dir(workdir: str) -> str:
    """Where `posthoc_workdir` writes: `workdir/posthoc`."""
    return os.path.join(workdir, "posthoc")


def _codes(vae, config, split: str):
    """(posterior means `[N, K]` of `split`'s images, binarised as the run
    evaluates them; their labels `[N]` or None): `evaluate.split_codes`."""
    try:
        return evaluate.split_codes(vae, config, split)
    except EvaluationError as e:     # a conditional model on a split without labels
        raise EvaluationError(f"{e} ({split} split)") from None


def _decoded(vae, z) -> np.ndarray:
    """Decoder means of z `[n, K]`; a conditional model's draw i gets class i mod C."""
    if evaluate.is_conditional(vae):
        labels = tf.range(tf.shape(z)[0]) % vae.num_classes
        return vae.decode(z, labels).mean().numpy()
    return vae.decode(z).mean().numpy()


def posthoc_workdir(workdir: str, *, components: int = DEFAULT_COMPONENTS, seed: int = 0,
                    reg: float = DEFAULT_REG, max_iter: int = 500, restarts: int = 1,
                    split: str = "validation", num_images: int = 64) -> dict:
    """Fits the post-hoc mixture to the posterior means of a run's training
    split and writes `workdir/posthoc/` whole (or not at all):

      mixture.npz        weights [C], means [C, K], scale_tril [C, K, K],
                         log_likelihood [T + 1] (EM's mean ln p per training code)
      metrics.json       the held-out log-densities of `split`'s codes (nats per
                         code) under the mixture, N(0, I), the model's prior if
                         learned, and one full-covariance Gaussian fitted to the
                         same codes; the fit's settings; also returned
      samples.png        decoder means for z ~ p(z) beside z ~ the mixture
      saved_model/       the run's signatures plus sample_posthoc(n, seed) -> mean, z

    The run's own saved_model/ is left as training wrote it. A hierarchical
    VAE's mixture is over its top code z₂ (the q(z₂|x) means), decoded through
    E[z₁ | z₂]; a conditional VAE's draw i decodes as class i mod C.
    """
    config = workdir_lib.run_config(workdir)
    # A run still training there would move its checkpoint under the fit: refused
    # (WorkdirBusy) while it holds the workdir's lock.
    with workdir_lib.Lock(workdir):
        return _posthoc_locked(workdir, config, components=components, seed=seed, reg=reg,
                               max_iter=max_iter, restarts=restarts, split=split,
                               num_images=num_images)


def _posthoc_locked(workdir: str, config, *, components, seed, reg, max_iter, restarts, split,
                    num_images) -> dict:
    vae, checkpoint, step, _ = evaluate.restore_vae(workdir, config)
    # tf.data's fixed binarisation draw depends on the global seed: set it as the
    # run did, so the codes are those of the very images the run evaluated.
    keras.utils.set_random_seed(config.seed)
    train_codes, _ = _codes(vae, config, "train")
    if not 1 <= components <= len(train_codes):
        raise ConfigError(f"components must be in [1, {len(train_codes)}] (the training "
                          f"codes); got {components}")
    held_codes, _ = _codes(vae, config, split)
    fit = fit_em(train_codes, components, seed=seed, reg=reg, max_iter=max_iter,
                 restarts=restarts)
    metrics = {
        "workdir": os.path.basename(os.path.normpath(workdir)),
        "checkpoint": os.path.basename(checkpoint), "step": step, "dataset": config.dataset,
        "model": config.model, "latent_dim": int(train_codes.shape[1]),
        "components": int(components), "seed": int(seed), "reg": float(reg),
        "restarts": int(restarts), "num_train_codes": int(len(train_codes)),
        "em_iterations": fit.iterations, "em_converged": fit.converged,
        "train_log_density": float(fit.log_likelihood[-1]), "held_out_split": split,
        "held_out": _held_out(vae, fit, train_codes, held_codes, reg),
        "units": "nats per code"}
    _write(workdir, vae, fit, metrics, f"{config.dataset} {config.model}", seed, num_images)
    return metrics


def _held_out(vae, fit: EMFit, train_codes, held_codes, reg: float) -> dict:
    """`held_out_log_density` of the held-out codes, plus `single_gaussian`: one
    full-covariance Gaussian fitted to the same training codes (how much of the
    gain is the mixture's, not the codes' scale and correlations alone)."""
    prior = None if vae.prior is None else vae.prior_distribution()
    out = held_out_log_density(fit.mixture.distribution(tf.float64), held_codes, prior)
    single = fit_em(train_codes, 1, reg=reg, max_iter=0).mixture     # exact: the ML Gaussian
    scores = held_out_log_density(single.distribution(tf.float64), held_codes)
    out["single_gaussian"], out["single_gaussian_stderr"] = (scores["mixture"],
                                                             scores["mixture_stderr"])
    return out


def _write(workdir: str, vae, fit: EMFit, metrics: dict, name: str, seed: int,
           num_images: int) -> None:
    """workdir/posthoc/, whole: mixture.npz, metrics.json, samples.png, saved_model/."""
    layer = MixtureLayer.from_params(fit.mixture)
    draws = {"z ~ p(z), the prior": vae.prior_distribution().sample(num_images,
                                                                  seed=(seed, 7)),
             f"z ~ mixture of {len(fit.mixture.weights)} Gaussians":
             layer.distribution().sample(num_images, seed=(seed, 8))}
    with files.atomic_directory(posthoc_dir(workdir)) as tmp:
        save_mixture(os.path.join(tmp, "mixture.npz"), fit.mixture,
                     log_likelihood=fit.log_likelihood)
        files.write_json(os.path.join(tmp, "metrics.json"), metrics)
        plots.side_by_side_grids({title: _decoded(vae, z) for title, z in draws.items()},
                                 os.path.join(tmp, "samples.png"),
                                 title=f"{name}: decoder means, same decoder")
        export.export_saved_model(vae, os.path.join(tmp, "saved_model"), posthoc=layer)
