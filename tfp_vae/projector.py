"""Codes as a TensorBoard Projector embedding: the tensors, a sprite of the images, their labels.

    write_embedding("runs/default/tensorboard", {"z_mean": codes}, images, labels)
    # tensorboard --logdir runs/default/tensorboard  ->  the Projector tab

The files are the ones the Projector tutorial writes, into a run's log
directory (one that holds event files: the Projector lists only those):

    checkpoint, embedding-1.*    each tensor `[N, K]` as a tf.train.Checkpoint variable
    metadata.tsv                 a header `label\\tindex`, then one row per point
                                 (only `index`, headerless, without labels)
    sprite.png                   the images tiled row by row, point i in cell i
    projector_config.pbtxt       what ties them together (`visualize_embeddings`)

The Projector computes PCA, t-SNE and UMAP itself, in the browser. At most
10,000 points (the first) are written: t-SNE and UMAP in a browser slow down
past that, and the sprite must fit 8192 × 8192 pixels (its WebGL texture
limit), so its cells shrink when the images would not fit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector

from tfp_vae import files

__all__ = ["MAX_POINTS", "MAX_SPRITE_SIZE", "sprite", "tensor_name", "write_embedding"]

MAX_POINTS = 10_000
MAX_SPRITE_SIZE = 8192        # pixels on a side
METADATA, SPRITE = "metadata.tsv", "sprite.png"


def tensor_name(name: str) -> str:
    """The name the Projector gives the checkpoint variable `name`."""
    return f"{name}/.ATTRIBUTES/VARIABLE_VALUE"


def write_embedding(logdir: str, tensors: Mapping[str, np.ndarray], images: np.ndarray,
                    labels: np.ndarray | None = None) -> list[str]:
    """Writes `tensors` (name -> `[N, K]`, one row per image) as Projector
    embeddings into `logdir`, all sharing one sprite of `images` `[N, H, W, C]`
    (values in [0, 1]) and one metadata file of `labels` `[N]`.

    Only the first `MAX_POINTS` points are written. Returns the tensors' names
    as the Projector lists them. Re-writing replaces the previous embedding.
    """
    n = min(len(images), MAX_POINTS)
    for name, t in tensors.items():
        if t.ndim != 2 or len(t) != len(images):
            raise ValueError(f"embedding {name!r} must be [N, K] with N = {len(images)} "
                             f"images; got shape {t.shape}")
    with files.atomic_write(os.path.join(logdir, METADATA)) as f:
        f.write(_metadata(n, None if labels is None else labels[:n]))
    sheet = sprite(images[:n])
    with files.atomic_write(os.path.join(logdir, SPRITE), "wb") as f:
        f.write(tf.io.encode_png(sheet).numpy())
    side = math.ceil(math.sqrt(n))
    height, width = sheet.shape[0] // side, sheet.shape[1] // side
    _save_tensors(logdir, {name: t[:n] for name, t in tensors.items()})
    config = projector.ProjectorConfig()
    for name in tensors:
        embedding = config.embeddings.add()
        embedding.tensor_name = tensor_name(name)
        embedding.metadata_path = METADATA          # relative: found beside the config
        embedding.sprite.image_path = SPRITE
        embedding.sprite.single_image_dim.extend([width, height])
    projector.visualize_embeddings(logdir, config)
    return [tensor_name(name) for name in tensors]


def _metadata(n: int, labels: np.ndarray | None) -> str:
    """metadata.tsv: one row per point; a header only with two columns (the
    Projector's rule: a single column has none)."""
    if labels is None:
        return "".join(f"{i}\n" for i in range(n))
    return "label\tindex\n" + "".join(f"{int(y)}\t{i}\n" for i, y in enumerate(labels))


def sprite(images: np.ndarray) -> tf.Tensor:
    """The images `[N, H, W, C]` in [0, 1] tiled row by row in a ⌈√N⌉ × ⌈√N⌉
    grid: uint8 `[⌈√N⌉·h, ⌈√N⌉·w, C']`, cells of h × w = H × W shrunk
    (area-averaged) until neither side passes 8192. C' is C for grey, RGB and
    RGBA images, else 1 (the channels' mean)."""
    n, h, w, c = images.shape
    side = math.ceil(math.sqrt(n))
    scale = min(1.0, MAX_SPRITE_SIZE / (side * max(h, w)))
    x = tf.clip_by_value(tf.constant(images, tf.float32), 0.0, 1.0)
    if c not in (1, 3, 4):
        x = tf.reduce_mean(x, axis=-1, keepdims=True)
    if scale < 1.0:
        h, w = max(1, int(h * scale)), max(1, int(w * scale))
        x = tf.image.resize(x, (h, w), method="area")
    x = tf.pad(x, [[0, side * side - n], [0, 0], [0, 0], [0, 0]])
    x = tf.reshape(x, [side, side, h, w, -1])
    x = tf.reshape(tf.transpose(x, [0, 2, 1, 3, 4]), [side * h, side * w, -1])
    return tf.cast(tf.round(x * 255.0), tf.uint8)


def _save_tensors(logdir: str, tensors: Mapping[str, np.ndarray]) -> None:
    """The tensors as one tf.train.Checkpoint in `logdir`, the only one there
    (`checkpoint` names it, so the Projector finds it as the run's latest)."""
    variables = {name: tf.Variable(np.asarray(t, np.float32), name=name, trainable=False)
                 for name, t in tensors.items()}
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**variables), logdir,
                                         max_to_keep=1, checkpoint_name="embedding")
    manager.save()
