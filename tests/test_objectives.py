"""The ELBO and IWAE bound against a linear-Gaussian model with closed-form log p(x)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from linear_gaussian import LinearGaussian
from tfp_vae import layers, objectives
from tfp_vae.models import VAE

tfd = tfp.distributions


@pytest.fixture(scope="module")
def model():
    return LinearGaussian()


@pytest.fixture(scope="module")
def x(model):
    return model.sample_x(64)


def test_elbo_equals_log_px_at_the_exact_posterior(model, x):
    vae = model.vae()
    log_px = model.log_px(x)
    q = vae.encode(x)
    mean, std = model.posterior(x)
    np.testing.assert_allclose(q.mean().numpy(), mean, atol=1e-5)
    np.testing.assert_allclose(q.stddev().numpy(), np.broadcast_to(std, mean.shape), rtol=1e-5)
    # With q = p(z|x), ln p(x,z) − ln q(z|x) = ln p(x) for every z: the
    # Monte-Carlo-KL ELBO has no noise at all, even from 4 draws.
    terms = vae.elbo(x, num_samples=4, analytic_kl=False, seed=(1, 2))
    np.testing.assert_allclose(terms.elbo.numpy(), log_px, rtol=1e-4, atol=1e-4)
    # With the analytic KL only the reconstruction term is sampled: it agrees
    # to Monte-Carlo noise.
    terms = vae.elbo(x, num_samples=20000, analytic_kl=True, seed=(1, 3))
    np.testing.assert_allclose(terms.elbo.numpy(), log_px, atol=0.03)


@pytest.mark.parametrize("k,chunk", [(1, None), (250, 100), (7, 3)])
def test_iwae_equals_log_px_at_the_exact_posterior_in_any_chunking(model, x, k, chunk):
    # Every weight equals p(x), so any error in the running logsumexp or in
    # masking an overrunning last chunk shows up as an offset.
    vae = model.vae()
    bound = vae.iwae_bound(x, k, seed=(3, 4), chunk_size=chunk)
    np.testing.assert_allclose(bound.numpy(), model.log_px(x), rtol=1e-4, atol=1e-4)


def test_elbo_is_log_px_minus_kl_to_the_posterior_for_any_q(model, x):
    vae = model.vae(loc_shift=0.7, scale_factor=1.8)
    q = vae.encode(x)
    gap = model.kl_to_posterior(x, q.mean().numpy(), q.stddev().numpy())
    log_px = model.log_px(x)
    # ELBO(q) = E_q[ln w] = ln p(x) − KL(q ‖ p(z|x)) exactly. Estimate E_q[ln w]
    # from 20,000 draws and hold it to its own standard error.
    lw = objectives.log_weights(x, q, vae.decode, vae.prior_distribution(), seed=(5, 0),
                                num_samples=20000).numpy()                 # [S, B]
    estimate, stderr = lw.mean(0), lw.std(0) / np.sqrt(lw.shape[0])
    assert np.all(gap > 0.1)
    assert np.all(estimate < log_px)
    np.testing.assert_array_less(np.abs(estimate - (log_px - gap)), 5 * stderr)
    assert abs(np.mean(estimate - (log_px - gap))) < 5 * np.sqrt(np.mean(stderr**2) / len(x))
    # The analytic-KL ELBO estimates the same number.
    analytic = vae.elbo(x, num_samples=20000, seed=(5, 1)).elbo.numpy()
    assert abs(np.mean(analytic - (log_px - gap))) < 0.02


def test_monte_carlo_kl_elbo_agrees_with_analytic_kl_elbo(model, x):
    vae = model.vae(loc_shift=0.5, scale_factor=1.5)
    analytic = vae.elbo(x, num_samples=2000, analytic_kl=True, seed=(6, 0)).elbo.numpy()
    mc = vae.elbo(x, num_samples=2000, analytic_kl=False, seed=(6, 1)).elbo.numpy()
    np.testing.assert_allclose(mc.mean(), analytic.mean(), atol=0.02)


def test_iwae_bound_rises_towards_log_px_with_k(model):
    # E[IWAE_k] is non-decreasing in k and tends to ln p(x) (Burda et al.,
    # Theorem 1). Estimate each mean over 400 examples x 8 seeds and require
    # each step up to clear its own noise.
    x = model.sample_x(400, seed=7)
    vae = model.vae(loc_shift=1.0, scale_factor=2.0)
    log_px = model.log_px(x).mean()
    means, errs = [], []
    for k in (1, 10, 100, 1000):
        runs = np.stack([vae.iwae_bound(x, k, seed=(k, r), chunk_size=128).numpy().mean()
                         for r in range(8)])
        means.append(runs.mean())
        errs.append(runs.std(ddof=1) / np.sqrt(len(runs)))
    for lower, upper, e1, e2 in zip(means, means[1:], errs, errs[1:]):
        assert upper > lower - 3 * np.hypot(e1, e2)
    assert means[-1] > means[0] + 0.5                     # a real rise, not noise
    assert means[-1] <= log_px + 3 * errs[-1] + 1e-3      # still a lower bound
    assert log_px - means[-1] < 0.25 * (log_px - means[0])


def test_gradients_reach_the_encoder_through_the_sample(model, x):
    vae = model.vae(loc_shift=0.3)
    kernel = vae.encoder.head.kernel
    with tf.GradientTape() as tape:
        # Only the reconstruction term: its dependence on the encoder is
        # through z = μ + σ ⊙ ε alone.
        recon = tf.reduce_mean(vae.elbo(x, seed=(8, 8)).reconstruction)
    grad = tape.gradient(recon, kernel)
    assert grad is not None
    assert np.all(np.isfinite(grad.numpy()))
    assert np.abs(grad.numpy()[:, :model.K]).max() > 1e-3   # through μ
    assert np.abs(grad.numpy()[:, model.K:]).max() > 1e-6   # through σ


def test_free_bits_floors_each_dimension(model, x):
    vae = model.vae()
    q = vae.encode(x)
    prior = vae.prior_distribution()
    per_dim = tfd.kl_divergence(tfd.Normal(q.mean(), q.stddev()),
                                tfd.Normal(0.0, 1.0)).numpy()                 # [B, K]
    floor = float(np.median(per_dim))
    terms = objectives.elbo(x, q, vae.decode, prior, seed=(1, 1), free_bits=floor)
    np.testing.assert_allclose(terms.kl.numpy(), np.maximum(per_dim, floor).sum(-1), rtol=1e-5)
    assert np.all(terms.kl.numpy() >= floor * model.K - 1e-5)


def test_iwae_rejects_k_below_one(model, x):
    with pytest.raises(ValueError, match="num_samples"):
        model.vae().iwae_bound(x, 0)


# -- the scoring path's Bernoulli likelihood and its XLA parts -------------------------------
#
# Tolerances: a float32 sum of D terms of size ~|l| rounds by about √D·|l|·2⁻²⁴
# relative to it; every path below sums D ≤ 784 terms, so 1e-5 relative is
# several such roundings and a wrong term (a sign, a dropped softplus, a group
# reduced twice) is off by whole nats.


@pytest.mark.parametrize("data_shape", [(28, 28, 1), (17,), (6, 5)])
def test_bernoulli_log_likelihood_is_tfps_bernoulli_log_prob(data_shape):
    num_samples, batch = 3, 4
    rng = np.random.default_rng(0)
    # Logits from confident to huge, where e^{−|l|} underflows against 1.
    logits = (rng.normal(size=(num_samples * batch, *data_shape)) * 12).astype(np.float32)
    x = (rng.uniform(size=(batch, *data_shape)) > 0.5).astype(np.float32)
    x[0] = rng.uniform(size=data_shape)                  # grey levels are allowed too
    got = objectives.bernoulli_log_likelihood(tf.constant(logits), tf.constant(x), num_samples)
    # TFP's own Bernoulli in float64, x tiled S times as the generic path does.
    tiled = np.tile(x, (num_samples,) + (1,) * len(data_shape)).astype(np.float64)
    want = tfd.Independent(tfd.Bernoulli(logits=logits.astype(np.float64), dtype=tf.float64),
                           len(data_shape)).log_prob(tiled).numpy().reshape(num_samples, batch)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    compiled = tf.function(objectives.bernoulli_log_likelihood, jit_compile=True)(
        tf.constant(logits), tf.constant(x), num_samples)
    np.testing.assert_allclose(compiled.numpy(), want, rtol=1e-5)


def _digit_vae():
    keras.utils.set_random_seed(0)
    vae = VAE(layers.GaussianEncoder(4, hidden_units=(32,)),
              layers.BernoulliDecoder((28, 28, 1), hidden_units=(32,)))
    vae.build((None, 28, 28, 1))
    x = (np.random.default_rng(1).uniform(size=(12, 28, 28, 1)) > 0.7).astype(np.float32)
    return vae, tf.constant(x)


def _reference_bound(vae, x, k, seed):
    """ln (1/k) Σ w at the same k draws, every density TFP's own: the decoder's
    logits read into `tfd.Bernoulli`, x tiled, `log_prob` summed by TFP."""
    def decode(z):
        logits = vae.decode(z).distribution.logits
        return tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 3)

    lw = objectives.log_weights(x, vae.encode(x), decode, vae.prior_distribution(),
                                seed=seed, num_samples=k)
    return tf.reduce_logsumexp(lw, axis=0) - np.log(k)


@pytest.mark.parametrize("k,chunk", [(50, 50), (250, 100)])
def test_iwae_scoring_paths_give_the_reference_numbers_on_the_same_draws(k, chunk):
    # The whole bound under XLA, and the XLA parts around a decoder on
    # TensorFlow's kernels, draw the same z (XLA's sampler in both) and must
    # give TFP's log-weights at them up to float rounding.
    vae, x = _digit_vae()
    seed = tf.constant([5, 6], tf.int32)
    compiled = tf.function(lambda x, s: vae.iwae_bound(x, k, seed=s, chunk_size=chunk),
                           jit_compile=True)(x, seed).numpy()
    parts = tf.function(lambda x, s: vae.iwae_bound(x, k, seed=s, chunk_size=chunk,
                                                    xla_parts=True))(x, seed).numpy()
    np.testing.assert_allclose(parts, compiled, rtol=1e-5)
    if k == chunk:      # one chunk: the reference draws with the same seed
        reference = tf.function(lambda x, s: _reference_bound(vae, x, k, s),
                                jit_compile=True)(x, seed).numpy()
        np.testing.assert_allclose(compiled, reference, rtol=1e-5)
    assert np.all(np.isfinite(parts)) and np.all(parts < 0)


def test_iwae_parts_take_any_decoder():
    # A Normal decoder has no Bernoulli shortcut: its parts compute TFP's log_prob.
    model = LinearGaussian()
    vae, x = model.vae(), model.sample_x(16)
    parts = tf.function(lambda x: vae.iwae_bound(x, 40, seed=(1, 2), xla_parts=True))(x)
    np.testing.assert_allclose(parts.numpy(), model.log_px(x), rtol=1e-4, atol=1e-4)
