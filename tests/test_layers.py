"""Distribution layers: shapes, dtypes, closed-form KL, serialisation, mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import layers

tfd = tfp.distributions

DATA_SHAPE = (8, 8, 1)


def conv_encoder_body():
    return keras.Sequential([keras.layers.Conv2D(4, 3, strides=2, padding="same",
                                                 activation="relu")])


def conv_decoder_body():
    return keras.Sequential([keras.layers.Dense(4 * 4 * 4, activation="relu"),
                             keras.layers.Reshape((4, 4, 4)),
                             keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same")])


# Each case: a layer factory, its input shape, expected batch and event shape.
CASES = {
    "encoder_mlp": (lambda: layers.GaussianEncoder(3, hidden_units=(16,)), DATA_SHAPE, (3,)),
    "encoder_affine": (lambda: layers.GaussianEncoder(3, hidden_units=()), DATA_SHAPE, (3,)),
    "encoder_conv": (lambda: layers.GaussianEncoder(3, body=conv_encoder_body()),
                     DATA_SHAPE, (3,)),
    "bernoulli_mlp": (lambda: layers.BernoulliDecoder(DATA_SHAPE, hidden_units=(16,)),
                      (3,), DATA_SHAPE),
    "bernoulli_conv": (lambda: layers.BernoulliDecoder(DATA_SHAPE, body=conv_decoder_body()),
                       (3,), DATA_SHAPE),
    "normal_fixed": (lambda: layers.NormalDecoder(DATA_SHAPE, scale=0.5, hidden_units=(16,)),
                     (3,), DATA_SHAPE),
    "normal_scalar": (lambda: layers.NormalDecoder(DATA_SHAPE, scale="scalar",
                                                   hidden_units=()), (3,), DATA_SHAPE),
    "normal_diagonal": (lambda: layers.NormalDecoder(DATA_SHAPE, scale="diagonal",
                                                     hidden_units=(16,)), (3,), DATA_SHAPE),
    "normal_conv": (lambda: layers.NormalDecoder(DATA_SHAPE, scale="scalar",
                                                 body=conv_decoder_body()), (3,), DATA_SHAPE),
}


def _input(shape, batch=5, seed=0):
    return tf.random.stateless_uniform((batch,) + shape, seed=(seed, 1))


@pytest.mark.parametrize("case", sorted(CASES))
def test_shapes_dtype_and_params_size(case):
    make, in_shape, event = CASES[case]
    layer = make()
    dist = layer(_input(in_shape))
    assert isinstance(dist, tfd.Distribution)
    assert dist.batch_shape == [5]
    assert dist.event_shape == list(event)
    assert dist.dtype == tf.float32
    sample = dist.sample(seed=(1, 2))
    assert sample.shape == (5,) + event
    assert dist.log_prob(sample).shape == (5,)
    assert np.all(np.isfinite(dist.log_prob(sample).numpy()))
    head_units = layer.head.kernel.shape[-1]
    if case.startswith("encoder"):
        assert head_units == layers.GaussianEncoder.params_size(3) == 6
    elif "conv" in case:   # per-pixel head on a spatial body
        assert head_units == DATA_SHAPE[-1]
    else:
        assert head_units == type(layer).params_size(DATA_SHAPE) == np.prod(DATA_SHAPE)


@pytest.mark.parametrize("case", sorted(CASES))
def test_get_config_round_trip_gives_identical_outputs(case):
    make, in_shape, _ = CASES[case]
    layer = make()
    x = _input(in_shape)
    dist = layer(x)
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    clone.build((None,) + in_shape)
    clone.set_weights(layer.get_weights())
    assert type(clone) is type(layer)
    np.testing.assert_array_equal(clone(x).mean().numpy(), dist.mean().numpy())
    np.testing.assert_array_equal(clone(x).stddev().numpy(), dist.stddev().numpy())


def test_encoder_analytic_kl_is_the_closed_form():
    encoder = layers.GaussianEncoder(4, hidden_units=(16,))
    q = encoder(_input(DATA_SHAPE, batch=7) * 3.0)
    prior = tfd.MultivariateNormalDiag(loc=tf.zeros(4))
    mu, sigma = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    closed_form = 0.5 * np.sum(sigma**2 + mu**2 - np.log(sigma**2) - 1.0, axis=-1)
    np.testing.assert_allclose(tfd.kl_divergence(q, prior).numpy(), closed_form, rtol=1e-5)


def test_monte_carlo_kl_converges_to_the_analytic_kl():
    encoder = layers.GaussianEncoder(4, hidden_units=(16,))
    q = encoder(_input(DATA_SHAPE, batch=6) * 3.0)
    prior = tfd.MultivariateNormalDiag(loc=tf.zeros(4))
    exact = tfd.kl_divergence(q, prior).numpy()
    errors = []
    for i, n in enumerate((10, 1000, 100000)):
        z = q.sample(n, seed=(3, i))
        terms = (q.log_prob(z) - prior.log_prob(z)).numpy()       # [n, B]
        estimate = terms.mean(0)
        stderr = terms.std(0) / np.sqrt(n)
        # Unbiased: within 5 standard errors at every sample size.
        assert np.all(np.abs(estimate - exact) < 5 * stderr + 1e-4)
        errors.append(np.max(np.abs(estimate - exact) / exact))
    # Converges: at 100,000 draws the estimate is within 1% of the closed form.
    assert errors[-1] < 0.01 and errors[-1] < errors[0]


def test_bernoulli_log_prob_is_negative_cross_entropy():
    decoder = layers.BernoulliDecoder((4,), hidden_units=())
    z = _input((2,), batch=3)
    p = decoder(z)
    x = tf.constant([[0.0, 1.0, 0.3, 1.0]] * 3)
    probs = p.mean().numpy().astype(np.float64)
    xx = x.numpy()
    bce = -(xx * np.log(probs) + (1 - xx) * np.log1p(-probs)).sum(-1)
    np.testing.assert_allclose(-p.log_prob(x).numpy(), bce, rtol=1e-5)


def test_normal_decoder_unit_scale_is_half_squared_error():
    decoder = layers.NormalDecoder((4,), scale=1.0, hidden_units=(8,))
    p = decoder(_input((2,), batch=3))
    x = _input((4,), batch=3, seed=5)
    sq = ((x - p.mean()).numpy() ** 2).sum(-1)
    np.testing.assert_allclose(-p.log_prob(x).numpy(), 0.5 * sq + 2 * np.log(2 * np.pi),
                               rtol=1e-5)


def test_learned_scales_are_trainable_variables():
    scalar = layers.NormalDecoder((4,), scale="scalar", hidden_units=())
    diagonal = layers.NormalDecoder((4,), scale="diagonal", hidden_units=())
    for decoder, shape in ((scalar, ()), (diagonal, (4,))):
        decoder(_input((2,)))
        assert decoder.raw_scale.shape == shape
        assert any(v is decoder.raw_scale for v in decoder.trainable_variables)
        np.testing.assert_allclose(decoder.scale_tensor().numpy(), 1.0 + 1e-4, rtol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_heads_compute_in_float32_under_mixed_precision(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        encoder = layers.GaussianEncoder(3, hidden_units=(16,))
        decoder = layers.BernoulliDecoder(DATA_SHAPE, hidden_units=(16,))
        q = encoder(_input(DATA_SHAPE))
        p = decoder(q.sample(seed=(1, 1)))
        assert encoder.body.layers[0].compute_dtype == policy.split("_")[1]
        assert q.dtype == tf.float32 and p.dtype == tf.float32
        assert p.log_prob(_input(DATA_SHAPE)).dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_dense_transpose_shares_the_kernel_variable():
    dense = keras.layers.Dense(3)
    dense(tf.zeros([1, 5]))
    tied = layers.DenseTranspose(dense, activation="sigmoid")
    x = _input((3,))
    y = tied(x)
    assert y.shape == (5, 5)
    np.testing.assert_allclose(
        y.numpy(), tf.sigmoid(x @ tf.transpose(dense.kernel) + tied.bias).numpy(), rtol=1e-6)
    # The kernel is the Dense's own variable; only the bias [5] is new.
    assert len(tied.trainable_variables) == 2
    assert tied.trainable_variables[0] is dense.kernel
    assert tied.bias.shape == (5,)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tied(x))
    assert tape.gradient(loss, dense.kernel) is not None


@pytest.mark.parametrize("bad", [
    lambda: layers.GaussianEncoder(0),
    lambda: layers.GaussianEncoder(2, hidden_units=(0,)),
    lambda: layers.BernoulliDecoder(()),
    lambda: layers.NormalDecoder((4,), scale=-1.0),
    lambda: layers.NormalDecoder((4,), scale="full"),
])
def test_bad_arguments_raise_clear_errors(bad):
    with pytest.raises(ValueError) as info:
        bad()
    assert "\n" not in str(info.value)


def test_logit_bernoulli_is_tfps_bernoulli_with_a_cheaper_log_prob():
    logits = tf.constant(np.random.default_rng(0).normal(0, 12, size=(64, 50)), tf.float32)
    x = tf.constant(np.random.default_rng(1).uniform(size=(64, 50)) < 0.4, tf.float32)
    grey = tf.constant(np.random.default_rng(2).uniform(size=(64, 50)), tf.float32)
    ours = layers.LogitBernoulli(logits=logits, dtype=tf.float32)
    theirs = tfd.Bernoulli(logits=logits, dtype=tf.float32)
    for value in (x, grey):
        np.testing.assert_allclose(ours.log_prob(value), theirs.log_prob(value),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.mean(), theirs.mean())
    np.testing.assert_allclose(tfd.kl_divergence(ours, theirs), 0.0, atol=1e-5)
    assert isinstance(ours[:2], layers.LogitBernoulli)          # slicing keeps the type
    with_probs = layers.LogitBernoulli(probs=[0.25], dtype=tf.float32)     # TFP's own path
    np.testing.assert_allclose(with_probs.log_prob([1.0]), np.log(0.25), rtol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_standard_normal_draws_are_standard_normal(compiled):
    from scipy import stats
    draw = tf.function(layers.standard_normal, jit_compile=True) if compiled else \
        layers.standard_normal
    eps = draw([1000, 500], tf.constant([7, 8])).numpy().ravel().astype(np.float64)
    n = eps.size
    assert np.all(np.isfinite(eps))
    # The uniforms are midpoints (2k+1)·2⁻²⁴: never 0 or 1, so |ε| is bounded.
    assert np.abs(eps).max() <= float(tf.math.ndtri(1.0 - 2.0**-24)) + 1e-6
    assert abs(eps.mean()) < 5 / np.sqrt(n)                        # 5 standard errors
    assert abs(eps.var() - 1.0) < 5 * np.sqrt(2.0 / n)
    assert abs(stats.kurtosis(eps)) < 5 * np.sqrt(24.0 / n)        # normal tails
    assert stats.kstest(eps, "norm").pvalue > 1e-3
    again = draw([1000, 500], tf.constant([7, 8])).numpy().ravel()
    other = draw([1000, 500], tf.constant([7, 9])).numpy().ravel()
    np.testing.assert_array_equal(again, eps.astype(np.float32))   # a stateless seed
    assert np.mean(other == again) < 0.01


def test_standard_normal_dtypes():
    for dtype in (tf.float64, tf.bfloat16, tf.float16):
        eps = layers.standard_normal([4000], (1, 2), dtype)
        assert eps.dtype == dtype and np.all(np.isfinite(eps.numpy().astype(np.float64)))
    wide = layers.standard_normal([200000], (1, 2), tf.float64).numpy()
    assert abs(wide.std() - 1.0) < 5 * np.sqrt(0.5 / wide.size)


def test_ndtri_normal_diag_is_tfps_distribution_with_its_own_draws():
    rng = np.random.default_rng(0)
    loc = tf.constant(rng.normal(size=(3, 4)), tf.float32)
    scale = tf.constant(rng.uniform(0.2, 3.0, size=(3, 4)), tf.float32)
    ours = layers.NdtriNormalDiag(loc=loc, scale_diag=scale)
    theirs = tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale)
    assert isinstance(ours, tfd.MultivariateNormalDiag)
    z = ours.sample(100000, seed=(5, 6))                             # [n, 3, 4]
    assert z.shape == (100000, 3, 4)
    assert ours.sample([2, 5], seed=(5, 6)).shape == (2, 5, 3, 4)
    assert ours.sample(seed=(5, 6)).shape == (3, 4)
    assert ours.sample(2).shape == (2, 3, 4)                         # stateful: TFP's sampler
    # The same law: log_prob, KL and moments are TFP's; draws match them.
    np.testing.assert_allclose(ours.log_prob(z), theirs.log_prob(z), rtol=1e-5)
    np.testing.assert_allclose(tfd.kl_divergence(ours, theirs), 0.0, atol=1e-6)
    stderr = scale.numpy() / np.sqrt(100000)
    assert np.all(np.abs(z.numpy().mean(0) - loc.numpy()) < 5 * stderr)
    assert np.all(np.abs(z.numpy().std(0) / scale.numpy() - 1.0) < 5 / np.sqrt(2 * 100000))
    # log_prob of a fresh sample (through the bijector's cache) equals a copy's.
    fresh = ours.sample(7, seed=(1, 1))
    np.testing.assert_allclose(ours.log_prob(fresh), theirs.log_prob(tf.identity(fresh)),
                               rtol=1e-5)


def test_ndtri_normal_diag_samples_are_reparameterised():
    loc = tf.Variable([[0.5, -1.0]])
    scale = tf.Variable([[2.0, 0.3]])
    with tf.GradientTape(persistent=True) as tape:
        z = layers.NdtriNormalDiag(loc=loc, scale_diag=scale).sample(50, seed=(2, 3))
        total = tf.reduce_sum(z)
    eps = (z - loc) / scale
    np.testing.assert_allclose(tape.gradient(total, loc), [[50.0, 50.0]])
    np.testing.assert_allclose(tape.gradient(total, scale), tf.reduce_sum(eps, 0), rtol=1e-5)


def test_gaussian_encoder_returns_the_fast_sampling_normal():
    q = layers.GaussianEncoder(3, hidden_units=(8,))(_input(DATA_SHAPE, batch=2))
    assert isinstance(q, layers.NdtriNormalDiag)


def test_standard_normal_maps_the_uniform_grid_to_finite_symmetric_draws(monkeypatch):
    # TF's float32 uniforms are k·2⁻²³, k = 0 .. 2²³−1: the ends of that grid
    # must give finite draws of equal size, and the middle ones ±0 apart.
    grid = tf.constant([0.0, 2.0**-23, 0.5 - 2.0**-23, 0.5, 1.0 - 2.0**-23], tf.float32)
    monkeypatch.setattr(tf.random, "stateless_uniform", lambda *args, **kwargs: grid)
    eps = layers.standard_normal([5], (0, 0)).numpy()
    assert np.all(np.isfinite(eps))
    np.testing.assert_allclose(eps[0], -eps[4], rtol=1e-6)
    np.testing.assert_allclose(eps[2], -eps[3], rtol=1e-4)
    assert eps[0] < eps[1] < eps[2] < 0 < eps[3]
