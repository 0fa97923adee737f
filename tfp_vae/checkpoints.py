"""Model + optimizer checkpoints that survive a damaged file and never hold NaN weights.

`tf.train.CheckpointManager` does the saving and the rotation; `Checkpoints`
adds the two guarantees a long run needs (README, "Reliability"): an
unreadable newest checkpoint falls back to the one before it (and the bad
ones leave the rotation, so later saves cannot rotate the good one away), and
weights that are not finite are never saved.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import tensorflow as tf

from tfp_vae.errors import ConfigError, TrainingDiverged

log = logging.getLogger("tfp_vae")

__all__ = ["Checkpoints"]


class Checkpoints:
    """The checkpoints of `model` and `optimizer` in `directory`.

    Unreadable checkpoints are taken out of the manager's rotation (their
    files stay for inspection, or are overwritten by a later save of the same
    step). Left in, they would count towards max_to_keep, and the saves that
    follow a fall-back could delete the good checkpoint just restored while
    keeping the corrupt ones.
    """

    MAX_TO_KEEP = 3

    def __init__(self, model, optimizer, directory: str):
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.model = model
        self.directory = directory
        self.manager = self._manager()

    def _manager(self) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(self.checkpoint, self.directory,
                                          max_to_keep=self.MAX_TO_KEEP)

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
        if not all(np.isfinite(v.numpy()).all() for v in self.model.weights):
            raise TrainingDiverged(f"a weight became NaN or Inf by step {step}; the last good "
                                   f"checkpoint in {self.directory} is kept")
        self.manager.save(checkpoint_number=step)
