"""A run's directory: where each artifact goes, and the config.json that says whose run it is.

    workdir/config.json      the run's Config (written first; a resumed run must match it)
    workdir/checkpoints/     model + optimizer, one per epoch
    workdir/history.json     per-epoch metrics
    workdir/tensorboard/     summaries
    workdir/figures/*.png    figures of the trained model
    workdir/saved_model/     the SavedModel export
    workdir/serving/<step>   a link to it: TF Serving's layout (--model_base_path=workdir/serving)
    workdir/model.weights.h5 the weights the SavedModel holds, in Keras' format: with
                             config.json, the model (`evaluate.evaluate_weights`)
    workdir/model.tflite     with --export_tflite: the decode and encode signatures for TFLite
    workdir/metrics.json     the end-of-run test metrics
    workdir/evaluation.json  what scripts/evaluate.py wrote
    workdir/.lock            held by the run in progress (`Lock`): one run per workdir
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from typing import NamedTuple

from tfp_vae import files
from tfp_vae.config import Config
from tfp_vae.errors import ConfigError, EvaluationError, WorkdirBusy

__all__ = ["Lock", "Paths", "check", "is_chief_task", "lock", "paths", "prepare", "read_config",
           "run_config"]


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
    weights: str
    tflite: str
    metrics: str
    evaluation: str


def paths(workdir: str) -> Paths:
    join = lambda name: os.path.join(workdir, name)        # noqa: E731
    return Paths(root=workdir, config=join("config.json"), checkpoints=join("checkpoints"),
                 history=join("history.json"), tensorboard=join("tensorboard"),
                 figures=join("figures"), saved_model=join("saved_model"),
                 serving=join("serving"), weights=join("model.weights.h5"),
                 tflite=join("model.tflite"),
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
    run (`check`), else makes it, takes its `lock` (held until released or
    the process ends) and writes config.json.

    Raises ConfigError, leaving the workdir as it was, when it holds another
    run or cannot be made; WorkdirBusy when another process runs in it.
    """
    check(config, workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:   # a file in the way, no permission: one line, not a traceback
        raise ConfigError(f"cannot use workdir {workdir} ({e.strerror}); use another --workdir") \
            from None
    lock(config, workdir).acquire()
    where = paths(workdir)
    files.write_json(where.config, config.to_dict())
    return where


class Lock:
    """One run per workdir: an exclusive `flock` on `workdir/<name>`.

    The kernel drops the lock when the process ends, however it ends, so a
    SIGKILLed run leaves no stale lock behind (the file stays, unlocked). The
    holder writes its pid, host and start time into the file for the message
    a second process gets. `flock` is shared between hosts on NFSv4 and
    other filesystems that map it to POSIX locks.

    A workdir that does not exist yet is locked when the run creates it
    (`prepare` calls `acquire` again); acquiring a lock this process already
    holds does nothing, so a script can take it before TensorFlow loads and
    the library again later.

    name: ".lock" for a run; each extra worker of a multi-worker run holds a
    name of its own (its workdir is the chief's).
    """

    _held: dict[str, int] = {}          # path -> the open descriptor holding it

    def __init__(self, workdir: str, name: str = ".lock"):
        self.workdir = workdir
        self.path = os.path.realpath(os.path.join(workdir, name))

    def acquire(self) -> bool:
        """Takes the lock if the workdir exists; returns whether it is held now.

        Raises WorkdirBusy, having changed nothing, when another process holds it.
        """
        if self.path in Lock._held:
            return True
        if not os.path.isdir(self.workdir):
            return False
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:          # BlockingIOError: another process holds it
            holder = _holder(fd)
            os.close(fd)
            raise WorkdirBusy(f"workdir {self.workdir} is in use by {holder}; wait for that "
                              "run to end (or stop it), or use another --workdir") from None
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": since}).encode() + b"\n", 0)
        Lock._held[self.path] = fd
        return True

    def release(self) -> None:
        fd = Lock._held.pop(self.path, None)
        if fd is not None:
            os.ftruncate(fd, 0)          # no holder: nothing to report
            os.close(fd)                 # closing the descriptor drops the lock

    def __enter__(self) -> "Lock":
        self._ours = self.path not in Lock._held     # an outer holder releases it, not us
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        if self._ours:
            self.release()


def _holder(fd: int) -> str:
    """'pid N on host H since T' from a lock file's contents, as far as they go."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        info = {}
    if not info:         # the holder has locked but not yet written
        return "another process"
    return f"pid {info.get('pid')} on host {info.get('host')} since {info.get('since')}"


def lock(config: Config, workdir: str) -> Lock:
    """The lock this process holds on `workdir` for the run of `config`.

    Under --strategy=multi_worker every worker runs in the chief's workdir:
    the chief (worker 0 when there is no chief) holds the run's `.lock`, each
    other worker `.lock-<type>-<index>` from TF_CONFIG, so the same worker
    started twice is refused while its peers are not. Reads no TensorFlow.
    """
    if config.strategy != "multi_worker":
        return Lock(workdir)
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task, cluster = tf_config.get("task", {}), tf_config.get("cluster", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if is_chief_task(kind, index, cluster):
        return Lock(workdir)
    return Lock(workdir, f".lock-{kind}-{index}")


def is_chief_task(task_type: str | None, task_id: int | None, cluster: dict) -> bool:
    """tf.distribute's rule for the task that writes a run's artifacts: the
    chief, or worker 0 of a cluster without one, or a process with no task."""
    return task_type in ("chief", None) or (
        task_type == "worker" and task_id == 0 and "chief" not in cluster)
