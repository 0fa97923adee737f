"""tfp_vae.bodies: the gated dense layer of the VampPrior reference models."""

import keras
import numpy as np
import tensorflow as tf
from scipy.special import expit

from tfp_vae import bodies, factory
from tfp_vae.config import Config


def test_gated_dense_is_a_linear_map_times_a_sigmoid_gate():
    layer = bodies.GatedDense(3)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    out = layer(x).numpy()
    kernel, bias = (w.astype(np.float64) for w in layer.get_weights())   # [5, 6], [6]
    linear, gate = np.split(x @ kernel + bias, 2, axis=-1)
    np.testing.assert_allclose(out, linear * expit(gate), rtol=1e-5, atol=1e-6)
    assert out.shape == (4, 3)
    # He-normal kernels as in the reference code: sd √(2 / fan-in).
    big = bodies.GatedDense(2000)
    big.build((None, 500))
    sd = float(np.std(big.get_weights()[0]))          # 2·10⁶ draws: its own error is 0.05%
    assert abs(sd - np.sqrt(2 / 500)) < 0.01 * sd


def test_the_gated_reference_model_has_the_reference_parameter_count():
    # VampPrior's "VAE" on 28x28 binary images, latent 40: GatedDense(784, 300),
    # GatedDense(300, 300), two Linear(300, 40); GatedDense(40, 300),
    # GatedDense(300, 300), Linear(300, 784): 1,116,864 parameters (+ our β).
    config = Config(body="gated", hidden_units=(300, 300), latent_dim=40)
    vae = factory.build_vae(config, (28, 28, 1))
    assert vae.count_params() == 1_116_864 + 1


def test_a_gated_vae_round_trips_through_dot_keras(tmp_path):
    config = Config(body="gated", hidden_units=(16,), latent_dim=3)
    vae = factory.build_vae(config, (28, 28, 1))
    path = str(tmp_path / "gated.keras")
    vae.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = tf.random.stateless_uniform([2, 28, 28, 1], seed=(1, 2))
    np.testing.assert_array_equal(loaded(x).numpy(), vae(x).numpy())
    assert isinstance(loaded.encoder.body.layers[1], bodies.GatedDense)
