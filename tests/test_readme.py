"""The README says what the tree holds: its module table names every module, and
every path it names exists."""

import glob
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _section(title: str) -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_the_module_table_names_every_module_and_only_what_exists():
    section = _section("The package, module by module")
    named = set()
    for cell in re.findall(r"^\| ([^|]+) \|", section, flags=re.M):
        paths = re.findall(r"`([^`]+)`", cell)
        # "`scripts/train.py`, `evaluate.py`": later names sit beside the first.
        folder = os.path.dirname(paths[0]) if paths else ""
        named |= {p if "/" in p else os.path.join(folder, p) for p in paths}
    for path in named:
        assert os.path.exists(os.path.join(ROOT, path)), f"README names {path}, not in the tree"
    modules = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tfp_vae", "*.py"))}
    modules -= {"tfp_vae/__init__.py"}
    covered = {m for m in modules if m in named or os.path.dirname(m) + "/" in named}
    assert modules - covered == set(), "modules the README's table leaves out"
    for package in glob.glob(os.path.join(ROOT, "tfp_vae", "*", "__init__.py")):
        folder = os.path.relpath(os.path.dirname(package), ROOT) + "/"
        assert folder in named, f"README's table leaves out {folder}"


def _python_blocks() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    """Each block runs as written, in a fresh namespace that holds only the few
    names it assumes (a dataset, images, codes) and, in the working directory,
    the tiny run's SavedModel and TFLite model that the serving blocks read."""
    import numpy as np
    import tensorflow as tf

    from tfp_vae import data, export, factory
    from tfp_vae.config import preset

    monkeypatch.chdir(tmp_path)
    model = factory.build_vae(preset("tiny").replace(latent_dim=32), (28, 28, 1))
    export.export_saved_model(model, "runs/default/saved_model")
    export.export_tflite(model, "runs/default/model.tflite")
    images = (data.load_arrays("mnist_5k", "test")[0][:8] > 0.5).astype(np.float32)
    names = {"dataset": data.load("mnist_5k", "train", batch_size=64, limit=256,
                                  binarize="dynamic"),
             "x": images, "images": images,
             "z": np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)}
    blocks = _python_blocks()
    assert len(blocks) >= 4
    for block in blocks:
        namespace = {"tf": tf, "np": np, **names}
        exec(compile(block.replace("epochs=10", "epochs=1"), "README.md", "exec"), namespace)
    # The export recipe's SavedModel runs in saved_model_cli, as the README says.
    np.save("x.npy", images)
    done = subprocess.run(["saved_model_cli", "run", "--dir", "runs/my_encoder", "--tag_set",
                           "serve", "--signature_def", "codes", "--inputs", "x=x.npy",
                           "--outdir", "out"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.load("out/loc.npy").shape == (8, 8)
