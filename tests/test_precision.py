"""Mixed precision: the ELBO under bfloat16, loss-scaled float16 training, train.py's policy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import data, execution, factory, input_pipeline, train
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
    with execution.precision_policy(precision):
        keras.utils.set_random_seed(CONFIG.seed)
        model = factory.build_vae(CONFIG, digits.shape[1:])
        execution.compile_model(model, CONFIG)
    return model


# bfloat16 keeps 8 significant bits: unit roundoff u = 2^-8.
BF16_U = 2.0 ** -8


def rounding_sd(model, x, term: str, seed=(7, 8)) -> np.ndarray:
    """The standard deviation `[B]` that bfloat16 rounding in the hidden layers
    gives the ELBO term `term` of float32 `model` at `x`, to first order.

    The standard probabilistic model of rounding (Higham & Mary 2019): a
    pre-activation a_i = Σ_j w_ij h_j + b_i of fan-in n, computed and stored
    in bfloat16, is off by a random error of size (√n + 2)·u·Σ_j |w_ij h_j| +
    u·|a_i| (the sum's accumulation, the rounded operands, the rounded
    result), independently for every i. The term moves by ∂term/∂a_i times
    that; the variance sums over every pre-activation of every hidden Dense.
    ∂term/∂a_i is the gradient with respect to that layer's bias, one row per
    example. Derived from the format and the sizes of the sums, not measured.
    """
    x = tf.constant(x)
    inputs = []                                      # (Dense layer, its input h [B, n])
    h = tf.reshape(x, [x.shape[0], -1])
    for dense in model.encoder.body.layers:
        inputs.append((dense, h))
        h = dense(h)
    h = model.encode(x).sample(1, seed=seed)[0]      # the z the ELBO decodes
    for dense in model.decoder.body.layers:
        inputs.append((dense, h))
        h = dense(h)
    variance = np.zeros(x.shape[0])
    for dense, h in inputs:
        with tf.GradientTape() as tape:
            value = getattr(model.elbo(x, seed=seed), term)
        grad = tape.jacobian(value, dense.bias)               # [B, n]
        if grad is None:                                      # the KL and the decoder
            continue
        grad = grad.numpy().astype(np.float64)
        w, b, h = (np.asarray(v, np.float64) for v in (dense.kernel, dense.bias, h))
        size = np.abs(h) @ np.abs(w) + np.abs(b)
        error = (np.sqrt(w.shape[0]) + 2) * BF16_U * size + BF16_U * np.abs(h @ w + b)
        variance += np.sum((grad * error) ** 2, axis=1)
    return np.sqrt(variance)


def test_elbo_under_mixed_bfloat16_matches_float32_for_the_same_weights(digits):
    reference = build("float32", digits)
    reference.fit(input_pipeline.train_dataset(CONFIG, digits, 0), epochs=2, verbose=0)
    x = input_pipeline.evaluation_arrays(CONFIG, digits[:200])
    f32 = reference.elbo(x, seed=(7, 8))

    mixed = build("mixed_bfloat16", digits)
    assert mixed.encoder.body.layers[0].compute_dtype == "bfloat16"
    assert mixed.encoder.head.compute_dtype == "float32"     # distribution heads stay float32
    mixed.set_weights(reference.get_weights())
    bf16 = mixed.elbo(x, seed=(7, 8))
    assert bf16.elbo.dtype == bf16.kl.dtype == tf.float32
    # Within 5 standard deviations of the rounding model, per example and for
    # the batch mean (independent examples: the sd of a mean of B is ‖sd‖/B).
    # CPUs differ: with oneDNN's bfloat16 kernels the batch-mean ELBO gap here
    # was 0.06 nats, with Eigen's (TF_ENABLE_ONEDNN_OPTS=0, or a CPU without
    # AVX-512 BF16) 0.78, against a 5-sd bound of about 2.8.
    for term in ("elbo", "kl"):
        gap = getattr(bf16, term).numpy().astype(np.float64) - getattr(f32, term).numpy()
        sd = rounding_sd(reference, x, term)
        assert np.all(np.abs(gap) <= 5 * sd), (term, np.max(np.abs(gap) / sd))
        assert abs(gap.mean()) <= 5 * np.sqrt(np.sum(sd ** 2)) / len(gap), term
    # ...and it is not trivially equal: the hidden layers really ran in bfloat16.
    assert not np.array_equal(bf16.elbo.numpy(), f32.elbo.numpy())


def test_mixed_float16_training_is_loss_scaled_finite_and_decreasing(digits):
    model = build("mixed_float16", digits)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.decoder.body.layers[0].compute_dtype == "float16"
    assert model.decoder.head.compute_dtype == "float32"
    history = model.fit(input_pipeline.train_dataset(CONFIG, digits, 0).repeat(4), verbose=0,
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
