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
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:   # a file in the way, no permission: one line, not a traceback
        raise ConfigError(f"cannot use workdir {workdir} ({e.strerror}); use another --workdir") \
            from None
    files.write_json(path, config.to_dict())


def check_data(config: Config, splits: dict[str, np.ndarray]) -> None:
    """Raises data.DataError unless every split suits the model: finite images and,
    where the model reads pixels as probabilities, values in [0, 1]."""
    if config.binarize == "dynamic":
        unit, fix = True, ("dynamic binarisation draws Bernoulli(x) per pixel; scale x to "
                           "[0, 1] or use --binarize=static")
    elif config.binarize == "none" and config.decoder == "bernoulli":
        unit, fix = True, ("the Bernoulli decoder models values in [0, 1]; scale x to [0, 1], "
                           "use --binarize=static or --decoder=normal")
    else:
        unit, fix = False, ""
    for split, x in splits.items():
        data.check_images(x, f"{config.dataset} ({split})", unit_interval=unit, fix=fix)


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


def train_dataset(config: Config, x, epoch: int, y=None) -> tf.data.Dataset:
    """Epoch `epoch`'s training batches `[B, *data]` (pairs with labels y): order
    and binarisation draws are a fixed function of (seed, epoch), so a resumed
    run rebuilds them exactly. The epoch is computed up front
    (`data.epoch_dataset`): cheap to build anew."""
    return data.epoch_dataset(x, config.batch_size, y=y, binarize=config.binarize, shuffle=True,
                              seed=epoch_seed(config.seed, epoch))


@contextlib.contextmanager
def precision_policy(name: str):
    """Builds under the dtype policy `name` ("float32", "mixed_float16",
    "mixed_bfloat16"): layers take the policy when they are created and keep
    it, so the global policy is restored afterwards rather than leaking into
    whatever the process builds next."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def compile_model(model: keras.Model, config: Config) -> keras.optimizers.Optimizer:
    """Compiles `model` for `fit` as a run does; returns its optimizer, built.

    Under mixed_float16 Keras wraps Adam in a LossScaleOptimizer: the wrapper
    (with its dynamic loss scale) is what is returned, built and checkpointed,
    and its `iterations` are Adam's. Call it inside the strategy's scope.
    """
    jit, steps = config.jit, config.steps_per_execution
    # TF 2.21 / Keras 3.15 under tf.distribute: the multi-step loop of
    # steps_per_execution > 1 fails ("You must feed a value for placeholder
    # tensor 'while/cond/Placeholder'"), and with replicas on CPUs XLA fails
    # too: "Trying to access resource ... located in device CPU:1 from device
    # CPU:0" (Mirrored over logical CPUs), "Collectives are not yet
    # implemented for CPU devices when compiling with XLA" (multi-worker).
    if tf.distribute.has_strategy() and steps > 1:
        log.warning("steps_per_execution=1 under tf.distribute (Keras 3.15 fails otherwise)")
        steps = 1
    if jit and _replicas_on_cpus(tf.distribute.get_strategy()):
        log.warning("XLA off: replicas on CPUs (TF 2.21 fails otherwise)")
        jit = False
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), jit_compile=jit,
                  steps_per_execution=steps)
    model.optimizer.build(model.trainable_variables)
    return model.optimizer


def _replicas_on_cpus(strategy: tf.distribute.Strategy) -> bool:
    """True for two or more replicas in sync whose devices here are all CPUs."""
    try:
        devices = strategy.extended.worker_devices
    except (AttributeError, RuntimeError, NotImplementedError):   # the default strategy
        return False
    return (strategy.num_replicas_in_sync > 1
            and all(":CPU:" in d.upper() for d in devices))


def eval_dataset(config: Config, x: np.ndarray, batch_size: int | None = None, y=None):
    """Evaluation data: in order, binarised with one fixed draw when dynamic
    (pairs with labels y)."""
    return data.make_dataset(x, y, batch_size or config.batch_size, binarize=config.binarize,
                             shuffle=False, seed=epoch_seed(config.seed, -1))


def check_labels(config: Config, labels: dict[str, np.ndarray | None]) -> int | None:
    """The number of classes a conditional run's model takes (None unless
    `config.conditional`); raises data.DataError if a split has no labels."""
    if not config.conditional:
        return None
    for split, y in labels.items():
        if y is None:
            raise data.DataError(f"{config.dataset} ({split}) has no labels; conditional needs "
                                 "them (an .npz with y, or a labelled data set)")
    classes = data.num_classes(config.dataset, data_dir=config.data_dir)
    if classes is None or classes < 2:
        raise data.DataError(f"{config.dataset} has {classes or 'no'} label classes; "
                             "conditional needs 2 or more")
    return classes


def binarized(config: Config, x: np.ndarray) -> np.ndarray:
    """The evaluation arrays themselves (the same fixed draw as eval_dataset)."""
    return np.concatenate(list(eval_dataset(config, x, batch_size=1000).as_numpy_iterator()))


class _Checkpoints:
    """Model + optimizer checkpoints; a corrupt latest one falls back to the previous.

    Unreadable checkpoints are taken out of the manager's rotation (their
    files stay for inspection, or are overwritten by a later save of the same
    step). Left in, they would count towards max_to_keep, and the saves that
    follow a fall-back could delete the good checkpoint just restored while
    keeping the corrupt ones.
    """

    _MAX_TO_KEEP = 3

    def __init__(self, model, optimizer, directory: str, is_chief: bool = True):
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.directory = directory
        self.manager = self._manager()
        self.is_chief = is_chief

    def _manager(self) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(self.checkpoint, self.directory,
                                          max_to_keep=self._MAX_TO_KEEP)

    def restore(self) -> str | None:
        """Restores the newest readable checkpoint; returns its path, None if there are none.

        Raises ConfigError when checkpoints exist but none can be read: starting
        afresh would rotate them away, so the user decides.
        """
        paths = list(self.manager.checkpoints)
        if not paths:
            # A state file without timestamps (written by hand or another
            # tool) lists checkpoints the manager leaves out of its rotation
            # and of `checkpoints`: they are still this run's to resume.
            state = tf.train.get_checkpoint_state(self.directory)
            paths = list(state.all_model_checkpoint_paths) if state else []
        for i in reversed(range(len(paths))):
            try:
                self.checkpoint.restore(paths[i]).assert_existing_objects_matched()
            # A damaged file fails in many ways (DataLossError, NotFoundError,
            # IndexError from a truncated read, ValueError on a shape): all mean
            # "not this one", and the message says which.
            except Exception as e:  # noqa: BLE001
                log.warning("checkpoint %s is unreadable (%s); trying the previous one",
                            paths[i], str(e).splitlines()[0] if str(e) else type(e).__name__)
                continue
            if i < len(paths) - 1:
                self._keep_only(paths[:i + 1])
            return paths[i]
        if paths:
            raise ConfigError(f"none of the {len(paths)} checkpoints in {self.directory} can be "
                              "read (see the warnings above); move them away to start afresh, "
                              "or use another --workdir")
        return None

    def _keep_only(self, paths: list[str]) -> None:
        """Rewrites the checkpoint state to list `paths` only (oldest first)."""
        state = tf.train.get_checkpoint_state(self.directory)
        stamps = dict(zip(state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps))
        tf.__internal__.train.update_checkpoint_state(
            self.directory, paths[-1], all_model_checkpoint_paths=paths,
            all_model_checkpoint_timestamps=[stamps.get(p, time.time()) for p in paths],
            last_preserved_timestamp=state.last_preserved_timestamp, save_relative_paths=True)
        self.manager = self._manager()
        log.warning("resuming from %s; the unreadable checkpoints after it are out of rotation",
                    paths[-1])

    def save(self, step: int) -> None:
        """Saves the state at `step`, unless a weight is NaN or Inf: the last
        checkpoint must stay the last good one."""
        if not all(np.isfinite(v.numpy()).all() for v in self.checkpoint.model.weights):
            raise TrainingDiverged(f"a weight became NaN or Inf by step {step}; the last good "
                                   f"checkpoint in {self.directory} is kept")
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
        # With steps_per_execution > 1 Keras reports the batch index in
        # strides; the last stride may overshoot the epoch's step count.
        self.bar.update(min(batch + 1, self.bar.target),
                        [(k, float(logs[k])) for k in ("loss", "kl") if k in logs])


def _interrupted(guard: _Guard, step: int) -> TrainingInterrupted:
    return TrainingInterrupted(f"stopped by signal {guard.signal} at step {step}; checkpoint "
                               "saved, re-run the same command to resume")


@contextlib.contextmanager
def _catch_signals(guard: _Guard):
    """SIGTERM and SIGINT ask the guard to stop; restored on the way out.

    A second Ctrl-C stops at once (KeyboardInterrupt): the last checkpoint
    is kept, only the steps since it are lost.
    """
    if sys.platform == "win32" or not _in_main_thread():
        yield
        return

    def handler(signum, frame):
        if guard.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
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
    x_train, y_train = data.load_arrays(config.dataset, "train", data_dir=config.data_dir)
    x_val, y_val = data.load_arrays(config.dataset, "validation", data_dir=config.data_dir)
    x_test, y_test = data.load_arrays(config.dataset, "test", data_dir=config.data_dir)
    if config.limit is not None:
        cut = lambda a: None if a is None else a[:config.limit]       # noqa: E731
        x_train, y_train, x_val, y_val, x_test, y_test = map(
            cut, (x_train, y_train, x_val, y_val, x_test, y_test))
    check_data(config, {"train": x_train, "validation": x_val, "test": x_test})
    # A conditional model takes (x, y) wherever another takes x.
    num_classes = check_labels(config, {"train": y_train, "validation": y_val, "test": y_test})
    if config.decoder == "bernoulli" and config.binarize == "none":
        # Bernoulli log-likelihoods of grey levels are cross-entropies, fine
        # for training but not likelihoods of the data; say so once.
        log.info("Bernoulli decoder on grey levels: its log_prob is a cross-entropy")
    check_workdir(config, workdir)

    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config)
    data_shape = x_train.shape[1:]
    with strategy.scope(), precision_policy(config.precision):
        model = factory.build_model(config, data_shape, num_classes)
        optimizer = compile_model(model, config)
    is_chief = _is_chief(strategy)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not is_chief:   # other workers write throw-away copies (MultiWorkerMirrored needs it)
        ckpt_dir = os.path.join(workdir, f".worker-{_task_id()}", "checkpoints")
    checkpoints = _Checkpoints(model, optimizer, ckpt_dir, is_chief)
    restored = checkpoints.restore()

    steps_per_epoch = -(-len(x_train) // config.batch_size)
    # One copy of the training set for every epoch's dataset (a new constant
    # per epoch would grow memory by the data set's size each epoch).
    x_train_tensor = tf.constant(x_train)
    y_train_tensor = tf.constant(y_train) if config.conditional else None
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
    val_ds = eval_dataset(config, x_val, y=y_val if config.conditional else None)
    tb_x = binarized(config, x_val[:_TB_IMAGES])
    tb_inputs, tb_labels = tb_x, {}
    if config.conditional:   # its samples cycle through the classes
        tb_inputs = (tb_x, y_val[:_TB_IMAGES])
        tb_labels = {"label": np.arange(_TB_IMAGES) % num_classes}
    started = time.time()
    with _catch_signals(guard):
        for epoch in range(start_epoch, config.epochs):
            if config.warmup_epochs:
                model.beta.assign(config.beta * min(1.0, epoch / config.warmup_epochs))
            ds = train_dataset(config, x_train_tensor, epoch, y=y_train_tensor)
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
            if guard.signal is not None and step % steps_per_epoch:
                # Mid-epoch: save here; the resumed run skips the steps done.
                checkpoints.save(step)
                raise _interrupted(guard, step)
            logs = {k: v[-1] for k, v in fit.history.items()}
            val = model.evaluate(val_ds, return_dict=True, verbose=0)
            logs.update({f"val_{k}": v for k, v in val.items()})
            logs["beta"] = float(model.beta.numpy())
            for k, v in logs.items():
                history.setdefault(k, []).append(float(v))
            # History first: a kill between the two leaves an extra epoch in
            # it, which the resumed run cuts off; the other order would lose one.
            if is_chief:
                files.write_json(history_path, history)
            checkpoints.save(step)
            if is_chief:
                _write_tb(writer, {**{f"train/{k}": v for k, v in logs.items()
                                      if not k.startswith("val_")},
                                   **{f"validation/{k[4:]}": v for k, v in logs.items()
                                      if k.startswith("val_")}}, epoch + 1,
                          images={"reconstructions": tf.concat([tb_x, model(tb_inputs)], 0),
                                  "samples": model.sample(_TB_IMAGES, seed=(config.seed, 7),
                                                          **tb_labels).mean()})
            if verbose:
                print(f"epoch {epoch + 1}/{config.epochs}: train ELBO {logs['elbo']:.2f}, "
                      f"validation ELBO {logs['val_elbo']:.2f} nats, KL {logs['val_kl']:.2f}",
                      flush=True)
            if guard.signal is not None:   # the epoch's steps were done: it ended as usual
                raise _interrupted(guard, step)
    train_seconds = time.time() - started

    from tfp_vae import evaluate   # it imports this module: a cycle at import time
    metrics = evaluate.evaluate_model(model, config, x_test, y=y_test)
    metrics.update(epochs=config.epochs, steps=int(optimizer.iterations.numpy()),
                   train_seconds_this_run=round(train_seconds, 2))
    if is_chief:
        files.write_json(os.path.join(workdir, "metrics.json"), metrics)
        x_fig = binarized(config, x_test)
        if config.figures:
            from tfp_vae import figures
            write = figures.write_conditional if config.conditional else figures.write_all
            write(model, x_fig, y_test, history, os.path.join(workdir, "figures"),
                  seed=config.seed)
        if config.export:
            from tfp_vae import export
            export.export_saved_model(model, os.path.join(workdir, "saved_model"))
    writer.close()
    return metrics


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
