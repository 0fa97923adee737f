"""The TFP distributions the layers return, where this package computes them its own way.

`LogitBernoulli` is `tfd.Bernoulli` with a one-pass `log_prob`;
`NdtriNormalDiag` is `tfd.MultivariateNormalDiag` drawing its noise as Φ⁻¹ of
uniforms. Each keeps TFP's type, so `tfd.kl_divergence` and every other
method dispatch as for TFP's own class. Why, and what it bought, measured:
docs/performance.md.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

__all__ = ["LogitBernoulli", "NdtriNormalDiag", "standard_normal", "standard_normal_prior"]


def standard_normal_prior(latent_dim: int, dtype=tf.float32) -> tfd.Distribution:
    """p(z) = N(0, I_K): batch `[]`, event `[K]`."""
    return tfd.MultivariateNormalDiag(loc=tf.zeros([latent_dim], dtype))


class LogitBernoulli(tfd.Bernoulli):
    """`tfd.Bernoulli` with a one-pass `log_prob` for finite logits.

    TFP's Bernoulli evaluates ln p(x) as
    `multiply_no_nan(-softplus(l), 1 - x) + multiply_no_nan(-softplus(-l), x)`,
    so that infinite logits work. A decoder's logits are finite, and then the
    same number is the negative sigmoid cross-entropy
    `−(max(l, 0) − l·x + log1p(exp(−|l|)))`: one exp and one log1p per pixel.
    Everything else (sampling, mean, entropy, KL) is TFP's, and so is
    `log_prob` when the distribution was given probs.

    >>> d = LogitBernoulli(logits=[-1.0, 2.0], dtype=tf.float32)
    >>> bool(np.allclose(d.log_prob([1.0, 0.0]),
    ...                  tfd.Bernoulli(logits=[-1.0, 2.0]).log_prob([1.0, 0.0])))
    True
    """

    def _log_prob(self, event):
        if self.logits is None:      # given probs: TFP's own
            return super()._log_prob(event)
        logits = tf.convert_to_tensor(self.logits)
        event = tf.cast(event, logits.dtype)
        if event.shape != logits.shape:    # x [B, ...] against the logits of [S, B] draws
            shape = tf.broadcast_dynamic_shape(tf.shape(event), tf.shape(logits))
            event, logits = tf.broadcast_to(event, shape), tf.broadcast_to(logits, shape)
        return -tf.nn.sigmoid_cross_entropy_with_logits(labels=event, logits=logits)


def standard_normal(shape, seed, dtype=tf.float32) -> tf.Tensor:
    """N(0, 1) draws of `shape` for a stateless `seed` (`[2]` ints): Φ⁻¹(u).

    u is TensorFlow's Philox uniform, k·2⁻²³ on [0, 1) in float32, moved up
    by half a grid step to the midpoints (2k + 1)·2⁻²⁴: all inside (0, 1)
    and symmetric about ½, so every draw is finite (|ε| ≤ 5.29) and ε and −ε
    are equally likely (float64: k·2⁻⁵², |ε| ≤ 8.21). Compiled and eager runs
    draw different numbers for the same seed (XLA's Philox stream is its
    own). 16-bit dtypes draw in float32 and round.
    """
    draw = tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32
    u = tf.random.stateless_uniform(shape, seed, dtype=draw, alg="philox")
    return tf.cast(tf.math.ndtri(u + np.finfo(draw.as_numpy_dtype).eps / 2), dtype)


def _is_stateless(seed) -> bool:
    """Whether `seed` is a stateless seed (a pair of ints, or a `[2]` tensor)."""
    return seed is not None and not isinstance(seed, (int, np.integer))


class NdtriNormalDiag(tfd.MultivariateNormalDiag):
    """`tfd.MultivariateNormalDiag` that samples with :func:`standard_normal`.

    z = loc + scale·ε with ε `[n, *batch, K]` drawn in that layout as Φ⁻¹ of
    Philox uniforms, where TFP draws `[n, K, *batch]` with
    `tf.random.stateless_normal` and transposes. The law and the
    reparameterisation are the same; for the same seed the numbers are not
    TFP's. `experimental_sample_and_log_prob` draws the same z as `sample`.
    log_prob, KL, entropy and everything else are TFP's. A stateful seed
    (None or an int) takes TFP's own sampler.

    >>> q = NdtriNormalDiag(loc=[0.0, 1.0], scale_diag=[1.0, 2.0])
    >>> q.sample(3, seed=(1, 2)).shape
    TensorShape([3, 2])
    """

    def _sample_n(self, n, seed=None):
        shape = tf.concat([[n], self.batch_shape_tensor(), self.event_shape_tensor()], axis=0)
        eps = standard_normal(shape, tfp.random.sanitize_seed(seed), self.dtype)
        return self.bijector.forward(eps)

    def _call_sample_n(self, sample_shape, seed, **kwargs):
        # TransformedDistribution's own `_call_sample_n` samples the base
        # distribution and never calls `_sample_n`; Distribution's calls the
        # `_sample_n` above, TFP's hook for a subclass's sampler.
        if kwargs or not _is_stateless(seed):
            return super()._call_sample_n(sample_shape, seed, **kwargs)
        return tfd.Distribution._call_sample_n(self, sample_shape, seed)

    def _sample_and_log_prob(self, sample_shape, seed, **kwargs):
        if kwargs or not _is_stateless(seed):
            return super()._sample_and_log_prob(sample_shape, seed, **kwargs)
        z = tfd.Distribution._call_sample_n(self, sample_shape, seed)
        return z, self.log_prob(z)
