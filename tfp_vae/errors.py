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
