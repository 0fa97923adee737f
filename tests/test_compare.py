"""PCA vs AE vs VAE: the measures against closed forms, and scripts/compare.py end to end."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import files
from tfp_vae.experiments import baselines, compare
from tfp_vae.config import Config, ConfigError
from tfp_vae.pca import PCA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gaussian_kl_matches_the_closed_form():
    rng = np.random.default_rng(0)
    k = 3
    codes = rng.standard_normal((500, k)) @ rng.standard_normal((k, k)) + [1.0, -2.0, 0.5]
    m, s = codes.mean(axis=0), np.cov(codes, rowvar=False) + 1e-6 * np.eye(k)
    expected = 0.5 * (np.trace(s) + m @ m - k - np.linalg.slogdet(s)[1])
    assert compare.gaussian_kl_to_standard_normal(codes) == pytest.approx(expected, rel=1e-6)
    # Draws from the prior itself are close to it.
    assert compare.gaussian_kl_to_standard_normal(rng.standard_normal((20000, k))) < 0.01


def test_confidence_is_the_mean_max_softmax():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 3.0, -1.0]], np.float32)
    judge = lambda x: tf.constant(logits)[: len(x)]      # noqa: E731
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert compare.confidence(judge, np.zeros((3, 2))) == pytest.approx(
        probs.max(axis=1).mean(), rel=1e-6)


def test_nearest_distance_matches_brute_force():
    rng = np.random.default_rng(1)
    images, reference = rng.uniform(size=(7, 3, 3, 1)), rng.uniform(size=(11, 3, 3, 1))
    d2 = ((images.reshape(7, 1, -1) - reference.reshape(1, 11, -1)) ** 2).sum(axis=2)
    assert compare.nearest_distance(images, reference, batch_size=3) == pytest.approx(
        d2.min(axis=1).mean(), rel=1e-5)
    assert compare.nearest_distance(reference[:4], reference) == pytest.approx(0.0, abs=1e-5)


def test_pairs_have_different_labels_and_lerp_ends_at_the_codes():
    y = np.repeat(np.arange(4), 5)
    a, b = compare.different_class_pairs(y, 30, seed=0)
    assert len(a) == 30 and np.all(y[a] != y[b])
    z_a, z_b = np.array([0.0, 2.0]), np.array([4.0, -2.0])
    np.testing.assert_allclose(compare.lerp(z_a, z_b, 0.0), z_a)
    np.testing.assert_allclose(compare.lerp(z_a, z_b, 1.0), z_b)
    np.testing.assert_allclose(compare.lerp(z_a, z_b, 0.5), [2.0, 0.0])


def test_bad_settings_raise_before_any_training(tmp_path):
    config = Config(limit=64)
    for kwargs in ({"ks": [0]}, {"ks": [2], "transfer_k": 3}, {"ks": [2], "models": ["ica"]}):
        with pytest.raises(ConfigError) as info:
            compare.run(config, str(tmp_path / "w"), **kwargs)
        assert "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
def test_compare_script_end_to_end_then_loads_its_models(tmp_path):
    workdir = str(tmp_path / "compare")
    command = [sys.executable, os.path.join(ROOT, "scripts", "compare.py"), "--preset=tiny",
               "--ks=2", "--models=pca,ae,vae", "--transfer_k=2", "--transfer_labels=2",
               "--transfer_seeds=1", "--transfer_steps=5", "--judge_steps=20", "--jit=false",
               f"--workdir={workdir}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(tmp_path),
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = files.read_json(os.path.join(workdir, "metrics.json"))
    assert metrics["models"] == ["pca", "ae", "vae"]
    for name in metrics["models"]:
        r = metrics["results"][name]["2"]
        assert all(np.isfinite(v) for v in r.values())
        assert all(0.0 < r[k] <= 1.0 for k in r if k.startswith("confidence"))
    # PCA's number is PCA's own reconstruction error on the same split.
    config = Config.from_dict(metrics["config"])
    splits = baselines.load_splits(config)
    pca = PCA(2).fit(splits["train"][0])
    assert metrics["results"]["pca"]["2"]["reconstruction_squared_error"] == pytest.approx(
        pca.reconstruction_error(splits["test"][0], [2])[2], rel=1e-4)
    for name in metrics["figures"].values():
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    report = open(os.path.join(workdir, "report.md")).read()
    assert "| 2 |" in report and "Transfer" in report and "scripts/compare.py" in report
    assert set(metrics["transfer"]["results"]) == {"AE", "VAE"}

    # A second run in the same workdir loads the trained models: same numbers.
    saved = os.path.getmtime(os.path.join(workdir, "models", "ae_k2.keras"))
    again = compare.run(config, workdir, [2], models=["pca", "ae", "vae"], judge_steps=20,
                        transfer_k=None)
    assert os.path.getmtime(os.path.join(workdir, "models", "ae_k2.keras")) == saved
    for name in ("ae", "vae"):
        assert again["results"][name]["2"]["reconstruction_squared_error"] == pytest.approx(
            metrics["results"][name]["2"]["reconstruction_squared_error"], rel=1e-5)
