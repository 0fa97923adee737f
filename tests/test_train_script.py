"""scripts/train.py and scripts/evaluate.py end to end, as a user runs them.

One tiny run (one real epoch on 256 digits) is trained, evaluated, and
refused when asked for another model. Each process costs seconds of
TensorFlow start-up, so the runs happen once, in order, and the tests read
what they left; under pytest-xdist the workers share them through a lock, so
they still happen once. (Resuming is tested in-process, test_train.py, and
through the script under faults, test_faults.py.)
"""

import dataclasses
import fcntl
import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import config as config_lib
from tfp_vae import figures

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "scripts" / "train.py")
EVALUATE = str(ROOT / "scripts" / "evaluate.py")
CONFIGS = ROOT / "configs"


def run(script, *args, timeout=600):
    """Runs a script; returns {returncode, stdout, stderr}."""
    p = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return {"returncode": p.returncode, "stdout": p.stdout, "stderr": p.stderr}


def _read(path):
    return Path(path).read_text() if os.path.exists(path) else None


def _all_runs(root: Path) -> dict:
    """Every subprocess of this file that needs a run, in order; what each left."""
    a = root / "a"
    out = {"a": str(a)}
    out["first"] = run(TRAIN, "--preset=tiny", f"--workdir={a}")
    out["first_metrics"] = json.loads(_read(a / "metrics.json") or "null")
    out["first_history"] = json.loads(_read(a / "history.json") or "null")
    out["first_config"] = json.loads(_read(a / "config.json") or "null")
    out["evaluate"] = run(EVALUATE, f"--workdir={a}", "--k=8", "--batch_size=64",
                          f"--output={root / 'evaluation.json'}")
    out["evaluation"] = json.loads(_read(root / "evaluation.json") or "null")
    out["config_before"] = _read(a / "config.json")
    out["mismatch"] = run(TRAIN, "--preset=tiny", f"--workdir={a}", "--latent_dim=3")
    out["config_after"] = _read(a / "config.json")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent              # shared by the workers of this session
    root = base / "train_script_runs"
    root.mkdir(exist_ok=True)
    done = root / "runs.json"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            done.write_text(json.dumps(_all_runs(root)))
    return json.loads(done.read_text())


def _ok(result):
    assert result["returncode"] == 0, result["stderr"][-3000:]


@pytest.mark.slow
def test_one_epoch_leaves_every_artifact(runs):
    _ok(runs["first"])
    a = runs["a"]
    assert "test ELBO" in runs["first"]["stdout"]
    assert (f"artifacts in {a}/: config.json checkpoints/ tensorboard/ figures/ saved_model/ "
            "serving/ model.weights.h5 metrics.json") in runs["first"]["stdout"]  # each there
    assert config_lib.Config.from_dict(runs["first_config"]) == config_lib.preset("tiny")
    assert glob.glob(os.path.join(a, "checkpoints", "ckpt-*.index"))
    assert glob.glob(os.path.join(a, "tensorboard", "events.out.tfevents.*"))
    for name in figures.FIGURES:
        assert os.path.getsize(os.path.join(a, "figures", f"{name}.png")) > 0, name
    assert tf.saved_model.load(os.path.join(a, "saved_model")).signatures["elbo"] is not None
    # TF Serving's layout: serving/<version> is the SavedModel, version = steps.
    assert os.listdir(os.path.join(a, "serving")) == ["4"]
    assert os.path.samefile(os.path.join(a, "serving", "4"), os.path.join(a, "saved_model"))
    metrics = runs["first_metrics"]
    for key in ("elbo", "reconstruction", "kl", "iwae_8"):
        assert math.isfinite(metrics[key]), key
    assert metrics["steps"] == 4 and metrics["epochs"] == 1        # 256 images / 64
    assert len(runs["first_history"]["elbo"]) == 1
    assert not glob.glob(os.path.join(a, ".*.tmp"))                # atomic writes, no leftovers


@pytest.mark.slow
def test_evaluate_script_repeats_the_runs_metrics(runs):
    _ok(runs["evaluate"])
    out, result, metrics = runs["evaluate"]["stdout"], runs["evaluation"], runs["first_metrics"]
    assert "IWAE-8 estimate of ln p(x)" in out and "active units" in out
    assert "linear probe accuracy" in out
    # Same checkpoint, images, seeds, batch size and k as the run's own
    # end-of-run evaluation: the same numbers.
    for key in ("elbo", "reconstruction", "kl", "iwae_8"):
        np.testing.assert_allclose(result[key], metrics[key], rtol=1e-6, err_msg=key)
    assert f"{result['elbo']:.2f}" in out
    assert result["step"] == metrics["steps"] and result["num_examples"] == 256
    assert 0 <= result["active_units"] <= result["latent_dim"] == 2


@pytest.mark.slow
def test_another_models_settings_on_the_same_workdir_are_refused(runs):
    result = runs["mismatch"]
    assert result["returncode"] != 0
    lines = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "holds another run" in lines[0] and "latent_dim" in lines[0]
    assert runs["config_after"] == runs["config_before"]


@pytest.mark.parametrize("flag", ["--latent_dim=0", "--batch_size=0", "--learning_rate=0",
                                  "--num_samples=0", "--decoder=poisson"])
def test_bad_flags_exit_non_zero_before_anything_is_written(flag, tmp_path):
    result = run(TRAIN, "--preset=tiny", f"--workdir={tmp_path / 'run'}", flag)
    assert result["returncode"] != 0
    assert flag.split("=")[0].lstrip("-") in result["stderr"]
    assert not os.path.exists(tmp_path / "run")


def test_evaluate_script_on_a_missing_workdir_is_a_one_line_error(tmp_path):
    result = run(EVALUATE, f"--workdir={tmp_path / 'absent'}")
    assert result["returncode"] == 2
    assert [line for line in result["stderr"].splitlines() if line.startswith("error:")] == [
        f"error: no workdir {tmp_path / 'absent'}; pass the --workdir of a training run"]


# Loads scripts/train.py's flags as scripts/flags_table.py does, parses each
# flagfile with them and prints its Config, the flags it left unset, and the
# README's flag table. Imports no TensorFlow, so it is quick.
_PARSE = """
import json, sys
from absl import flags
sys.path.insert(0, sys.argv[1])
import flags_table
import dataclasses
from tfp_vae.config import Config
script, defined = flags_table.load_script(sys.argv[2])
out = {"table": flags_table.table(script, defined), "flags": [f.name for f in defined]}
for path in sys.argv[3:]:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train.py", "--flagfile=" + path])
    out[path] = {"config": script._FLAGS.config().to_dict(),
                 "unset": [f.name for f in dataclasses.fields(Config)
                           if not flags.FLAGS[f.name].present]}
print(json.dumps(out))
"""


def test_flagfiles_say_what_they_claim():
    paths = {name: str(CONFIGS / f"{name}.flags") for name in ("default", "tiny",
                                                                "fashion_mnist")}
    p = subprocess.run([sys.executable, "-c", _PARSE, str(ROOT / "scripts"), TRAIN,
                        *paths.values()],
                       capture_output=True, text=True, timeout=120, check=True)
    parsed = json.loads(p.stdout)
    default = parsed[paths["default"]]
    assert config_lib.Config.from_dict(default["config"]) == config_lib.Config()
    # Every flag whose default is a value is spelled out, so a new flag or a
    # changed default shows up here until default.flags says it too.
    unset_by_design = {f.name for f in dataclasses.fields(config_lib.Config)
                       if getattr(config_lib.Config(), f.name) is None}
    assert set(default["unset"]) <= unset_by_design, default["unset"]
    tiny = config_lib.Config.from_dict(parsed[paths["tiny"]]["config"])
    assert tiny == config_lib.preset("tiny")
    fashion = config_lib.Config.from_dict(parsed[paths["fashion_mnist"]]["config"])
    assert (fashion.dataset, fashion.binarize, fashion.latent_dim, fashion.hidden_units) == (
        "fashion_mnist", "dynamic", 32, (512, 512))
    assert fashion.epochs == 50
    # The README's flag table: one row per flag, defaults read off Config.
    rows = parsed["table"].splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == ["--" + name for name in parsed["flags"]]
    assert "| `--latent_dim` | `32` |" in parsed["table"]
    assert f"| `--epochs` | `{config_lib.Config().epochs}` |" in parsed["table"]
