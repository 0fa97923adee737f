"""A linear-Gaussian latent model whose log p(x) and posterior are closed-form.

p(z) = N(0, I_K), p(x|z) = N(W z + b, σ² I_D), with W's columns orthogonal so
that the exact posterior N(m(x), Σ) is diagonal and a MultivariateNormalDiag
encoder can represent it exactly:

    log p(x) = log N(x; b, W Wᵀ + σ² I)
    Σ = (I + WᵀW / σ²)⁻¹ (diagonal),  m(x) = Σ Wᵀ (x − b) / σ²
"""

import math

import numpy as np
import tensorflow_probability as tfp

from tfp_vae import layers
from tfp_vae.models import VAE

tfd = tfp.distributions


class LinearGaussian:
    def __init__(self, latent_dim=2, data_dim=5, sigma=0.5, seed=0):
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.normal(size=(data_dim, latent_dim)))
        self.W = q * np.linspace(2.0, 1.0, latent_dim)          # [D, K], orthogonal columns
        self.b = rng.normal(size=data_dim)                       # [D]
        self.sigma = sigma
        self.K, self.D = latent_dim, data_dim
        self.post_var = 1.0 / (1.0 + np.sum(self.W**2, 0) / sigma**2)   # diag Σ, [K]

    def sample_x(self, n, seed=1):
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(n, self.K))
        return (z @ self.W.T + self.b + self.sigma * rng.normal(size=(n, self.D))).astype(
            np.float32)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * np.eye(self.D)
        return tfd.MultivariateNormalTriL(
            loc=self.b, scale_tril=np.linalg.cholesky(cov)).log_prob(x.astype(np.float64)).numpy()

    def posterior(self, x):
        """(mean [N, K], stddev [K]) of the exact p(z|x)."""
        mean = (x.astype(np.float64) - self.b) @ self.W * self.post_var / self.sigma**2
        return mean, np.sqrt(self.post_var)

    def vae(self, loc_shift=0.0, scale_factor=1.0):
        """A VAE with affine layers set to this model; q is the exact posterior
        when loc_shift = 0 and scale_factor = 1, a worse one otherwise."""
        encoder = layers.GaussianEncoder(self.K, hidden_units=())
        decoder = layers.NormalDecoder((self.D,), scale=self.sigma, hidden_units=())
        model = VAE(encoder, decoder)
        model.build((None, self.D))
        A = self.W * self.post_var / self.sigma**2                 # [D, K]: m(x) = (x − b) A
        target_scale = np.sqrt(self.post_var) * scale_factor - encoder.min_scale
        raw = target_scale + np.log(-np.expm1(-target_scale))      # inverse softplus
        encoder.head.set_weights([
            np.concatenate([A, np.zeros_like(A)], 1).astype(np.float32),
            np.concatenate([-self.b @ A + loc_shift, raw]).astype(np.float32)])
        decoder.head.set_weights([self.W.T.astype(np.float32), self.b.astype(np.float32)])
        return model

    def kl_to_posterior(self, x, q_mean, q_std):
        """KL(q ‖ p(z|x)) per example, closed form."""
        p_mean, p_std = self.posterior(x)
        return np.sum(np.log(p_std / q_std) + (q_std**2 + (q_mean - p_mean) ** 2)
                      / (2 * p_std**2) - 0.5, axis=-1)


LOG_2PI = math.log(2 * math.pi)
