"""Distribution layers: shapes, dtypes, log-likelihoods, serialisation, mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import distributions, layers

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
    "encoder_bounded": (lambda: layers.GaussianEncoder(3, hidden_units=(16,), min_scale=0.05,
                                                       max_scale=0.6), DATA_SHAPE, (3,)),
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
    lambda: layers.GaussianEncoder(2, min_scale=0.1, max_scale=0.1),
])
def test_bad_arguments_raise_clear_errors(bad):
    with pytest.raises(ValueError) as info:
        bad()
    assert "\n" not in str(info.value)


def test_an_encoders_scales_stay_within_its_bounds_and_a_clipped_one_gets_no_gradient():
    encoder = layers.GaussianEncoder(4, hidden_units=(), min_scale=0.05, max_scale=2.72,
                                     data_shape=(2,))
    encoder.build((None, 2))
    kernel, bias = encoder.head.kernel, encoder.head.bias
    # Raw scales of -20, -1, 1 and 20 (kernel zero): softplus + 0.05, the last clipped.
    kernel.assign(tf.zeros_like(kernel))
    bias.assign([0.0, 0.0, 0.0, 0.0, -20.0, -1.0, 1.0, 20.0])
    with tf.GradientTape() as tape:
        scale = encoder(tf.zeros([1, 2])).stddev()[0]
    expected = np.minimum(np.log1p(np.exp([-20.0, -1.0, 1.0, 20.0])) + 0.05, 2.72)
    np.testing.assert_allclose(scale.numpy(), expected, rtol=1e-6)
    assert scale[0] > 0.05 and scale[3] == np.float32(2.72)
    grad = tape.jacobian(scale, bias).numpy()[:, 4:]      # d scale_i / d raw_j
    np.testing.assert_allclose(np.diag(grad)[:3], 1 / (1 + np.exp([20.0, 1.0, -1.0])),
                               rtol=1e-5)
    assert np.diag(grad)[3] == 0


def test_gaussian_encoder_returns_the_fast_sampling_normal():
    q = layers.GaussianEncoder(3, hidden_units=(8,))(_input(DATA_SHAPE, batch=2))
    assert isinstance(q, distributions.NdtriNormalDiag)


# -- TFP's batch-shape rule: every leading axis is batch -------------------------------


@pytest.mark.parametrize("name", ["encoder_mlp", "encoder_conv", "bernoulli_mlp",
                                  "bernoulli_conv", "normal_diagonal"])
def test_leading_axes_are_batch_and_match_one_call_per_slice(name):
    make, in_shape, event = CASES[name]
    layer = make()
    x = _input(in_shape, batch=4 * 3).numpy().reshape((4, 3) + in_shape)     # [S, B, *in]
    # Built by a first call with one batch axis (a decoder's z is a vector
    # whatever the first call; an encoder can be given its data_shape instead).
    one = layer(x[2])
    assert one.batch_shape == (3,)
    dist = layer(x)
    assert dist.batch_shape == (4, 3) and dist.event_shape == event
    np.testing.assert_allclose(dist.mean().numpy()[2], one.mean().numpy(), rtol=1e-5, atol=1e-6)
    single = layer(x[2, 1])                            # no batch axis: batch []
    assert single.batch_shape == ()
    np.testing.assert_allclose(single.mean().numpy(), one.mean().numpy()[1], rtol=1e-5,
                               atol=1e-6)


def test_a_decoder_of_several_draws_is_each_draw_decoded_alone():
    encoder = layers.GaussianEncoder(3, hidden_units=(16,), data_shape=DATA_SHAPE)
    decoder = layers.BernoulliDecoder(DATA_SHAPE, hidden_units=(16,))
    x = _input(DATA_SHAPE, batch=6)
    z = encoder(x).sample(5, seed=(1, 2))                               # [5, 6, 3]
    p = decoder(z)
    assert p.batch_shape == (5, 6)
    log_px = p.log_prob(x).numpy()                                      # x broadcasts: [5, 6]
    for s in range(5):
        np.testing.assert_allclose(log_px[s], decoder(z[s]).log_prob(x).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"expects input of shape \[\.\.\., 3\]; got \[6, 4\]"):
        decoder(tf.zeros([6, 4]))


def test_an_encoder_given_its_data_shape_reads_a_first_call_with_sample_axes():
    encoder = layers.GaussianEncoder(2, hidden_units=(8,), data_shape=DATA_SHAPE)
    q = encoder(tf.zeros((7, 3) + DATA_SHAPE))
    assert q.batch_shape == (7, 3)
    with pytest.raises(ValueError, match="expects input of shape"):
        encoder(tf.zeros([3, 64]))


def test_a_decoder_first_called_with_sample_axes_reads_the_last_one_as_z():
    decoder = layers.BernoulliDecoder(DATA_SHAPE, hidden_units=(8,))
    assert decoder(tf.zeros([5, 3, 2])).batch_shape == (5, 3)     # built here: K = 2
    assert decoder(tf.zeros([3, 2])).batch_shape == (3,)
