"""Linear VAE = probabilistic PCA: a closed-form check of the whole machinery.

A VAE with affine encoder and decoder and p(x|z) = N(Wz + b, σ²I) with one
learned σ, trained by maximising the ELBO, reaches the maximum likelihood of
probabilistic PCA (Tipping & Bishop 1999), which is known in closed form:
σ² is the mean of the D − k discarded eigenvalues λ of the sample covariance,
and the maximum log-likelihood per example is

    −½ [D ln 2π + Σ_{j≤k} ln λ_j + (D − k) ln σ² + D].

At that optimum the diagonal posterior is exact (Lucas et al. 2019), so the
ELBO itself equals log p(x), and the decoder's columns span PCA's top-k subspace.
"""

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
import tensorflow_probability as tfp
from sklearn.datasets import load_digits

from tfp_vae import layers
from tfp_vae.models import VAE
from tfp_vae.pca import PCA

tfd = tfp.distributions
K = 5


@pytest.fixture(scope="module")
def digits():
    # scikit-learn's own 8x8 digits: small, real, and shipped inside the wheel.
    return load_digits().data.astype(np.float32) / 16.0            # [1797, 64] in [0, 1]


def ppca_max_log_likelihood(x, k):
    lam = np.linalg.eigvalsh(np.cov(x.T.astype(np.float64), bias=True))[::-1]
    sigma2 = lam[k:].mean()
    d = x.shape[1]
    return -0.5 * (d * np.log(2 * np.pi) + np.log(lam[:k]).sum() + (d - k) * np.log(sigma2)
                   + d), sigma2


@pytest.fixture(scope="module")
def linear_vae(digits):
    keras.utils.set_random_seed(0)
    vae = VAE(layers.GaussianEncoder(K, hidden_units=()),
              layers.NormalDecoder((digits.shape[1],), scale="scalar", hidden_units=()), seed=0)
    # 1,000 full-batch steps reach the closed form to 0.13% (3,000: 0.01%),
    # a tenth of what the tests below allow.
    steps = 1000
    vae.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(1e-2, steps)), jit_compile=True,
        steps_per_execution=100)
    full_batch = tf.data.Dataset.from_tensors(digits).repeat()
    vae.fit(full_batch, steps_per_epoch=steps, epochs=1, verbose=0)
    return vae


@pytest.mark.slow
def test_linear_vae_elbo_reaches_the_ppca_maximum_likelihood(digits, linear_vae):
    target, sigma2 = ppca_max_log_likelihood(digits, K)
    elbo = linear_vae.elbo(digits, num_samples=2000, seed=(1, 2)).elbo.numpy().mean()
    # The decoder as a generative model: log N(x; b, WWᵀ + s²I), exactly.
    W = linear_vae.decoder.head.kernel.numpy().T.astype(np.float64)      # [D, K]
    b = linear_vae.decoder.head.bias.numpy().astype(np.float64)
    s2 = float(linear_vae.decoder.scale_tensor().numpy()) ** 2
    cov = W @ W.T + s2 * np.eye(len(b))
    log_px = tfd.MultivariateNormalTriL(b, np.linalg.cholesky(cov)).log_prob(
        digits.astype(np.float64)).numpy().mean()
    assert abs(elbo - target) < 0.01 * abs(target)
    assert abs(log_px - target) < 0.01 * abs(target)
    assert elbo <= log_px + 1e-2                 # a lower bound, to MC noise
    assert abs(s2 - sigma2) < 0.01 * sigma2      # σ² = mean discarded eigenvalue


@pytest.mark.slow
def test_linear_vae_decoder_spans_the_top_principal_subspace(digits, linear_vae):
    W = linear_vae.decoder.head.kernel.numpy().T                         # [D, K]
    components = PCA(K).fit(digits).components_.T                        # [D, K]
    angles = np.degrees(scipy.linalg.subspace_angles(W, components))
    assert angles.max() < 2.0, angles
    # A random K-dimensional subspace of R^64 is nowhere near it.
    rng = np.random.default_rng(0)
    assert np.degrees(scipy.linalg.subspace_angles(rng.normal(size=W.shape), components)).max() > 45
