"""Beyond the plain ELBO: IWAE objective, β warm-up, free bits, the conditional VAE."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.linear_model import LogisticRegression

from tfp_vae import data, figures, layers
from tfp_vae.models import VAE, ConditionalVAE


def tiny_vae(**kwargs):
    keras.utils.set_random_seed(0)
    vae = VAE(layers.GaussianEncoder(4, hidden_units=(32,)),
              layers.BernoulliDecoder((28, 28, 1), hidden_units=(32,)), seed=0, **kwargs)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
    return vae


def digits(limit=256, with_labels=False, split="train", binarize="dynamic", shuffle=None):
    return data.load("mnist_5k", split, batch_size=64, limit=limit, binarize=binarize,
                     with_labels=with_labels, shuffle=shuffle)


@pytest.mark.parametrize("kwargs", [dict(objective="iwae", num_samples=5),
                                    dict(num_samples=3, analytic_kl=False),
                                    dict(free_bits=0.25)])
def test_each_objective_trains_with_finite_improving_loss(kwargs):
    history = tiny_vae(**kwargs).fit(digits(), epochs=3, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]


def test_iwae_objective_loss_is_the_negative_iwae_bound():
    vae = tiny_vae(objective="iwae", num_samples=5)
    x = next(iter(digits(64)))
    seed = tf.constant([3, 4])
    loss, _ = vae.objective_terms(x, seed)
    np.testing.assert_allclose(loss.numpy(), -vae.iwae_bound(x, 5, seed=seed,
                                                              chunk_size=5).numpy(), rtol=1e-6)


class CountingVAE(VAE):
    """Counts Python executions of the steps: once per trace, never per compiled call."""

    traces = 0

    def train_step(self, data):
        CountingVAE.traces += 1
        return super().train_step(data)

    def test_step(self, data):
        CountingVAE.traces += 1
        return super().test_step(data)


def test_warmup_changes_beta_inside_the_compiled_step_without_retracing():
    keras.utils.set_random_seed(0)
    vae = CountingVAE(layers.GaussianEncoder(4, hidden_units=(32,)),
                      layers.BernoulliDecoder((28, 28, 1), hidden_units=(32,)), beta=0.0)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
    # Static binarisation, fixed order: every evaluate() sees the same batches
    # (and the same draws, seeded by the step), so two evaluations at one
    # step differ only through β.
    ds = digits(128, binarize="static", shuffle=False)
    vae.fit(ds, epochs=1, verbose=0)
    vae.evaluate(ds, verbose=0)
    traced = CountingVAE.traces
    results = {}
    for beta in (0.0, 0.5, 1.0):
        vae.beta.assign(beta)
        results[beta] = vae.evaluate(ds, return_dict=True, verbose=0)
        vae.fit(ds, epochs=1, verbose=0)
    assert CountingVAE.traces == traced
    # The compiled loss really uses the variable: loss = −(reconstruction − β·kl).
    for beta, r in results.items():
        np.testing.assert_allclose(r["loss"], -(r["reconstruction"] - beta * r["kl"]), rtol=1e-4)
    # Same weights, two βs: the losses differ by exactly the KL term.
    vae.beta.assign(0.0)
    r0 = vae.evaluate(ds, return_dict=True, verbose=0)
    vae.beta.assign(1.0)
    r1 = vae.evaluate(ds, return_dict=True, verbose=0)
    np.testing.assert_allclose(r1["loss"] - r0["loss"], r0["kl"], rtol=1e-3)
    assert CountingVAE.traces == traced


def test_free_bits_floor_each_dimension_during_training():
    floor = 0.5
    vae = tiny_vae(free_bits=floor)
    logs = vae.fit(digits(), epochs=2, verbose=0).history
    # The reported KL is the floored one: at least K·floor nats per example.
    assert min(logs["kl"]) >= 4 * floor - 1e-4


def test_conditional_vae_samples_honour_the_label(tmp_path):
    keras.utils.set_random_seed(0)
    # A small latent space: the class is cheaper to read off y than to encode in z.
    cvae = ConditionalVAE(layers.GaussianEncoder(2, hidden_units=(256,)),
                          layers.BernoulliDecoder((28, 28, 1), hidden_units=(256,)),
                          num_classes=10, seed=0)
    cvae.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    train = data.load("mnist_5k", "train", batch_size=100, binarize="dynamic", with_labels=True)
    history = cvae.fit(train, epochs=10, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    # A classifier of real digits judges the class of each class's samples.
    x, y = data.load_arrays("mnist_5k", "train")
    judge = LogisticRegression(max_iter=300).fit(x.reshape(len(x), -1), y)
    x_test, y_test = data.load_arrays("mnist_5k", "test")
    assert judge.score(x_test.reshape(len(x_test), -1), y_test) > 0.8
    agree = []
    for label in range(10):
        images = cvae.sample(20, seed=(label, 1), label=label).mean().numpy()
        agree.append(np.mean(judge.predict(images.reshape(20, -1)) == label))
    # Chance is 10%; a decoder that ignored the label would sit near it.
    assert np.mean(agree) > 0.6, agree
    with pytest.raises(ValueError, match="pairs"):
        cvae.fit(digits(64), epochs=1, verbose=0)
    # Its figures: a row per class among them.
    written = figures.write_conditional(cvae, x_test[:20], y_test[:20], history, str(tmp_path))
    assert set(written) == set(figures.CONDITIONAL_FIGURES)
    assert all(os.path.getsize(p) > 0 for p in written.values())
