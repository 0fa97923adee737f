"""train_and_evaluate(config, workdir): a run, from its data to its artifacts.

Re-running with the same workdir resumes from the last checkpoint; the
position in the data is read off the optimizer's step count and every epoch's
data order and binarisation draws are a fixed function of (seed, epoch), so a
resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import NamedTuple

import keras
import tensorflow as tf

from tfp_vae import (callbacks, evaluate, execution, export, factory, figures, files,
                     input_pipeline, sources, summaries, workdir as workdir_lib)
from tfp_vae.checkpoints import BestEpoch, Checkpoints
from tfp_vae.config import VARIATIONAL, Config
from tfp_vae.errors import ConfigError, DataError, TrainingDiverged, TrainingInterrupted

log = logging.getLogger("tfp_vae")

__all__ = ["train_and_evaluate"]


def train_and_evaluate(config: Config, workdir: str, *, verbose: int | None = None) -> dict:
    """Trains (or resumes) the run in `workdir`, evaluates it and writes its artifacts.

    Returns the test metrics (also written to `workdir/metrics.json`): nats
    per example for elbo, reconstruction, kl and the IWAE-k estimate of
    log p(x). verbose: 1 a progress bar, 2 a line per epoch, 0 silent;
    default 1 on a terminal, else 2.

    Raises:
      ConfigError: the workdir holds a run with other settings.
      WorkdirBusy: another process is running in the workdir; nothing was changed.
      DataError: the data are missing or malformed.
      TrainingInterrupted: SIGTERM/SIGINT; a checkpoint was saved first.
      TrainingDiverged: a non-finite loss; the last good checkpoint is kept.
      WriteFailed: an artifact could not be written (a full disk); the
        checkpoints before it are intact, and re-running resumes.
      WorkerLost: a peer of a multi-worker run stopped or froze.
    """
    if config.model not in VARIATIONAL:
        raise ConfigError(f"train_and_evaluate trains model={' or '.join(VARIATIONAL)}; got "
                          f"{config.model!r}")
    workdir_lib.check(config, workdir)               # another run's: refused at once
    with workdir_lib.lock(config, workdir):        # a busy one: refused at once too
        splits = input_pipeline.load_splits(config)  # checked before anything is written
        paths = workdir_lib.prepare(config, workdir)
        keras.utils.set_random_seed(config.seed)
        strategy = execution.make_strategy(config)
        model, optimizer = build(config, splits, strategy)
        chief = execution.is_chief(strategy)
        best = BestEpoch(model) if config.patience else None     # early stopping's state
        checkpoints = Checkpoints(model, optimizer, checkpoint_dir(paths, chief),
                                  restore_from=paths.checkpoints,      # the chief's
                                  **({"best": best} if best else {}))
        start = restore(checkpoints, optimizer, paths, steps_per_epoch(config, splits))
        with execution.peers_watched(strategy, paths.checkpoints):   # a lost worker: WorkerLost
            history, seconds = train(model, config, splits, paths, checkpoints, start,
                                     best=best, chief=chief, verbose=_verbosity(verbose))
        if best is not None:
            best.restore()              # evaluate and export the best epoch's weights
        metrics = evaluate.evaluate_model(model, config, splits.x_test, y=splits.y_test)
        metrics.update(epochs=config.epochs, epochs_run=len(history.get("loss", [])),
                       steps=int(optimizer.iterations.numpy()),
                       train_seconds_this_run=round(seconds, 2))
        if best is not None:
            metrics["best_epoch"] = int(best.epoch.numpy()) + 1
        if chief:
            write_artifacts(model, config, splits, history, metrics, paths)
            summaries.write_run_end(paths.tensorboard, model, config, splits, metrics)
        return metrics


# -- the steps of a run ------------------------------------------------------------------


def build(config: Config, splits: input_pipeline.Splits, strategy: tf.distribute.Strategy):
    """The run's model, built and compiled in the strategy's scope under its
    precision policy, and its optimizer (built, so checkpoints restore into it)."""
    with strategy.scope(), execution.precision_policy(config.precision):
        model = factory.build_model(config, splits.data_shape, splits.num_classes)
        optimizer = execution.compile_model(model, config)
    return model, optimizer


def checkpoint_dir(paths: workdir_lib.Paths, chief: bool) -> str:
    """The chief's checkpoints/; other workers write throw-away copies beside it
    (MultiWorkerMirroredStrategy has every worker save)."""
    if chief:
        return paths.checkpoints
    return os.path.join(paths.root, f".worker-{execution.task_id()}", "checkpoints")


def steps_per_epoch(config: Config, splits: input_pipeline.Splits) -> int:
    return -(-len(splits.x_train) // config.batch_size)


class Start(NamedTuple):
    """Where a run starts: afresh, or where its last readable checkpoint left it."""

    step: int                  # optimizer steps taken
    epoch: int                 # the epoch that step falls in, 0-based
    offset: int                # steps of that epoch already taken
    history: dict              # per-epoch metrics of the epochs before `epoch`


def restore(checkpoints: Checkpoints, optimizer, paths: workdir_lib.Paths,
            steps: int) -> Start:
    """Restores the newest readable checkpoint, if any, and the history up to it."""
    restored = checkpoints.restore()
    step = int(optimizer.iterations.numpy())
    epoch, offset = divmod(step, steps)
    history = {}
    if restored and os.path.exists(paths.history):
        # A kill between writing history.json and the checkpoint leaves an
        # epoch too many in the history: cut it off.
        history = {k: v[:epoch] for k, v in files.read_json(paths.history).items()}
    if restored:
        log.info("resumed from %s at epoch %d, step %d", restored, epoch, step)
        print(f"Resuming from {os.path.basename(restored)}: epoch {epoch + 1}, step {step}",
              flush=True)
    return Start(step, epoch, offset, history)


def train(model, config: Config, splits: input_pipeline.Splits, paths: workdir_lib.Paths,
          checkpoints: Checkpoints, start: Start, *, best: BestEpoch | None = None,
          chief: bool = True, verbose: int = 2) -> tuple[dict, float]:
    """Trains from `start` to `config.epochs`: one `fit` per epoch, then
    history, checkpoint, summaries and a line. Returns (history, seconds).

    With `best` (early stopping), each epoch's validation ELBO updates it, and
    training stops once `config.patience` epochs after the warm-up have not
    beaten the best one; a resumed run that had stopped trains no more.

    One `fit` per epoch, not one for all: each epoch's data is its own pass
    (`input_pipeline.train_dataset`), and Keras' `steps_per_execution` loop
    over one stream of epochs would run an execution across an epoch's end.
    """
    steps = steps_per_epoch(config, splits)
    x_train, y_train = input_pipeline.train_source(splits)   # in memory once, or a stream
    val_ds = input_pipeline.eval_dataset(config, splits.x_val, y=splits.labels("validation"))
    tb = summaries.RunSummaries(
        paths.tensorboard, config,
        input_pipeline.evaluation_arrays(config, splits.x_val[:summaries.LATENT_EXAMPLES]),
        splits.labels("validation"), splits.num_classes)
    history, offset = dict(start.history), start.offset
    stop = callbacks.StopOnSignal()
    started = time.time()
    with callbacks.catch_signals(stop):
        for epoch in range(start.epoch, config.epochs):
            if best is not None and best.epochs_since(epoch - 1, config.warmup_epochs) \
                    > config.patience:
                if verbose:
                    print(f"early stopping: the validation ELBO has not improved for "
                          f"{config.patience} epochs; the best is epoch "
                          f"{int(best.epoch.numpy()) + 1}", flush=True)
                break
            if config.warmup_epochs:
                model.beta.assign(config.beta * min(1.0, epoch / config.warmup_epochs))
            ds = input_pipeline.train_dataset(config, x_train, epoch, y=y_train, skip=offset,
                                              strategy=model.distribute_strategy)
            try:
                fit = model.fit(ds, initial_epoch=epoch,
                                epochs=epoch + 1, validation_data=val_ds, verbose=0, shuffle=False,
                                callbacks=[stop, keras.callbacks.TerminateOnNaN()] + (
                                    [callbacks.StepProgbar(verbose, epochs=config.epochs)]
                                    if verbose else []))
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
                _stop_on_bad_file(e, x_train, checkpoints, epoch)
            offset = 0
            step = int(model.optimizer.iterations.numpy())
            logs = {k: v[-1] for k, v in fit.history.items()}
            if not math.isfinite(logs["loss"]):
                raise TrainingDiverged(
                    f"loss became {logs['loss']} at step {step} (epoch {epoch + 1}); "
                    f"the last good checkpoint in {checkpoints.directory} is kept")
            if stop.signal is not None and step % steps:
                # Mid-epoch: save here; the resumed run skips the steps done.
                checkpoints.save(step)
                raise _interrupted(stop, step)
            logs["beta"] = float(model.beta.numpy())
            if best is not None:
                best.update(epoch, logs["val_elbo"])
            end_epoch(model, epoch, logs, history, paths, checkpoints, tb, chief=chief)
            if verbose:
                print(f"epoch {epoch + 1}/{config.epochs}: train ELBO {logs['elbo']:.2f}, "
                      f"validation ELBO {logs['val_elbo']:.2f} nats, KL {logs['val_kl']:.2f}",
                      flush=True)
            if stop.signal is not None:   # the epoch's steps were done: it ended as usual
                raise _interrupted(stop, step)
    tb.close()
    return history, time.time() - started


def end_epoch(model, epoch: int, logs: dict, history: dict, paths: workdir_lib.Paths,
              checkpoints: Checkpoints, tb: summaries.RunSummaries, *, chief: bool) -> None:
    """Records a finished epoch: history.json, then the checkpoint (with early
    stopping's state, updated before), then summaries.

    History first: a kill between the two leaves an epoch too many in it, which
    the resumed run cuts off; the other order would lose one.
    """
    for k, v in logs.items():
        history.setdefault(k, []).append(float(v))
    if chief:
        files.write_json(paths.history, history)
    checkpoints.save(int(model.optimizer.iterations.numpy()))
    if chief:
        tb.epoch(model, epoch + 1, logs)


def write_artifacts(model, config: Config, splits: input_pipeline.Splits, history: dict,
                    metrics: dict, paths: workdir_lib.Paths) -> None:
    """metrics.json, then the figures, the SavedModel (with TF Serving's layout
    beside it, and the same weights as model.weights.h5) and the TFLite model
    the config asks for."""
    files.write_json(paths.metrics, metrics)
    if config.figures:
        x = input_pipeline.evaluation_arrays(config, splits.x_test)
        write = figures.write_conditional if config.conditional else figures.write_all
        write(model, x, splits.y_test, history, paths.figures, seed=config.seed)
    if config.export:
        export.export_saved_model(model, paths.saved_model)
        export.save_weights(model, paths.weights)
        export.serve_as_version(paths.saved_model, paths.serving,
                                int(model.optimizer.iterations.numpy()))
    if config.export_tflite:
        export.export_tflite(model, paths.tflite)


def _stop_on_bad_file(error: tf.errors.OpError, x_train, checkpoints: Checkpoints, epoch: int):
    """A streamed epoch met a file it cannot decode: raises a one-line
    DataError naming the file (found by decoding the split again) and the
    checkpoint a re-run resumes from. Any other error is raised as it came.

    Nothing is saved here: Keras' step function may have counted the failed
    step in the optimizer's iterations without updating the weights, so a
    checkpoint now would not say where the data stood; the last one does."""
    problem = x_train.unreadable() if isinstance(x_train, sources.Stream) else None
    if problem is None:
        raise error
    last = checkpoints.manager.latest_checkpoint
    where = f"it resumes from {os.path.basename(last)}" if last else "it starts afresh"
    raise DataError(f"{problem}; training stopped in epoch {epoch + 1}: once it is fixed, "
                    f"re-run the same command ({where})") from None


def _interrupted(stop: callbacks.StopOnSignal, step: int) -> TrainingInterrupted:
    return TrainingInterrupted(f"stopped by signal {stop.signal} at step {step}; checkpoint "
                               "saved, re-run the same command to resume")


def _verbosity(verbose: int | None) -> int:
    return (1 if sys.stdout.isatty() else 2) if verbose is None else verbose
