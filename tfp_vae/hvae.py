"""A VAE with two stochastic layers: the hierarchical VAE of Tomczak & Welling 2018.

    q(z₁, z₂ | x) = q(z₂ | x) · q(z₁ | x, z₂)
    p(x, z₁, z₂)  = p(z₂) · p(z₁ | z₂) · p(x | z₁, z₂)

Each conditional is a distribution-returning layer of `tfp_vae.layers`; the
layers that read two inputs read them joined into one vector (a
`bodies.Branched` body gives each input its own hidden layer first, as the
reference model does). p(z₂) is N(0, I) or a learned prior layer over the top
encoder q(z₂|x) (a VampPrior). The posterior is a
`tfd.JointDistributionSequential`, so one call draws (z₂, z₁) and scores them.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import objectives
from tfp_vae.models import VAE

tfd = tfp.distributions

__all__ = ["HierarchicalVAE"]


@keras.saving.register_keras_serializable(package="tfp_vae")
class HierarchicalVAE(VAE):
    """Two stochastic layers z₁ (near the data) and z₂ (the top), each `[K]`.

    Args:
      encoder: x `[..., *data]` -> q(z₂ | x), event `[K₂]`.
      encoder_z1: `[..., D + K₂]` (flattened x, then z₂) -> q(z₁ | x, z₂), event `[K₁]`.
      prior_z1: z₂ `[..., K₂]` -> p(z₁ | z₂), event `[K₁]`.
      decoder: `[..., K₁ + K₂]` (z₁, then z₂) -> p(x | z₁, z₂), event `data`.
      prior: p(z₂), as for `VAE` (None for N(0, I), or a layer such as a
        VampPrior, which is built from `encoder`).
      Other arguments as `VAE`'s; objective "elbo" or "iwae".

    There is no closed-form KL to p(z₁|z₂) under q, so the ELBO's KL is always
    the Monte-Carlo estimate E_q[ln q(z₁, z₂|x) − ln p(z₁, z₂)] on the same
    draws (`analytic_kl` is accepted and ignored). `encode(x)` is q(z₂ | x), the
    top code; `decode(z₂)` is p(x | z₁ = E[z₁ | z₂], z₂); `sample(n)` draws
    z₂, z₁ and decodes them; the model's call reconstructs at the posterior
    means.
    """

    def __init__(self, encoder, encoder_z1, prior_z1, decoder, prior=None, **kwargs):
        super().__init__(encoder, decoder, prior, **kwargs)
        self.encoder_z1 = encoder_z1
        self.prior_z1 = prior_z1

    # -- the probability model --------------------------------------------------

    def _flat(self, x) -> tf.Tensor:
        """x `[B, *data]` -> `[B, D]`, float32."""
        x = tf.cast(x, tf.float32)
        return tf.reshape(x, [tf.shape(x)[0], int(np.prod(x.shape[1:]))])

    def posterior(self, x) -> tfd.JointDistributionSequential:
        """q(z₂, z₁ | x): a joint over [z₂ `[..., K₂]`, z₁ `[..., K₁]`], batch `[B]`."""
        flat = self._flat(x)

        def q_z1(z2):
            # x beside every draw of z₂: broadcast over the draws' leading axes.
            x_ = tf.broadcast_to(flat, tf.concat([tf.shape(z2)[:-1], tf.shape(flat)[-1:]], 0))
            return self.encoder_z1(tf.concat([x_, z2], axis=-1))

        return tfd.JointDistributionSequential([self.encoder(x), q_z1])

    def _decode_joint(self, z1, z2) -> tfd.Distribution:
        """p(x | z₁, z₂) for z₁, z₂ `[..., K]`: batch `[...]`."""
        return self.decoder(tf.concat([z1, z2], axis=-1))

    def _draws(self, x, seed, num_samples):
        """(ln p(x|z) `[S, B]`, ln p(z) `[S, B]`, ln q(z|x) `[S, B]`) at S draws z ~ q."""
        (z2, z1), log_q = self.posterior(x).experimental_sample_and_log_prob(
            num_samples, seed=tfp.random.sanitize_seed(seed))
        log_pz = self.prior_distribution().log_prob(z2) + self.prior_z1(z2).log_prob(z1)
        log_px = self._decode_joint(z1, z2).log_prob(tf.cast(x, tf.float32))
        return log_px, log_pz, log_q

    def elbo(self, x, num_samples=1, analytic_kl=True, beta=1.0, *, seed=None,
             free_bits=0.0) -> objectives.ELBO:
        """Per-example ELBO terms `[B]`, nats, from S draws; the KL is Monte-Carlo."""
        if free_bits:
            raise ValueError("free bits need a factorised KL; a hierarchical VAE has none")
        log_px, log_pz, log_q = self._draws(x, seed, num_samples)
        return objectives.terms(tf.reduce_mean(log_px, axis=0),
                                tf.reduce_mean(log_q - log_pz, axis=0), beta)

    def iwae_bound(self, x, num_samples, *, seed=None, chunk_size=None) -> tf.Tensor:
        """ln (1/k) Σ_i p(x, z₁ⁱ, z₂ⁱ) / q(z₁ⁱ, z₂ⁱ | x): `[B]` nats, in chunks."""
        def draw(chunk_seed, n):
            log_px, log_pz, log_q = self._draws(x, chunk_seed, n)
            return log_px + log_pz - log_q

        if chunk_size is None and not tf.is_tensor(num_samples):
            chunk_size = min(int(num_samples), 100)
        return objectives.log_mean_weight(draw, seed=tfp.random.sanitize_seed(seed),
                                          num_samples=num_samples, chunk_size=chunk_size,
                                          batch=tf.shape(x)[0], dtype=tf.float32)

    def objective_terms(self, x, seed):
        if self.objective == "iwae":
            log_px, log_pz, log_q = self._draws(x, seed, self.num_samples)
            bound = (tf.reduce_logsumexp(log_px + log_pz - log_q, axis=0)
                     - np.log(self.num_samples))
            terms = objectives.terms(tf.reduce_mean(log_px, axis=0),
                                     tf.reduce_mean(log_q - log_pz, axis=0))
            return -bound, terms
        terms = self.elbo(x, num_samples=self.num_samples, beta=self.beta, seed=seed)
        return -terms.elbo, terms

    def decode(self, z) -> tfd.Distribution:
        """p(x | z₁ = E[z₁ | z₂], z₂) for z₂ `[..., K₂]`: batch `[...]`."""
        return self._decode_joint(self.prior_z1(z).mean(), z)

    def sample(self, n, seed=None) -> tfd.Distribution:
        """p(x | z₁, z₂) at n ancestral draws z₂ ~ p(z₂), z₁ ~ p(z₁ | z₂): batch `[n]`."""
        seed_z2, seed_z1 = tfp.random.split_seed(tfp.random.sanitize_seed(seed))
        z2 = self.prior_distribution().sample(n, seed=seed_z2)
        return self._decode_joint(self.prior_z1(z2).sample(seed=seed_z1), z2)

    def call(self, x):
        """The reconstruction `[B, *data]`: the decoder's mean at the posterior means
        z₂ = E[z₂ | x], z₁ = E[z₁ | x, z₂]."""
        q = self.posterior(x)
        z2 = q.model[0].mean()
        z1 = q.model[1](z2).mean()
        return self._decode_joint(z1, z2).mean()

    def build(self, input_shape):
        x = tf.zeros([1] + [int(d) for d in input_shape[1:]])
        self.call(x)
        self.prior_z1(self.encoder(x).mean())
        if self.prior is not None and not isinstance(self.prior, tfd.Distribution):
            self.prior.distribution(self.encoder)
        self.built = True

    # -- serialisation ---------------------------------------------------------------

    def get_config(self):
        return {**super().get_config(),
                "encoder_z1": keras.saving.serialize_keras_object(self.encoder_z1),
                "prior_z1": keras.saving.serialize_keras_object(self.prior_z1)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder_z1", "prior_z1"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return super().from_config(config)
