"""Tests for tfp_vae.sources: a folder of images and TFRecord files as data sets.

Offline: every test writes its own synthetic images (PNG, JPEG) or TFRecords
into tmp_path, and checks what is read against what was written -- pixels,
labels, splits -- and a streamed run resumed after SIGTERM against an
uninterrupted one, bit for bit.
"""

from __future__ import annotations

import os
import tempfile
import threading
import zlib

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import data, input_pipeline, sources
from tfp_vae.config import Config
from tfp_vae.data import DataError


def _image(key: str, shape) -> np.ndarray:
    """uint8 pixels [H, W, C], a fixed function of `key`."""
    return np.random.default_rng(zlib.crc32(key.encode())).integers(0, 256, shape, np.uint8)


def _write_folder(root, classes=("ant", "bee", "cat"), per_class=20, shape=(8, 6, 1),
                  encode=tf.io.encode_png, ext="png") -> dict[str, tuple[np.ndarray, int]]:
    """Writes class sub-folders of images; {path: (pixels, label)}."""
    written = {}
    for label, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            path = os.path.join(root, name, f"{i:03d}.{ext}")
            pixels = _image(path, shape)
            tf.io.write_file(path, encode(pixels))
            written[path] = (pixels, label)
    return written


def _write_digits(folder, n, encode=tf.io.encode_png, ext="png"):
    """The first n mnist_5k training digits as image files in class sub-folders."""
    x, y = data.load_arrays("mnist_5k", "train", limit=n)
    for i, (image, label) in enumerate(zip(x, y)):
        os.makedirs(folder / str(label), exist_ok=True)
        tf.io.write_file(str(folder / str(label) / f"{i:03d}.{ext}"),
                         encode(np.round(image * 255).astype(np.uint8)))
    return folder


def _example(pixels: np.ndarray, label: int | None) -> bytes:
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[tf.io.encode_png(pixels).numpy()]))}
    if label is not None:
        feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_records(path, n, shape=(8, 6, 3), labels=True) -> list[tuple[np.ndarray, int]]:
    rows = [(_image(f"{path}:{i}", shape), i % 4) for i in range(n)]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for pixels, label in rows:
            writer.write(_example(pixels, label if labels else None))
    return rows


def _as_rows(x: np.ndarray) -> set[bytes]:
    return {np.round(row * 255).astype(np.uint8).tobytes() for row in x}


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, repr(message)
    return message


# ---------------------------------------------------------------- folders


def test_folder_of_grey_pngs_pixels_labels_and_hashed_split(tmp_path):
    written = _write_folder(tmp_path)
    pixels = {p.tobytes(): label for p, label in written.values()}
    seen = []
    for split in data.SPLITS:
        x, y = data.load_arrays(str(tmp_path), split)
        assert x.shape[1:] == (8, 6, 1) and x.dtype == np.float32 and y.dtype == np.int64
        for row, label in zip(x, y):      # each image exact, with its folder's label
            key = np.round(row * 255).astype(np.uint8).tobytes()
            assert pixels[key] == label
            seen.append(key)
    # The three splits are disjoint and cover every file; the rule is a hash of the
    # file's path below the folder, so it is fixed (and train holds most).
    assert sorted(seen) == sorted(pixels)
    train = data.load_arrays(str(tmp_path), "train")[0]
    assert 0.6 * len(written) < len(train) < 0.95 * len(written)
    assert data.num_classes(str(tmp_path)) == 3 and data.data_shape(str(tmp_path)) == (8, 6, 1)


def test_folder_split_subfolders_colour_and_validation_carved_from_train(tmp_path):
    train = _write_folder(tmp_path / "train", classes=("a", "b"), shape=(5, 7, 3))
    test = _write_folder(tmp_path / "test", classes=("a", "b"), per_class=4, shape=(5, 7, 3))
    x_test, y_test = data.load_arrays(str(tmp_path), "test")
    assert x_test.shape == (8, 5, 7, 3)                              # colour: C = 3
    np.testing.assert_array_equal(np.round(x_test * 255).astype(np.uint8),
                                  np.stack([p for p, _ in test.values()]))   # sorted order
    np.testing.assert_array_equal(y_test, [label for _, label in test.values()])
    x_train, _ = data.load_arrays(str(tmp_path), "train")
    x_val, _ = data.load_arrays(str(tmp_path), "validation")
    assert len(x_val) >= 1 and len(x_train) + len(x_val) == len(train)
    assert _as_rows(x_train) | _as_rows(x_val) == {p.tobytes() for p, _ in train.values()}


def test_folder_without_class_subfolders_has_no_labels_and_jpeg_reads_close(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], (16, 1, 3))
    for i in range(30):
        tf.io.write_file(str(root / f"{i}.jpg"), tf.io.encode_jpeg(smooth, quality=95))
    x, y = data.load_arrays(str(root), "train")
    assert y is None and x.shape[1:] == (16, 16, 3)
    assert np.abs(x[0] * 255 - smooth).mean() < 3          # lossy, but the same picture
    assert data.num_classes(str(root)) is None


def test_mixed_sizes_name_a_file_and_image_size_resizes(tmp_path):
    _write_folder(tmp_path, classes=("a",), per_class=12, shape=(8, 8, 1))
    odd = tmp_path / "a" / "zzz.png"
    tf.io.write_file(str(odd), tf.io.encode_png(_image("odd", (9, 8, 1))))
    with pytest.raises(DataError) as e:
        for split in data.SPLITS:          # the odd file is in one of them
            data.load_arrays(str(tmp_path), split)
    message = _one_line(e)
    assert str(odd) in message and "--image_size" in message
    x, _ = data.load_arrays(str(tmp_path), "train", image_size="4,5")
    assert x.shape[1:] == (4, 5, 1) and 0.0 <= x.min() and x.max() <= 1.0
    # The resize is tf.image.resize's, image by image, in the split's index order.
    first = data.open_stream(str(tmp_path), "train").files[0]
    expected = tf.image.resize(tf.io.decode_png(tf.io.read_file(first)), (4, 5),
                               antialias=True).numpy() / 255.0
    np.testing.assert_allclose(x[0], expected, atol=1e-6)


def test_empty_folder_and_unreadable_image_are_one_line_data_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        data.load_arrays(str(tmp_path / "empty"), "train")
    root = tmp_path / "broken"
    _write_folder(root, classes=("a",), per_class=12)
    for name, junk in (("000.png", b"not a png at all"), ("011.png", b"\x89PNG truncated")):
        bad = root / "a" / name          # the first of its split (the shape probe), or not
        good = bad.read_bytes()
        bad.write_bytes(junk)
        with pytest.raises(DataError) as e:
            for split in data.SPLITS:    # the file is in one of them
                data.load_arrays(str(root), split)
        assert str(bad) in _one_line(e) and "cannot be read" in _one_line(e)
        bad.write_bytes(good)


# ---------------------------------------------------------------- TFRecords


def test_tfrecords_split_by_file_name_as_tfds_names_them(tmp_path):
    # TFDS's own files: <name>-<split>.tfrecord-XXXXX-of-YYYYY, features image/label.
    train = [r for k in range(2) for r in _write_records(
        tmp_path / f"mnist-train.tfrecord-0000{k}-of-00002", 30)]
    test = _write_records(tmp_path / "mnist-test.tfrecord-00000-of-00001", 10)
    pattern = str(tmp_path / "mnist-*.tfrecord*")
    x_test, y_test = data.load_arrays(pattern, "test")
    np.testing.assert_array_equal(np.round(x_test * 255).astype(np.uint8),
                                  np.stack([p for p, _ in test]))
    np.testing.assert_array_equal(y_test, [label for _, label in test])
    x_train, y_train = data.load_arrays(pattern, "train")
    x_val, y_val = data.load_arrays(pattern, "validation")   # carved out of train, by a hash
    assert len(x_val) >= 1 and len(x_train) + len(x_val) == len(train)
    labels = {p.tobytes(): label for p, label in train}
    for x, y in ((x_train, y_train), (x_val, y_val)):
        assert [labels[np.round(r * 255).astype(np.uint8).tobytes()] for r in x] == list(y)
    assert _as_rows(x_train) | _as_rows(x_val) == set(labels)
    assert data.num_classes(pattern) == 4 and data.data_shape(pattern) == (8, 6, 3)
    assert len(data.open_stream(pattern, "train")) == len(x_train)


def test_tfrecord_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="no TFRecord files match"):
        data.load_arrays(str(tmp_path / "*.tfrecord"), "train")
    path = tmp_path / "x.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(tf.train.Example().SerializeToString())
    with pytest.raises(DataError) as e:
        data.load_arrays(str(path), "train")
    assert "'image'" in _one_line(e)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(DataError) as e:
        data.load_arrays(str(path), "train")
    assert str(path) in _one_line(e)


# ---------------------------------------------------------------- streamed passes


def test_stream_pass_is_a_fixed_function_of_its_seed_and_resumes_with_skip(tmp_path):
    rows = _write_records(tmp_path / "a.tfrecord", 70, shape=(4, 4, 1))
    _write_records(tmp_path / "b.tfrecord", 50, shape=(4, 4, 1))
    stream = data.open_stream(str(tmp_path / "*.tfrecord"), "train")

    def epoch(seed, skip=0):
        ds = stream.dataset(8, seed=seed, binarize="dynamic", with_labels=True, skip=skip)
        return [(x.numpy(), y.numpy()) for x, y in ds]

    first, again = epoch(3), epoch(3)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(first, again)) and len(first) == len(again)
    assert not np.array_equal(first[0][1], epoch(4)[0][1])            # another order
    resumed = epoch(3, skip=5)                  # the skipped batches are not decoded
    assert len(resumed) == len(first) - 5
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(first[5:], resumed))
    assert set(np.unique(np.concatenate([x for x, _ in first])).tolist()) <= {0.0, 1.0}
    # Every example once per pass, whatever the order: the labels' counts match.
    plain = stream.dataset(8, seed=3, with_labels=True)
    counts = np.bincount(np.concatenate([y for _, y in plain.as_numpy_iterator()]), minlength=4)
    np.testing.assert_array_equal(counts, np.bincount(np.concatenate(
        [y for _, y in stream.dataset(8, shuffle=False, with_labels=True).as_numpy_iterator()]),
        minlength=4))
    assert counts.sum() == len(stream) < len(rows) + 50


def test_a_resumed_pass_does_not_decode_the_batches_it_skips(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    rows = [_image(f"r{i}", (4, 4, 1)) for i in range(24)]
    with tf.io.TFRecordWriter(path) as writer:
        for i, pixels in enumerate(rows):        # record 1, in batch 0, is no image
            writer.write(_example(pixels, None) if i != 1 else tf.train.Example(
                features=tf.train.Features(feature={"image": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[b"not an image"]))})).SerializeToString())
    stream = sources.open_records([path], path)
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(stream.dataset(8, shuffle=False).as_numpy_iterator())
    resumed = list(stream.dataset(8, shuffle=False, skip=1).as_numpy_iterator())
    assert len(resumed) == 2
    np.testing.assert_array_equal(np.concatenate(resumed),
                                  np.stack(rows[8:]).astype(np.float32) / 255.0)


@pytest.mark.parametrize("kind", ["folder", "tfrecord", "decoded"])
def test_shards_of_a_pass_hold_each_example_once_split_as_tf_distribute_splits_a_batch(
        tmp_path, kind):
    if kind == "folder":
        _write_folder(tmp_path, per_class=23, shape=(4, 4, 1))   # 69 images, 54 for train
        stream = data.open_stream(str(tmp_path), "train")
    else:
        _write_records(tmp_path / "a.tfrecord", 40, shape=(4, 4, 1))
        _write_records(tmp_path / "b.tfrecord", 33, shape=(4, 4, 1))
        stream = data.open_stream(str(tmp_path / "*.tfrecord"), "train")
        if kind == "decoded":
            stream = stream.decoded()
    n, share = len(stream), 4                      # global batches of 3 x 4
    whole = [x for x in stream.dataset(3 * share, seed=7).as_numpy_iterator()]
    shards = [[x for x in stream.dataset(share, seed=7, shard=(i, 3)).as_numpy_iterator()]
              for i in range(3)]
    assert n % (3 * share) and len({len(s) for s in shards}) == 1 == len(whole) - len(shards[0]) + 1
    for g, batch in enumerate(whole):
        # Global batch g is the shards' batches g, in shard order.
        np.testing.assert_array_equal(np.concatenate([s[g] for s in shards]), batch)
    last = [len(s[-1]) for s in shards]
    assert sum(last) == len(whole[-1]) and max(last) - min(last) <= 1
    assert all(int(stream.dataset(share, seed=7, shard=(i, 3)).cardinality()) == len(shards[0])
               for i in range(3))
    # A last global batch shorter than the shards are many: the shard left
    # without a part takes the pass's first example, so no batch is empty.
    small = stream.limited(3 * share + 1)          # 13: one full global batch, then 1
    cut = [list(small.dataset(share, seed=7, shard=(i, 3)).as_numpy_iterator()) for i in range(3)]
    whole = list(small.dataset(3 * share, seed=7).as_numpy_iterator())
    assert [len(s) for s in cut] == [2, 2, 2] and [len(s[-1]) for s in cut] == [1, 1, 1]
    np.testing.assert_array_equal(cut[0][-1], whole[-1])
    for s in cut[1:]:
        np.testing.assert_array_equal(s[-1], whole[0][:1])
    # One shard of one is the pass itself, its dynamic draws too.
    one, plain = (list(stream.dataset(5, seed=7, binarize="dynamic", **kw).as_numpy_iterator())
                  for kw in ({"shard": (0, 1)}, {}))
    assert all(np.array_equal(a, b) for a, b in zip(one, plain)) and len(one) == len(plain)
    with pytest.raises(ValueError, match="shard"):
        stream.dataset(share, shard=(3, 3))


def test_large_splits_stream_small_ones_are_cached(tmp_path):
    _write_folder(tmp_path, per_class=10)
    config = Config(dataset=str(tmp_path), conditional=True)
    cached = input_pipeline.load_splits(config)
    assert isinstance(cached.x_train, np.ndarray)
    assert config.cache_mb > cached.x_train.nbytes / 2**20
    # Over --cache_mb: decoded once into a temporary file, or (--nodisk_cache) from the files.
    decoded = input_pipeline.load_splits(config.replace(cache_mb=0))
    streamed = input_pipeline.load_splits(config.replace(cache_mb=0, disk_cache=False))
    assert (decoded.x_train.kind, streamed.x_train.kind) == ("decoded", "folder")
    for splits in (decoded, streamed):
        assert splits.data_shape == cached.data_shape == (8, 6, 1)
        assert len(splits.x_train) == len(cached.x_train) and splits.num_classes == 3
        batches = list(input_pipeline.train_dataset(         # as read: not binarised
            config.replace(binarize="none"), input_pipeline.train_source(splits)[0],
            epoch=0).as_numpy_iterator())
        x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
        assert x.shape == cached.x_train.shape and sorted(y) == sorted(cached.y_train)
        assert _as_rows(x) == _as_rows(cached.x_train)


def test_without_room_or_leave_to_write_the_decoded_split_streams_from_its_files(
        tmp_path, monkeypatch, caplog):
    import shutil as shutil_lib

    _write_folder(tmp_path / "images", per_class=10)
    config = Config(dataset=str(tmp_path / "images"), cache_mb=0)
    usage = shutil_lib.disk_usage(tempfile.gettempdir())
    with caplog.at_level("INFO", logger="tfp_vae"):
        monkeypatch.setattr(shutil_lib, "disk_usage", lambda path: usage._replace(free=2**29))
        assert input_pipeline.load_splits(config).x_train.kind == "folder"
        assert "MiB free, not the 0 MiB of the decoded images and 1 GiB to spare" in caplog.text
        monkeypatch.undo()

        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(tempfile, "TemporaryFile", full)
        assert input_pipeline.load_splits(config).x_train.kind == "folder"
        assert "cannot write the decoded images to" in caplog.text
        assert "(No space left on device); streamed from its files instead" in caplog.text
        train_files = len(data.open_stream(str(tmp_path / "images"), "train"))
        assert f"streamed from {train_files} files" in caplog.text


def test_a_streamed_training_split_gives_its_codes_without_being_read_whole(tmp_path, monkeypatch):
    from tfp_vae import evaluate, factory

    _write_folder(tmp_path, per_class=500)      # ~1,200 for training: two batches of codes
    config = Config(dataset=str(tmp_path), binarize="none", cache_mb=0, latent_dim=3,
                    hidden_units=(8,), conditional=True)
    whole = data.load_arrays(str(tmp_path), "train")
    model = factory.build_vae(config, (8, 6, 1), num_classes=3)
    expected = evaluate.latent_means(model, (whole[0], whole[1]))
    read_whole = input_pipeline.load_split

    def refuse_train(config, split, limit=None):
        assert split != "train", "the streamed training split was read whole"
        return read_whole(config, split, limit)

    monkeypatch.setattr(input_pipeline, "load_split", refuse_train)
    codes, labels = evaluate.split_codes(model, config, "train")
    np.testing.assert_array_equal(labels, whole[1])
    np.testing.assert_array_equal(codes, expected)
    assert len(codes) > 1000 and evaluate.split_codes(model, config, "test")[0].shape[1] == 3


def test_a_decoded_split_passes_as_its_folder_does_and_reads_its_files_no_more(tmp_path):
    def passes(stream):
        return [[(x, y) for x, y in stream.dataset(7, with_labels=True, **kw).as_numpy_iterator()]
                for kw in (dict(seed=5, binarize="dynamic"), dict(seed=5, skip=3),
                           dict(seed=2, shard=(1, 2)), dict(shuffle=False))]

    before = set(os.listdir(tempfile.gettempdir()))
    _write_folder(tmp_path / "same", per_class=12)
    stream = data.open_stream(str(tmp_path / "same"), "train")
    decoded = stream.decoded()
    expected = passes(stream)
    for f in stream.files:
        os.remove(f)                                   # its passes read the temporary file only
    for a, b in zip(expected, passes(decoded), strict=True):
        assert len(a) == len(b) and all(np.array_equal(xa, xb) and np.array_equal(ya, yb)
                                        for (xa, ya), (xb, yb) in zip(a, b))
    assert decoded.kind == "decoded" and len(decoded) == len(stream)
    assert decoded.unreadable() is None
    assert decoded.pixel_bytes == len(stream) * 8 * 6 * 1 and sources.num_classes(decoded) == 3
    # The file has no name: nothing is left behind, however the process ends.
    left = set(os.listdir(tempfile.gettempdir())) - before
    assert not any(f.startswith("tfp_vae-") for f in left)
    # Resized images are kept as float32, as a pass computes them.
    for size in ((8, 6, 1), (5, 9, 1)):
        _write_folder(tmp_path / "mixed", classes=(f"{size[1]}",), per_class=5, shape=size)
    mixed = data.open_stream(str(tmp_path / "mixed"), "train", image_size="4,4")
    resized = mixed.decoded()
    assert resized.pixel_bytes == len(mixed) * 16 * 4
    np.testing.assert_array_equal(resized.arrays()[0], mixed.arrays()[0])
    assert not set(np.unique(resized.arrays()[0] * 255)) <= set(range(256))   # not 8-bit levels


def test_a_decoded_tfrecord_split_is_a_permutation_of_its_records(tmp_path):
    rows = _write_records(tmp_path / "a.tfrecord", 70) + _write_records(tmp_path / "b.tfrecord", 50)
    stream = data.open_stream(str(tmp_path / "*.tfrecord"), "train")
    decoded = stream.decoded()
    x, y = decoded.arrays()
    np.testing.assert_array_equal(x, stream.arrays()[0])
    np.testing.assert_array_equal(y, stream.arrays()[1])
    assert sources.num_classes(decoded) == sources.num_classes(stream) == 4
    assert decoded.pixel_bytes == len(stream) * 8 * 6 * 3 and len(stream) < len(rows)
    epoch = [(a, b) for a, b in decoded.dataset(16, seed=3, with_labels=True).as_numpy_iterator()]
    again = [a for a in decoded.dataset(16, seed=3).as_numpy_iterator()]
    shuffled = np.concatenate([a for a, _ in epoch])
    assert all(np.array_equal(a, b) for (a, _), b in zip(epoch, again))
    assert not np.array_equal(shuffled, x) and _as_rows(shuffled) == _as_rows(x)
    label_of = {image.tobytes(): label for image, label in zip(x, y)}     # each record's own
    assert all(label_of[image.tobytes()] == label for a, b in epoch for image, label in zip(a, b))
    assert decoded.limited(10).arrays()[0].shape == (10, 8, 6, 3)


def test_a_decoded_split_names_a_bad_file_before_anything_is_trained(tmp_path):
    from tfp_vae import train
    from tfp_vae.config import preset

    folder = _write_digits(tmp_path / "digits", 120, tf.io.encode_jpeg, "jpg")
    bad = data.open_stream(str(folder), "train").files[40]
    good = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(good[:len(good) // 2])             # a truncated JPEG mid-folder
    config = preset("tiny").replace(dataset=str(folder), batch_size=16, cache_mb=0, jit=False,
                                    figures=False, export=False, eval_iwae_k=2)
    with pytest.raises(DataError) as raised:
        train.train_and_evaluate(config, str(tmp_path / "run"), verbose=0)
    message = _one_line(raised)
    assert bad in message and "cannot be read" in message and "{{" not in message
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("with_validation", [False, True])
def test_a_prepared_tfds_set_streams_its_training_split_from_its_own_files(
        tmp_path, with_validation):
    from test_data import _tiny_tfds_class

    builder = _tiny_tfds_class(with_validation)(data_dir=str(tmp_path))
    builder.download_and_prepare()                   # generated locally: nothing downloaded
    config = Config(dataset=builder.name, data_dir=str(tmp_path), conditional=True,
                    binarize="none", cache_mb=0)
    whole = data.load_arrays(builder.name, "train", data_dir=str(tmp_path))   # TFDS's reader
    splits = input_pipeline.load_splits(config)
    assert isinstance(splits.x_train, sources.Stream) and splits.num_classes == 3
    assert len(splits.x_train) == len(whole[0]) == (30 if with_validation else 27)
    x, y = (np.concatenate(a) for a in zip(*input_pipeline.train_dataset(
        config, splits.x_train, epoch=0).as_numpy_iterator()))
    order = np.argsort(x[:, 0, 0, 0], kind="stable")  # the images are numbered by their grey
    np.testing.assert_array_equal(x[order], whole[0][np.argsort(whole[0][:, 0, 0, 0])])
    np.testing.assert_array_equal(y[order], whole[1][np.argsort(whole[0][:, 0, 0, 0])])
    assert data.tfds_train_stream("mnist_5k", str(tmp_path)) is None
    assert data.tfds_train_stream(builder.name, None) is None     # to be downloaded: whole


# ---------------------------------------------------------------- a streamed run resumes exactly


def test_streamed_run_stopped_mid_epoch_resumes_to_the_same_state(tmp_path):
    from test_faults import _terminate_when, assert_same_state, finish, start
    from tfp_vae import train
    from tfp_vae.config import preset

    folder = _write_digits(tmp_path / "digits", 200)
    run = ["--dataset=" + str(folder), "--epochs=3", "--conditional", "--verbosity=0",
           "--cache_mb=0"]                                 # stream it, small as it is
    ref, termed = str(tmp_path / "ref"), str(tmp_path / "termed")
    interrupted = start(termed, *run)
    watcher = threading.Thread(target=_terminate_when, args=(interrupted, "Epoch 2/"))
    watcher.start()
    # The uninterrupted reference trains here meanwhile, where TensorFlow is
    # loaded already, with the settings `start(..., *run)` gives the script.
    train.train_and_evaluate(
        preset("tiny").replace(dataset=str(folder), limit=128, batch_size=2, epochs=3,
                               conditional=True, cache_mb=0, jit=False, figures=False,
                               export=False, eval_iwae_k=2), ref, verbose=0)
    watcher.join()
    code, _, err = finish(interrupted)
    assert code == 130, err
    assert "decoded once into a temporary file" in err        # a run's stream, not memory
    step = int(err.strip().splitlines()[-1].split(" at step ")[1].split(";")[0])
    assert 64 < step < 128                                   # mid-epoch: skip() resumes it
    code, out, err = finish(start(termed, *run))
    assert code == 0 and f"Resuming from ckpt-{step}:" in out, err
    final = os.path.join("checkpoints", "ckpt-192")          # 3 epochs of 64 steps
    assert_same_state(os.path.join(ref, final), os.path.join(termed, final))


def test_a_corrupt_jpeg_in_a_stream_stops_with_its_name_and_the_fixed_run_resumes(tmp_path):
    from test_faults import finish, start

    folder = _write_digits(tmp_path / "digits", 160, tf.io.encode_jpeg, "jpg")
    stream = data.open_stream(str(folder), "train")
    steps = -(-len(stream) // 16)
    run = ["--dataset=" + str(folder), "--batch_size=16", "--limit=1000",
           "--steps_per_execution=1", "--verbosity=0", "--cache_mb=0",   # streamed, small as it is
           "--nodisk_cache"]                       # decoded as read: a bad file is found mid-epoch
    bad = stream.files[len(stream) // 2]
    good = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(good[:len(good) // 2])             # a truncated JPEG mid-folder
    # Broken before any checkpoint (in this process: the script's exit code
    # and one-line message for this DataError are checked below).
    from tfp_vae import train
    from tfp_vae.config import preset
    config = preset("tiny").replace(dataset=str(folder), batch_size=16, limit=1000, epochs=2,
                                    steps_per_execution=1, cache_mb=0, disk_cache=False,
                                    jit=False, figures=False, export=False,
                                    eval_iwae_k=2)      # as `start(..., *run)`
    with pytest.raises(DataError) as raised:
        train.train_and_evaluate(config, str(tmp_path / "afresh"), verbose=0)
    message = str(raised.value)
    assert bad in message and "cannot be read" in message and "\n" not in message, message
    assert "{{" not in message
    assert "stopped in epoch 1" in message and "(it starts afresh)" in message
    # Broken after a checkpoint: the re-run resumes from it once the file is fixed.
    # Its first epoch is trained here, where TensorFlow is loaded already; the
    # script's runs below resume it, and a resumed run must match config.json's
    # model and data settings, so they check that it is the script's run.
    with open(bad, "wb") as f:
        f.write(good)
    train.train_and_evaluate(config.replace(epochs=1), str(tmp_path / "run"), verbose=0)
    with open(bad, "wb") as f:
        f.write(good[:len(good) // 2])
    code, _, err = finish(start(tmp_path / "run", *run, "--epochs=2"))
    message = err.strip().splitlines()[-1]
    assert code == 2 and bad in message and "cannot be read" in message, err
    assert "Traceback" not in err
    assert f"stopped in epoch 2: " in message and f"resumes from ckpt-{steps})" in message
    with open(bad, "wb") as f:
        f.write(good)
    code, out, err = finish(start(tmp_path / "run", *run, "--epochs=2"))
    assert code == 0 and f"Resuming from ckpt-{steps}:" in out, err
    assert os.path.exists(tmp_path / "run" / "checkpoints" / f"ckpt-{2 * steps}.index")


def _scaling_benchmark():
    """scripts/benchmarks/scaling.py, the module of `benchmark.py --scaling`."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "scripts"))
    from benchmarks import scaling
    return scaling


def test_the_scaling_benchmark_writes_the_stream_it_says(tmp_path):
    scaling = _scaling_benchmark()
    pattern = scaling.write_shards(str(tmp_path), 4100)      # the 4,000 digits, then again
    x, y = data.open_stream(pattern, "train").arrays()
    digits, labels = data.load_arrays("mnist_5k", "train")
    assert x.shape == (4100, 28, 28, 1)
    np.testing.assert_array_equal(np.round(x[:4000] * 255), np.round(digits * 255))
    np.testing.assert_array_equal(x[4000:], x[:100])
    np.testing.assert_array_equal(y[:4000], labels)


def test_the_three_ways_to_resume_a_stream_give_the_same_batch(tmp_path):
    # --scaling's resume table times skipping as records (what a resumed run
    # does), skipping decoded batches and a saved iterator state; it is only
    # a comparison if all three resume at the same batch, which it checks.
    scaling = _scaling_benchmark()
    pattern = scaling.write_shards(str(tmp_path / "records"), 1000)
    os.makedirs(tmp_path / "state")
    row = scaling.resume_probe(pattern, 1000, 128, str(tmp_path / "state"))
    assert row["skipped_batches"] == 4 and row["iterator_state_mb"] > 0
    assert "| 1,000 | 4 |" in scaling.resume_table([row])
