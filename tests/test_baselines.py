"""scripts/train.py --model=pca|ae: train_baseline's artifacts and numbers."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tfp_vae import files
from tfp_vae.experiments import baselines
from tfp_vae.config import ConfigError, preset
from tfp_vae.pca import PCA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_squared_error_is_the_mean_sum_of_squares():
    x = np.zeros((2, 2, 2, 1))
    x_hat = np.ones((2, 2, 2, 1)) * np.array([1.0, 2.0])[:, None, None, None]
    assert baselines.squared_error(x, x_hat) == pytest.approx((4 * 1 + 4 * 4) / 2)


def test_pca_baseline_writes_metrics_equal_to_pca_and_its_figures(tmp_path):
    config = preset("tiny").replace(model="pca", latent_dim=3)
    metrics = baselines.train_baseline(config, str(tmp_path))
    splits = baselines.load_splits(config)
    pca = PCA(3).fit(splits["train"][0])
    assert metrics["reconstruction_squared_error"] == pytest.approx(
        pca.reconstruction_error(splits["test"][0], [3])[3], rel=1e-6)
    assert files.read_json(tmp_path / "metrics.json") == metrics
    assert files.read_json(tmp_path / "config.json")["model"] == "pca"
    for name in ("reconstructions", "latent_scatter", "components"):
        assert os.path.getsize(tmp_path / "figures" / f"{name}.png") > 0


@pytest.mark.slow
def test_ae_baseline_through_the_script_then_resumes_from_the_saved_model(tmp_path):
    workdir = tmp_path / "ae"
    command = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--preset=tiny",
               "--model=ae", "--jit=false", f"--workdir={workdir}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test reconstruction error" in done.stdout
    metrics = files.read_json(workdir / "metrics.json")
    assert np.isfinite(metrics["reconstruction_squared_error"]) and metrics["model"] == "ae"
    for name in ("reconstructions", "latent_scatter", "samples", "interpolation",
                 "training_curves"):
        assert os.path.getsize(workdir / "figures" / f"{name}.png") > 0
    saved = os.path.getmtime(workdir / "model.keras")
    config = preset("tiny").replace(model="ae", jit=False, figures=False)
    again = baselines.train_baseline(config, str(workdir))
    assert os.path.getmtime(workdir / "model.keras") == saved
    assert again["reconstruction_squared_error"] == pytest.approx(
        metrics["reconstruction_squared_error"], rel=1e-5)
    # Another model's settings in this workdir are refused.
    with pytest.raises(ConfigError):
        baselines.train_baseline(config.replace(latent_dim=5), str(workdir))
