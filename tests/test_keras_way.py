"""The models used the Keras way: fit's progress bar under steps_per_execution, a
`.keras` file that resumes training exactly, and what Keras users reach for first."""

import contextlib
import io
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import data, execution, factory
from tfp_vae.config import preset

TINY = preset("tiny")                   # 256 digits, batches of 64: 4 steps an epoch


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_arrays("mnist_5k", "train")
    return x[:256], y[:256]


def _bar(fn) -> str:
    """What fn prints, with the terminal's control codes taken out."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn()
    return re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())


@pytest.mark.parametrize("jit", [True, False])          # fused steps, and Keras' own loop
def test_the_progress_bar_counts_the_steps_that_ran(digits, jit):
    x, _ = digits
    model = factory.build_vae(TINY, (28, 28, 1))
    model.compile(optimizer="adam", jit_compile=jit, steps_per_execution=32)
    four = data.make_dataset(x, batch_size=64, binarize="static")           # 4 of 32 steps
    shown = _bar(lambda: model.fit(four, epochs=2, verbose=1))
    assert "4/4" in shown and "32/4" not in shown and "-" not in shown.split("ETA")[-1][:3]
    shown = _bar(lambda: model.evaluate(four, verbose=1))
    assert "4/4" in shown and "32/4" not in shown
    # A stream of unknown length: the bar ends at the steps taken.
    unknown = four.filter(lambda batch: True)
    assert unknown.cardinality() == tf.data.UNKNOWN_CARDINALITY
    shown = _bar(lambda: model.fit(unknown, epochs=1, verbose=1))
    assert "4/4" in shown and "32/" not in shown


def _epoch(x, y, e, labels):
    return data.epoch_dataset(x, 64, y=y if labels else None, binarize="dynamic", seed=e)


def _build(kind, precision, jit):
    keras.utils.set_random_seed(0)
    config = TINY.replace(model="hvae" if kind == "hvae" else "vae", conditional=kind == "cvae",
                          precision=precision)
    with execution.precision_policy(precision):
        if kind == "ae":
            model = factory.build_autoencoder(TINY.replace(binarize="none"), (28, 28, 1))
        else:
            model = factory.build_model(config, (28, 28, 1), num_classes=10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit, steps_per_execution=32)
    return model


# What a .keras file holds does not depend on XLA: the VAE resumes on the fused
# XLA steps, the others on Keras' own loop, which compiles in a fraction of the time.
@pytest.mark.parametrize("kind, precision, jit", [("vae", "float32", True),
                                                  ("cvae", "float32", False),
                                                  ("ae", "float32", False),
                                                  ("hvae", "float32", False),
                                                  ("vae", "mixed_float16", False)])
def test_a_keras_file_resumes_training_exactly(digits, tmp_path, kind, precision, jit):
    x, y = digits
    labels = kind == "cvae"

    def fit(model, epochs):
        for e in epochs:
            model.fit(_epoch(x, y, e, labels), initial_epoch=e, epochs=e + 1, verbose=0)

    # Saved after two epochs, then trained on: the uninterrupted run (each
    # epoch is a fit of its own either way), one model to build and compile.
    straight = _build(kind, precision, jit)
    fit(straight, range(2))
    path = str(tmp_path / f"{kind}.keras")
    straight.save(path)
    stopped_at = int(straight.optimizer.iterations.numpy())
    fit(straight, [2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with execution.precision_policy(precision):
            loaded = keras.saving.load_model(path, safe_mode=True)
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    # The step count too (under mixed_float16 Adam skips the steps whose
    # scaled gradients overflowed, so it can be below 2 epochs × 4).
    assert int(loaded.optimizer.iterations.numpy()) == stopped_at > 0
    assert type(loaded.optimizer) is type(straight.optimizer)
    fit(loaded, [2])
    for a, b in zip(straight.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for a, b in zip(straight.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_what_keras_users_reach_for_first_still_works(digits, capsys):
    x, _ = digits
    x = (x > 0.5).astype(np.float32)
    model = factory.build_vae(TINY, (28, 28, 1))
    model.compile(optimizer="adam", jit_compile=True, steps_per_execution=2)
    history = model.fit(x, batch_size=64, epochs=4, validation_split=0.25, verbose=0,
                        callbacks=[keras.callbacks.EarlyStopping(patience=1,
                                                                 restore_best_weights=True)])
    assert "val_loss" in history.history
    result = model.evaluate(x, batch_size=64, return_dict=True, verbose=0)
    assert set(result) >= {"loss", "elbo", "reconstruction", "kl"}
    assert model.predict(x[:10], verbose=0).shape == (10, 28, 28, 1)
    model.summary()
    assert "Total params" in capsys.readouterr().out
