"""tfp_vae.train, in-process: a run stopped after each epoch and resumed ends as an
uninterrupted one does, history included; every epoch validates on the same images."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import config as config_lib
from tfp_vae import evaluate, input_pipeline, train

# In-process runs of the whole path: end to end, so slow.
pytestmark = pytest.mark.slow

# Two fused executions of 2 steps per epoch (256 digits / 64), two epochs.
CONFIG = config_lib.preset("tiny").replace(epochs=2, steps_per_execution=2, figures=False,
                                           export=False, eval_iwae_k=4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    straight, resumed = str(root / "straight"), str(root / "resumed")
    out = {"straight": straight, "resumed": resumed,
           "straight_metrics": train.train_and_evaluate(CONFIG, straight, verbose=0)}
    for epochs in (1, 2):        # a new process would do the same: each call restores
        out["resumed_metrics"] = train.train_and_evaluate(CONFIG.replace(epochs=epochs),
                                                          resumed, verbose=0)
    return out


def _read(workdir, name):
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)


def test_a_run_resumed_after_every_epoch_has_the_history_of_an_uninterrupted_one(runs):
    straight, resumed = _read(runs["straight"], "history.json"), _read(runs["resumed"],
                                                                       "history.json")
    assert set(straight) >= {"loss", "elbo", "kl", "val_elbo", "val_kl", "beta"}
    assert all(len(v) == CONFIG.epochs for v in straight.values())
    # Every number of every epoch, validation included: each epoch validates
    # on the one fixed draw of the validation images, whichever process runs it.
    assert resumed == straight


def test_a_resumed_run_ends_with_the_weights_and_metrics_of_an_uninterrupted_one(runs):
    a = tf.train.load_checkpoint(os.path.join(runs["straight"], "checkpoints"))
    b = tf.train.load_checkpoint(os.path.join(runs["resumed"], "checkpoints"))
    names = [n for n in a.get_variable_to_shape_map() if not n.startswith(
        ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"))]
    assert any("_trainable_variables" in n for n in names)
    for name in names:
        np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name), err_msg=name)
    for key in ("elbo", "reconstruction", "kl", "iwae_4", "steps"):
        assert runs["resumed_metrics"][key] == runs["straight_metrics"][key], key


def test_every_pass_over_the_evaluation_data_sees_the_same_images():
    x, _ = input_pipeline.load_split(CONFIG, "validation")
    ds = input_pipeline.eval_dataset(CONFIG, x)
    first, second = (np.concatenate(list(ds.as_numpy_iterator())) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    # A dynamic draw, not the static threshold: pixel p differs from p > 0.5
    # with probability min(p, 1 − p).
    assert set(np.unique(first)) == {0.0, 1.0}
    p = np.minimum(x, 1 - x).astype(np.float64)
    expected, stderr = p.mean(), np.sqrt(np.sum(p * (1 - p))) / p.size
    assert abs(np.mean(first != (x > 0.5)) - expected) < 5 * stderr


# A run that overfits 64 digits fast enough to stop early. Without XLA: the
# exact resume under XLA is the test above's; this one is about the epochs.
STOPPING = config_lib.preset("tiny").replace(limit=64, epochs=40, patience=2, warmup_epochs=3,
                                             learning_rate=0.03, figures=False, export=False,
                                             eval_iwae_k=4, jit=False)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    root = tmp_path_factory.mktemp("early_stopping")
    straight, resumed = str(root / "straight"), str(root / "resumed")
    out = {"straight": straight, "resumed": resumed,
           "straight_metrics": train.train_and_evaluate(STOPPING, straight, verbose=0)}
    best = out["straight_metrics"]["best_epoch"]
    # Stopped (as by a kill) one epoch before the best, then run to the end.
    train.train_and_evaluate(STOPPING.replace(epochs=best - 1), resumed, verbose=0)
    out["resumed_metrics"] = train.train_and_evaluate(STOPPING, resumed, verbose=0)
    # Run again once it has stopped: nothing more to train.
    out["again_metrics"] = train.train_and_evaluate(STOPPING, resumed, verbose=0)
    return out


def test_early_stopping_stops_patience_epochs_after_the_best_and_keeps_its_weights(stopped):
    metrics = stopped["straight_metrics"]
    val = _read(stopped["straight"], "history.json")["val_elbo"]
    best, run = metrics["best_epoch"], metrics["epochs_run"]
    assert run < STOPPING.epochs and len(val) == run
    assert best == int(np.argmax(val)) + 1 and best >= STOPPING.warmup_epochs
    assert run == best + STOPPING.patience + 1            # patience epochs without a gain, then one more
    # The end-of-run numbers are the best epoch's weights': evaluating the
    # checkpoint (which restores them) repeats metrics.json exactly.
    evaluated = evaluate.evaluate_workdir(stopped["straight"], k=STOPPING.eval_iwae_k,
                                          batch_size=STOPPING.batch_size, probe=False,
                                          output=os.path.join(stopped["straight"], "e.json"))
    assert evaluated["best_epoch"] == best
    for key in ("elbo", "reconstruction", "kl", "iwae_4"):
        assert evaluated[key] == pytest.approx(metrics[key], rel=1e-6), key


def test_early_stopping_survives_a_resume_and_a_finished_run_trains_no_more(stopped):
    a, b, again = (stopped[k] for k in ("straight_metrics", "resumed_metrics", "again_metrics"))
    for key in ("elbo", "iwae_4", "best_epoch", "epochs_run", "steps"):
        assert b[key] == a[key] and again[key] == a[key], key
    assert _read(stopped["resumed"], "history.json") == _read(stopped["straight"], "history.json")
