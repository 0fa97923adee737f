"""The baselines beside the VAE: PCA and the plain autoencoder, trained and measured.

`train_baseline(config, workdir)` is `scripts/train.py --model=pca|ae`: it
leaves `config.json`, `metrics.json`, `figures/*.png` (and `model.keras` for
the AE) in `workdir`, as the VAE's run does. Re-running with the same workdir
loads the saved AE instead of training it again. The helpers (data splits,
`fit`, squared reconstruction error, load-or-train) serve `tfp_vae.compare` too.

Reconstruction error is always ‖x − x̂‖² summed over pixels and averaged over
test images (grey levels in [0, 1]), whatever loss a model was trained on, so
PCA, AE and VAE are measured on one scale.
"""

from __future__ import annotations

import os
from typing import Callable

import keras
import numpy as np

from tfp_vae import (data, execution, factory, figures, files, input_pipeline, plots,
                     workdir as workdir_lib)
from tfp_vae.config import Config
from tfp_vae.errors import ConfigError
from tfp_vae.pca import PCA


def load_splits(config: Config, splits=("train", "test")) -> dict[str, tuple]:
    """{split: (x `[N, H, W, C]` in [0, 1], y `[N]` or None)}, each cut to `config.limit`."""
    return {split: input_pipeline.load_split(config, split) for split in splits}


def fit(model: keras.Model, config: Config, x_train: np.ndarray, verbose: int = 0) -> dict:
    """Adam on `x_train` for `config.epochs`, binarised as `config.binarize`; the history.

    A plain `keras.Model.fit` (the VAE's resumable loop is `tfp_vae.train`).
    """
    keras.utils.set_random_seed(config.seed)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), jit_compile=execution.use_xla(config),
                  steps_per_execution=config.steps_per_execution)
    ds = data.make_dataset(x_train, None, config.batch_size, binarize=config.binarize,
                           shuffle=True, seed=config.seed)
    history = model.fit(ds, epochs=config.epochs, verbose=2 if verbose else 0, shuffle=False)
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def load_or_train(path: str, build: Callable[[], keras.Model],
                  train: Callable[[keras.Model], dict],
                  seed: int = 0) -> tuple[keras.Model, dict]:
    """The model saved at `path` (a `.keras` file) with its history, or a new one trained.

    A new model is saved atomically (to a temporary name, then renamed) with
    its history beside it in `<path>.history.json`.
    """
    history_path = path + ".history.json"
    if os.path.exists(path):
        model = keras.saving.load_model(path, safe_mode=True)
        return model, files.read_json(history_path) if os.path.exists(history_path) else {}
    keras.utils.set_random_seed(seed)   # the initial weights
    model = build()
    history = train(model)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp.{os.path.basename(path)}")
    model.save(tmp)
    os.replace(tmp, path)
    files.write_json(history_path, history)
    return model, history


def predict(model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """model(x) in batches, as numpy: the reconstructions `[N, *data]`."""
    return np.concatenate([np.asarray(model(x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])


def squared_error(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Mean over examples of Σ_pixels (x − x̂)²."""
    return float(np.mean(np.sum(np.square(x - x_hat).reshape(len(x), -1), axis=1)))


# -- scripts/train.py --model=pca|ae --------------------------------------------------------


def train_baseline(config: Config, workdir: str, *, verbose: int = 0) -> dict:
    """Fits PCA or trains the AE of `config`; writes its artifacts; returns the test metrics.

    Metrics: `reconstruction_squared_error` (‖x − x̂‖² per test image), and for
    the AE its test `loss` (squared error or Bernoulli cross-entropy, nats).
    """
    if config.model not in ("pca", "ae"):
        raise ConfigError(f"train_baseline trains model=pca or ae; got {config.model!r}")

    splits = load_splits(config)
    (x_train, _), (x_test, y_test) = splits["train"], splits["test"]
    workdir_lib.prepare(config, workdir)   # refuses another run's workdir
    figure_dir = os.path.join(workdir, "figures")
    path = lambda name: os.path.join(figure_dir, f"{name}.png")          # noqa: E731
    if config.model == "pca":
        pca = PCA(config.latent_dim).fit(x_train)
        error = pca.reconstruction_error(x_test, [config.latent_dim])[config.latent_dim]
        metrics = {"reconstruction_squared_error": error,
                   "explained_variance_ratio": float(np.sum(pca.explained_variance_ratio_))}
        if config.figures:
            pca_figures(pca, x_test, y_test, path)
    else:
        data_shape = x_train.shape[1:]
        model, history = load_or_train(
            os.path.join(workdir, "model.keras"),
            lambda: factory.build_autoencoder(config, data_shape),
            lambda m: fit(m, config, x_train, verbose=verbose), seed=config.seed)
        test = model.evaluate(data.make_dataset(x_test, None, config.batch_size, shuffle=False),
                              return_dict=True, verbose=0)
        metrics = {"reconstruction_squared_error": float(test["squared_error"]),
                   "loss": float(test["loss"]), "epochs": config.epochs}
        if config.figures:
            ae_figures(model, x_test, y_test, history, path, seed=config.seed)
    metrics.update(model=config.model, latent_dim=config.latent_dim, num_examples=len(x_test))
    files.write_json(os.path.join(workdir, "metrics.json"), metrics)
    return metrics


def pca_figures(pca: PCA, x, y, path: Callable[[str], str]) -> None:
    """Reconstructions, the first two components' scatter, the components as images."""
    originals = x[:10]
    plots.reconstructions(originals, np.clip(pca.inverse_transform(pca.transform(originals)),
                                             0, 1), path("reconstructions"),
                          title=f"Test images and their PCA reconstructions (k = {pca.n_components})")
    if pca.n_components >= 2:
        plots.latent_scatter(pca.transform(x), y, path("latent_scatter"),
                             title="Test images on the first two principal axes")
    components = pca.components_.reshape((-1,) + pca.data_shape_)
    span = np.max(np.abs(components), axis=tuple(range(1, components.ndim)), keepdims=True)
    plots.image_grid(0.5 + 0.5 * components / span, path("components"),
                     title="Principal directions (grey = 0)")


def ae_figures(ae, x, y, history: dict, path: Callable[[str], str], seed: int = 0) -> None:
    """Reconstructions, code scatter, decoded N(0, I) codes, an interpolation, curves."""
    originals = x[:10]
    plots.reconstructions(originals, predict(ae, originals), path("reconstructions"),
                          title="Test images (top) and AE reconstructions (bottom)")
    plots.latent_scatter(figures.latent_codes_2d(ae, x), y, path("latent_scatter"),
                         title="AE codes of test images" + (
                             "" if ae.latent_dim <= 2 else " (top two principal axes)"))
    plots.samples(np.asarray(ae.sample(64, seed=(seed, 7)).mean()), path("samples"),
                  title="Decoded z ~ N(0, I): a plain AE has no prior")
    j = 1 if y is None else int(np.argmax(y != y[0]))
    plots.interpolation(figures.interpolation_images(ae, x[0], x[j]), path("interpolation"),
                        title="Decoding the line between two AE codes")
    if history:
        plots.training_curves(history, path("training_curves"), title="Per epoch")
