"""The TFP distributions the layers return, where this package computes them its own way.

`LogitBernoulli` is `tfd.Bernoulli` with a one-pass `log_prob`;
`NdtriNormalDiag` is `tfd.MultivariateNormalDiag` drawing its noise as Φ⁻¹ of
uniforms. Each keeps TFP's type, so `tfd.kl_divergence` and every other
method dispatch as for TFP's own class. Why, and what it bought, measured:
docs/performance.md.

`DiscretizedLogistic` is the 8-bit pixel likelihood of PixelCNN++ (Salimans et
al. 2017): TFP's `QuantizedDistribution(Logistic)` on the grid k/255, with a
`log_prob` that stays finite and exact in float32 for every bin.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

__all__ = ["DiscretizedLogistic", "LogitBernoulli", "NdtriNormalDiag", "standard_normal",
           "standard_normal_prior"]


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


class DiscretizedLogistic(tfd.Distribution):
    """A Logistic(loc, scale) on [0, 1] rounded to the grid x_k = k/(L − 1), k = 0..L−1.

    P(x_k) = F(x_k + h) − F(x_k − h) with h = ½/(L − 1) half a bin and F the
    logistic CDF; the edge bins take the tails, P(x_0) = F(h) and
    P(x_{L−1}) = 1 − F(1 − h), so the L probabilities sum to 1. With L = 256
    this is the per-sub-pixel likelihood of 8-bit images of PixelCNN++
    (Salimans et al. 2017) and the law of TFP's
    `tfd.QuantizedDistribution(tfd.Logistic(255·loc − ½, 255·scale), low=0, high=255)`
    of the level k = 255·x. loc and scale are in the units of x (loc may lie
    outside [0, 1]: that puts mass on the edge levels).

    `log_prob(x)` is ln P(level of x), nats, the log-probability of the
    integer pixel value: x is mapped to its nearest level k = round((L − 1)·x)
    (the grid is not exact in float32, and a resized image lies between
    levels), values below 0 or above 1 to the edge levels. It is computed as
    ln σ(a) + ln σ(−b) + ln(1 − e^{−(a − b)}), with a = (x_k + h − loc)/scale,
    b = (x_k − h − loc)/scale: the identity σ(a) − σ(b) = σ(a)σ(−b)(1 − e^{b − a})
    has no difference of nearly equal numbers, so a bin far in a tail or under
    a tiny scale keeps its log-probability where F(a) − F(b) rounds to 0 or
    to a noisy number (PixelCNN++ falls back to a density approximation there).

    `sample` gives values on the grid; `mean()` is the exact E[x] = Σ_k x_k P(x_k),
    in [0, 1], and `variance()` the exact variance; loops over the L levels
    keep their memory at that of loc. Batch shape: broadcast(loc, scale); event `[]`.

    >>> d = DiscretizedLogistic(loc=[0.2, 0.9], scale=[0.05, 0.01])
    >>> k = np.arange(256, dtype=np.float32) / 255
    >>> bool(np.allclose(np.exp(d.log_prob(k[:, None])).sum(0), 1.0))
    True
    """

    def __init__(self, loc, scale, num_levels: int = 256, validate_args=False,
                 allow_nan_stats=True, name="DiscretizedLogistic"):
        parameters = dict(locals())
        if int(num_levels) < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels!r}")
        with tf.name_scope(name) as name:
            self._loc = tf.convert_to_tensor(loc, dtype_hint=tf.float32, name="loc")
            self._scale = tf.convert_to_tensor(scale, dtype=self._loc.dtype, name="scale")
            self._num_levels = int(num_levels)
            super().__init__(dtype=self._loc.dtype,
                             reparameterization_type=tfd.NOT_REPARAMETERIZED,
                             validate_args=validate_args, allow_nan_stats=allow_nan_stats,
                             parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return dict(loc=tfp.util.ParameterProperties(),
                    scale=tfp.util.ParameterProperties(
                        default_constraining_bijector_fn=lambda: tfp.bijectors.Softplus()))

    @property
    def loc(self):
        return self._loc

    @property
    def scale(self):
        return self._scale

    @property
    def num_levels(self) -> int:
        return self._num_levels

    def _event_shape(self):
        return tf.TensorShape([])

    def _event_shape_tensor(self):
        return tf.constant([], tf.int32)

    def _top(self):
        return tf.constant(self._num_levels - 1, self.dtype)      # L − 1, the last level

    def level(self, x) -> tf.Tensor:
        """The integer level k in 0..L−1 of x (nearest; as a float tensor)."""
        top = self._top()
        return tf.clip_by_value(tf.round(tf.cast(x, self.dtype) * top), 0.0, top)

    def _log_prob(self, x):
        top = self._top()
        k = self.level(x)
        inv_scale = 1.0 / self._scale
        # Each edge (j − ½)/(L − 1) computed alike as the upper edge of level j − 1
        # and the lower edge of level j: neighbouring bins tile exactly in float32.
        a = ((k + 0.5) / top - self._loc) * inv_scale     # upper edge, standardised
        b = ((k - 0.5) / top - self._loc) * inv_scale     # lower edge
        log_cdf_a = -tf.math.softplus(-a)                 # ln F(upper)
        log_sf_b = -tf.math.softplus(b)                   # ln (1 − F(lower))
        # ln(1 − e^{−(a − b)}) with a − b = 2h/scale exactly, not as the difference
        # of two large numbers: finite for every scale > 0.
        log_width = tf.math.log(-tf.math.expm1(-inv_scale / top))
        interior = log_cdf_a + log_sf_b + log_width
        # tf.where of finite branches: no NaN gradients from the one not taken.
        return tf.where(k <= 0.0, log_cdf_a, tf.where(k >= top, log_sf_b, interior))

    def _sample_n(self, n, seed=None):
        shape = tf.concat([[n], self.batch_shape_tensor()], 0)
        tiny = np.finfo(self.dtype.as_numpy_dtype).tiny
        u = tf.random.stateless_uniform(shape, tfp.random.sanitize_seed(seed), minval=tiny,
                                        maxval=1.0, dtype=self.dtype)
        y = self._loc + self._scale * (tf.math.log(u) - tf.math.log1p(-u))   # Logistic draws
        top = self._top()
        # Bin (x_k − h, x_k + h] holds level k: k = ceil((L − 1)·y − ½), edges clipped.
        return tf.clip_by_value(tf.math.ceil(y * top - 0.5), 0.0, top) / top

    def _level_loop(self, fn, start: int):
        """Σ_j fn(j) over the levels j = start..L−1, one level at a time (memory of
        one term); fn(j) has the batch shape."""
        total = tf.zeros(self.batch_shape_tensor(), self.dtype)
        _, total = tf.while_loop(
            lambda j, _: j < self._num_levels,
            lambda j, acc: (j + 1, acc + fn(tf.cast(j, self.dtype))),
            (tf.constant(start), total), maximum_iterations=self._num_levels - start)
        return total

    def _mean(self):
        # E[k] = Σ_{j ≥ 1} P(k ≥ j), and P(k ≥ j) = 1 − F(x_j − h) = σ((loc − x_j + h)/scale).
        top = self._top()
        loc, scale = self._loc, self._scale
        return self._level_loop(lambda j: tf.sigmoid((loc - (j - 0.5) / top) / scale),
                                start=1) / top

    def _variance(self):
        # Σ_k P(x_k)(x_k − mean)²: about the mean, so no E[x²] − E[x]² cancellation.
        mean, top = self._mean(), self._top()
        return self._level_loop(
            lambda j: tf.exp(self._log_prob(j / top)) * tf.square(j / top - mean), start=0)
