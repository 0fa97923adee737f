"""tfp_vae.hvae: the two-layer VAE against a linear-Gaussian model's closed form,
its bounds in order, its reference size, saving, and a run that resumes exactly."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import config as config_lib
from tfp_vae import evaluate, export, factory, layers, train
from tfp_vae.hvae import HierarchicalVAE

tfd = tfp.distributions


class LinearGaussian2:
    """z₂ ~ N(0, I), z₁ | z₂ ~ N(A z₂, s₁² I), x | z₁ ~ N(W z₁ + b, σ² I).

    W has orthogonal columns and A is diagonal, so both exact posteriors,
    p(z₂ | x) and p(z₁ | x, z₂), are diagonal Gaussians, affine in their inputs:
    an HVAE of affine layers can hold them exactly.
    """

    def __init__(self, K=3, D=6, s1=0.7, sigma=0.4, seed=0):
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.normal(size=(D, K)))
        self.W = q * np.linspace(2.0, 1.0, K)                   # [D, K], orthogonal columns
        self.d = np.sum(self.W ** 2, 0)                          # diag WᵀW
        self.A = np.diag(np.linspace(1.5, 0.5, K))
        self.b = rng.normal(size=D)
        self.s1, self.sigma, self.K, self.D = s1, sigma, K, D

    def sample_x(self, n, seed=1):
        rng = np.random.default_rng(seed)
        z2 = rng.normal(size=(n, self.K))
        z1 = z2 @ self.A.T + self.s1 * rng.normal(size=(n, self.K))
        return (z1 @ self.W.T + self.b + self.sigma * rng.normal(size=(n, self.D))).astype(
            np.float32)

    def log_px(self, x):
        WA = self.W @ self.A
        cov = WA @ WA.T + self.s1 ** 2 * self.W @ self.W.T + self.sigma ** 2 * np.eye(self.D)
        return tfd.MultivariateNormalTriL(self.b, np.linalg.cholesky(cov)).log_prob(
            x.astype(np.float64)).numpy()

    def hvae(self, shift=0.0):
        """The HVAE whose posteriors are exact (shift = 0), or off by `shift` in z₂'s mean."""
        K, D, s1, sigma = self.K, self.D, self.s1, self.sigma
        a = np.diag(self.A)
        var2 = 1.0 / (1.0 + a ** 2 * self.d / (s1 ** 2 * self.d + sigma ** 2))    # p(z₂|x)
        M2 = (self.W / (s1 ** 2 * self.d + sigma ** 2)) * a * var2                # (x−b) M2
        var1 = 1.0 / (1.0 / s1 ** 2 + self.d / sigma ** 2)                        # p(z₁|x,z₂)
        enc2 = layers.GaussianEncoder(K, hidden_units=(), data_shape=(D,))
        enc1 = layers.GaussianEncoder(K, hidden_units=(), data_shape=(D + K,))
        prior1 = layers.GaussianEncoder(K, hidden_units=(), data_shape=(K,))
        decoder = layers.NormalDecoder((D,), scale=sigma, hidden_units=())
        model = HierarchicalVAE(enc2, enc1, prior1, decoder)
        model.build((None, D))

        def raw(sd, layer):
            target = sd - layer.min_scale
            return target + np.log(-np.expm1(-target))          # inverse softplus

        def head(layer, kernel_loc, bias_loc, sd):
            k = kernel_loc.shape[0]
            layer.head.set_weights([
                np.concatenate([kernel_loc, np.zeros((k, K))], 1).astype(np.float32),
                np.concatenate([bias_loc, raw(np.broadcast_to(sd, (K,)), layer)]).astype(
                    np.float32)])

        head(enc2, M2, -self.b @ M2 + shift, np.sqrt(var2))
        head(enc1, np.concatenate([self.W * var1 / sigma ** 2, self.A * var1 / s1 ** 2]),
             -self.b @ (self.W * var1 / sigma ** 2), np.sqrt(var1))
        head(prior1, self.A.T, np.zeros(K), s1)
        decoder.head.set_weights([np.concatenate([self.W.T, np.zeros((K, D))]).astype(
            np.float32), self.b.astype(np.float32)])
        return model


@pytest.fixture(scope="module")
def lg2():
    return LinearGaussian2()


def test_at_the_exact_posteriors_the_elbo_and_iwae_are_log_px_for_every_draw(lg2):
    # q(z₁, z₂ | x) = p(z₁, z₂ | x): ln p(x, z) − ln q(z | x) = ln p(x) at any z.
    x = lg2.sample_x(64)
    model = lg2.hvae()
    log_px = lg2.log_px(x)
    terms = model.elbo(x, num_samples=3, seed=(1, 2))
    np.testing.assert_allclose(terms.elbo.numpy(), log_px, rtol=1e-4, atol=1e-4)
    bound = model.iwae_bound(x, 150, seed=(2, 3), chunk_size=60)      # chunks of 60, 60, 30
    np.testing.assert_allclose(bound.numpy(), log_px, rtol=1e-4, atol=1e-4)


def test_with_a_worse_posterior_the_bounds_rise_with_k_towards_log_px(lg2):
    x = lg2.sample_x(300, seed=2)
    model = lg2.hvae(shift=0.5)
    exact = lg2.log_px(x).mean()
    elbo = np.mean([model.elbo(x, seed=(4, i)).elbo.numpy().mean() for i in range(5)])
    iwae = {k: model.iwae_bound(x, k, seed=(5, k)).numpy().mean() for k in (10, 1000)}
    assert elbo < iwae[10] < iwae[1000] <= exact + 0.01
    assert exact - elbo > 0.1                      # the shift costs the ELBO something


def test_the_reference_model_has_the_reference_parameter_count():
    # Tomczak & Welling's HVAE (L = 2) on 784 pixels, z₁ = z₂ = 40, GatedDense(300):
    # q(z₂|x) 675,680 + q(z₁|x,z₂) 880,280 + p(z₁|z₂) 229,280 + p(x|z₁,z₂) 645,784.
    config = config_lib.Config(model="hvae", body="gated", hidden_units=(300, 300),
                               latent_dim=40)
    assert factory.build_model(config, (28, 28, 1)).count_params() == 2_431_024 + 1


def test_the_latent_scale_bounds_reach_every_gaussian_over_z():
    config = config_lib.preset("tiny").replace(model="hvae", prior="vamp", prior_components=3,
                                               latent_scale_min=0.05, latent_scale_max=0.3)
    model = factory.build_model(config, (28, 28, 1))
    gaussians = [layer for layer in model._flatten_layers()
                 if isinstance(layer, layers.GaussianEncoder)]
    # q(z₂|x), which the VampPrior reads too; q(z₁|x, z₂); p(z₁|z₂).
    assert len(gaussians) == 3
    assert {(g.min_scale, g.max_scale) for g in gaussians} == {(0.05, 0.3)}
    x = tf.random.stateless_uniform([5, 28, 28, 1], seed=(1, 2))
    scale = model.encode(x).stddev().numpy()
    assert scale.min() >= 0.05 and scale.max() <= np.float32(0.3)
    with pytest.raises(config_lib.ConfigError, match="latent_scale_max must exceed"):
        config.replace(latent_scale_max=0.05)


def test_shapes_sampling_saving_and_the_saved_model(tmp_path):
    config = config_lib.preset("tiny").replace(model="hvae", prior="vamp", prior_components=3)
    model = factory.build_model(config, (28, 28, 1))
    x = tf.cast(tf.random.stateless_uniform([5, 28, 28, 1], seed=(1, 2)) > 0.5, tf.float32)
    assert model.sample(4, seed=(1, 1)).batch_shape == (4,)
    assert model(x).shape == (5, 28, 28, 1) and model.encode(x).event_shape == (2,)
    assert model.decode(tf.zeros([3, 2])).batch_shape == (3,)
    path = str(tmp_path / "hvae.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, HierarchicalVAE)
    for a, b in zip(model.elbo(x, seed=(3, 4)), loaded.elbo(x, seed=(3, 4))):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    saved = tf.saved_model.load(export.export_saved_model(model, str(tmp_path / "sm")))
    got = saved.signatures["elbo"](x=x, seed=tf.constant([3, 4]))
    np.testing.assert_allclose(got["elbo"].numpy(), model.elbo(x, seed=(3, 4)).elbo.numpy(),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_a_resumed_hvae_run_is_an_uninterrupted_one(tmp_path):
    # Without XLA: an HVAE's compiles are most of this test's time, and exact
    # resume under XLA is test_train's (VAE) and test_keras_way's (HVAE too).
    config = config_lib.preset("tiny").replace(model="hvae", epochs=2, figures=False,
                                               eval_iwae_k=4, jit=False)
    straight = train.train_and_evaluate(config, str(tmp_path / "a"), verbose=0)
    # Run "b" exports nothing: its SavedModel would be "a"'s, and an export
    # of every HVAE signature costs more than the training here.
    train.train_and_evaluate(config.replace(epochs=1, export=False), str(tmp_path / "b"),
                             verbose=0)
    resumed = train.train_and_evaluate(config.replace(export=False), str(tmp_path / "b"),
                                       verbose=0)
    for key in ("elbo", "iwae_4", "steps"):
        assert resumed[key] == straight[key], key
    history = [json.load(open(tmp_path / d / "history.json")) for d in ("a", "b")]
    assert history[0] == history[1]
    evaluated = evaluate.evaluate_workdir(str(tmp_path / "a"), k=4, batch_size=64, probe=False,
                                          jit=False, output=str(tmp_path / "e.json"))
    assert evaluated["elbo"] == pytest.approx(straight["elbo"], rel=1e-6)
    assert os.path.exists(tmp_path / "a" / "saved_model" / "saved_model.pb")
