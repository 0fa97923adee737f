"""tfp_vae.distributions: TFP's distributions computed this package's way, checked
against TFP's own and against the laws they sample."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import distributions

tfd = tfp.distributions


def test_logit_bernoulli_is_tfps_bernoulli_with_a_cheaper_log_prob():
    logits = tf.constant(np.random.default_rng(0).normal(0, 12, size=(64, 50)), tf.float32)
    x = tf.constant(np.random.default_rng(1).uniform(size=(64, 50)) < 0.4, tf.float32)
    grey = tf.constant(np.random.default_rng(2).uniform(size=(64, 50)), tf.float32)
    ours = distributions.LogitBernoulli(logits=logits, dtype=tf.float32)
    theirs = tfd.Bernoulli(logits=logits, dtype=tf.float32)
    for value in (x, grey):
        np.testing.assert_allclose(ours.log_prob(value), theirs.log_prob(value),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.mean(), theirs.mean())
    np.testing.assert_allclose(tfd.kl_divergence(ours, theirs), 0.0, atol=1e-5)
    assert isinstance(ours[:2], distributions.LogitBernoulli)          # slicing keeps the type
    with_probs = distributions.LogitBernoulli(probs=[0.25], dtype=tf.float32)     # TFP's own path
    np.testing.assert_allclose(with_probs.log_prob([1.0]), np.log(0.25), rtol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_standard_normal_draws_are_standard_normal(compiled):
    from scipy import stats
    draw = tf.function(distributions.standard_normal, jit_compile=True) if compiled else \
        distributions.standard_normal
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
        eps = distributions.standard_normal([4000], (1, 2), dtype)
        assert eps.dtype == dtype and np.all(np.isfinite(eps.numpy().astype(np.float64)))
    wide = distributions.standard_normal([200000], (1, 2), tf.float64).numpy()
    assert abs(wide.std() - 1.0) < 5 * np.sqrt(0.5 / wide.size)


def test_ndtri_normal_diag_is_tfps_distribution_with_its_own_draws():
    rng = np.random.default_rng(0)
    loc = tf.constant(rng.normal(size=(3, 4)), tf.float32)
    scale = tf.constant(rng.uniform(0.2, 3.0, size=(3, 4)), tf.float32)
    ours = distributions.NdtriNormalDiag(loc=loc, scale_diag=scale)
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
        z = distributions.NdtriNormalDiag(loc=loc, scale_diag=scale).sample(50, seed=(2, 3))
        total = tf.reduce_sum(z)
    eps = (z - loc) / scale
    np.testing.assert_allclose(tape.gradient(total, loc), [[50.0, 50.0]])
    np.testing.assert_allclose(tape.gradient(total, scale), tf.reduce_sum(eps, 0), rtol=1e-5)


def test_standard_normal_maps_the_uniform_grid_to_finite_symmetric_draws(monkeypatch):
    # TF's float32 uniforms are k·2⁻²³, k = 0 .. 2²³−1: the ends of that grid
    # must give finite draws of equal size, and the middle ones ±0 apart.
    grid = tf.constant([0.0, 2.0**-23, 0.5 - 2.0**-23, 0.5, 1.0 - 2.0**-23], tf.float32)
    monkeypatch.setattr(tf.random, "stateless_uniform", lambda *args, **kwargs: grid)
    eps = distributions.standard_normal([5], (0, 0)).numpy()
    assert np.all(np.isfinite(eps))
    np.testing.assert_allclose(eps[0], -eps[4], rtol=1e-6)
    np.testing.assert_allclose(eps[2], -eps[3], rtol=1e-4)
    assert eps[0] < eps[1] < eps[2] < 0 < eps[3]


@pytest.mark.parametrize("compiled", [False, True])
def test_ndtri_normal_diag_samples_and_scores_in_one_call_as_sample_does(compiled):
    rng = np.random.default_rng(3)
    loc = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    scale = tf.constant(rng.uniform(0.5, 2.0, size=(4, 3)), tf.float32)

    def both(seed):
        q = distributions.NdtriNormalDiag(loc=loc, scale_diag=scale)
        z, log_prob = q.experimental_sample_and_log_prob([5, 2], seed=seed)
        return q.sample([5, 2], seed=seed), z, log_prob

    fn = tf.function(both, jit_compile=True) if compiled else both
    drawn, z, log_prob = fn(tf.constant([8, 9]))
    assert z.shape == (5, 2, 4, 3)
    np.testing.assert_array_equal(z.numpy(), drawn.numpy())          # the same draw
    theirs = tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale)
    np.testing.assert_allclose(log_prob.numpy(), theirs.log_prob(z).numpy(), rtol=1e-5)
    # ...and a draw of its own: TFP's sampler gives other numbers for the seed.
    tfp_z, _ = theirs.experimental_sample_and_log_prob([5, 2], seed=tf.constant([8, 9]))
    assert not np.allclose(tfp_z.numpy(), z.numpy())
