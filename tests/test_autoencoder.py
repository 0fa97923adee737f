"""The deterministic autoencoder: tied weights, its loss, one epoch, `.keras` round trip."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import factory, tied
from tfp_vae.experiments import baselines
from tfp_vae.config import Config, ConfigError
from tfp_vae.models import Autoencoder

DATA_SHAPE = (4, 4, 1)
UNITS = (12, 6)
K = 3


def build(tied, data_shape=DATA_SHAPE, units=UNITS, latent_dim=K, decoder="normal", **kw):
    keras.utils.set_random_seed(0)
    config = Config(hidden_units=units, latent_dim=latent_dim, decoder=decoder, **kw)
    return factory.build_autoencoder(config, data_shape, tied=tied)


def images(n=8, shape=DATA_SHAPE, seed=0):
    return np.random.default_rng(seed).uniform(size=(n,) + shape).astype(np.float32)


def test_tied_decoder_kernels_are_the_encoder_variables_and_only_biases_are_new():
    ae = build(tied=True)
    encoder_dense = tied.dense_layers(ae.encoder)
    assert len(encoder_dense) == len(UNITS) + 1
    # Decoder layer l uses the kernel of encoder layer L - l + 1: the same object.
    for l, transpose in enumerate(ae.decoder.transposes):
        assert transpose.kernel is encoder_dense[-1 - l].kernel
    sizes = [math.prod(DATA_SHAPE), *UNITS, K]
    kernels = sum(a * b for a, b in zip(sizes, sizes[1:]))
    encoder_biases = sum(sizes[1:])
    decoder_biases = sum(sizes[:-1])
    assert ae.count_params() == kernels + encoder_biases + decoder_biases
    assert len(ae.trainable_variables) == 3 * len(encoder_dense)     # each kernel listed once
    untied = build(tied=False)
    assert untied.count_params() - ae.count_params() == kernels


def test_gradients_reach_the_shared_kernels_from_both_sides():
    ae = build(tied=True)
    x = images()
    dense = tied.dense_layers(ae.encoder)
    kernels = [d.kernel for d in dense]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(ae.losses_per_example(x)[0])
    tied_grads = tape.gradient(loss, kernels)

    # Reference: the same network written out with separate encoder and
    # decoder copies of each kernel; the tied gradient is the sum of both.
    enc = [tf.Variable(k) for k in kernels]
    dec = [tf.Variable(k) for k in kernels]
    enc_b = [d.bias for d in dense]
    dec_b = [t.bias for t in ae.decoder.transposes]
    with tf.GradientTape(persistent=True) as tape:
        h = tf.reshape(x, [len(x), -1])
        for i, (w, b) in enumerate(zip(enc, enc_b)):
            h = h @ w + b
            h = tf.nn.relu(h) if i < len(enc) - 1 else h
        for i, (w, b) in enumerate(zip(dec[::-1], dec_b)):
            h = h @ tf.transpose(w) + b
            h = tf.nn.relu(h) if i < len(dec) - 1 else h
        reference = tf.reduce_mean(tf.reduce_sum(tf.square(tf.reshape(x, [len(x), -1]) - h), 1))
    np.testing.assert_allclose(loss.numpy(), reference.numpy(), rtol=1e-5)
    from_encoder = tape.gradient(reference, enc)
    from_decoder = tape.gradient(reference, dec)
    for g, ge, gd in zip(tied_grads, from_encoder, from_decoder):
        assert float(tf.norm(ge)) > 0 and float(tf.norm(gd)) > 0
        np.testing.assert_allclose(g.numpy(), (ge + gd).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("decoder", ["bernoulli", "normal"])
def test_losses_are_the_negative_log_likelihoods_of_decode(decoder):
    ae = build(tied=False, decoder=decoder)
    x = images()
    loss, squared = ae.losses_per_example(x)
    nll = -ae.decode(ae.encode(x).mean()).log_prob(x)
    d = math.prod(DATA_SHAPE)
    if decoder == "bernoulli":
        np.testing.assert_allclose(loss.numpy(), nll.numpy(), rtol=1e-5)
    else:  # -ln N(x; x̂, I) = ½‖x − x̂‖² + (D/2) ln 2π
        np.testing.assert_allclose(loss.numpy(), 2 * nll.numpy() - d * math.log(2 * math.pi),
                                   rtol=1e-5)
    x_hat = ae(x).numpy()
    np.testing.assert_allclose(squared.numpy(), np.sum((x - x_hat) ** 2, axis=(1, 2, 3)),
                               rtol=1e-5)
    assert ae.encode(x).event_shape == (K,) and ae.latent_dim == K


@pytest.mark.parametrize("tied,arch", [(True, "mlp"),
                                       pytest.param(False, "conv", marks=pytest.mark.slow)])
def test_one_jit_epoch_on_digits_lowers_the_test_squared_error(tied, arch):
    config = Config(limit=1000, hidden_units=(128,), latent_dim=8, epochs=1, batch_size=50,
                    binarize="none", arch=arch)
    splits = baselines.load_splits(config)
    x_train, x_test = splits["train"][0], splits["test"][0][:200]
    keras.utils.set_random_seed(0)
    ae = factory.build_autoencoder(config, x_train.shape[1:], tied=tied)
    before = baselines.squared_error(x_test, baselines.predict(ae, x_test))
    history = baselines.fit(ae, config, x_train)
    after = baselines.squared_error(x_test, baselines.predict(ae, x_test))
    assert set(history) == {"loss", "squared_error"} and np.isfinite(history["loss"][0])
    assert after < 0.6 * before        # ~190 at initialisation (sigmoid ≈ 0.5 everywhere)


def test_tied_autoencoder_keras_round_trip_keeps_the_tie(tmp_path):
    ae = build(tied=True, decoder="bernoulli")
    x = images()
    ae.compile(optimizer="adam", jit_compile=False)
    ae.fit(x, epochs=1, batch_size=4, verbose=0)      # weights move away from their init
    path = str(tmp_path / "ae.keras")
    ae.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, Autoencoder) and loaded.loss_kind == "bernoulli"
    np.testing.assert_allclose(loaded(x).numpy(), ae(x).numpy(), rtol=1e-6, atol=1e-7)
    encoder_dense = tied.dense_layers(loaded.encoder)
    for l, transpose in enumerate(loaded.decoder.transposes):
        assert transpose.kernel is encoder_dense[-1 - l].kernel
    assert loaded.count_params() == ae.count_params()
    # A step on the loaded model moves decoder and encoder together.
    loaded.compile(optimizer="adam", jit_compile=False)
    loaded.fit(x, epochs=1, batch_size=4, verbose=0)
    assert loaded.decoder.transposes[-1].kernel is encoder_dense[0].kernel


def test_bad_settings_raise_one_line_errors():
    encoder = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(2)])
    decoder = keras.Sequential([keras.layers.Dense(16), keras.layers.Reshape(DATA_SHAPE)])
    errors = []
    with pytest.raises(ValueError) as info:
        Autoencoder(encoder, decoder, loss="l1")
    errors.append(info)
    with pytest.raises(TypeError) as info:
        tied.TiedDecoder(DATA_SHAPE).tie(keras.Sequential([keras.layers.Conv2D(2, 3)]))
    errors.append(info)
    with pytest.raises(ConfigError) as info:
        build(tied=True, arch="conv", data_shape=(28, 28, 1))
    errors.append(info)
    encoder(tf.zeros((1,) + DATA_SHAPE))
    wrong_shape = tied.TiedDecoder((5, 5, 1))
    wrong_shape.tie(encoder)
    with pytest.raises(ValueError) as info:
        wrong_shape.build((None, 2))
    errors.append(info)
    for info in errors:
        assert "\n" not in str(info.value)
