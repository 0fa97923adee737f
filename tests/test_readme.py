"""The README says what the tree holds: its module table names every module, and
every path it names exists."""

import glob
import os
import re

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
