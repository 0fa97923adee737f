"""The run's data, as its Config asks for it: the splits loaded and checked, each
training epoch's batches, and the one fixed draw of the evaluation images.

Training and evaluation both read their data here, so a resumed run, the
end-of-run metrics and `scripts/evaluate.py` see the very same images.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfp_vae import data, sources
from tfp_vae.config import Config
from tfp_vae.errors import ConfigError, DataError

log = logging.getLogger("tfp_vae")

__all__ = ["Splits", "check_split", "epoch_seed", "eval_dataset", "evaluation_arrays",
           "evaluation_batches",
           "load_split", "load_splits", "train_dataset", "train_source"]

class Splits(NamedTuple):
    """A run's three splits, each cut to `config.limit`; images float32 in [0, 1]."""

    x_train: np.ndarray | sources.Stream  # [N, H, W, C]; a Stream (its labels in it) if streamed
    y_train: np.ndarray | None       # [N] int64, or None without labels (or streamed)
    x_val: np.ndarray                # [N_val, H, W, C]
    y_val: np.ndarray | None         # [N_val]
    x_test: np.ndarray               # [N_test, H, W, C]
    y_test: np.ndarray | None        # [N_test]
    num_classes: int | None          # classes a conditional model takes; None unless conditional

    @property
    def data_shape(self) -> tuple[int, ...]:
        """One example's shape, (H, W, C)."""
        return tuple(self.x_train.shape[1:])

    def labels(self, split: str) -> np.ndarray | None:
        """The labels of `split` a conditional model takes with its images, else None."""
        if self.num_classes is None:
            return None
        return {"train": self.y_train, "validation": self.y_val, "test": self.y_test}[split]


def load_split(config: Config, split: str, limit: int | None = None):
    """(x `[N, H, W, C]`, y `[N]` or None) of `split`, cut to `limit` (default:
    the run's limit)."""
    limit = config.limit if limit is None else limit
    return data.load_arrays(config.dataset, split, data_dir=config.data_dir,
                            image_size=config.image_size, limit=limit)


# Room the temporary directory keeps free beside a decoded split.
_DISK_MARGIN = 2**30


def _train_stream(config: Config) -> tuple[sources.Stream | None, str]:
    """The training split's Stream (cut to `config.limit`) when it is a folder's,
    TFRecords' or prepared TFDS set's whose images would take more than
    `config.cache_mb` MiB in memory, else None; and what the log says of it."""
    stream = (data.open_stream(config.dataset, "train", config.image_size)
              or data.tfds_train_stream(config.dataset, config.data_dir, config.image_size))
    if stream is None:
        return None, ""
    stream = stream.limited(config.limit)
    size = stream.decoded_bytes / 2**20
    what = (f"{config.dataset}: {len(stream)} training images ({size:.0f} MiB as float32 "
            f"{'<=' if size <= config.cache_mb else '>'} --cache_mb={config.cache_mb})")
    if size <= config.cache_mb:
        log.info("%s: read into memory", what)
        return None, what
    return stream, what


def _train_split(config: Config):
    """(x, y) of the training split: arrays, or (`_train_stream`) a Stream (y
    None): decoded once into a temporary file (`sources.Stream.decoded`)
    when `config.disk_cache` and there is room."""
    stream, what = _train_stream(config)
    if stream is None:
        return load_split(config, "train")
    if config.disk_cache:
        where = tempfile.gettempdir()
        try:
            free = shutil.disk_usage(where).free
            if stream.pixel_bytes + _DISK_MARGIN > free:
                log.info("%s: %s has %.0f MiB free, not the %.0f MiB of the decoded images and "
                         "1 GiB to spare", what, where, free / 2**20, stream.pixel_bytes / 2**20)
            else:
                start = time.perf_counter()
                decoded = stream.decoded()
                log.info("%s: decoded once into a temporary file (%.0f MiB, %.1f s), streamed "
                         "from there", what, stream.pixel_bytes / 2**20,
                         time.perf_counter() - start)
                return decoded, None
        except OSError as e:    # no leave to write there, or the disk filled: the files remain
            log.warning("%s: cannot write the decoded images to %s (%s); streamed from its "
                        "files instead", config.dataset, where, e.strerror or e)
    log.info("%s: streamed from %d files", what, len(stream.files))
    return stream, None


def load_splits(config: Config) -> Splits:
    """Loads and checks the run's data before anything is written.

    Raises DataError when a split does not suit the model (see `check_split`)
    or, for a conditional run, has no labels.
    """
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        _train_split(config), load_split(config, "validation"), load_split(config, "test"))
    streamed = isinstance(x_train, sources.Stream)
    for split, x in (("train", x_train), ("validation", x_val), ("test", x_test)):
        if not isinstance(x, sources.Stream):    # a stream decodes to [0, 1] by construction
            check_split(config, split, x)
    num_classes = _check_labels(config, {
        "train": x_train.has_labels if streamed else y_train is not None,
        "validation": y_val is not None, "test": y_test is not None})
    if config.decoder == "bernoulli" and config.binarize == "none":
        # Bernoulli log-likelihoods of grey levels are cross-entropies, fine
        # for training but not likelihoods of the data; say so once.
        log.info("Bernoulli decoder on grey levels: its log_prob is a cross-entropy")
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test, num_classes)


def check_split(config: Config, split: str, x: np.ndarray) -> None:
    """Raises DataError unless `x` suits the model: finite images and, where the
    model reads pixels as probabilities, values in [0, 1]."""
    if config.binarize == "dynamic":
        unit, fix = True, ("dynamic binarisation draws Bernoulli(x) per pixel; scale x to "
                           "[0, 1] or use --binarize=static")
    elif config.binarize == "none" and config.decoder == "bernoulli":
        unit, fix = True, ("the Bernoulli decoder models values in [0, 1]; scale x to [0, 1], "
                           "use --binarize=static or --decoder=normal")
    else:
        unit, fix = False, ""
    data.check_images(x, f"{config.dataset} ({split})", unit_interval=unit, fix=fix)


def _check_labels(config: Config, labelled: dict[str, bool]) -> int | None:
    """The number of classes a conditional run's model takes (None unless
    `config.conditional`); raises DataError if a split has no labels."""
    if not config.conditional:
        return None
    for split, has_labels in labelled.items():
        if not has_labels:
            raise DataError(f"{config.dataset} ({split}) has no labels; conditional needs "
                            "them (an .npz with y, or a labelled data set)")
    classes = data.num_classes(config.dataset, data_dir=config.data_dir)
    if classes is None or classes < 2:
        raise DataError(f"{config.dataset} has {classes or 'no'} label classes; "
                        "conditional needs 2 or more")
    return classes


def epoch_seed(seed: int, epoch: int) -> int:
    """The data seed of one epoch: a fixed function of (seed, epoch)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**31 - 1)


# The evaluation draw's seed: the "epoch" no training epoch uses.
_EVALUATION_EPOCH = -1


def train_source(splits: Splits):
    """(x, y) that every epoch's `train_dataset` reads: the training images and
    labels (None unless conditional) as tensors, one copy for all epochs (a
    new constant per epoch would grow memory by the data set's size each
    epoch); or the split's Stream and None."""
    if isinstance(splits.x_train, sources.Stream):
        return splits.x_train, None
    return (tf.constant(splits.x_train),
            None if splits.num_classes is None else tf.constant(splits.y_train))


def train_dataset(config: Config, x, epoch: int, y=None, *, skip: int = 0,
                  strategy: tf.distribute.Strategy | None = None):
    """Epoch `epoch`'s training batches `[B, *data]` (pairs with labels y; a
    Stream x yields its own labels when `config.conditional`), from batch
    `skip` on: order and binarisation draws are a fixed function of (seed,
    epoch), so a resumed run rebuilds them exactly. In memory, the epoch is
    computed up front (`data.epoch_dataset`): cheap to build anew; a Stream
    reads its images as the epoch is read (`sources.Stream.dataset`), from
    the temporary file it was decoded into or from its files.

    Under a MultiWorkerMirroredStrategy a Stream is read as one shard per
    worker (`tf.distribute.DistributedDataset`): each worker decodes only
    its share of every global batch of `config.batch_size`, and the workers
    together see each example once per epoch. Arrays in memory are left to
    tf.distribute's own sharding of the dataset (every worker holds them).
    """
    if not isinstance(x, sources.Stream):
        ds = data.epoch_dataset(x, config.batch_size, y=y, binarize=config.binarize, shuffle=True,
                                seed=epoch_seed(config.seed, epoch))
        return ds.skip(skip) if skip else ds

    def one_pass(shard=(0, 1)):
        share = config.batch_size // shard[1]
        return x.dataset(share, seed=epoch_seed(config.seed, epoch), shuffle=True,
                         binarize=config.binarize, with_labels=config.conditional, shard=shard,
                         skip=skip)

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return one_pass()

    def per_worker(context: tf.distribute.InputContext):
        workers = context.num_input_pipelines
        if config.batch_size % workers:
            raise ConfigError(f"batch_size {config.batch_size} does not split between "
                              f"{workers} workers; use a multiple of {workers}")
        ds = one_pass((context.input_pipeline_id, workers))
        replica_batch = context.get_per_replica_batch_size(config.batch_size)
        # Several replicas on one worker: its share in batches of theirs.
        return ds if replica_batch == config.batch_size // workers else ds.rebatch(replica_batch)

    return strategy.distribute_datasets_from_function(per_worker)


def evaluation_arrays(config: Config, x: np.ndarray) -> np.ndarray:
    """The evaluation images themselves: x `[N, ...]` binarised once, as every
    evaluation of the run sees them (validation each epoch, the test metrics,
    figures, scripts/evaluate.py).

    The dynamic draw is the first pass of `data.make_dataset` with the run's
    evaluation seed, in batches of 1,000: a fixed function of (seed, x) in a
    process whose global seed is `config.seed`, which the run and
    `scripts/evaluate.py` both set (`keras.utils.set_random_seed`).
    """
    ds = data.make_dataset(x, None, 1000, binarize=config.binarize, shuffle=False,
                           seed=epoch_seed(config.seed, _EVALUATION_EPOCH))
    return np.concatenate(list(ds.as_numpy_iterator()))


def evaluation_batches(config: Config, split: str, batch_size: int = 1000):
    """`split`'s images as the run's evaluations see them, in order, as numpy
    batches (x `[b, H, W, C]`, y `[b]` or None): `evaluation_arrays` of the
    split read whole; a training split too large for `--cache_mb` read from
    its files as a stream instead, never whole (its one fixed draw then keyed
    by the evaluation seed batch by batch, `sources.Stream.dataset`).

    For what needs every training image once (a linear probe's or a post-hoc
    sampler's codes) without holding them all.
    """
    stream = _train_stream(config)[0] if split == "train" else None
    if stream is not None:
        yield from stream.batches_in_order(batch_size, binarize=config.binarize,
                                           seed=epoch_seed(config.seed, _EVALUATION_EPOCH))
        return
    x, y = load_split(config, split)
    x = evaluation_arrays(config, x)
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], None if y is None else y[start:start + batch_size]


def eval_dataset(config: Config, x: np.ndarray, y=None,
                 batch_size: int | None = None) -> tf.data.Dataset:
    """Batches of `evaluation_arrays(config, x)` in order (pairs with labels y):
    the same images on every pass, so every epoch's validation ELBO is measured
    on the same data, resumed or not."""
    return data.make_dataset(evaluation_arrays(config, x), y, batch_size or config.batch_size,
                             binarize="none", shuffle=False)
