"""What the scripts share: `absl.app.run` with one-line errors.

absl reports a bad flag in two lines ("FATAL Flags parsing error: ..." and a
hint) and an `app.UsageError` with the whole usage text, both with exit code
1. The scripts report every bad input the same way instead: one line
``error: ...`` on stderr and exit code 2, before anything is written.
Importing this module does not import TensorFlow.
"""

import sys
from typing import Callable, NoReturn

from absl import app, flags

USAGE_EXIT_CODE = 2


def fail(message) -> NoReturn:
    """Prints ``error: message`` (one line) on stderr and exits with code 2."""
    text = " ".join(str(message).split())
    print(f"error: {text}", file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(e)


def run(main: Callable[[list[str]], int | None]) -> NoReturn:
    """`app.run(main)` for a script that takes flags only: an unknown or
    out-of-range flag, a positional argument or an `app.UsageError` raised by
    `main` ends the process through :func:`fail`."""

    def checked(argv: list[str]):
        if len(argv) > 1:
            fail(f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            return main(argv)
        except app.UsageError as e:
            fail(e)

    app.run(checked, flags_parser=_parse_flags)
