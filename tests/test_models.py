"""The VAE model: fit, determinism, XLA, saving, and layers inside a user's model."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import data, layers
from tfp_vae.models import VAE

tfd = tfp.distributions


def make_vae(latent_dim=8, units=(128,), seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    vae = VAE(layers.GaussianEncoder(latent_dim, hidden_units=units),
              layers.BernoulliDecoder((28, 28, 1), hidden_units=units), seed=seed, **kwargs)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    return vae


def digits(split="train", limit=None, seed=0):
    return data.load("mnist_5k", split, batch_size=100, seed=seed, limit=limit,
                     binarize="dynamic")


@pytest.fixture(scope="module")
def test_images():
    x, _ = data.load_arrays("mnist_5k", "test")
    return x[:64]


def test_one_epoch_of_fit_lowers_the_loss_and_the_step_is_xla_compiled():
    vae = make_vae()
    before = vae.evaluate(digits("validation"), return_dict=True, verbose=0)
    history = vae.fit(digits(), epochs=1, verbose=0)
    after = vae.evaluate(digits("validation"), return_dict=True, verbose=0)
    assert set(history.history) >= {"loss", "elbo", "reconstruction", "kl"}
    assert np.isfinite(history.history["loss"][0])
    assert after["loss"] < before["loss"] - 100.0      # ~545 nats at init, ~200 after
    # The compiled train function is an XLA function (a step that silently
    # lost its jit would still train, only slower), on Keras' one-step path
    # here and on models.FusedSteps' several-steps path (the fused steps' test
    # below); without jit neither is (test_fused_steps_only_where_they_apply).
    assert _xla_functions(vae.train_function)


def _xla_functions(fn, depth: int = 5) -> list:
    """The tf.functions compiled with XLA that `fn` calls, found through closures."""
    found = []
    if getattr(fn, "_jit_compile", False):
        found.append(fn)
    python = getattr(fn, "python_function", fn)
    if depth and getattr(python, "__closure__", None):
        for cell in python.__closure__:
            try:
                value = cell.cell_contents
            except ValueError:      # an empty cell
                continue
            if callable(value) and not isinstance(value, type):
                found += _xla_functions(value, depth - 1)
    return found


def test_same_seed_same_weights_different_seed_different_weights():
    def train(seed):
        vae = make_vae(seed=seed)
        vae.fit(digits(limit=1000, seed=seed), epochs=1, verbose=0)
        return [w.copy() for w in vae.get_weights()]

    first, second, other = train(0), train(0), train(1)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(first, other))


def test_vae_round_trips_through_dot_keras_with_safe_mode(tmp_path, test_images):
    vae = make_vae(beta=0.5, num_samples=2)
    vae.fit(digits(limit=300), epochs=1, verbose=0)
    path = str(tmp_path / "vae.keras")
    vae.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, VAE)
    assert loaded.num_samples == 2 and float(loaded.beta.numpy()) == 0.5
    np.testing.assert_array_equal(loaded(test_images).numpy(), vae(test_images).numpy())
    for a, b in zip(vae.elbo(test_images, seed=(1, 2)), loaded.elbo(test_images, seed=(1, 2))):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_elbo_and_iwae_under_xla_match_eager_to_monte_carlo_noise(test_images):
    # XLA and the eager kernels draw different stateless streams from the same
    # seed, so only the deterministic terms match exactly; the sampled ones
    # agree within Monte-Carlo noise.
    vae = make_vae()
    elbo = lambda x: vae.elbo(x, num_samples=2000, seed=(4, 5))
    eager, compiled = elbo(test_images), tf.function(elbo, jit_compile=True)(test_images)
    np.testing.assert_allclose(compiled.kl.numpy(), eager.kl.numpy(), rtol=1e-5)
    np.testing.assert_allclose(compiled.reconstruction.numpy(), eager.reconstruction.numpy(),
                               atol=0.5)
    again = tf.function(elbo, jit_compile=True)(test_images)
    np.testing.assert_array_equal(again.elbo.numpy(), compiled.elbo.numpy())
    iwae = lambda x: vae.iwae_bound(x, 500, seed=(1, 1), chunk_size=64)
    compiled, eager = tf.function(iwae, jit_compile=True)(test_images).numpy(), iwae(test_images)
    # An untrained q makes single examples' bounds noisy: compare the batch means.
    assert abs(compiled.mean() - eager.numpy().mean()) < 0.5


def test_sample_decodes_prior_draws(test_images):
    vae = make_vae()
    p = vae.sample(6, seed=(2, 3))
    assert p.batch_shape == [6] and p.event_shape == [28, 28, 1]
    np.testing.assert_array_equal(p.mean().numpy(), vae.sample(6, seed=(2, 3)).mean().numpy())


# -- a user's own model built from the layers ---------------------------------------


@keras.saving.register_keras_serializable(package="user_test")
class UserVAE(keras.Model):
    """What a user writes: our layers inside their own subclassed model."""

    def __init__(self, latent_dim=4, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.encoder = layers.GaussianEncoder(latent_dim, hidden_units=(32,))
        self.decoder = layers.NormalDecoder((28, 28, 1), scale="scalar", hidden_units=(32,))

    def call(self, x, seed=None):
        q = self.encoder(x)
        z = q.sample(seed=(0, 0) if seed is None else seed)
        p = self.decoder(z)
        prior = tfd.MultivariateNormalDiag(loc=tf.zeros(self.latent_dim))
        return p.log_prob(x) - tfd.kl_divergence(q, prior)

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim}


def test_layers_inside_a_users_model_under_xla_and_through_saving(tmp_path, test_images):
    model = UserVAE()
    step = tf.function(model, jit_compile=True)
    compiled = step(test_images)
    assert compiled.shape == (64,) and np.all(np.isfinite(compiled.numpy()))
    np.testing.assert_array_equal(step(test_images).numpy(), compiled.numpy())
    encode = tf.function(lambda x: model.encoder(x).mean(), jit_compile=True)
    np.testing.assert_allclose(encode(test_images).numpy(),
                               model.encoder(test_images).mean().numpy(), rtol=1e-4, atol=1e-5)

    opt = keras.optimizers.Adam(1e-2)

    @tf.function(jit_compile=True)
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(model(x))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    losses = [float(train_step(test_images)) for _ in range(20)]
    assert losses[-1] < losses[0]

    path = str(tmp_path / "user.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded(test_images).numpy(), model(test_images).numpy())


@keras.saving.register_keras_serializable(package="user_test")
class CodeClassifier(keras.Model):
    """A user's classifier on the posterior means of our encoder."""

    def __init__(self, classes=10, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.encoder = layers.GaussianEncoder(8, hidden_units=(32,), data_shape=(28, 28, 1))
        self.head = keras.layers.Dense(classes)

    def call(self, x):
        return self.head(self.encoder(x).mean())

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


def test_a_classifier_on_the_encoders_means_trains_under_xla_and_saves(tmp_path):
    x, y = data.load_arrays("mnist_5k", "train")
    keras.utils.set_random_seed(0)
    model = CodeClassifier()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x[:1000], y[:1000], batch_size=100, epochs=3, verbose=0).history
    assert history["accuracy"][-1] > 0.6                 # ten classes: chance is 0.1
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x[:50], verbose=0),
                                  model.predict(x[:50], verbose=0))


def test_the_kl_between_two_encoder_outputs_is_the_closed_form(test_images):
    a = layers.GaussianEncoder(4, hidden_units=(16,))(test_images[:10])
    b = layers.GaussianEncoder(4, hidden_units=(16,))(test_images[:10] * 0.5)
    ma, sa = a.mean().numpy().astype(np.float64), a.stddev().numpy().astype(np.float64)
    mb, sb = b.mean().numpy().astype(np.float64), b.stddev().numpy().astype(np.float64)
    # KL(N(ma, sa²) ‖ N(mb, sb²)) = Σ ln(sb/sa) + (sa² + (ma − mb)²) / (2 sb²) − ½
    closed = np.sum(np.log(sb / sa) + (sa ** 2 + (ma - mb) ** 2) / (2 * sb ** 2) - 0.5, -1)
    np.testing.assert_allclose(tfd.kl_divergence(a, b).numpy(), closed, rtol=1e-5)


def test_a_users_compiled_function_scores_decoded_draws(test_images):
    encoder = layers.GaussianEncoder(3, hidden_units=(16,))
    decoder = layers.BernoulliDecoder((28, 28, 1), hidden_units=(16,))

    @tf.function(jit_compile=True)
    def score(x, seed):
        z = encoder(x).sample(seed=seed)
        return z, decoder(z).log_prob(x)

    z, log_px = score(test_images, tf.constant([1, 2]))
    assert log_px.shape == (64,)
    # The same draw scored eagerly: the compiled log-likelihood is the model's.
    np.testing.assert_allclose(log_px.numpy(), decoder(z).log_prob(test_images).numpy(),
                               rtol=1e-4)
    again, _ = score(test_images, tf.constant([1, 2]))
    np.testing.assert_array_equal(again.numpy(), z.numpy())


class UserEncoder(keras.layers.Layer):
    """Not ours: returns Independent(Normal), for which no closed-form KL
    against the VAE's MultivariateNormalDiag prior is registered."""

    def __init__(self, latent_dim, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.dense = keras.layers.Dense(2 * latent_dim)

    def call(self, x):
        loc, raw = tf.split(self.dense(tf.reshape(x, [tf.shape(x)[0], -1])), 2, -1)
        return tfd.Independent(tfd.Normal(loc, tf.nn.softplus(raw) + 1e-3), 1)


def test_any_distribution_layer_serves_as_encoder(test_images):
    keras.utils.set_random_seed(0)
    vae = VAE(UserEncoder(3), layers.BernoulliDecoder((28, 28, 1), hidden_units=(16,)))
    vae.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    terms = vae.elbo(test_images, num_samples=2, seed=(1, 1))     # falls back to MC KL
    assert terms.kl.shape == (64,) and np.all(np.isfinite(terms.kl.numpy()))
    history = vae.fit(digits(limit=500), epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.parametrize("kwargs", [dict(num_samples=0), dict(objective="mle"),
                                    dict(free_bits=-1.0)])
def test_bad_training_settings_raise(kwargs):
    with pytest.raises(ValueError):
        VAE(layers.GaussianEncoder(2), layers.BernoulliDecoder((4,)), **kwargs)


@pytest.mark.slow
def test_fused_steps_repeat_the_step_by_step_loop_exactly():
    """steps_per_execution=n runs n steps in one XLA program (FusedSteps): the
    same updates as Keras' one-program-per-step loop, short last batch included."""
    x = data.load_arrays("mnist_5k", "train")[0][:1000]          # 15 batches of 64 + one of 40

    def run(steps_per_execution):
        vae = make_vae()
        vae.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True,
                    steps_per_execution=steps_per_execution)
        history = [vae.fit(data.epoch_dataset(x, 64, binarize="dynamic", seed=e),
                           initial_epoch=e, epochs=e + 1, verbose=0).history for e in range(2)]
        ev = vae.evaluate(data.epoch_dataset(x, 64, shuffle=False, binarize="static"),
                          return_dict=True, verbose=0)
        return vae, history, ev

    stepwise, fused = run(1), run(7)        # groups of 7, 7 and 2 (the short batch last)
    assert not stepwise[0]._fuses_steps() and fused[0]._fuses_steps()
    assert _xla_functions(fused[0].train_function)
    assert int(fused[0].optimizer.iterations) == int(stepwise[0].optimizer.iterations) == 32
    for a, b in zip(stepwise[0].get_weights(), fused[0].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(stepwise[1], fused[1]):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5)
    for k in stepwise[2]:
        np.testing.assert_allclose(stepwise[2][k], fused[2][k], rtol=1e-5)


def test_fused_steps_only_where_they_apply():
    vae = make_vae()
    vae.compile(optimizer="adam", jit_compile=False, steps_per_execution=4)
    assert not vae._fuses_steps()                 # no XLA: Keras' own loop
    vae.fit(digits(limit=400), epochs=1, verbose=0)
    assert int(vae.optimizer.iterations) == 4
    assert not _xla_functions(vae.train_function)
