"""Atomic writes: a reader (or a resumed run) never sees a half-written file.

Everything a run leaves behind — figures, metrics, config, SavedModel — is
written to a temporary path beside its destination and renamed into place,
so a kill at any moment leaves either the old artifact or the new one. A
write that fails (a full disk, a quota, a read-only filesystem) removes its
temporary path and raises `WriteFailed`: what, where, and the space left
(`writing`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Iterator

from tfp_vae.errors import WriteFailed

__all__ = ["atomic_directory", "atomic_write", "read_json", "write_json", "writing"]


def _write_errors() -> tuple[type, ...]:
    """OSError, and TensorFlow's OpError once TensorFlow is loaded (its file
    writers, SaveV2 among them, report ENOSPC as ResourceExhaustedError).
    Without TensorFlow loaded no OpError can arise, so none is imported."""
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    return (OSError,) if errors is None else (OSError, errors.OpError)


def _free_space(path: str) -> str:
    """The space left on the filesystem of `path` (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown space"
    if free < 1024:
        return f"{free} bytes"
    for unit in ("KB", "MB", "GB"):
        free /= 1024
        if free < 1024 or unit == "GB":
            return f"{free:.1f} {unit}"


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    # TF: "{{function_node ...}} path/...tempstate123; No space left on device [Op:SaveV2]"
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return first.rsplit("; ", 1)[-1].split(" [Op:")[0].strip() or type(e).__name__


@contextlib.contextmanager
def writing(what: str, path: str | os.PathLike) -> Iterator[None]:
    """Turns a failed write of `what` to `path` into one `WriteFailed` line:
    what, where, why, and the space left there."""
    try:
        yield
    except WriteFailed:
        raise
    except _write_errors() as e:
        raise WriteFailed(f"could not write {what} to {os.fspath(path)} ({_reason(e)}; "
                          f"{_free_space(os.fspath(path))} free there); free some space and "
                          "re-run the same command: it resumes from the last checkpoint") \
            from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success rename it to `path`.

    Raises WriteFailed (the temporary file removed, `path` as it was) when
    the write fails."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    with writing(os.path.basename(path), path):
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; artifacts are for sharing
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary directory beside `path`; on success it replaces `path`.

    An existing `path` is moved aside first and removed only once the new
    directory is in place, so a kill never leaves a half-written one there.
    Raises WriteFailed (the temporary directory removed, `path` as it was)
    when the write fails.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    with writing(os.path.basename(path) + "/", path):
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            yield tmp
            old = None
            if os.path.exists(path):
                old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.",
                                       suffix=".old")
                os.rmdir(old)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
