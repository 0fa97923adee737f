"""Model + optimizer checkpoints that survive a damaged file and never hold NaN weights.

`tf.train.CheckpointManager` does the saving and the rotation; `Checkpoints`
adds the two guarantees a long run needs (README, "Reliability"): an
unreadable newest checkpoint falls back to the one before it (and the bad
ones leave the rotation, so later saves cannot rotate the good one away), and
weights that are not finite are never saved. A save that fails (a full
disk) removes what it had written and raises `WriteFailed`: the checkpoints
before it are untouched.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import time

import numpy as np
import tensorflow as tf

from tfp_vae import files
from tfp_vae.errors import ConfigError, TrainingDiverged

log = logging.getLogger("tfp_vae")

__all__ = ["BestEpoch", "Checkpoints"]


class Checkpoints:
    """The checkpoints of `model` and `optimizer` in `directory`.

    Unreadable checkpoints are taken out of the manager's rotation (their
    files stay for inspection, or are overwritten by a later save of the same
    step). Left in, they would count towards max_to_keep, and the saves that
    follow a fall-back could delete the good checkpoint just restored while
    keeping the corrupt ones.
    """

    MAX_TO_KEEP = 3

    def __init__(self, model, optimizer, directory: str, *, restore_from: str | None = None,
                 **extra):
        """restore_from: where `restore` reads (default `directory`): a
        multi-worker run's other workers save throw-away copies of their own
        but resume from the chief's. extra: more trackable state saved with
        every checkpoint (`best=BestEpoch`)."""
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **extra)
        self.model = model
        self.directory = directory
        self.restore_from = restore_from or directory
        self.manager = self._manager()

    def _manager(self, directory: str | None = None) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(self.checkpoint, directory or self.directory,
                                          max_to_keep=self.MAX_TO_KEEP)

    def restore(self) -> str | None:
        """Restores the newest readable checkpoint; returns its path, None if there are none.

        Raises ConfigError when checkpoints exist but none can be read: starting
        afresh would rotate them away, so the user decides.
        """
        own = self.restore_from == self.directory
        paths = list((self.manager if own else self._manager(self.restore_from)).checkpoints)
        if not paths:
            # A state file without timestamps (written by hand or another
            # tool) lists checkpoints the manager leaves out of its rotation
            # and of `checkpoints`: they are still this run's to resume.
            state = tf.train.get_checkpoint_state(self.restore_from)
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
            if i < len(paths) - 1 and own:
                self._keep_only(paths[:i + 1])
            return paths[i]
        if paths:
            raise ConfigError(f"none of the {len(paths)} checkpoints in {self.restore_from} can be "
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
        if not all(np.isfinite(v.numpy()).all() for v in self.model.weights):
            raise TrainingDiverged(f"a weight became NaN or Inf by step {step}; the last good "
                                   f"checkpoint in {self.directory} is kept")
        try:
            with files.writing(f"checkpoint ckpt-{step}", self.directory):
                self.manager.save(checkpoint_number=step)
        except BaseException:
            self._remove_partial(step)
            raise

    def _remove_partial(self, step: int) -> None:
        """Removes what a failed save of `step` left: TF's `ckpt-N_temp/`, a
        half-written state file, and `ckpt-N.*` unless the state lists it."""
        prefix = os.path.join(self.directory, f"ckpt-{step}")
        leftovers = glob.glob(prefix + "_temp*") + glob.glob(
            os.path.join(self.directory, "checkpoint.tmp*"))
        state = tf.train.get_checkpoint_state(self.directory)
        if state is None or not any(p.endswith(f"ckpt-{step}")
                                    for p in state.all_model_checkpoint_paths):
            leftovers += glob.glob(glob.escape(prefix) + ".*")
        for path in leftovers:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)


class BestEpoch(tf.Module):
    """Early stopping's state: the best epoch so far by a validation number
    (higher is better), that number, and a copy of the model's weights then.

    A `tf.Module`, saved in every checkpoint beside the model (pass it to
    `Checkpoints(..., best=...)`), so a resumed run keeps counting where the
    stopped one was and still has the best epoch's weights.
    """

    def __init__(self, model):
        super().__init__(name="best_epoch")
        self.epoch = tf.Variable(-1, dtype=tf.int64, trainable=False)         # 0-based; -1: none
        self.value = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
        self.weights = [tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False)
                        for w in model.weights]
        self._model_weights = lambda: model.weights      # a lambda: not tracked twice

    def update(self, epoch: int, value: float) -> bool:
        """Records `epoch` (0-based) if `value` beats the best; returns whether it did."""
        if not value > float(self.value.numpy()):     # NaN never improves
            return False
        self.epoch.assign(epoch)
        self.value.assign(value)
        for copy, w in zip(self.weights, self._model_weights()):
            copy.assign(w.numpy())
        return True

    def epochs_since(self, epoch: int, warmup_epochs: int = 0) -> int:
        """Epochs after the best one up to `epoch` (0-based), counted from the
        end of the warm-up only, as the reference implementation counts them."""
        return int(epoch) - max(int(self.epoch.numpy()), int(warmup_epochs) - 1)

    def restore(self) -> None:
        """Puts the best epoch's weights into the model."""
        if int(self.epoch.numpy()) < 0:
            raise ValueError("no epoch has been recorded yet")
        for copy, w in zip(self.weights, self._model_weights()):
            w.assign(copy.numpy())
