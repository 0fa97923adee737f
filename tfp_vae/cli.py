"""What the scripts share: flags made from `Config`, and `absl.app.run` with one-line errors.

`define_config_flags()` defines one absl flag per `Config` field, its type,
help, choices and validation all read off the field (`tfp_vae.config.setting`),
plus `--preset` and `--workdir`; `ConfigFlags.config()` turns the parsed flags
into the run's `Config`. A new setting is one line in `Config`.

absl reports a bad flag in two lines ("FATAL Flags parsing error: ..." and a
hint) and an `app.UsageError` with the whole usage text, both with exit code
1. The scripts report every bad input the same way instead: one line
``prefix: ...`` on stderr and the error's exit code (2 for bad input), before
anything is written. Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any, Callable, NoReturn

from absl import app, flags

from tfp_vae import errors
from tfp_vae.config import PRESETS, Config, Check

USAGE_EXIT_CODE = errors.Error.exit_code

__all__ = ["ConfigFlags", "USAGE_EXIT_CODE", "define_config_flags", "fail", "run"]


def fail(message, prefix: str = "error", exit_code: int = USAGE_EXIT_CODE) -> NoReturn:
    """Prints ``prefix: message`` (one line) on stderr and exits with `exit_code`."""
    text = " ".join(str(message).split())
    print(f"{prefix}: {text}", file=sys.stderr)
    sys.exit(exit_code)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(e)


def run(main: Callable[[list[str]], int | None]) -> NoReturn:
    """`app.run(main)` for a script that takes flags only: an unknown or
    out-of-range flag, a positional argument, an `app.UsageError` or any
    `tfp_vae.errors.Error` raised by `main` ends the process through
    :func:`fail`, with that error's prefix and exit code."""

    def checked(argv: list[str]):
        if len(argv) > 1:
            fail(f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            return main(argv)
        except app.UsageError as e:
            fail(e)
        except errors.Error as e:
            fail(e, e.prefix, e.exit_code)
        except KeyboardInterrupt:   # a second Ctrl-C, or one before training began
            fail("stopped at once; re-run the same command to resume from the last checkpoint",
                 errors.TrainingInterrupted.prefix, errors.TrainingInterrupted.exit_code)

    app.run(checked, flags_parser=_parse_flags)


# -- flags from Config ---------------------------------------------------------------------


class _Field(typing.NamedTuple):
    """One Config field as a flag: the value type and how to read a flag value."""

    kind: type                          # str, int, float, bool or tuple (of ints)
    optional: bool                      # None is a value


def _field_kind(hint) -> _Field:
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    origin = typing.get_origin(hint) or hint
    if origin not in (str, int, float, bool, tuple):
        raise TypeError(f"no flag type for a Config field of type {hint}")
    return _Field(origin, optional)


def _to_value(kind: type, flag_value):
    """The Config value of a parsed flag value (a list of strings for tuples)."""
    if kind is tuple:
        return tuple(int(u) for u in flag_value if u.strip())
    return flag_value


def _validator(name: str, kind: type, check: Check):
    def valid(flag_value) -> bool:
        if flag_value is None:
            return True
        try:
            value = _to_value(kind, flag_value)
        except ValueError:
            return False
        return bool(check.test(value))

    return valid, f"--{name} {check.says}"


class ConfigFlags:
    """The flags of `define_config_flags`; `config()` reads them after parsing."""

    def __init__(self, flag_values: flags.FlagValues):
        self._flags = flag_values
        self._kinds = {}
        hints = typing.get_type_hints(Config)
        for field in dataclasses.fields(Config):
            self._kinds[field.name] = _field_kind(hints[field.name]).kind

    @property
    def workdir(self) -> str:
        return self._flags["workdir"].value

    def config(self) -> Config:
        """The preset's Config with every flag that was given (not None) applied.

        Raises ConfigError for a combination of settings that cannot run.
        """
        changes = {name: _to_value(kind, self._flags[name].value)
                   for name, kind in self._kinds.items() if self._flags[name].value is not None}
        return PRESETS[self._flags["preset"].value].replace(**changes)


def define_config_flags(flag_values: flags.FlagValues = flags.FLAGS,
                        workdir: str = "runs/default") -> ConfigFlags:
    """Defines --preset, --workdir and one flag per Config field in `flag_values`.

    A field's flag defaults to None, meaning "the preset's value", so that a
    flagfile or a preset can supply it; `scripts/flags_table.py` shows the
    `Config` default beside it.
    """
    flags.DEFINE_enum("preset", "default", list(PRESETS), "Settings to start from; other "
                      "flags override them.", flag_values=flag_values)
    flags.DEFINE_string("workdir", workdir, "Run directory: config, checkpoints, figures, "
                        "metrics. Re-running with the same workdir resumes.",
                        flag_values=flag_values)
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        _define(field, _field_kind(hints[field.name]).kind, flag_values)
    return ConfigFlags(flag_values)


def _define(field: dataclasses.Field, kind: type, flag_values: flags.FlagValues) -> None:
    name, meta = field.name, field.metadata
    common: dict[str, Any] = dict(default=None, help=meta["help"], flag_values=flag_values)
    if meta["choices"]:
        flags.DEFINE_enum(name, enum_values=list(meta["choices"]), **common)
    elif kind is bool:
        flags.DEFINE_bool(name, **common)
    elif kind is int:
        flags.DEFINE_integer(name, **common)
    elif kind is float:
        flags.DEFINE_float(name, **common)
    elif kind is tuple:
        flags.DEFINE_list(name, **common)
    else:
        flags.DEFINE_string(name, **common)
    if meta["check"] is not None:
        valid, message = _validator(name, kind, meta["check"])
        flags.register_validator(name, valid, message=message, flag_values=flag_values)
