"""Learned priors p(z): layers whose `distribution(encoder)` returns a `tfd.Distribution`.

The VAE asks its prior for `distribution(encoder)` whenever it needs p(z);
the encoder is passed because a VampPrior is built from it. No closed-form
KL(q ‖ p) exists for these mixtures, so the ELBO falls back to the
Monte-Carlo estimate E_q[ln q(z|x) − ln p(z)] on the same draws of z.

>>> import tensorflow as tf
>>> from tfp_vae.layers import GaussianEncoder
>>> encoder = GaussianEncoder(2, hidden_units=(16,))
>>> prior = VampPrior(data_shape=(4,), num_components=3)
>>> prior.distribution(encoder).log_prob(tf.zeros([5, 2])).shape
TensorShape([5])
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

_PACKAGE = "tfp_vae"


class _Prior(keras.layers.Layer):
    """A prior layer: `distribution(encoder)` gives p(z), batch `[]`, event `[K]`."""

    def __init__(self, num_components: int, **kwargs):
        super().__init__(**kwargs)
        if int(num_components) < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components!r}")
        self.num_components = int(num_components)

    def call(self, z, encoder=None):
        """ln p(z) for z `[..., K]`: lets the prior sit in a Keras call graph too."""
        return self.distribution(encoder).log_prob(z)

    def get_config(self):
        return {**super().get_config(), "num_components": self.num_components}


class DiagonalGaussianMixture(tfd.MixtureSameFamily):
    """`tfd.MixtureSameFamily` of `MultivariateNormalDiag` components, whose
    `log_prob` takes two matmuls instead of a `[N, C, K]` broadcast.

    ln N(z; μ_c, diag σ_c²) = −½ Σ_j (z_j − μ_cj)²/σ_cj² − Σ_j ln σ_cj − (K/2) ln 2π,
    and the sum expands into z²·(1/σ_c²) − 2 z·(μ_c/σ_c²) + Σ_j μ_cj²/σ_cj²: for
    N codes and C components, `[N, K] × [K, C]` matmuls. The expansion subtracts
    numbers as large as Σ_j (|z_j| + |μ_cj|)²/σ_cj² to leave one of order K, so
    the matmuls and the sum run in float64 (in float32 a trained posterior's
    small scales would cost ~10⁻³ nats); the result is in the mixture's dtype,
    equal to TFP's `MixtureSameFamily.log_prob` up to its own float32
    rounding. Everything else (sampling, mean, …) is TFP's.
    """

    def _log_prob(self, z):
        components = self.components_distribution
        dtype = components.dtype
        loc = tf.cast(components.loc, tf.float64)                           # [C, K]
        scale = tf.cast(components.stddev(), tf.float64)                    # [C, K]
        precision = 1.0 / tf.square(scale)
        z = tf.cast(z, tf.float64)                                          # [..., K]
        flat = tf.reshape(z, [-1, tf.shape(z)[-1]])                         # [N, K]
        quadratic = (tf.matmul(tf.square(flat), precision, transpose_b=True)
                     - 2.0 * tf.matmul(flat, loc * precision, transpose_b=True)
                     + tf.reduce_sum(tf.square(loc) * precision, axis=-1))  # [N, C]
        log_norm = (tf.reduce_sum(tf.math.log(scale), axis=-1)
                    + 0.5 * tf.cast(tf.shape(loc)[-1], tf.float64) * np.log(2 * np.pi))
        # The cancellation is over: the rest is float32, as TFP's.
        log_components = tf.cast(-0.5 * quadratic - log_norm, dtype)           # [N, C]
        log_weights = tf.math.log_softmax(self.mixture_distribution.logits_parameter())
        log_p = tf.reduce_logsumexp(tf.cast(log_weights, dtype) + log_components, axis=-1)
        return tf.reshape(log_p, tf.shape(z)[:-1])


def _is_diagonal_gaussian(d: tfd.Distribution) -> bool:
    return isinstance(d, tfd.MultivariateNormalDiag) and d.batch_shape.rank == 1


@keras.saving.register_keras_serializable(package=_PACKAGE)
class VampPrior(_Prior):
    """p(z) = (1/C) Σ_c q(z | u_c): the encoder at C learned pseudo-inputs u_c.

    Tomczak & Welling 2018, "VAE with a VampPrior". The pseudo-inputs have the
    data's shape and live in (0, 1) through a sigmoid, like the images.

    Args:
      data_shape: shape of one input, e.g. (28, 28, 1).
      num_components: C, the number of pseudo-inputs.
    """

    def __init__(self, data_shape, num_components: int = 500, **kwargs):
        super().__init__(num_components, **kwargs)
        self.data_shape = tuple(int(d) for d in data_shape)
        # Initial pseudo-inputs: grey images (sigmoid of N(0, 0.1²), 0.5 ± 0.025).
        # Tomczak & Welling's code starts them near black instead, a hardtanh
        # to [0, 1] of N(0.05, 0.01²).
        self.raw_inputs = self.add_weight(
            name="raw_inputs", shape=(self.num_components,) + self.data_shape,
            initializer=keras.initializers.RandomNormal(stddev=0.1), dtype="float32")

    def pseudo_inputs(self) -> tf.Tensor:
        """u `[C, *data_shape]` in (0, 1)."""
        return tf.sigmoid(self.raw_inputs)

    def distribution(self, encoder) -> tfd.Distribution:
        if encoder is None:
            raise ValueError("a VampPrior is built from the encoder: call distribution(encoder)")
        q = encoder(self.pseudo_inputs())                       # batch [C], event [K]
        mixture = DiagonalGaussianMixture if _is_diagonal_gaussian(q) else tfd.MixtureSameFamily
        return mixture(
            mixture_distribution=tfd.Categorical(logits=tf.zeros([self.num_components])),
            components_distribution=q)

    def get_config(self):
        return {**super().get_config(), "data_shape": list(self.data_shape)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MixturePrior(_Prior):
    """p(z) = Σ_c π_c N(z; m_c, diag s_c²) with learned weights, means and scales.

    Args:
      latent_dim: K.
      num_components: C.
    """

    def __init__(self, latent_dim: int, num_components: int = 10, **kwargs):
        super().__init__(num_components, **kwargs)
        self.latent_dim = int(latent_dim)
        shape = (self.num_components, self.latent_dim)
        # Spread initial means so the components do not start identical.
        self.locs = self.add_weight(name="locs", shape=shape, dtype="float32",
                                    initializer=keras.initializers.RandomNormal(stddev=1.0))
        self.raw_scales = self.add_weight(
            name="raw_scales", shape=shape, dtype="float32",
            initializer=keras.initializers.Constant(float(np.log(np.expm1(1.0)))))
        self.logits = self.add_weight(name="logits", shape=(self.num_components,),
                                      dtype="float32", initializer="zeros")

    def distribution(self, encoder=None) -> tfd.Distribution:
        return tfd.MixtureSameFamily(
            mixture_distribution=tfd.Categorical(logits=self.logits),
            components_distribution=tfd.MultivariateNormalDiag(
                loc=self.locs, scale_diag=tf.math.softplus(self.raw_scales) + 1e-4))

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim}
