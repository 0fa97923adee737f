"""tfp_vae.cli: the flags are made from Config's fields, and parse into a Config."""

import dataclasses

import pytest
from absl import flags

from tfp_vae import cli
from tfp_vae.config import Config, preset


def _parse(*argv):
    values = flags.FlagValues()
    made = cli.define_config_flags(values)
    values(["train.py", *argv])
    return values, made


def test_every_config_field_is_a_flag_with_the_fields_help_and_choices():
    values, _ = _parse()
    for field in dataclasses.fields(Config):
        flag = values[field.name]
        assert field.metadata["help"] in flag.help, field.name
        assert flag.default is None, field.name          # None: the preset's value
        if field.metadata["choices"]:
            assert list(flag.parser.enum_values) == list(field.metadata["choices"]), field.name
    assert values["preset"].value == "default" and values["workdir"].value == "runs/default"


def test_flags_become_the_presets_config_with_the_given_ones_applied():
    _, made = _parse("--preset=tiny", "--latent_dim=7", "--hidden_units=", "--noanalytic_kl",
                     "--decoder_scale=scalar", "--learning_rate=0.5", "--limit=10")
    assert made.config() == preset("tiny").replace(
        latent_dim=7, hidden_units=(), analytic_kl=False, decoder_scale="scalar",
        learning_rate=0.5, limit=10)
    _, made = _parse("--hidden_units=64,32")
    assert made.config() == Config(hidden_units=(64, 32))


@pytest.mark.parametrize("flag, says", [
    ("--latent_dim=0", "--latent_dim must be a positive integer"),
    ("--hidden_units=64,x", "--hidden_units must be positive integers"),
    ("--hidden_units=0", "--hidden_units must be positive integers"),
    ("--learning_rate=-1", "--learning_rate must be > 0"),
    ("--beta=-0.5", "--beta must be >= 0"),
    ("--decoder_scale=wide", "--decoder_scale must be a positive number, 'scalar' or"),
    ("--prior=flat", "value should be one of <normal|vamp|mog>"),
])
def test_a_bad_value_is_refused_with_the_fields_own_words(flag, says):
    with pytest.raises(flags.Error, match=says.replace("|", r"\|")):
        _parse(flag)
