"""The errors a user can cause or meet, each a one-line message and an exit code.

Every script maps them the same way (`tfp_vae.cli.run`): the message on
stderr after the error's `prefix`, and `exit_code` as the process's status.
Importing this module imports nothing else.
"""


class Error(Exception):
    """Base of every user-facing error of tfp_vae."""

    prefix = "error"
    exit_code = 2


class ConfigError(Error, ValueError):
    """A bad setting, or a workdir that holds another run; names the setting."""


class DataError(Error, ValueError):
    """Missing or malformed data; says how to fix it."""


class EvaluationError(Error, ValueError):
    """Nothing to evaluate: no workdir, checkpoint or SavedModel."""


class TrainingInterrupted(Error, RuntimeError):
    """SIGTERM or Ctrl-C arrived; a checkpoint was saved first."""

    prefix = "interrupted"
    exit_code = 130


class TrainingDiverged(Error, RuntimeError):
    """The loss or a weight became NaN or Inf; the last good checkpoint is kept."""

    prefix = "diverged"
    exit_code = 3


class WorkdirBusy(Error, RuntimeError):
    """Another process is running in the workdir (it holds the workdir's lock)."""

    prefix = "busy"
    exit_code = 75          # sysexits' EX_TEMPFAIL: try again once the other run ends


class WriteFailed(Error, OSError):
    """An artifact could not be written (a full disk, a quota, a read-only
    filesystem); the temporary files of that write are gone and every earlier
    checkpoint is intact."""

    prefix = "write failed"
    exit_code = 74          # sysexits' EX_IOERR


class WorkerLost(Error, RuntimeError):
    """A peer of a multi-worker run stopped or stopped answering."""

    prefix = "worker lost"
    exit_code = 69          # sysexits' EX_UNAVAILABLE
