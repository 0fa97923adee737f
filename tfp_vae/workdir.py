"""A run's directory: where each artifact goes, and the config.json that says whose run it is.

    workdir/config.json      the run's Config (written first; a resumed run must match it)
    workdir/checkpoints/     model + optimizer, one per epoch
    workdir/history.json     per-epoch metrics
    workdir/tensorboard/     summaries
    workdir/figures/*.png    figures of the trained model
    workdir/saved_model/     the SavedModel export
    workdir/serving/<step>   a link to it: TF Serving's layout (--model_base_path=workdir/serving)
    workdir/model.tflite     with --export_tflite: the decode and encode signatures for TFLite
    workdir/metrics.json     the end-of-run test metrics
    workdir/evaluation.json  what scripts/evaluate.py wrote
"""

from __future__ import annotations

import os
from typing import NamedTuple

from tfp_vae import files
from tfp_vae.config import Config
from tfp_vae.errors import ConfigError, EvaluationError

__all__ = ["Paths", "check", "paths", "prepare", "read_config", "run_config"]


class Paths(NamedTuple):
    """Where each artifact of the run in `root` goes."""

    root: str
    config: str
    checkpoints: str
    history: str
    tensorboard: str
    figures: str
    saved_model: str
    serving: str
    tflite: str
    metrics: str
    evaluation: str


def paths(workdir: str) -> Paths:
    join = lambda name: os.path.join(workdir, name)        # noqa: E731
    return Paths(root=workdir, config=join("config.json"), checkpoints=join("checkpoints"),
                 history=join("history.json"), tensorboard=join("tensorboard"),
                 figures=join("figures"), saved_model=join("saved_model"),
                 serving=join("serving"), tflite=join("model.tflite"),
                 metrics=join("metrics.json"), evaluation=join("evaluation.json"))


def read_config(workdir: str) -> Config | None:
    """The Config a run wrote to `workdir/config.json`; None when there is none.

    Raises ConfigError when the file is there but is not a Config.
    """
    path = paths(workdir).config
    if not os.path.exists(path):
        return None
    try:
        return Config.from_dict(files.read_json(path))
    except (ValueError, TypeError) as e:    # bad JSON, a bad value, an unknown key
        raise ConfigError(f"{path} is not a valid config ({str(e).splitlines()[0]}); "
                          "use another workdir") from None


def run_config(workdir: str) -> Config:
    """The Config of the run in `workdir`, for reading the run (evaluating it).

    Raises EvaluationError when there is no workdir, no config.json in it, or
    one that is not a Config.
    """
    if not os.path.isdir(workdir):
        raise EvaluationError(f"no workdir {workdir}; pass the --workdir of a training run")
    try:
        config = read_config(workdir)
    except ConfigError as e:
        raise EvaluationError(str(e)) from None
    if config is None:
        raise EvaluationError(f"{workdir} has no config.json; pass the --workdir of a "
                              "training run")
    return config


def check(config: Config, workdir: str) -> None:
    """Raises ConfigError if `workdir` holds another run: a config.json whose
    model fields differ from `config`'s. Reads only; imports no TensorFlow, so
    a script can refuse before it loads anything."""
    saved = read_config(workdir)
    if saved is not None:
        ours, theirs = config.model_fields(), saved.model_fields()
        diff = [f"{k}={theirs[k]!r} (asked {ours[k]!r})" for k in ours if ours[k] != theirs[k]]
        if diff:
            raise ConfigError(f"workdir {workdir} holds another run ({', '.join(diff)}); "
                              "use another --workdir or the same settings")


def prepare(config: Config, workdir: str) -> Paths:
    """Claims `workdir` for the run of `config`: refuses one that holds another
    run (`check`), else writes config.json.

    Raises ConfigError, leaving the workdir as it was, when it holds another
    run or cannot be made.
    """
    check(config, workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:   # a file in the way, no permission: one line, not a traceback
        raise ConfigError(f"cannot use workdir {workdir} ({e.strerror}); use another --workdir") \
            from None
    where = paths(workdir)
    files.write_json(where.config, config.to_dict())
    return where
