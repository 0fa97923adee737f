"""A conditional VAE through the run's whole path: train, evaluate, export.

`Config(conditional=True)` (scripts/train.py --conditional) trains a
ConditionalVAE on the data set's labels; wherever an unconditional run takes
images x, this one takes (x, y). Runs are in-process and tiny (256 digits).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import config as config_lib
from tfp_vae import data, evaluate, figures, files, train
from tfp_vae.config import ConfigError


# In-process runs of the whole path: end to end, so slow.
pytestmark = pytest.mark.slow

def _config(**changes):
    return config_lib.preset("tiny").replace(conditional=True, **changes)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("conditional")
    a = str(root / "a")
    out = {"a": a, "config": _config()}
    out["first"] = train.train_and_evaluate(out["config"], a, verbose=0)
    out["evaluation"] = evaluate.evaluate_workdir(
        a, k=out["config"].eval_iwae_k, batch_size=out["config"].batch_size, probe=True,
        output=str(root / "w.json"))
    out["saved"] = evaluate.evaluate_saved_model(
        os.path.join(a, "saved_model"), k=out["config"].eval_iwae_k,
        batch_size=out["config"].batch_size, probe=False, output=str(root / "s.json"))
    return out


def test_a_conditional_run_writes_the_conditional_figures_and_metrics(runs):
    assert set(os.listdir(os.path.join(runs["a"], "figures"))) == {
        f"{name}.png" for name in figures.CONDITIONAL_FIGURES}
    assert files.read_json(os.path.join(runs["a"], "config.json"))["conditional"] is True
    metrics = runs["first"]
    assert all(np.isfinite(metrics[k]) for k in ("elbo", "reconstruction", "kl", "iwae_8"))


def test_evaluating_the_workdir_repeats_the_runs_metrics(runs):
    metrics, evaluation = runs["first"], runs["evaluation"]
    for key in ("elbo", "reconstruction", "kl", "iwae_8"):
        np.testing.assert_allclose(evaluation[key], metrics[key], rtol=1e-6)
    # The labels are the model's input, so the probe reads what z carries beyond them.
    assert 0.0 <= evaluation["linear_probe_accuracy"] <= 1.0


def test_the_saved_model_takes_labels_and_gives_the_same_elbo(runs):
    model = tf.saved_model.load(os.path.join(runs["a"], "saved_model"))
    assert evaluate.is_conditional(model)
    for name in ("encode", "decode", "reconstruct", "elbo", "iwae"):
        assert "y" in model.signatures[name].structured_input_signature[1], name
    for key in ("elbo", "reconstruction", "kl"):
        np.testing.assert_allclose(runs["saved"][key], runs["evaluation"][key], rtol=1e-6)
    # sample(n, seed, label): the same draws z, decoded as two classes, differ.
    draw = lambda c: model.signatures["sample"](                       # noqa: E731
        n=tf.constant(4), seed=tf.constant([1, 2]), label=tf.constant(c))
    a, b = draw(0), draw(1)
    np.testing.assert_array_equal(a["z"].numpy(), b["z"].numpy())
    assert not np.allclose(a["mean"].numpy(), b["mean"].numpy())


@pytest.mark.parametrize("changes, says", [
    ({"arch": "conv"}, "arch=mlp"), ({"prior": "vamp"}, "prior=vamp"),
    ({"model": "ae"}, "model=vae"),
])
def test_conditional_refuses_what_it_cannot_condition(changes, says):
    with pytest.raises(ConfigError, match=says):
        _config(**changes)


def test_conditional_on_data_without_labels_stops_before_writing(tmp_path):
    path = tmp_path / "unlabelled.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (40, 4, 4), dtype=np.uint8))
    workdir = tmp_path / "run"
    with pytest.raises(data.DataError, match="no labels") as error:
        train.train_and_evaluate(_config(dataset=str(path), limit=None), str(workdir),
                                 verbose=0)
    assert "\n" not in str(error.value)
    assert not workdir.exists()
