"""Print a script's flags as a Markdown table (for the README), read off the flags themselves.

    python scripts/flags_table.py                      # scripts/train.py
    python scripts/flags_table.py scripts/evaluate.py

scripts/train.py's flags are made from tfp_vae.config.Config (tfp_vae.cli):
their help is the field's, and a flag whose default is None takes the
preset's value, so the table shows Config's default. Nothing is typed twice.
Imports no TensorFlow.
"""

import dataclasses
import importlib.util
import os
import re
import sys

# absl's own flags (app's, logging's) are defined before the script's, so
# load_script does not count them as the script's.
from absl import app, flags, logging  # noqa: F401

from tfp_vae import cli
from tfp_vae.config import Config


def load_script(path: str):
    """Runs the script at `path` as a module (not its main): (module, the flags it
    defines, in the order it defines them)."""
    before = set(flags.FLAGS)
    spec = importlib.util.spec_from_file_location("_flags_table_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, [flags.FLAGS[name] for name in flags.FLAGS if name not in before]


def _default(flag, config_fields) -> str:
    value = flag.default
    if value is None and flag.name in config_fields:
        value = getattr(Config(), flag.name)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "''"
    return "none" if value is None else str(value)


def table(module, defined) -> str:
    """The Markdown table of a script's flags (from `load_script`): flag, default, meaning."""
    # Flags made from Config (cli.define_config_flags) are None for "the
    # preset's value"; show Config's. A script's own flags keep theirs.
    made_from_config = any(isinstance(v, cli.ConfigFlags) for v in vars(module).values())
    config_fields = {f.name for f in dataclasses.fields(Config)} if made_from_config else set()
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for flag in defined:
        # The help's trailing "[default]" is what the table's column says.
        meaning = re.sub(r"\s*\[[^\]]*\]\s*$", "", flag.help).replace("|", "\\|")
        rows.append(f"| `--{flag.name}` | `{_default(flag, config_fields)}` | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    print(table(*load_script(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "train.py"))))
