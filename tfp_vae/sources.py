"""Sources read from files as a stream: a folder of PNG/JPEG images and TFRecord
files of encoded images (docs/data.md, "Your own data").

A :class:`Stream` is one split of such a source: its index (the image files,
or the TFRecord files), the shape every image is decoded to, and the number
of examples. It builds tf.data passes over the split whose order and dynamic
binarisation draws are a fixed function of a seed, so a resumed run rebuilds
an epoch exactly; or it reads the split whole into memory; or it decodes the
split once into a temporary file (`Stream.decoded`) whose passes read their
images from there by row. Only the index is ever held in memory, never the
decoded images of a streamed pass.

Every user-facing problem raises :class:`DataError` with a one-line message.
This module never reads flags.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
import tempfile
import typing

import numpy as np
import tensorflow as tf

from tfp_vae.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "IMAGE_KEY", "LABEL_KEY", "SHUFFLE_BUFFER", "Stream",
           "is_stream_source", "num_classes", "open_records", "open_stream", "parse_size",
           "shard_batches"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IMAGE_KEY = "image"      # a TFRecord's tf.train.Example feature: encoded PNG/JPEG bytes
LABEL_KEY = "label"      # optional int64 class label (TFDS's keys are the same)
_TFRECORD = re.compile(r"\.(tfrecords?|tfrec)(-\d+-of-\d+)?$", re.IGNORECASE)
_SPLIT_WORDS = {"train": "train", "validation": "validation", "valid": "validation",
                "val": "validation", "dev": "validation", "test": "test"}
# A split without its own folder or files: the hash bucket (of 10) of each
# example's key that holds it -- stable when files are added or reordered.
_BUCKETS = 10
_HASHED = {"test": (0,), "validation": (1,), "train": tuple(range(2, _BUCKETS))}
_CARVED = {"validation": (0,), "train": tuple(range(1, _BUCKETS))}  # validation out of train
# Up to this many records shuffle in memory at once (TFRecords are read in
# order, so a pass shuffles the file order and then through this buffer).
SHUFFLE_BUFFER = 10_000
_MISMATCH = "images differ in size"
_PARALLEL = max(2, min(4, os.cpu_count() or 2))   # batches decoded at once
_DECODE_GROUP = 32                                 # most images of a batch one loop iteration decodes


def parse_size(image_size: str | tuple | None) -> tuple[int, int] | None:
    """(H, W) of an ``"H,W"`` string (or a pair); None stays None."""
    if image_size is None:
        return None
    parts = image_size.split(",") if isinstance(image_size, str) else list(image_size)
    try:
        h, w = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise DataError(f"image_size must be H,W (two positive ints), got {image_size!r}") from None
    if h < 1 or w < 1:
        raise DataError(f"image_size must be H,W (two positive ints), got {image_size!r}")
    return h, w


def is_stream_source(name: str) -> bool:
    """A folder, or a TFRecord file name or glob pattern (``path/*.tfrecord``)."""
    return os.path.isdir(name) or bool(_TFRECORD.search(name)) or (
        glob.has_magic(name) and any(_TFRECORD.search(f) for f in glob.glob(name)))


@dataclasses.dataclass(frozen=True, eq=False)
class Stream:
    """One split of a folder or TFRecord source, indexed but not read; or
    (`decoded()`) that split decoded into a temporary file."""

    source: str                      # the --dataset it came from
    kind: str                        # "folder", "tfrecord" or "decoded" (`decoded()`)
    files: tuple[str, ...]           # image files (folder) or TFRecord files (decoded: the source's)
    labels: np.ndarray | None        # folder, decoded: int64 [N] of each image; None: no labels
    buckets: tuple[int, ...] | None  # tfrecord: keep records whose key hashes here; None: all
    has_labels: bool
    image_shape: tuple[int, int, int]  # (H, W, C) every image is decoded to
    resize: bool                     # --image_size given: resize instead of checking sizes
    classes: int | None              # folder: class sub-folders; tfrecord: None (counted)
    limit: int | None = None         # tfrecord: only the first `limit` records, in file order
    pixels: typing.Any = None        # decoded: the open temporary file, image i its i-th row
    count: int | None = None         # decoded: its images

    # -- the index -----------------------------------------------------------------------

    def __len__(self) -> int:
        if self.kind == "folder":
            return len(self.files)
        if self.kind == "decoded":
            return self.count
        n = _count_and_classes(self.files, self.buckets, self.has_labels)[0]
        return n if self.limit is None else min(n, self.limit)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, H, W, C), as an array of the split would have."""
        return (len(self),) + self.image_shape

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the whole split as float32 images."""
        return len(self) * int(np.prod(self.image_shape)) * 4

    @property
    def _pixel_dtype(self) -> np.dtype:
        """How `decoded()` stores a pixel: the 8-bit value, or a resized image's float32."""
        return np.dtype(np.float32 if self.resize else np.uint8)

    @property
    def pixel_bytes(self) -> int:
        """Bytes of the file `decoded()` writes."""
        return len(self) * int(np.prod(self.image_shape)) * self._pixel_dtype.itemsize

    def limited(self, limit: int | None) -> "Stream":
        """The first `limit` examples of the split (index order), or all for None."""
        if limit is None:
            return self
        if self.kind == "folder":
            return dataclasses.replace(self, files=self.files[:limit], labels=self.labels[:limit])
        if self.kind == "decoded":
            return dataclasses.replace(self, count=min(self.count, limit), labels=None
                                       if self.labels is None else self.labels[:limit])
        return dataclasses.replace(self, limit=limit if self.limit is None else min(limit, self.limit))

    def decoded(self) -> "Stream":
        """The split decoded once, in index order, into an unnamed temporary file
        (`tempfile.TemporaryFile`: gone when the process ends, however it ends),
        as a Stream whose passes read each image from there by its row.

        Its passes are those of a folder of the same images: the same order
        and the same draws for a seed (a TFRecord split's are then a
        permutation of all its records, not a shuffle buffer's), without
        decoding. The pixels are stored as read, uint8 (float32 when
        resized), `pixel_bytes` in all. Raises DataError naming the first
        file that cannot be read, before anything is trained.

        Not `tf.data.Dataset.cache(filename)` or `snapshot`: they read their
        files back in order only, so an epoch's permutation would need a
        shuffle buffer of decoded images again; rows read by index need none.
        """
        pixels = tempfile.TemporaryFile(prefix="tfp_vae-", suffix=".pixels")
        labels = []
        try:
            for x, y in self.batches_in_order():
                (x if self.resize else np.round(x * 255)).astype(self._pixel_dtype).tofile(pixels)
                labels.append(y)
            pixels.flush()
        except BaseException:
            pixels.close()
            raise
        return dataclasses.replace(
            self, kind="decoded", pixels=pixels, count=len(self), limit=None,
            classes=num_classes(self),
            labels=np.concatenate(labels).astype(np.int64) if self.has_labels else None)

    # -- passes ----------------------------------------------------------------------------

    def dataset(self, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                binarize: str = "none", with_labels: bool = False,
                drop_remainder: bool = False, shard: tuple[int, int] = (0, 1),
                skip: int = 0) -> tf.data.Dataset:
        """One pass over the split: float32 batches ``[B, H, W, C]`` in ``[0, 1]``
        (pairs with int64 labels ``[B]`` when `with_labels`), from batch `skip` on.

        `shard` = (index, count) reads one of `count` shards of the pass, for
        one worker of several: the pass cut into global batches of
        `count · batch_size` examples, each split between the shards as
        tf.distribute splits a batch between replicas (the last, short one
        as evenly as it goes), so the shards together hold every example of
        the pass once and each has as many batches as the others. A shard
        skips the records of the others before they are decoded, and draws
        its own binarisation noise.

        The order (a permutation of the files, then for TFRecords a shuffle
        buffer of :data:`SHUFFLE_BUFFER` records; of the rows of a decoded
        split) and the dynamic binarisation
        draws (keyed by (seed, batch index)) are a fixed function of `seed`:
        every iterator of this dataset, and every dataset built with the same
        seed, repeats the same pass, and `skip` = k resumes it at batch k (the
        batches of ``.skip(k)``, without decoding the k skipped: they are
        read, shuffled and dropped as records). Records are batched before
        they are parsed and decoded: one map call per batch (run in parallel,
        in order) costs far less than one per image.
        """
        if with_labels and not self.has_labels:
            raise DataError(f"{self.source} has no labels; call with with_labels=False")
        rng = np.random.default_rng(int(seed) % 2**63)
        # A limit keeps the first records in file order: the files are then not permuted.
        permute = shuffle and self.limit is None
        # What is permuted: the images of a folder or decoded split, the files of TFRecords.
        units = len(self) if self.kind == "decoded" else len(self.files)
        order = rng.permutation(units) if permute else np.arange(units)
        shard_index, shards = (int(s) for s in shard)
        if not 0 <= shard_index < shards:
            raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
        if self.kind in ("folder", "decoded"):
            ds = tf.data.Dataset.from_tensor_slices(order)
            if shards > 1:      # before the files are read
                ds = _sharded(ds, len(self), batch_size, shard_index, shards)
            if self.kind == "folder":
                ds = self._folder_records(ds)     # a decoded split's records are its rows
        else:
            ds = self._tfrecord_records(order)
            if self.limit is not None:
                ds = ds.take(self.limit)
            if shuffle:
                ds = ds.shuffle(min(SHUFFLE_BUFFER, max(1, len(self))), seed=int(rng.integers(2**31)),
                                reshuffle_each_iteration=False)
            if shards > 1:      # every record is read, only the shard's decoded
                ds = _sharded(ds, len(self), batch_size, shard_index, shards)
        key = tf.constant(int(seed) % 2**31, tf.int64)

        def decode(index, records):
            x, y = self._decode_batch(records, batch_size)
            if binarize == "static":
                x = tf.cast(x > 0.5, x.dtype)
            elif binarize == "dynamic":
                # Shard s of S, its batch b: key (seed, b·S + s); one shard: (seed, b).
                draw = tf.stack([key, index * shards + shard_index])
                u = tf.random.stateless_uniform(tf.shape(x), draw, dtype=x.dtype)
                x = tf.cast(u < x, x.dtype)
            return (x, y) if with_labels else x

        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if shards > 1:       # so that Keras and tf.distribute know the epoch's length
            ds = ds.apply(tf.data.experimental.assert_cardinality(
                len(self) // (shards * batch_size) if drop_remainder else
                shard_batches(len(self), batch_size, shards)))
        ds = ds.enumerate()
        if skip:          # a batch's decode is a function of (its index, its records)
            ds = ds.skip(skip)
        # Fixed parallelism, autotune off: autotune's ramp-up on every epoch's
        # fresh iterator stalls its first steps (docs/performance.md).
        ds = ds.map(tf.autograph.experimental.do_not_convert(decode), num_parallel_calls=_PARALLEL,
                    deterministic=True).prefetch(_PARALLEL)
        options = tf.data.Options()
        options.deterministic = True
        options.autotune.enabled = False
        return ds.with_options(options)

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The split read whole, in index order: (x float32 ``[N, H, W, C]`` in
        ``[0, 1]``, y int64 ``[N]`` or None)."""
        parts = list(self.batches_in_order())
        x = np.concatenate([p[0] for p in parts])
        return x, (np.concatenate([p[1] for p in parts]) if self.has_labels else None)

    def batches_in_order(self, batch_size: int = 256, *, binarize: str = "none", seed: int = 0):
        """The split's batches in index order, (x, y or None) numpy, unshuffled,
        binarised per `binarize` (dynamic: draws keyed by `seed`); a file that
        cannot be read raises its DataError."""
        ds = self.dataset(batch_size, shuffle=False, binarize=binarize, seed=seed,
                          with_labels=self.has_labels)
        try:
            for b in ds.as_numpy_iterator():
                yield b if self.has_labels else (b, None)
        except tf.errors.OpError as e:
            raise self._read_error(e) from None

    # -- the pieces of a pass --------------------------------------------------------------

    def _folder_records(self, order: tf.data.Dataset) -> tf.data.Dataset:
        """(encoded image, label) of each file, in the order of the indices `order`."""
        files = tf.constant(np.asarray(self.files, dtype=object))
        labels = tf.constant(self.labels if self.has_labels else np.zeros(len(self.files), np.int64))
        return order.map(
            lambda i: (tf.io.read_file(files[i]), labels[i]),
            num_parallel_calls=4 * _PARALLEL, deterministic=True)

    def _read_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The decoded images at `rows` of the temporary file, `[B, H, W, C]`,
        and their labels (zeros without them): one positioned read per
        image, into one buffer (memory-mapping the file would count every
        page read in the process's resident memory)."""
        size = int(np.prod(self.image_shape)) * self._pixel_dtype.itemsize
        buffer = bytearray(len(rows) * size)
        view, fd = memoryview(buffer), self.pixels.fileno()
        for j, row in enumerate(rows.tolist()):
            if os.preadv(fd, [view[j * size:(j + 1) * size]], row * size) != size:
                raise OSError(f"the decoded images' temporary file ends before row {row}")
        images = np.frombuffer(buffer, self._pixel_dtype).reshape((len(rows),) + self.image_shape)
        return images, (self.labels[rows] if self.has_labels else np.zeros(len(rows), np.int64))

    def _tfrecord_records(self, order: np.ndarray) -> tf.data.Dataset:
        """The serialized records of the files in `order` (4 files interleaved),
        those of the split's hash buckets only when it has them."""
        files = [self.files[i] for i in order]
        buckets = self.buckets

        def records(path):
            ds = tf.data.TFRecordDataset(path)
            if buckets is not None:
                name = tf.strings.regex_replace(path, r"^.*/", "")
                ds = ds.enumerate().filter(lambda i, _: _in_buckets(
                    tf.strings.join([name, tf.strings.as_string(i)], ":"), buckets)).map(
                    lambda _, r: r)
            return ds

        ds = tf.data.Dataset.from_tensor_slices(files)
        if len(files) == 1:
            return ds.flat_map(records)
        return ds.interleave(records, cycle_length=min(4, len(files)),
                             num_parallel_calls=min(4, len(files)), deterministic=True)

    def _decode_batch(self, records, batch_size: int):
        """Images float32 ``[B, H, W, C]`` in [0, 1] and labels int64 ``[B]`` of a
        batch of records: (encoded image, label) pairs of a folder,
        serialized tf.train.Examples, or the rows of a decoded split."""
        h, w, c = self.image_shape
        if self.kind == "decoded":         # records: a batch of rows
            images, labels = tf.numpy_function(self._read_rows, [records],
                                               (self._pixel_dtype, tf.int64), stateful=False)
            labels = tf.ensure_shape(labels, (None,))
            images = tf.cast(tf.ensure_shape(images, (None, h, w, c)), tf.float32)
            return (images if self.resize else images / 255.0), labels
        if self.kind == "folder":
            encoded, labels = records
        else:
            encoded, labels = _parse(records, self.has_labels)
        dtype = tf.float32 if self.resize else tf.uint8

        def one(encoded):
            image = tf.io.decode_image(encoded, channels=c, expand_animations=False)
            if self.resize:
                return tf.image.resize(image, (h, w), antialias=True)
            # An image of another size stops the pass here: TensorFlow's error
            # gives its size, and `unreadable` (which Stream.arrays and a
            # streamed run call on such an error) names the file. A check that
            # names it in the stream itself (an Assert per image or per batch)
            # costs a third of the speed.
            return tf.ensure_shape(image, (h, w, c))

        # Groups of up to _DECODE_GROUP images, each decoded by ops of its
        # own: a loop iteration per image (tf.map_fn over the batch) cost as
        # much as decoding a 28x28 PNG. The group size splits a full batch of
        # `batch_size` as evenly as it goes (100: 4 x 25), so only a short
        # batch is padded much, with copies of its first image whose decodes
        # are dropped.
        groups_of_full_batch = -(-batch_size // _DECODE_GROUP)
        size = -(-batch_size // groups_of_full_batch)
        n = tf.shape(encoded)[0]
        groups = -(-n // size)
        padded = tf.concat([encoded, tf.repeat(encoded[:1], groups * size - n)], 0)
        images = tf.map_fn(
            lambda group: tf.stack([one(e) for e in tf.unstack(group, num=size)]),
            tf.reshape(padded, [groups, size]),
            fn_output_signature=tf.TensorSpec((size, h, w, c), dtype), parallel_iterations=4)
        images = tf.cast(tf.reshape(images, [-1, h, w, c])[:n], tf.float32) / 255.0
        return (tf.clip_by_value(images, 0.0, 1.0) if self.resize else images), labels

    def unreadable(self) -> DataError | None:
        """A one-line DataError naming the split's first file that cannot be
        decoded or (without --image_size) has another size; None if all read
        (always for a decoded split: its files were read when it was made)."""
        if self.kind == "decoded":
            return None
        h, w, _ = self.image_shape
        for path in self._suspects():
            try:
                encoded = ([tf.io.read_file(path)] if self.kind == "folder" else
                           (_parse(r[None], self.has_labels)[0][0]
                            for r in tf.data.TFRecordDataset(path)))
                for image in encoded:
                    size = tuple(tf.io.decode_image(image, expand_animations=False).shape[:2])
                    if not self.resize and size != (h, w):
                        return DataError(f"{path} holds a {size[0]}x{size[1]} image but the first "
                                         f"is {h}x{w}: {_MISMATCH}; pass --image_size=H,W to "
                                         "resize them")
            except tf.errors.OpError as e:
                return DataError(f"{path} cannot be read as {_what(self.kind)} ({_one_line(e)}); "
                                 "replace or remove it")
        return None

    def _read_error(self, error: tf.errors.OpError) -> DataError:
        """`unreadable()`'s error for the `error` a pass raised, or one naming the source."""
        return self.unreadable() or DataError(f"{self.source} cannot be read ({_one_line(error)})")

    def _suspects(self):
        """The files `unreadable` looks into one by one: a folder's first file
        that fails to decode (found by decoding all of them in parallel, a
        pass's cost), or every TFRecord file in order."""
        if self.kind != "folder":
            return self.files
        h, w, c = self.image_shape

        def check(i, path):
            image = tf.io.decode_image(tf.io.read_file(path), channels=c, expand_animations=False)
            if not self.resize:
                image = tf.ensure_shape(image, (h, w, c))
            return i, tf.reduce_max(image)   # of the pixels: a static shape would let the decode be pruned

        good = tf.data.Dataset.from_tensor_slices(list(self.files)).enumerate().map(
            check, num_parallel_calls=4 * _PARALLEL, deterministic=True).ignore_errors()
        seen = np.zeros(len(self.files), bool)
        for i, _ in good.as_numpy_iterator():
            seen[i] = True
        return [self.files[i] for i in np.flatnonzero(~seen)[:1]]


def _sharded(ds: tf.data.Dataset, n: int, batch_size: int, index: int,
             count: int) -> tf.data.Dataset:
    """The examples of shard `index` of `count` of a pass of `n` examples: of
    each global batch of `count · batch_size`, the `index`-th `batch_size`;
    of a last, short batch of r, the `index`-th part of r split as evenly as
    it goes (the first r mod count parts one longer), as tf.distribute
    rebatches. When r < count, a shard whose part is empty takes the pass's
    first example instead: every shard has as many batches as one machine's
    pass has (workers must take the same steps), none of them empty."""
    full = n // (count * batch_size)
    rest = n - full * count * batch_size
    sizes = [rest // count + (i < rest % count) for i in range(count)]
    start, stop = sum(sizes[:index]), sum(sizes[:index + 1])

    def mine(i, _):
        g, j = i // (count * batch_size), i % (count * batch_size)
        return tf.where(g < full, j // batch_size == index, (j >= start) & (j < stop))

    shard = ds.enumerate().filter(mine).map(lambda _, record: record)
    return shard.concatenate(ds.take(1)) if rest and not sizes[index] else shard


def shard_batches(n: int, batch_size: int, count: int) -> int:
    """Batches of each of `count` shards of a pass of `n` (`Stream.dataset`'s
    `shard`), of `batch_size` each: one per global batch."""
    return -(-n // (count * batch_size))


# --------------------------------------------------------------------------
# Opening a source: its index and the split rule
# --------------------------------------------------------------------------


def open_stream(name: str, split: str, image_size=None) -> Stream:
    """One split of the folder or TFRecord source `name` (see docs/data.md for
    the split rule), indexed: no image is decoded but the first."""
    size = parse_size(image_size)
    if os.path.isdir(name):
        return _open_folder(name, split, size)
    return _open_tfrecords(name, split, size)


def _open_folder(root: str, split: str, size) -> Stream:
    split_dirs = {_SPLIT_WORDS[d.lower()]: os.path.join(root, d) for d in sorted(os.listdir(root))
                  if d.lower() in ("train", "validation", "val", "test")
                  and os.path.isdir(os.path.join(root, d))}
    if "train" in split_dirs:
        if "test" not in split_dirs:
            raise DataError(f"{root} has a train/ folder but no test/ folder; add one, or put "
                            "all images in one tree for the hashed 80/10/10 split")
        carve = split != "test" and "validation" not in split_dirs  # validation out of train/
        base = split_dirs["train"] if carve else split_dirs[split]
        buckets = _CARVED[split] if carve else None
    else:
        base, buckets = root, _HASHED[split]
    files, labels, classes = _index_folder(base)
    if buckets is not None:
        keys = [os.path.relpath(f, base) for f in files]
        keep = np.isin(tf.strings.to_hash_bucket_fast(keys, _BUCKETS).numpy(), buckets)
        files = [f for f, k in zip(files, keep) if k]
        labels = labels[keep]
    if not files:
        raise DataError(f"{root}: split {split!r} is empty (see the split rule in docs/data.md); "
                        "add more images")
    shape = _shape_of(tf.io.read_file(files[0]), files[0], size, "folder")
    return Stream(root, "folder", tuple(files), labels, None, classes is not None, shape,
                  size is not None, classes)


def _index_folder(base: str):
    """(sorted image files under `base`, int64 labels, classes): class
    sub-folders (sorted names -> 0..C-1, as keras.utils.image_dataset_from_directory
    does; images directly in `base` are then ignored), else no labels."""
    subdirs = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))
                     and not d.startswith("."))
    groups = [(i, os.path.join(base, d)) for i, d in enumerate(subdirs)] or [(-1, base)]
    files, labels = [], []
    for label, folder in groups:
        found = sorted(_images_under(folder, recursive=bool(subdirs)))
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"{base} holds no images ({', '.join(IMAGE_EXTENSIONS)}); point "
                        "--dataset at a folder of image files (or class sub-folders of them)")
    classes = len(subdirs) if subdirs else None
    return files, np.asarray(labels, np.int64), classes


def _images_under(folder: str, recursive: bool):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                yield os.path.join(dirpath, f)
        if not recursive:
            return


def _open_tfrecords(pattern: str, split: str, size) -> Stream:
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else (
        [pattern] if os.path.isfile(pattern) else [])
    if not files:
        raise DataError(f"no TFRecord files match {pattern!r}; pass a file or a pattern such as "
                        "path/*.tfrecord")
    marks = {f: _split_mark(os.path.basename(f)) for f in files}
    if any(marks.values()):
        if "test" not in marks.values() or "train" not in marks.values():
            raise DataError(f"{pattern}: files named for a split need both *train* and *test* "
                            "files (and optionally *validation*)")
        carve = split != "test" and "validation" not in marks.values()
        if carve:   # no validation files: 10% of the train files' records, by a hash
            chosen, buckets = [f for f in files if marks[f] == "train"], _CARVED[split]
        else:
            chosen, buckets = [f for f in files if marks[f] == split], None
        if not chosen:
            raise DataError(f"{pattern}: no files for split {split!r}")
    else:
        chosen, buckets = files, _HASHED[split]
    return _records(pattern, chosen, buckets, size)


def open_records(files, source: str, image_size=None, limit: int | None = None) -> Stream:
    """All records of the TFRecord `files` as one split (the first `limit`
    only, in file order), named `source` in messages: a TFDS split's files."""
    return _records(source, tuple(files), None, parse_size(image_size), limit)


def _records(pattern: str, chosen, buckets, size, limit: int | None = None) -> Stream:
    """The Stream of the records of `chosen` in hash `buckets` (None: all),
    its image key, labels and shape read off the first record."""
    first = _first_record(chosen[0])
    features = tf.train.Example.FromString(first).features.feature
    if IMAGE_KEY not in features:
        raise DataError(f"{chosen[0]} has no feature {IMAGE_KEY!r} (it has: "
                        f"{', '.join(sorted(features)) or 'none'}); write encoded PNG/JPEG bytes "
                        f"under {IMAGE_KEY!r} and an optional int64 {LABEL_KEY!r}")
    has_labels = LABEL_KEY in features
    shape = _shape_of(tf.constant(features[IMAGE_KEY].bytes_list.value[0]), chosen[0], size,
                      "tfrecord")
    return Stream(pattern, "tfrecord", tuple(chosen), None, buckets, has_labels, shape,
                  size is not None, None, limit)


def _split_mark(basename: str) -> str | None:
    for word in re.split(r"[^a-z]+", basename.lower()):
        if word in _SPLIT_WORDS:
            return _SPLIT_WORDS[word]
    return None


def _first_record(path: str) -> bytes:
    try:
        for record in tf.data.TFRecordDataset(path).take(1):
            return record.numpy()
    except tf.errors.OpError as e:
        raise DataError(f"{path} is not a readable TFRecord file ({_one_line(e)}); "
                        "replace or remove it") from None
    raise DataError(f"{path} holds no records; write tf.train.Example records with an "
                    f"encoded image under {IMAGE_KEY!r}")


def _shape_of(encoded: tf.Tensor, where: str, size, kind: str) -> tuple[int, int, int]:
    """(H, W, C) of the first image: --image_size's H, W or its own; C = 1 for
    grey (with or without alpha), else 3."""
    try:
        image = tf.io.decode_image(encoded, expand_animations=False)
    except tf.errors.OpError as e:
        raise DataError(f"{where} cannot be read as {_what(kind)} ({_one_line(e)}); "
                        "replace or remove it") from None
    h, w, c = image.shape
    h, w = size if size is not None else (h, w)
    return int(h), int(w), 1 if c in (1, 2) else 3


def _what(kind: str) -> str:
    return "a PNG/JPEG image" if kind == "folder" else "TFRecords of encoded PNG/JPEG images"


def _one_line(error: BaseException) -> str:
    """The first line of an error's message, without TensorFlow's op and node names."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^]]*\].*$", "", text.strip().split("\n")[0]).strip()
    return text or type(error).__name__


def _parse(records, has_labels: bool):
    """(encoded images, int64 labels; zeros without them) of serialized Examples, any shape."""
    spec = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
    if has_labels:
        spec[LABEL_KEY] = tf.io.FixedLenFeature([], tf.int64)
    example = tf.io.parse_example(records, spec)
    encoded = example[IMAGE_KEY]
    label = example[LABEL_KEY] if has_labels else tf.zeros(tf.shape(encoded), tf.int64)
    return encoded, label


def _in_buckets(key, buckets) -> tf.Tensor:
    bucket = tf.strings.to_hash_bucket_fast(key, _BUCKETS)
    return tf.reduce_any(tf.equal(bucket, tf.constant(buckets, tf.int64)))


@functools.lru_cache(maxsize=64)
def _count_and_classes(files: tuple[str, ...], buckets, has_labels: bool) -> tuple[int, int | None]:
    """Records of a TFRecord split, and 1 + its largest label: one pass that
    parses labels only (no image is decoded)."""
    n, top = 0, -1
    stream = Stream("", "tfrecord", files, None, buckets, has_labels, (1, 1, 1), False, None)
    ds = stream._tfrecord_records(np.arange(len(files))).batch(4096).map(
        lambda r: _parse(r, has_labels)[1])
    try:
        for y in ds:
            n += int(y.shape[0])
            top = max(top, int(tf.reduce_max(y))) if has_labels and y.shape[0] else top
    except tf.errors.OpError as e:
        raise stream._read_error(e) from None
    return n, (top + 1 if has_labels and top >= 0 else None)


def num_classes(stream: Stream) -> int | None:
    """Label classes of the split: class sub-folders, or 1 + a TFRecord split's
    largest label (a decoded split: its source's)."""
    if stream.kind != "tfrecord":
        return stream.classes
    return _count_and_classes(stream.files, stream.buckets, stream.has_labels)[1]
