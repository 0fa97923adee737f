"""train_and_evaluate(config, workdir): the run, its checkpoints and artifacts.

A run's workdir holds `config.json`, `checkpoints/`, `tensorboard/`,
`history.json`, `figures/*.png`, `saved_model/` and `metrics.json`.
Re-running with the same workdir resumes from the last checkpoint; the
position in the data is read off the optimizer's step count and every epoch's
data order and binarisation draws are a fixed function of (seed, epoch), so a
resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tfp_vae import data, factory, files
from tfp_vae.config import Config, ConfigError

log = logging.getLogger("tfp_vae")

# Summary and figure images per epoch in TensorBoard.
_TB_IMAGES = 8


class TrainingInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C arrived; a checkpoint was saved first."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


# -- set-up ------------------------------------------------------------------------------


def check_workdir(config: Config, workdir: str) -> None:
    """Refuse a workdir that holds a different run; write config.json otherwise."""
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        try:
            saved = Config.from_dict(files.read_json(path))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{path} is not a valid config ({e}); use another workdir") from None
        ours, theirs = config.model_fields(), saved.model_fields()
        diff = [f"{k}={theirs[k]!r} (asked {ours[k]!r})" for k in ours if ours[k] != theirs[k]]
        if diff:
            raise ConfigError(f"workdir {workdir} holds another run ({', '.join(diff)}); "
                              "use another --workdir or the same settings")
    os.makedirs(workdir, exist_ok=True)
    files.write_json(path, config.to_dict())


def make_strategy(config: Config) -> tf.distribute.Strategy:
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if config.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def epoch_seed(seed: int, epoch: int) -> int:
    """The data seed of one epoch: a fixed function of (seed, epoch)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**31 - 1)


def eval_dataset(config: Config, x: np.ndarray, batch_size: int | None = None):
    """Evaluation data: in order, binarised with one fixed draw when dynamic."""
    return data.make_dataset(x, None, batch_size or config.batch_size, binarize=config.binarize,
                             shuffle=False, seed=epoch_seed(config.seed, -1))


def binarized(config: Config, x: np.ndarray) -> np.ndarray:
    """The evaluation arrays themselves (the same fixed draw as eval_dataset)."""
    return np.concatenate(list(eval_dataset(config, x, batch_size=1000).as_numpy_iterator()))


class _Checkpoints:
    """Model + optimizer checkpoints; a corrupt latest one falls back to the previous."""

    def __init__(self, model, optimizer, directory: str, is_chief: bool = True):
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=3)
        self.is_chief = is_chief

    def restore(self) -> str | None:
        for path in reversed(self.manager.checkpoints):
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
                return path
            except (tf.errors.OpError, ValueError, AssertionError) as e:
                log.warning("checkpoint %s is unreadable (%s); trying the previous one",
                            path, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None

    def save(self, step: int) -> None:
        self.manager.save(checkpoint_number=step)


class _Guard(keras.callbacks.Callback):
    """Stops fit on SIGTERM/SIGINT and on a non-finite loss, after the current step."""

    def __init__(self):
        super().__init__()
        self.signal = None
        self.bad_loss = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_loss = float(loss)
            self.model.stop_training = True
        if self.signal is not None:
            self.model.stop_training = True


class _Progress(keras.callbacks.Callback):
    """A progress bar per epoch with the running loss (Keras' own would
    number the epochs of each one-epoch `fit` call as 1/1)."""

    def __init__(self, epoch: int, epochs: int, steps: int, verbose: int):
        super().__init__()
        self.bar = keras.utils.Progbar(steps, verbose=verbose, stateful_metrics=(
            "loss", "elbo", "reconstruction", "kl"), unit_name="step")
        self.verbose = verbose
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self.bar.update(batch + 1, [(k, float(logs[k])) for k in ("loss", "kl") if k in logs])


@contextlib.contextmanager
def _catch_signals(guard: _Guard):
    """SIGTERM and SIGINT ask the guard to stop; restored on the way out."""
    if sys.platform == "win32" or not _in_main_thread():
        yield
        return

    def handler(signum, frame):
        guard.signal = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _write_tb(writer, logs: dict, step: int, images: dict | None = None) -> None:
    with writer.as_default(step=step):
        for k, v in logs.items():
            tf.summary.scalar(k if "/" in k else f"train/{k}", float(v))
        for k, v in (images or {}).items():
            tf.summary.image(k, v, max_outputs=_TB_IMAGES)
    writer.flush()


# -- the run -------------------------------------------------------------------------------


def train_and_evaluate(config: Config, workdir: str, *, verbose: int | None = None) -> dict:
    """Trains (or resumes) the run in `workdir`, evaluates it and writes its artifacts.

    Returns the test metrics (also written to `workdir/metrics.json`): nats
    per example for elbo, reconstruction, kl and the IWAE-k estimate of
    log p(x).

    Raises:
      ConfigError: the workdir holds a run with other settings.
      data.DataError: the data are missing or malformed.
      TrainingInterrupted: SIGTERM/SIGINT; a checkpoint was saved first.
      TrainingDiverged: a non-finite loss; the last good checkpoint is kept.
    """
    if config.model != "vae":
        raise ConfigError(f"train_and_evaluate trains model=vae; got {config.model!r}")
    # Load and check the data before writing anything into workdir.
    x_train, _ = data.load_arrays(config.dataset, "train", data_dir=config.data_dir)
    x_val, _ = data.load_arrays(config.dataset, "validation", data_dir=config.data_dir)
    x_test, y_test = data.load_arrays(config.dataset, "test", data_dir=config.data_dir)
    if config.limit is not None:
        x_train = x_train[:config.limit]
        x_val, x_test = x_val[:config.limit], x_test[:config.limit]
        y_test = None if y_test is None else y_test[:config.limit]
    if config.decoder == "bernoulli" and config.binarize == "none":
        # Bernoulli log-likelihoods of grey levels are cross-entropies, fine
        # for training but not likelihoods of the data; say so once.
        log.info("Bernoulli decoder on grey levels: its log_prob is a cross-entropy")
    check_workdir(config, workdir)

    keras.mixed_precision.set_global_policy(config.precision)
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config)
    data_shape = x_train.shape[1:]
    with strategy.scope():
        model = factory.build_model(config, data_shape)
        optimizer = keras.optimizers.Adam(config.learning_rate)
        model.compile(optimizer=optimizer, jit_compile=config.jit,
                      steps_per_execution=config.steps_per_execution)
        optimizer.build(model.trainable_variables)
    is_chief = _is_chief(strategy)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not is_chief:   # other workers write throw-away copies (MultiWorkerMirrored needs it)
        ckpt_dir = os.path.join(workdir, f".worker-{_task_id()}", "checkpoints")
    checkpoints = _Checkpoints(model, optimizer, ckpt_dir, is_chief)
    restored = checkpoints.restore()

    steps_per_epoch = -(-len(x_train) // config.batch_size)
    step = int(optimizer.iterations.numpy())
    start_epoch, offset = divmod(step, steps_per_epoch)
    history_path = os.path.join(workdir, "history.json")
    history = files.read_json(history_path) if (restored and os.path.exists(history_path)) else {}
    history = {k: v[:start_epoch] for k, v in history.items()}
    if restored:
        log.info("resumed from %s at epoch %d, step %d", restored, start_epoch, step)
        print(f"Resuming from {os.path.basename(restored)}: epoch {start_epoch + 1}, "
              f"step {step}", flush=True)

    writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
    verbose = (1 if sys.stdout.isatty() else 2) if verbose is None else verbose
    guard = _Guard()
    val_ds = eval_dataset(config, x_val)
    tb_x = binarized(config, x_val[:_TB_IMAGES])
    started = time.time()
    with _catch_signals(guard):
        for epoch in range(start_epoch, config.epochs):
            if config.warmup_epochs:
                model.beta.assign(config.beta * min(1.0, epoch / config.warmup_epochs))
            ds = data.make_dataset(x_train, None, config.batch_size, binarize=config.binarize,
                                   shuffle=True, seed=epoch_seed(config.seed, epoch))
            if offset:
                ds = ds.skip(offset)
            progress = _Progress(epoch, config.epochs, steps_per_epoch - offset, verbose)
            fit = model.fit(ds, initial_epoch=epoch, epochs=epoch + 1, verbose=0, shuffle=False,
                            callbacks=[guard, progress])
            offset = 0
            step = int(optimizer.iterations.numpy())
            if guard.bad_loss is not None:
                raise TrainingDiverged(
                    f"loss became {guard.bad_loss} at step {step} (epoch {epoch + 1}); "
                    f"the last good checkpoint in {ckpt_dir} is kept")
            if guard.signal is not None:
                checkpoints.save(step)
                raise TrainingInterrupted(
                    f"stopped by signal {guard.signal} at step {step}; checkpoint saved, "
                    "re-run the same command to resume")
            logs = {k: v[-1] for k, v in fit.history.items()}
            val = model.evaluate(val_ds, return_dict=True, verbose=0)
            logs.update({f"val_{k}": v for k, v in val.items()})
            logs["beta"] = float(model.beta.numpy())
            checkpoints.save(step)
            for k, v in logs.items():
                history.setdefault(k, []).append(float(v))
            if is_chief:
                files.write_json(history_path, history)
                _write_tb(writer, {**{f"train/{k}": v for k, v in logs.items()
                                      if not k.startswith("val_")},
                                   **{f"validation/{k[4:]}": v for k, v in logs.items()
                                      if k.startswith("val_")}}, epoch + 1,
                          images={"reconstructions": tf.concat([tb_x, model(tb_x)], 0),
                                  "samples": model.sample(_TB_IMAGES, seed=(config.seed, 7))
                                  .mean()})
            if verbose:
                print(f"epoch {epoch + 1}/{config.epochs}: train ELBO {logs['elbo']:.2f}, "
                      f"validation ELBO {logs['val_elbo']:.2f} nats, KL {logs['val_kl']:.2f}",
                      flush=True)
    train_seconds = time.time() - started

    metrics = evaluate_model(model, config, x_test)
    metrics.update(epochs=config.epochs, steps=int(optimizer.iterations.numpy()),
                   train_seconds_this_run=round(train_seconds, 2))
    if is_chief:
        files.write_json(os.path.join(workdir, "metrics.json"), metrics)
        x_fig = binarized(config, x_test)
        if config.figures:
            from tfp_vae import figures
            figures.write_all(model, x_fig, y_test, history, os.path.join(workdir, "figures"),
                              seed=config.seed)
        if config.export:
            from tfp_vae import export
            export.export_saved_model(model, os.path.join(workdir, "saved_model"))
    writer.close()
    return metrics


def evaluate_model(model, config: Config, x: np.ndarray, iwae_k: int | None = None) -> dict:
    """Test ELBO terms and the IWAE-k log-likelihood estimate, nats per example."""
    ds = eval_dataset(config, x)
    terms = {k: [] for k in ("elbo", "reconstruction", "kl", "iwae")}
    k = iwae_k or config.eval_iwae_k
    elbo = tf.function(lambda x, s: model.elbo(x, seed=s), jit_compile=config.jit)
    iwae = tf.function(lambda x, s: model.iwae_bound(x, k, seed=s), jit_compile=config.jit)
    for i, xb in enumerate(ds):
        seed = tf.constant([config.seed, 1000 + i], tf.int32)
        e = elbo(xb, seed)
        terms["elbo"].append(e.elbo.numpy())
        terms["reconstruction"].append(e.reconstruction.numpy())
        terms["kl"].append(e.kl.numpy())
        terms["iwae"].append(iwae(xb, seed).numpy())
    out = {name: float(np.mean(np.concatenate(v))) for name, v in terms.items()}
    out[f"iwae_{k}"] = out.pop("iwae")
    out["num_examples"] = int(len(x))
    return out


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def _task_id() -> int:
    import json
    return int(json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0))
