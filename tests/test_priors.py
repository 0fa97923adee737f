"""Learned priors: the mixture densities, the Monte-Carlo KL, training and saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy.special import logsumexp

from tfp_vae import data, layers, priors
from tfp_vae.models import VAE

tfd = tfp.distributions


def test_vampprior_is_the_encoder_mixture_at_the_pseudo_inputs():
    encoder = layers.GaussianEncoder(3, hidden_units=(16,))
    prior = priors.VampPrior((4,), num_components=5)
    p = prior.distribution(encoder)
    z = tf.random.stateless_normal([7, 3], seed=(1, 2))
    q = encoder(prior.pseudo_inputs())
    mu, sd = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    zz = z.numpy()[:, None, :].astype(np.float64)
    comp = (-0.5 * ((zz - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)).sum(-1)
    expected = logsumexp(comp, axis=1) - np.log(5)
    np.testing.assert_allclose(p.log_prob(z).numpy(), expected, rtol=1e-5)
    u = prior.pseudo_inputs().numpy()
    assert u.shape == (5, 4) and np.all((u > 0) & (u < 1))


def test_mixture_prior_density():
    prior = priors.MixturePrior(2, num_components=3)
    p = prior.distribution()
    z = tf.random.stateless_normal([6, 2], seed=(3, 4))
    locs = prior.locs.numpy().astype(np.float64)
    sd = tf.math.softplus(prior.raw_scales).numpy().astype(np.float64) + 1e-4
    zz = z.numpy()[:, None, :].astype(np.float64)
    comp = (-0.5 * ((zz - locs) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(p.log_prob(z).numpy(), logsumexp(comp, 1) - np.log(3), rtol=1e-5)


def digits(limit=256):
    return data.load("mnist_5k", "train", batch_size=64, limit=limit, binarize="dynamic")


@pytest.mark.parametrize("prior", ["vamp", "mog"])
def test_learned_prior_trains_and_its_parameters_move(prior):
    keras.utils.set_random_seed(0)
    encoder = layers.GaussianEncoder(4, hidden_units=(32,))
    p = (priors.VampPrior((28, 28, 1), num_components=10) if prior == "vamp"
         else priors.MixturePrior(4, num_components=5))
    vae = VAE(encoder, layers.BernoulliDecoder((28, 28, 1), hidden_units=(32,)), prior=p)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
    before = [w.copy() for w in p.get_weights()]
    history = vae.fit(digits(), epochs=3, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    assert any(not np.allclose(a, b) for a, b in zip(before, p.get_weights()))
    # A mixture has no closed-form KL, so even with analytic_kl the ELBO takes
    # the Monte-Carlo mean of ln q − ln p at its own draws z ~ q (the same
    # sampler and seed draw them again here).
    x = next(iter(digits(64)))
    terms = vae.elbo(x, num_samples=50, analytic_kl=True, seed=(5, 6))
    q = vae.encode(x)
    z = q.sample(50, seed=(5, 6))
    mc = tf.reduce_mean(q.log_prob(z) - p.distribution(encoder).log_prob(z), 0).numpy()
    np.testing.assert_allclose(terms.kl.numpy(), mc, rtol=1e-5, atol=1e-4)


def test_vae_with_learned_prior_round_trips_through_dot_keras(tmp_path):
    keras.utils.set_random_seed(0)
    vae = VAE(layers.GaussianEncoder(3, hidden_units=(16,)),
              layers.BernoulliDecoder((28, 28, 1), hidden_units=(16,)),
              prior=priors.VampPrior((28, 28, 1), num_components=4))
    vae.build((None, 28, 28, 1))
    path = str(tmp_path / "vamp.keras")
    vae.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    z = tf.random.stateless_normal([5, 3], seed=(1, 1))
    np.testing.assert_array_equal(loaded.prior_distribution().log_prob(z).numpy(),
                                  vae.prior_distribution().log_prob(z).numpy())


def _spread_mixture(dtype=np.float32):
    """500 diagonal Gaussians like a trained VampPrior's: locs spread over a few
    units, scales down to 0.03, where expanding (z − μ)²/σ² cancels badly."""
    rng = np.random.default_rng(0)
    loc = (rng.normal(size=(500, 40)) * 2).astype(dtype)
    scale = np.exp(rng.uniform(-3.5, 0.0, size=(500, 40))).astype(dtype)
    return loc, scale


def test_the_matmul_mixture_density_is_tfps_mixture_log_prob():
    loc, scale = _spread_mixture()
    logits = np.random.default_rng(1).normal(size=500).astype(np.float32)
    components = tfd.MultivariateNormalDiag(loc, scale)
    mixture = priors.DiagonalGaussianMixture(tfd.Categorical(logits=logits), components)
    # Codes near the components (where the cancellation is worst) and far from all.
    z = tf.concat([tf.reshape(components.sample(3, seed=(1, 2)), [-1, 40]),
                   tf.random.stateless_normal([50, 40], seed=(3, 4)) * 3], 0)
    # The reference: TFP's MixtureSameFamily in float64.
    want = tfd.MixtureSameFamily(
        tfd.Categorical(logits=logits.astype(np.float64)),
        tfd.MultivariateNormalDiag(loc.astype(np.float64), scale.astype(np.float64))
    ).log_prob(tf.cast(z, tf.float64)).numpy()
    tfp32 = tfd.MixtureSameFamily(tfd.Categorical(logits=logits), components).log_prob(z)
    own_error = np.abs(tfp32.numpy() - want).max()         # TFP's own float32 rounding
    for got in (mixture.log_prob(z),
                tf.function(mixture.log_prob, jit_compile=True)(z)):
        assert got.dtype == tf.float32
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=max(own_error, 1e-5))
    # Batch dimensions pass through: z [2, N/2, K] -> [2, N/2].
    np.testing.assert_allclose(mixture.log_prob(tf.reshape(z, [2, -1, 40])).numpy().ravel(),
                               want, rtol=0, atol=max(own_error, 1e-5))


def test_vampprior_takes_the_matmul_density():
    encoder = layers.GaussianEncoder(3, hidden_units=(16,))
    p = priors.VampPrior((4,), num_components=5).distribution(encoder)
    assert isinstance(p, priors.DiagonalGaussianMixture)
    assert isinstance(p, tfd.MixtureSameFamily)          # what callers may check
