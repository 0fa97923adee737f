"""Transfer: labelled subsets, body copies, frozen bodies, and the experiment end to end."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import factory
from tfp_vae.experiments import baselines, transfer
from tfp_vae.config import Config

CONFIG = Config(limit=400, hidden_units=(32,), latent_dim=4, epochs=1, batch_size=50,
                binarize="none", jit=False)


@pytest.fixture(scope="module")
def digits():
    splits = baselines.load_splits(CONFIG)
    return splits["train"] + splits["test"]          # x_train, y_train, x_test, y_test


@pytest.fixture(scope="module")
def trained(digits):
    x_train = digits[0]
    models = {}
    for name in ("ae", "vae"):
        keras.utils.set_random_seed(0)
        config = CONFIG.replace(model=name)
        model = factory.build_model(config, x_train.shape[1:])
        baselines.fit(model, config, x_train)
        models[name] = model
    return models


def test_labelled_subset_has_n_distinct_examples_per_class_and_depends_on_seed():
    y = np.repeat(np.arange(5), 20)
    rows = transfer.labelled_subset(y, 3, seed=0)
    assert len(set(rows)) == 15
    np.testing.assert_array_equal(np.bincount(y[rows]), [3] * 5)
    np.testing.assert_array_equal(rows, transfer.labelled_subset(y, 3, seed=0))
    assert not np.array_equal(rows, transfer.labelled_subset(y, 3, seed=1))
    with pytest.raises(ValueError) as info:
        transfer.labelled_subset(y, 21, seed=0)
    assert "\n" not in str(info.value)


def test_encoder_bodies_give_ae_codes_and_vae_posterior_means(trained, digits):
    x = digits[2][:5]
    ae_body = transfer.encoder_body(trained["ae"])
    vae_body = transfer.encoder_body(trained["vae"])
    np.testing.assert_allclose(ae_body(x).numpy(), trained["ae"].encode(x).mean().numpy())
    np.testing.assert_allclose(vae_body(x).numpy(), trained["vae"].encode(x).mean().numpy())
    # A copy with weights computes the same map; a fresh copy does not.
    for body in (ae_body, vae_body):
        same = transfer.fresh_copy(body, x.shape[1:], weights=True)
        other = transfer.fresh_copy(body, x.shape[1:])
        np.testing.assert_allclose(same(x).numpy(), body(x).numpy(), rtol=1e-6)
        assert not np.allclose(other(x).numpy(), body(x).numpy())


def test_frozen_body_keeps_its_weights_and_fine_tuning_changes_them(trained, digits):
    x_train, y_train = digits[0][:100], digits[1][:100]
    body = transfer.encoder_body(trained["ae"])
    original = [w.copy() for w in body.get_weights()]
    for train_body in (False, True):
        copy = transfer.fresh_copy(body, x_train.shape[1:], weights=True)
        model = transfer.train_classifier(copy, x_train, y_train, 10, steps=5,
                                          train_body=train_body, jit=False)
        moved = [not np.array_equal(a, b) for a, b in zip(original, copy.get_weights())]
        assert any(moved) == train_body
        assert model(x_train[:3]).shape == (3, 10)
    for a, b in zip(original, body.get_weights()):     # the source is never touched
        np.testing.assert_array_equal(a, b)


def test_accuracy_is_the_fraction_of_argmax_hits():
    class Fixed(keras.Model):
        def call(self, x):
            return tf.one_hot(tf.cast(x[:, 0], tf.int32), 3)

    x = np.array([[0.0], [1.0], [2.0], [1.0]], np.float32)
    assert transfer.accuracy(Fixed(), x, np.array([0, 1, 0, 0])) == pytest.approx(0.5)


def test_transfer_vs_scratch_end_to_end(trained, digits):
    x_train, y_train, x_test, y_test = digits
    bodies = {name: transfer.encoder_body(m) for name, m in trained.items()}
    out = transfer.transfer_vs_scratch(bodies, x_train, y_train, x_test, y_test,
                                       n_per_class=(2,), seeds=(0,), steps=5, jit=False)
    assert set(out) == {"ae", "vae"}
    for by_n in out.values():
        assert set(by_n) == {2}
        assert set(by_n[2]) == set(transfer.MODES)
        for result in by_n[2].values():
            assert len(result["runs"]) == 1 and 0.0 <= result["mean"] <= 1.0
            assert result["std"] == 0.0
