"""Evaluating a trained VAE: test ELBO, IWAE-k log-likelihood, active units, linear probe.

    result = evaluate_workdir("runs/default", k=1000)        # writes runs/default/evaluation.json
    result = evaluate_saved_model("runs/default/saved_model", k=1000)

Every function takes either a `tfp_vae.models.VAE` or a SavedModel written by
`export.export_saved_model` (as `tf.saved_model.load` returns it): both are
read through the same three functions — ELBO terms, IWAE bound, posterior
mean — so a run gives the same numbers in either form, seed for seed.

Seeds: batch i of an evaluation draws with the stateless seed (seed, 1000 + i),
the ELBO and the IWAE bound alike, so a number depends on (seed, batch_size)
and nothing else. Under XLA (`jit=True`) the stateless samplers draw other
numbers than outside it, so compare runs made in the same mode.
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfp_vae import (data, execution, export, factory, files, input_pipeline, latent_use,
                     summaries, workdir as workdir_lib)
from tfp_vae.checkpoints import BestEpoch, Checkpoints
from tfp_vae.config import VARIATIONAL, Config
from tfp_vae.errors import EvaluationError

# Batch i of an evaluation uses seed (seed, _SEED_OFFSET + i); train's end-of-run
# metrics use the same scheme, so `evaluate_workdir` reproduces metrics.json.
_SEED_OFFSET = 1000


class _Model(NamedTuple):
    """What evaluation needs of a model, whichever form it comes in."""

    elbo: Callable        # (x [B, *data], seed [2]) -> (elbo, reconstruction, kl), each [B] nats
    iwae: Callable        # (x [B, *data], k, seed [2]) -> [B] nats
    encode_mean: Callable  # x [B, *data] -> E_q[z] [B, K]


def is_conditional(model) -> bool:
    """Whether `model` (a Keras VAE or a loaded SavedModel) takes (x, y) inputs."""
    signatures = getattr(model, "signatures", None)
    if signatures is None:
        return hasattr(model, "num_classes")
    return "y" in signatures["encode"].structured_input_signature[1]


def _named(inputs) -> dict:
    """A SavedModel signature's keyword inputs: x, or x and y for (x, y)."""
    if isinstance(inputs, (tuple, list)):
        return {"x": inputs[0], "y": tf.cast(inputs[1], tf.int32)}
    return {"x": inputs}


def _as_model(model, chunk_size: int) -> _Model:
    signatures = getattr(model, "signatures", None)
    if signatures is None:       # a Keras VAE
        return _Model(
            elbo=lambda x, s: tuple(model.elbo(x, seed=s)),
            iwae=lambda x, k, s: model.iwae_bound(x, k, seed=s, chunk_size=chunk_size),
            encode_mean=lambda x: model.encode(x).mean())
    missing = [name for name in ("encode", "elbo", "iwae") if name not in signatures]
    if missing:
        raise EvaluationError(f"the SavedModel has no {', '.join(missing)} signature; "
                              "re-export it with tfp_vae.export.export_saved_model")
    return _Model(
        elbo=lambda x, s: tuple(signatures["elbo"](**_named(x), seed=s)[name]
                                for name in ("elbo", "reconstruction", "kl")),
        # The signature takes k as a tensor; a constant here lets XLA see its value.
        iwae=lambda x, k, s: signatures["iwae"](**_named(x), k=tf.constant(k, tf.int32),
                                                seed=s)["log_likelihood"],
        encode_mean=lambda x: signatures["encode"](**_named(x))["loc"])


def _batches(inputs, batch_size: int, seed: int):
    """(inputs[start:start + batch_size], seed (seed, 1000 + i)) for batch i;
    inputs: x `[N, ...]`, or a tuple of arrays such as (x, y), sliced alike."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    n = len(tf.nest.flatten(inputs)[0])
    for i, start in enumerate(range(0, n, batch_size)):
        yield (tf.nest.map_structure(lambda a: tf.constant(a[start:start + batch_size]), inputs),
               tf.constant([seed, _SEED_OFFSET + i], tf.int32))


def elbo_terms(vae, x: np.ndarray, *, seed: int = 0, batch_size: int = 500,
               jit: bool = True) -> dict[str, float]:
    """Mean ELBO, reconstruction E_q[ln p(x|z)] and KL over x `[N, *data]`: nats per example.

    One z draw per example, analytic KL where it exists (the model's `elbo`).
    For a conditional model x is the pair (images, labels), here and in every
    function below that takes images.
    """
    model = _as_model(vae, chunk_size=1)
    # autograph=False here and below: the models' methods are plain Python over
    # TF ops (loops are tf.while_loop), and AutoGraph's conversion of them and
    # of TFP took most of an end-of-run evaluation's time on a small model.
    fn = tf.function(model.elbo, jit_compile=jit, autograph=False)
    terms = [fn(xb, s) for xb, s in _batches(x, batch_size, seed)]
    return {name: float(np.mean(np.concatenate([t[i].numpy() for t in terms]), dtype=np.float64))
            for i, name in enumerate(("elbo", "reconstruction", "kl"))}


def iwae_log_likelihood(vae, x: np.ndarray, k: int = 1000, *, seed: int = 0,
                        batch_size: int = 100, chunk_size: int = 100,
                        jit: bool = True) -> tuple[float, np.ndarray]:
    """The IWAE-k estimate of ln p(x): (mean over x, per example `[N]`), nats.

    A lower bound on ln p(x) in expectation that tightens as k grows
    (Burda et al. 2016); k = 1000 or 5000 is the usual "test log-likelihood".
    Memory is O(chunk_size · batch_size · D); a SavedModel draws in chunks of
    `export.IWAE_CHUNK` whatever `chunk_size` says.
    """
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    fn = iwae_function(vae, k, chunk_size=chunk_size, batch_size=batch_size, jit=jit)
    values = np.concatenate([fn(xb, s).numpy() for xb, s in _batches(x, batch_size, seed)])
    return float(np.mean(values, dtype=np.float64)), values


# From this many decoded rows per chunk (chunk · batch) on, a CPU scores faster
# with the decoder's matmuls on TensorFlow's kernels than with all of it under
# XLA; below it the extra launches cost more than they save (docs/performance.md).
_PARTS_MIN_ROWS = 1000


def _scores_in_parts(vae, k: int, chunk_size: int, batch_size: int) -> bool:
    """Whether a jit-compiled IWAE scoring of `vae` takes `iwae_bound(xla_parts=True)`
    in a plain tf.function: a Keras model whose bound has that option, on a
    machine without accelerators, at a chunk of at least `_PARTS_MIN_ROWS` rows."""
    if getattr(vae, "signatures", None) is not None:
        return False
    if "xla_parts" not in inspect.signature(vae.iwae_bound).parameters:
        return False
    if execution.accelerated():
        return False
    return min(k, chunk_size) * batch_size >= _PARTS_MIN_ROWS


def iwae_function(vae, k: int, *, chunk_size: int = 100, batch_size: int = 100,
                  jit: bool = True) -> Callable:
    """fn(x `[B, *data]`, seed `[2]` int32) -> the IWAE-k bound `[B]`, nats: the
    scoring `iwae_log_likelihood` runs, for batches of about `batch_size`.

    With jit, compiled where that is fastest: on a CPU, at chunks of at least
    `_PARTS_MIN_ROWS` decoded rows, a Keras VAE's sampling and densities are
    XLA programs and its decoder runs on TensorFlow's own matmul kernels
    (`objectives.iwae_bound`'s `xla_parts`); otherwise the whole bound is one
    XLA program. Both draw the same samples (XLA's) and give the same numbers
    up to float rounding. Without jit nothing is compiled.
    """
    k = int(k)
    if jit and _scores_in_parts(vae, k, chunk_size, batch_size):
        return tf.function(lambda xb, s: vae.iwae_bound(xb, k, seed=s, chunk_size=chunk_size,
                                                        xla_parts=True), autograph=False)
    model = _as_model(vae, chunk_size=chunk_size)
    return tf.function(lambda xb, s: model.iwae(xb, k, s), jit_compile=jit, autograph=False)


def _iwae_terms(vae, x, k: int, **kwargs) -> dict:
    """iwae_{k}, the mean IWAE-k estimate over x, and iwae_{k}_stderr, its
    standard error over the examples (sd / √N): nats."""
    mean, values = iwae_log_likelihood(vae, x, k, **kwargs)
    stderr = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return {f"iwae_{k}": mean, f"iwae_{k}_stderr": stderr}


def bits_per_dim(log_likelihood, num_dims: int):
    """A log-likelihood (or a bound on one) of an example in nats, as bits per
    dimension: −ln p(x) / (D · ln 2), D = H·W·C. Lower is better; a uniform
    guess over 256 levels is 8."""
    return -log_likelihood / (int(num_dims) * math.log(2))


def bpd_dimension(config: Config) -> str | None:
    """What one dimension of `config`'s bits per dimension is, or None where bits
    per dimension mean nothing: a Normal density, a Bernoulli cross-entropy of
    grey levels."""
    if config.decoder == "logistic":
        return "one 8-bit sub-pixel value (256 levels)"
    if config.decoder == "bernoulli" and config.binarize != "none":
        return "one binary pixel"
    return None


def _bpd_terms(config: Config, terms: dict, k: int, data_shape) -> dict:
    """elbo_bpd and iwae_{k}_bpd, the ELBO and IWAE-k numbers of `terms` as bits per
    dimension (each an upper bound on −log₂ p(x) / D, the IWAE one tighter), and
    bpd_dimension, what a dimension is; {} where bits per dimension mean nothing."""
    meaning = bpd_dimension(config)
    if meaning is None:
        return {}
    size = int(np.prod(data_shape))
    return {"elbo_bpd": bits_per_dim(terms["elbo"], size),
            f"iwae_{k}_bpd": bits_per_dim(terms[f"iwae_{k}"], size), "bpd_dimension": meaning}


def latent_means(vae, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """E_q(z|x)[z] for every example of x `[N, *data]`: `[N, K]`."""
    return _latent_means(tf.function(_as_model(vae, chunk_size=1).encode_mean, autograph=False),
                         x, batch_size)


def _latent_means(encode_mean, x, batch_size: int) -> np.ndarray:
    return np.concatenate([encode_mean(xb).numpy() for xb, _ in _batches(x, batch_size, 0)])


def split_codes(model, config: Config, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(E_q(z|x)[z] `[N, K]` of `split`'s images as the run evaluates them,
    their labels `[N]` or None), read a batch at a time
    (`input_pipeline.evaluation_batches`): a streamed training split is never
    held whole, only its codes."""
    encode_mean = tf.function(_as_model(model, chunk_size=1).encode_mean, autograph=False)
    codes, labels = [], []
    for x, y in input_pipeline.evaluation_batches(config, split):
        codes.append(_latent_means(encode_mean, _inputs(model, x, y), 500))
        labels.append(y)
    return np.concatenate(codes), None if labels[0] is None else np.concatenate(labels)


def active_units(vae, x: np.ndarray, threshold: float = 0.01,
                 batch_size: int = 500) -> tuple[int, np.ndarray]:
    """Burda et al.'s active units: A_u = Var_x(E_q(z|x)[z_u]) > threshold.

    Returns (the number of active dimensions, the variances `[K]`); the
    variance is over the examples of x `[N, *data]` (1/N, not 1/(N − 1)).
    A dimension whose posterior mean ignores x is inactive: the model does
    not use it to carry information about x.
    """
    return latent_use.active_units(latent_means(vae, x, batch_size), threshold)


def probe_accuracy(codes_train: np.ndarray, y_train: np.ndarray, codes_test: np.ndarray,
                   y_test: np.ndarray, max_iter: int = 2000) -> float:
    """Test accuracy of a logistic regression on standardised codes `[N, K]`, in [0, 1]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    probe.fit(codes_train, y_train)
    return float(probe.score(codes_test, y_test))


def linear_probe(vae, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, *, batch_size: int = 500, max_iter: int = 2000) -> float:
    """How linearly the posterior means separate the classes: test accuracy in [0, 1].

    A logistic regression on the standardised E_q[z] of x_train `[N, *data]`
    (labels y_train `[N]`), scored on x_test.
    """
    return probe_accuracy(latent_means(vae, x_train, batch_size), y_train,
                          latent_means(vae, x_test, batch_size), y_test, max_iter=max_iter)


def evaluate_model(vae, config: Config, x: np.ndarray, iwae_k: int | None = None,
                   batch_size: int | None = None, seed: int | None = None,
                   y: np.ndarray | None = None) -> dict:
    """Test ELBO terms and the IWAE-k log-likelihood estimate, nats per example,
    and both in bits per dimension where those mean something (`_bpd_terms`).

    x: raw images `[N, *data]` in [0, 1], binarised here as the run's
    evaluation data are (one fixed draw); y: their labels `[N]`, which a
    conditional model needs. Defaults from `config` (eval_iwae_k, batch_size,
    seed, jit). Used for the run's metrics.json.
    """
    k = iwae_k or config.eval_iwae_k
    batch_size = batch_size or config.batch_size
    seed = config.seed if seed is None else seed
    xb = _inputs(vae, input_pipeline.evaluation_arrays(config, x), y)
    jit = execution.use_xla(config)
    out = elbo_terms(vae, xb, seed=seed, batch_size=batch_size, jit=jit)
    out.update(_iwae_terms(vae, xb, k, seed=seed, batch_size=batch_size, jit=jit))
    out.update(_bpd_terms(config, out, k, x.shape[1:]))
    out["num_examples"] = int(len(x))
    return out


def _inputs(model, x: np.ndarray, y: np.ndarray | None):
    """What `model` takes for images x: x, or (x, y) for a conditional model."""
    if not is_conditional(model):
        return x
    if y is None:
        raise EvaluationError("a conditional model needs the images' labels; the data have none")
    return x, y


# -- from a run's workdir or a SavedModel --------------------------------------------


def _exported(saved_model: str | None, weights: str | None) -> tuple[str, str]:
    """(the folder an exported model sits in, the prefix of what its evaluation writes)."""
    if saved_model is not None:
        return os.path.dirname(os.path.normpath(saved_model)), "saved_model_evaluation"
    return os.path.dirname(os.path.normpath(weights)), "weights_evaluation"


def default_output(workdir: str | None = None, saved_model: str | None = None,
                   weights: str | None = None) -> str:
    """Where an evaluation's JSON goes unless told: `workdir/evaluation.json`, or
    `saved_model_evaluation.json` beside the SavedModel directory, or
    `weights_evaluation.json` beside the weights file."""
    if workdir is not None:
        return workdir_lib.paths(workdir).evaluation
    folder, prefix = _exported(saved_model, weights)
    return os.path.join(folder, f"{prefix}.json")


def default_logdir(workdir: str | None = None, saved_model: str | None = None,
                   split: str = "test", weights: str | None = None) -> str:
    """Where an evaluation's TensorBoard run goes: a run of the workdir's
    `tensorboard/` (`evaluation_<split>`), or of one beside the SavedModel
    directory or the weights file (`saved_model_evaluation_<split>`,
    `weights_evaluation_<split>`)."""
    if workdir is not None:
        return os.path.join(workdir_lib.paths(workdir).tensorboard, f"evaluation_{split}")
    folder, prefix = _exported(saved_model, weights)
    return os.path.join(folder, "tensorboard", f"{prefix}_{split}")


class Restored(NamedTuple):
    """A run's VAE as its latest readable checkpoint left it."""

    vae: keras.Model
    checkpoint: str            # the checkpoint's path
    step: int                  # optimizer steps it was trained for
    best_epoch: int | None     # with early stopping: the epoch (1-based) whose weights these are


def restore_vae(workdir: str, config: Config | None = None) -> Restored:
    """The VAE of a run at its latest readable checkpoint; with early stopping,
    holding the best epoch's weights, as the run evaluated and exported it."""
    config = config or workdir_lib.run_config(workdir)
    vae = _built_vae(config, workdir)
    # The optimizer rides along so the checkpoint matches whole and tells the step.
    optimizer = keras.optimizers.Adam(config.learning_rate)
    optimizer.build(vae.trainable_variables)
    best = BestEpoch(vae) if config.patience else None
    restored = Checkpoints(vae, optimizer, workdir_lib.paths(workdir).checkpoints,
                           **({"best": best} if best else {})).restore()
    if restored is None:
        raise EvaluationError(f"{workdir} has no readable checkpoint in checkpoints/; "
                              "train first (scripts/train.py --workdir=...)")
    best_epoch = None
    if best is not None and int(best.epoch.numpy()) >= 0:
        best.restore()
        best_epoch = int(best.epoch.numpy()) + 1
    return Restored(vae, restored, int(optimizer.iterations.numpy()), best_epoch)


def _built_vae(config: Config, whose: str = "the config"):
    """A freshly built VAE of `config`, for its data set's shape (and classes);
    EvaluationError, naming `whose` run it is, unless the config's model is one."""
    if config.model not in VARIATIONAL:
        raise EvaluationError(f"{whose} holds a model={config.model} run; this evaluates "
                              f"{' and '.join(VARIATIONAL)} runs")
    shape = data.data_shape(config.dataset, data_dir=config.data_dir)
    classes = data.num_classes(config.dataset, data_dir=config.data_dir) if config.conditional \
        else None
    return factory.build_model(config, shape, classes)


def restore_weights(path: str, config: Config | None = None):
    """(the VAE whose weights `export.save_weights` wrote to `path`, its Config).

    The Config is the `config.json` beside the file unless given: a run's
    workdir holds both, and so does a published model's folder."""
    if not os.path.isfile(path):
        raise EvaluationError(f"no weights file at {path}; pass a run's model.weights.h5")
    if config is None:
        config = workdir_lib.run_config(os.path.dirname(os.path.abspath(path)))
    vae = _built_vae(config)
    try:
        vae.load_weights(path)
    except (ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvaluationError(f"{path} does not hold the weights of the model its config.json "
                              f"describes ({first})") from None
    return vae, config


def export_run_weights(workdir: str, path: str | None = None) -> str:
    """Writes the weights of a run's restored model (the best epoch's, with early
    stopping: those its SavedModel holds) to `path` (default
    `workdir/model.weights.h5`, what a run writes at its end); returns the path.
    For runs made before runs wrote it."""
    vae = restore_vae(workdir).vae
    return export.save_weights(vae, path or workdir_lib.paths(workdir).weights)


def _evaluate(model, config: Config, *, k: int, split: str, batch_size: int, seed: int | None,
              limit: int | None, probe: bool, jit: bool | None, logdir: str | None = None,
              step: int = 0) -> dict:
    """Every number of an evaluation; images binarised as the run's evaluation data are.
    With `logdir`, also a TensorBoard run there: the numbers at `step` and the
    posterior means in the Projector (`summaries.write_evaluation`)."""
    seed = config.seed if seed is None else seed
    jit = execution.use_xla(config, jit)
    x, y = input_pipeline.load_split(config, split, limit)
    # tf.data's fixed binarisation draw also depends on the global seed, which
    # the run set to config.seed: set it alike to see the run's very images.
    keras.utils.set_random_seed(config.seed)
    xb = _inputs(model, input_pipeline.evaluation_arrays(config, x), y)
    out = {"split": split, "num_examples": int(len(x)), "seed": seed, "batch_size": batch_size,
           "k": k, "jit": jit}
    out.update(elbo_terms(model, xb, seed=seed, batch_size=batch_size, jit=jit))
    out.update(_iwae_terms(model, xb, k, seed=seed, batch_size=batch_size, jit=jit))
    out.update(_bpd_terms(config, out, k, x.shape[1:]))
    means = latent_means(model, xb)
    count, variances = latent_use.active_units(means)
    out.update(active_units=count, latent_dim=int(len(variances)),
               active_unit_variances=[float(v) for v in variances])
    if probe and y is not None:
        codes, y_train = split_codes(model, config, "train")
        if y_train is not None:
            # The probe learns from the training split, the run's `limit` applied. For a
            # conditional model it measures how much of the label z still carries.
            out["linear_probe_accuracy"] = probe_accuracy(codes, y_train, means, y)
    if logdir is not None:
        # A HierarchicalVAE's encode is q(z2|x), its top layer (named as at a run's end).
        summaries.write_evaluation(logdir, out, {"z2_mean" if config.model == "hvae"
                                                 else "z_mean": means}, x, y, step=step)
    return out


def evaluate_workdir(workdir: str, *, k: int = 1000, split: str = "test", batch_size: int = 100,
                     seed: int | None = None, limit: int | None = None,
                     data_dir: str | None = None, output: str | None = None,
                     probe: bool = True, jit: bool | None = None,
                     tensorboard: bool = True) -> dict:
    """Evaluates a run's latest checkpoint; writes the result to `output`
    (default `workdir/evaluation.json`) and returns it. With `tensorboard`,
    also the TensorBoard run `workdir/tensorboard/evaluation_<split>`: the
    numbers at the checkpoint's step, the codes in the Projector.

    ELBO, reconstruction, KL and iwae_{k} are nats per example over the
    split's first `limit` images (default: the run's limit); seed defaults to
    the run's, and `jit` (XLA or not, which draws other stateless samples) the
    run's `config.jit`. With k = eval_iwae_k and batch_size = the run's, the
    ELBO and IWAE numbers repeat the run's metrics.json.
    """
    config = workdir_lib.run_config(workdir)
    if data_dir is not None:
        config = config.replace(data_dir=data_dir)
    vae, checkpoint, step, best_epoch = restore_vae(workdir, config)
    out = {"source": "workdir", "path": workdir, "checkpoint": os.path.basename(checkpoint),
           "step": step, "dataset": config.dataset}
    if best_epoch is not None:
        out["best_epoch"] = best_epoch
    out.update(_evaluate(vae, config, k=k, split=split, batch_size=batch_size, seed=seed,
                         limit=limit, probe=probe, jit=jit, step=step,
                         logdir=default_logdir(workdir=workdir, split=split) if tensorboard
                         else None))
    files.write_json(output or default_output(workdir=workdir), out)
    return out


def evaluate_saved_model(path: str, *, config: Config | None = None, k: int = 1000,
                         split: str = "test", batch_size: int = 100, seed: int | None = None,
                         limit: int | None = None, data_dir: str | None = None,
                         output: str | None = None, probe: bool = True,
                         jit: bool | None = None, tensorboard: bool = True) -> dict:
    """Evaluates an exported SavedModel through its signatures (encode, elbo, iwae).

    The data set, binarisation, seed and limit come from `config`, by default
    the config.json of the run the SavedModel sits in (`path/../config.json`),
    else the defaults of `Config()`. Writes the result to `output` (default
    `path/../saved_model_evaluation.json`) and returns it; with `tensorboard`,
    also the TensorBoard run `path/../tensorboard/saved_model_evaluation_<split>`
    (the numbers at step 0, the codes in the Projector).
    """
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise EvaluationError(f"no SavedModel at {path} (no saved_model.pb); pass the "
                              "saved_model/ folder of a run, or export one")
    parent = os.path.dirname(os.path.abspath(path))
    if config is None:
        config = (workdir_lib.run_config(parent) if os.path.exists(os.path.join(parent, "config.json"))
                  else Config())
    if data_dir is not None:
        config = config.replace(data_dir=data_dir)
    return _evaluate_exported(tf.saved_model.load(path), config, "saved_model", path,
                              output=output, tensorboard=tensorboard, k=k, split=split,
                              batch_size=batch_size, seed=seed, limit=limit, probe=probe,
                              jit=jit)


def evaluate_weights(path: str, *, config: Config | None = None, k: int = 1000,
                     split: str = "test", batch_size: int = 100, seed: int | None = None,
                     limit: int | None = None, data_dir: str | None = None,
                     output: str | None = None, probe: bool = True,
                     jit: bool | None = None, tensorboard: bool = True) -> dict:
    """Evaluates the model of a weights file (`export.save_weights`; a run's
    `model.weights.h5`) rebuilt from the config.json beside it (`restore_weights`):
    the numbers `evaluate_workdir` gives for the run's restored model. Writes
    the result to `output` (default `weights_evaluation.json` beside the file)
    and returns it; with `tensorboard`, also the TensorBoard run
    `tensorboard/weights_evaluation_<split>` beside it."""
    if config is None and os.path.isfile(path):
        config = workdir_lib.run_config(os.path.dirname(os.path.abspath(path)))
    if config is not None and data_dir is not None:
        config = config.replace(data_dir=data_dir)
    vae, config = restore_weights(path, config)
    return _evaluate_exported(vae, config, "weights", path, output=output,
                              tensorboard=tensorboard, k=k, split=split,
                              batch_size=batch_size, seed=seed, limit=limit, probe=probe,
                              jit=jit)


def _evaluate_exported(model, config: Config, source: str, path: str, *, output, tensorboard,
                       split: str, **options) -> dict:
    """`_evaluate` of a model read from `path` (a "saved_model" or "weights"
    `source`), written to `output` or beside `path`, as the callers document."""
    where = {source: path}
    out = {"source": source, "path": path, "dataset": config.dataset}
    out.update(_evaluate(model, config, split=split, **options,
                         logdir=default_logdir(split=split, **where) if tensorboard else None))
    files.write_json(output or default_output(**where), out)
    return out


__all__ = ["EvaluationError", "active_units", "default_logdir", "default_output", "elbo_terms",
           "bits_per_dim", "bpd_dimension", "evaluate_model", "evaluate_saved_model",
           "evaluate_weights", "evaluate_workdir", "export_run_weights", "is_conditional",
           "iwae_function", "iwae_log_likelihood", "latent_means", "linear_probe",
           "probe_accuracy", "restore_vae", "restore_weights", "Restored"]
