"""Colour images: the discretised logistic likelihood of 8-bit pixels, bits per
dimension, the resnet bodies, and a VAE of both trained, saved and exported.

The likelihood is checked against the logistic CDF of scipy in float64 and
against TFP's own QuantizedDistribution; bits per dimension against the
nats of the same run."""

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import stats

from tfp_vae import bodies, evaluate, factory, layers, train
from tfp_vae.config import ConfigError, preset
from tfp_vae.distributions import DiscretizedLogistic

tfd = tfp.distributions

LEVELS = np.arange(256)
GRID = (LEVELS / 255).astype(np.float32)            # the values x an 8-bit image holds


def _parameters(n=60, seed=0):
    """loc in and beyond [0, 1], scales from a hundredth of a level to twice the range."""
    rng = np.random.default_rng(seed)
    loc = rng.uniform(-0.3, 1.3, n)
    scale = np.exp(rng.uniform(np.log(3e-5), np.log(2.0), n))
    return loc.astype(np.float32), scale.astype(np.float32)


def _reference_log_probs(loc, scale):
    """ln P(level k) `[256, N]` in float64 from scipy's logistic: CDF differences on
    the left of loc, survival-function differences on its right (no cancellation),
    the edge bins taking the tails."""
    loc, scale = np.float64(loc), np.float64(scale)
    upper = (LEVELS[:, None] + 0.5) / 255
    lower = (LEVELS[:, None] - 0.5) / 255
    by_cdf = stats.logistic.cdf(upper, loc, scale) - stats.logistic.cdf(lower, loc, scale)
    by_sf = stats.logistic.sf(lower, loc, scale) - stats.logistic.sf(upper, loc, scale)
    p = np.where(lower > loc, by_sf, by_cdf)
    p[0] = stats.logistic.cdf(upper[0], loc, scale)
    p[-1] = stats.logistic.sf(lower[-1], loc, scale)
    with np.errstate(divide="ignore"):
        return np.log(p)


# -- the distribution --------------------------------------------------------------------


def test_log_prob_is_the_logistic_mass_of_the_level_in_float64():
    loc, scale = _parameters()
    got = DiscretizedLogistic(loc, scale).log_prob(GRID[:, None]).numpy()      # [256, N]
    want = _reference_log_probs(loc, scale)
    representable = want > -700                  # float64 underflows below e^-745
    assert representable.mean() > 0.8 and want[representable].min() < -300
    # float32 holds a bin edge minus loc to about 2 ulps (2·6e-8), which moves the
    # standardised edges by that over the scale, and ln P at most by as much.
    edge_error = 2 * np.finfo(np.float32).eps / 2 / scale[None, :] * np.ones_like(want)
    error = np.abs(got - want)[representable]
    tolerance = (1e-5 * np.abs(want) + 1e-5 + 4 * edge_error)[representable]
    assert np.all(error <= tolerance), float(np.max(error / tolerance))
    assert np.all(np.isfinite(got)), "float32 keeps every bin finite, even far in a tail"


def test_log_prob_agrees_with_tfps_quantized_logistic_on_integer_levels():
    loc, scale = _parameters(seed=1)
    # TFP's QuantizedDistribution puts level k on (k − 1, k]: shift the logistic by ½.
    quantized = tfd.QuantizedDistribution(
        tfd.Logistic(255 * np.float64(loc) - 0.5, 255 * np.float64(scale)), low=0.0, high=255.0)
    want = quantized.log_prob(np.float64(LEVELS[:, None])).numpy()
    got = DiscretizedLogistic(loc, scale).log_prob(GRID[:, None]).numpy()
    finite = want > -80
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4)


def test_the_256_levels_hold_all_the_mass_of_every_pixel():
    loc, scale = _parameters(seed=2)
    loc = np.concatenate([loc, [-5.0, 6.0, 0.5, 0.5]]).astype(np.float32)
    scale = np.concatenate([scale, [0.1, 0.1, 1e-6, 50.0]]).astype(np.float32)
    p = np.exp(DiscretizedLogistic(loc, scale).log_prob(GRID[:, None]).numpy().astype(np.float64))
    np.testing.assert_allclose(p.sum(0), 1.0, atol=2e-6)


def test_x_is_read_as_its_nearest_level_and_the_edges_hold_what_lies_beyond():
    d = DiscretizedLogistic(np.float32(0.3), np.float32(0.05))
    np.testing.assert_array_equal(d.log_prob(GRID + 0.4 / 255).numpy(), d.log_prob(GRID).numpy())
    np.testing.assert_array_equal(d.log_prob([-0.2, 1.5]).numpy(), d.log_prob([0.0, 1.0]).numpy())


def test_mean_and_variance_are_the_exact_moments_over_the_levels():
    loc, scale = _parameters(seed=3)
    d = DiscretizedLogistic(loc, scale)
    p = np.exp(_reference_log_probs(loc, scale))                              # [256, N]
    mean = (p * LEVELS[:, None] / 255).sum(0)
    variance = (p * (LEVELS[:, None] / 255 - mean) ** 2).sum(0)
    got_mean = d.mean().numpy()
    assert got_mean.min() >= 0.0 and got_mean.max() <= 1.0
    np.testing.assert_allclose(got_mean, mean, atol=2e-6)
    np.testing.assert_allclose(d.stddev().numpy(), np.sqrt(variance), rtol=1e-3, atol=2e-6)


def test_samples_lie_on_the_grid_with_the_levels_frequencies():
    loc = np.array([0.02, 0.5, 0.97], np.float32)
    scale = np.array([0.03, 0.01, 0.02], np.float32)
    n = 20000
    draws = DiscretizedLogistic(loc, scale).sample(n, seed=(3, 4)).numpy()     # [n, 3]
    levels = draws * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    p = np.exp(_reference_log_probs(loc, scale))                              # [256, 3]
    counts = np.stack([np.bincount(np.round(levels[:, i]).astype(int), minlength=256)
                       for i in range(3)], axis=1)
    stderr = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(counts / n - p) <= 5 * stderr + 1e-4)


def test_gradients_are_finite_in_the_edge_bins_and_far_tails():
    loc = tf.Variable(np.array([-0.5, 0.0, 0.5, 1.0, 1.5], np.float32))
    scale = tf.Variable(np.array([1e-3, 0.01, 1e-4, 0.2, 1e-3], np.float32))
    with tf.GradientTape() as tape:
        lp = DiscretizedLogistic(loc, scale).log_prob(GRID[:, None])
        total = tf.reduce_sum(lp)
    for g in tape.gradient(total, [loc, scale]):
        assert np.all(np.isfinite(g.numpy()))


# -- the decoder layer -------------------------------------------------------------------


def test_decoder_event_is_the_image_and_it_round_trips_its_config():
    shape = (8, 8, 3)
    decoder = layers.DiscretizedLogisticDecoder(
        shape, body=bodies.resnet_decoder_body(shape, channels=4))
    z = tf.random.stateless_normal([5, 2], seed=(1, 2))
    p = decoder(z)
    assert p.batch_shape == [5] and p.event_shape == list(shape)
    assert layers.DiscretizedLogisticDecoder.params_size(shape) == 2 * 8 * 8 * 3
    assert decoder.head.kernel.shape[-1] == 2 * 3                # per pixel on a spatial body
    x = p.sample(seed=(5, 6))
    assert x.shape == (5, *shape) and p.log_prob(x).shape == (5,)
    assert np.all(p.log_prob(x).numpy() <= 0)                    # a probability, not a density
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(decoder),
                                                  safe_mode=True)
    clone.build((None, 2))
    clone.set_weights(decoder.get_weights())
    np.testing.assert_array_equal(clone(z).log_prob(x).numpy(), p.log_prob(x).numpy())
    np.testing.assert_array_equal(clone(z).mean().numpy(), p.mean().numpy())


def test_a_flat_body_gets_a_dense_head_of_params_size():
    decoder = layers.DiscretizedLogisticDecoder((4, 4, 3), hidden_units=(8,))
    p = decoder(tf.zeros([3, 2]))
    assert decoder.head.kernel.shape[-1] == decoder.params_size((4, 4, 3)) == 96
    assert p.batch_shape == [3] and p.event_shape == [4, 4, 3]
    # A fresh head is centred on mid-grey.
    np.testing.assert_allclose(p.mean().numpy(), 0.5, atol=0.05)


# -- the resnet bodies -------------------------------------------------------------------


@pytest.mark.parametrize("shape,stages", [((32, 32, 3), 3), ((64, 64, 3), 4), ((32, 64, 3), 4),
                                          ((8, 8, 1), 1)])
def test_resnet_bodies_halve_to_4x4_and_grow_back(shape, stages):
    encoder = bodies.resnet_encoder_body(shape, channels=4)
    decoder = bodies.resnet_decoder_body(shape, channels=4)
    assert tuple(encoder(tf.zeros([2, *shape])).shape) == (2, 4, 4, 4)
    assert tuple(decoder(tf.zeros([2, 3])).shape) == (2, *shape[:2], 4)
    down = [l for l in encoder.layers if isinstance(l, keras.layers.Conv2D)]
    blocks = [l for l in encoder.layers if isinstance(l, bodies.ResidualBlock)]
    assert len(down) == stages and len(blocks) == stages


def test_a_residual_block_adds_to_its_input():
    block = bodies.ResidualBlock(3)
    x = tf.random.stateless_normal([2, 5, 5, 3], seed=(1, 1))
    block(x)
    for v in block.conv1.weights:                # a zero residual branch is the identity
        v.assign(tf.zeros_like(v))
    np.testing.assert_array_equal(block(x).numpy(), x.numpy())


@pytest.mark.parametrize("shape", [(28, 28, 1), (12, 12, 3), (4, 4, 3), (32, 32)])
def test_resnet_refuses_sizes_that_do_not_halve_to_4(shape):
    with pytest.raises(ValueError) as info:
        bodies.resnet_encoder_body(shape)
    assert "\n" not in str(info.value) and "4·2ⁿ" in str(info.value)


def test_config_says_in_one_line_what_the_logistic_decoder_and_resnet_need():
    base = preset("tiny")
    with pytest.raises(ConfigError) as info:
        base.replace(decoder="logistic")                       # binarize=dynamic by default
    assert "--binarize=none" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="model=vae or hvae"):
        base.replace(decoder="logistic", binarize="none", model="ae")
    with pytest.raises(ConfigError, match="arch=resnet.*use arch=conv"):
        factory.build_vae(base.replace(arch="resnet"), (28, 28, 1))
    with pytest.raises(ConfigError, match="channels"):
        base.replace(channels=0)


def test_factory_builds_the_logistic_decoder_for_hvae_and_resnet_for_ae():
    config = preset("tiny").replace(decoder="logistic", binarize="none", model="hvae")
    hvae = factory.build_hvae(config, (8, 8, 3))
    assert isinstance(hvae.decoder, layers.DiscretizedLogisticDecoder)
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3)) / 255, tf.float32)
    assert np.all(np.isfinite(hvae.elbo(x, seed=(1, 2)).elbo.numpy()))
    ae = factory.build_autoencoder(preset("tiny").replace(model="ae", arch="resnet", channels=4,
                                                          decoder="normal"), (16, 16, 3))
    assert tuple(ae(tf.zeros([3, 16, 16, 3])).shape) == (3, 16, 16, 3)


# -- bits per dimension ------------------------------------------------------------------


def test_bits_per_dim_of_a_uniform_guess_are_the_bits_of_a_level():
    d = 32 * 32 * 3
    assert evaluate.bits_per_dim(d * math.log(1 / 256), d) == pytest.approx(8.0, rel=1e-12)
    assert evaluate.bits_per_dim(784 * math.log(0.5), 784) == pytest.approx(1.0, rel=1e-12)
    assert evaluate.bpd_dimension(preset("tiny")) == "one binary pixel"
    assert evaluate.bpd_dimension(preset("tiny").replace(decoder="normal")) is None


# -- a VAE of colour images: trained, saved, exported ------------------------------------


COLOUR = preset("tiny").replace(decoder="logistic", arch="resnet", binarize="none", channels=8,
                                latent_dim=4, batch_size=16, limit=None, steps_per_execution=2,
                                eval_iwae_k=4, jit=False)


def _colour_images(n=80, size=32, seed=0):
    """n smooth 8-bit colour images `[n, size, size, 3]` uint8: a gradient of a random
    direction and colour per image, and noise of a few levels."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, size)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    angle, colour = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.2, 1.0, (n, 3))
    ramp = (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy + 1) / 3
    images = ramp[..., None] * colour[:, None, None, :] * 255
    return np.clip(np.round(images + rng.normal(0, 3, images.shape)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    path = str(root / "colour.npz")
    np.savez(path, x=_colour_images())
    workdir = str(root / "run")
    config = COLOUR.replace(dataset=path)
    metrics = train.train_and_evaluate(config, workdir, verbose=0)
    return workdir, metrics


def test_a_colour_run_reports_nats_and_bits_per_dimension_that_agree(run):
    workdir, metrics = run
    with open(os.path.join(workdir, "metrics.json")) as f:
        written = json.load(f)
    assert written == metrics
    dims = 32 * 32 * 3
    for nats, bits in (("elbo", "elbo_bpd"), ("iwae_4", "iwae_4_bpd")):
        assert written[nats] < 0
        assert written[bits] == pytest.approx(-written[nats] / (dims * math.log(2)), rel=1e-12)
    assert written["bpd_dimension"] == "one 8-bit sub-pixel value (256 levels)"
    # IWAE-k is the tighter bound on average; 4 draws of 8 images leave it some noise.
    assert 0 < written["iwae_4_bpd"] <= written["elbo_bpd"] + 0.05
    figures = set(os.listdir(os.path.join(workdir, "figures")))
    assert {"samples.png", "reconstructions.png", "latent_manifold.png"} <= figures


@pytest.fixture(scope="module")
def restored(run):
    """The run's VAE from its checkpoint (the weights it exported), and 6 test images."""
    workdir, _ = run
    x = tf.constant(_colour_images(6, seed=3) / 255, tf.float32)
    return evaluate.restore_vae(workdir).vae, x


def test_a_colour_vae_round_trips_through_dot_keras_with_safe_mode(restored, tmp_path):
    vae, x = restored
    path = str(tmp_path / "colour.keras")
    vae.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.decoder, layers.DiscretizedLogisticDecoder)
    assert isinstance(loaded.decoder.body.layers[2], bodies.ResidualBlock)
    for a, b in zip(vae.elbo(x, seed=(1, 2)), loaded.elbo(x, seed=(1, 2))):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(vae(x).numpy(), loaded(x).numpy())


def test_the_colour_runs_saved_model_repeats_the_keras_numbers(run, restored):
    workdir, _ = run
    vae, x = restored
    loaded = tf.saved_model.load(os.path.join(workdir, "saved_model"))
    seed = tf.constant([3, 4])
    z = vae.encode(x).mean()
    mean = loaded.signatures["decode"](z=z)["mean"].numpy()
    assert mean.shape == (6, 32, 32, 3) and mean.min() >= 0 and mean.max() <= 1
    np.testing.assert_allclose(mean, vae.decode(z).mean().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.signatures["reconstruct"](x=x)["mean"].numpy(),
                               vae(x).numpy(), rtol=1e-5, atol=1e-6)
    terms = loaded.signatures["elbo"](x=x, seed=seed)
    np.testing.assert_allclose(terms["elbo"].numpy(), vae.elbo(x, seed=seed).elbo.numpy(),
                               rtol=1e-5)
    iwae = loaded.signatures["iwae"](x=x, k=tf.constant(3), seed=seed)["log_likelihood"]
    assert iwae.shape == (6,) and np.all(np.isfinite(iwae.numpy()))
    drawn = loaded.signatures["sample"](n=tf.constant(2), seed=seed)["mean"].numpy()
    assert drawn.shape == (2, 32, 32, 3) and drawn.min() >= 0 and drawn.max() <= 1


def test_the_convolutional_archs_run_without_xla_on_a_cpu():
    # XLA's CPU convolutions are many times slower than TensorFlow's kernels
    # (docs in execution.use_xla); the MLP keeps XLA, and --nojit is obeyed.
    from tfp_vae import execution
    assert not tf.config.list_logical_devices("GPU")
    assert execution.use_xla(COLOUR.replace(jit=True)) is False
    assert execution.use_xla(preset("tiny").replace(arch="conv")) is False
    assert execution.use_xla(preset("tiny")) is True
    assert execution.use_xla(preset("tiny"), jit=False) is False
