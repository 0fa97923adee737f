"""TensorBoard summaries of a run: per-epoch scalars and image grids.

One `tf.summary` writer for the whole run (`workdir/tensorboard`); the step
of every summary is the epoch number, 1 for the first, so a resumed run's
summaries continue the curves of the run it resumes.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfp_vae.config import Config

__all__ = ["RunSummaries", "TB_IMAGES"]

# Images per grid: the first validation images and their reconstructions, and
# as many decoded prior draws.
TB_IMAGES = 8


class RunSummaries:
    """Writes a run's per-epoch summaries into `logdir`.

    images: the first `TB_IMAGES` validation images as the model sees them
    (binarised) `[n, *data]`; labels: theirs `[n]` for a conditional model,
    whose prior samples then cycle through the classes.
    """

    def __init__(self, logdir: str, config: Config, images: np.ndarray,
                 labels: np.ndarray | None = None, num_classes: int | None = None):
        self.writer = tf.summary.create_file_writer(logdir)
        self.config = config
        self.images = images[:TB_IMAGES]
        self.inputs = self.images if labels is None else (self.images, labels[:TB_IMAGES])
        self.sample_labels = ({} if num_classes is None
                              else {"label": np.arange(len(self.images)) % num_classes})

    def epoch(self, model, epoch: int, logs: dict) -> None:
        """Summaries after `epoch` (1-based): train/* and validation/* scalars from
        `logs` (Keras' names: `val_` for validation), reconstructions and samples."""
        with self.writer.as_default(step=epoch):
            for name, value in logs.items():
                tag = f"validation/{name[4:]}" if name.startswith("val_") else f"train/{name}"
                tf.summary.scalar(tag, float(value))
            # The images, then their reconstructions in the same order.
            tf.summary.image("reconstructions", tf.concat([self.images, model(self.inputs)], 0),
                             max_outputs=2 * TB_IMAGES)
            tf.summary.image("samples", model.sample(TB_IMAGES, seed=(self.config.seed, 7),
                                                     **self.sample_labels).mean(),
                             max_outputs=TB_IMAGES)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
