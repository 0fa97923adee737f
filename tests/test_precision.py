"""Mixed precision: the ELBO under bfloat16, loss-scaled float16 training, train.py's policy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import data, factory, train
from tfp_vae.config import Config

# A small model keeps the file fast; the precision effects are per layer.
CONFIG = Config(latent_dim=16, hidden_units=(128, 128), batch_size=100, seed=3,
                steps_per_execution=1)


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def digits():
    x, _ = data.load_arrays("mnist_5k", "train")
    return x[:500]


def build(precision, digits):
    with train.precision_policy(precision):
        keras.utils.set_random_seed(CONFIG.seed)
        model = factory.build_vae(CONFIG, digits.shape[1:])
        train.compile_model(model, CONFIG)
    return model


def test_elbo_under_mixed_bfloat16_matches_float32_for_the_same_weights(digits):
    reference = build("float32", digits)
    reference.fit(train.train_dataset(CONFIG, digits, 0), epochs=2, verbose=0)
    x = train.binarized(CONFIG, digits[:200])
    f32 = reference.elbo(x, seed=(7, 8))

    mixed = build("mixed_bfloat16", digits)
    assert mixed.encoder.body.layers[0].compute_dtype == "bfloat16"
    assert mixed.encoder.head.compute_dtype == "float32"     # distribution heads stay float32
    mixed.set_weights(reference.get_weights())
    bf16 = mixed.elbo(x, seed=(7, 8))
    assert bf16.elbo.dtype == tf.float32
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2%) in the
    # hidden layers; the float32 heads sum ~128 rounded products, whose errors
    # partly cancel. Measured here (ELBO ≈ -417 nats, KL ≈ 16): per-example
    # gaps ≤ 0.35 nats (0.1%), batch-mean gap 0.08 nats, KL gaps ≤ 0.11 nats.
    # The tolerances leave ~5-10x room for other CPUs' rounding.
    np.testing.assert_allclose(bf16.elbo.numpy(), f32.elbo.numpy(), rtol=0.01)
    assert abs(float(tf.reduce_mean(bf16.elbo - f32.elbo))) < 0.5
    np.testing.assert_allclose(bf16.kl.numpy(), f32.kl.numpy(), rtol=0.05, atol=0.5)
    # ...and it is not trivially equal: the hidden layers really ran in bfloat16.
    assert not np.array_equal(bf16.elbo.numpy(), f32.elbo.numpy())


def test_mixed_float16_training_is_loss_scaled_finite_and_decreasing(digits):
    model = build("mixed_float16", digits)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.decoder.body.layers[0].compute_dtype == "float16"
    assert model.decoder.head.compute_dtype == "float32"
    history = model.fit(train.train_dataset(CONFIG, digits, 0).repeat(4), verbose=0,
                        epochs=4, steps_per_epoch=5)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 50.0           # ~545 nats at init
    # The scale_loss path ran: the initial scale 2^15 times a ~545-nat loss
    # overflows float16 gradients, so the first step(s) are skipped and the
    # scale halved; after that Adam steps every time.
    steps = int(model.optimizer.iterations.numpy())
    assert 10 <= steps < 20
    scale = float(model.optimizer.dynamic_scale.numpy())
    assert 1 < scale < 2.0**15 and np.log2(scale) == int(np.log2(scale))


def test_train_and_evaluate_applies_the_policy_and_restores_the_global_one(tmp_path):
    config = Config(limit=256, latent_dim=2, hidden_units=(32,), epochs=2, batch_size=64,
                    eval_iwae_k=4, figures=False, export=False, precision="mixed_float16")
    metrics = train.train_and_evaluate(config, str(tmp_path), verbose=0)
    assert np.isfinite(metrics["elbo"]) and np.isfinite(metrics["iwae_4"])
    assert keras.mixed_precision.global_policy().name == "float32"
    # The loss scale is checkpointed with the optimizer, so a resumed run keeps it.
    reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
    assert any("dynamic_scale" in name for name in reader.get_variable_to_shape_map())
