"""The run's configuration: one frozen dataclass, its checks and its presets.

Scripts turn flags into a `Config`; the library reads only the `Config`.
A run writes it to `workdir/config.json`, and a resumed run must match it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

MODELS = ("vae", "ae", "pca")
ARCHS = ("mlp", "conv")
DECODERS = ("bernoulli", "normal")
OBJECTIVES = ("elbo", "iwae")
PRIORS = ("normal", "vamp", "mog")
BINARIZE = ("none", "static", "dynamic")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the setting."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. Units: epochs, examples, nats."""

    model: str = "vae"                    # one of MODELS
    dataset: str = "mnist_5k"             # a data.load name or a .npz path
    data_dir: str | None = None
    binarize: str = "dynamic"             # one of BINARIZE
    limit: int | None = None              # use only the first N training examples
    arch: str = "mlp"                     # one of ARCHS
    latent_dim: int = 32
    hidden_units: tuple[int, ...] = (512, 512)
    decoder: str = "bernoulli"            # one of DECODERS
    decoder_scale: str = "1.0"            # NormalDecoder scale: a float, "scalar", "diagonal"
    prior: str = "normal"                 # one of PRIORS
    prior_components: int = 50            # pseudo-inputs (vamp) or mixture components (mog)
    conditional: bool = False             # q(z|x, y), p(x|z, y): a ConditionalVAE on labels
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    objective: str = "elbo"               # one of OBJECTIVES
    num_samples: int = 1                  # z draws per example (k for IWAE)
    analytic_kl: bool = True
    beta: float = 1.0
    warmup_epochs: int = 0                # beta ramps from 0 to `beta` over these epochs
    free_bits: float = 0.0
    seed: int = 0
    jit: bool = True
    steps_per_execution: int = 32        # steps per compiled call: one XLA program (models.FusedSteps)
    precision: str = "float32"            # one of PRECISIONS
    strategy: str = "default"             # one of STRATEGIES
    tpu: str | None = None
    eval_iwae_k: int = 100                # importance samples for the end-of-run estimate
    figures: bool = True
    export: bool = True

    def __post_init__(self):
        def need(ok: bool, message: str):
            if not ok:
                raise ConfigError(message)

        for name, choices in (("model", MODELS), ("arch", ARCHS), ("decoder", DECODERS),
                              ("objective", OBJECTIVES), ("prior", PRIORS),
                              ("binarize", BINARIZE), ("precision", PRECISIONS),
                              ("strategy", STRATEGIES)):
            value = getattr(self, name)
            need(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")
        for name in ("latent_dim", "epochs", "batch_size", "num_samples", "steps_per_execution",
                     "eval_iwae_k", "prior_components"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name} must be a positive integer; got {value!r}")
        need(self.limit is None or (isinstance(self.limit, int) and self.limit > 0),
             f"limit must be a positive integer; got {self.limit!r}")
        need(self.learning_rate > 0, f"learning_rate must be > 0; got {self.learning_rate!r}")
        need(self.beta >= 0, f"beta must be >= 0; got {self.beta!r}")
        need(self.free_bits >= 0, f"free_bits must be >= 0; got {self.free_bits!r}")
        need(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0; got {self.warmup_epochs!r}")
        need(all(isinstance(u, int) and u > 0 for u in self.hidden_units),
             f"hidden_units must be positive integers; got {self.hidden_units!r}")
        need(self.decoder_scale in ("scalar", "diagonal") or _is_positive_float(
            self.decoder_scale), "decoder_scale must be a positive number, 'scalar' or "
             f"'diagonal'; got {self.decoder_scale!r}")
        need(self.strategy != "tpu" or bool(self.tpu),
             "strategy=tpu needs the TPU's address (--tpu)")
        need(not (self.objective == "iwae" and self.free_bits > 0),
             "free_bits applies to the ELBO objective only; use objective=elbo")
        if self.conditional:
            need(self.model == "vae", f"conditional applies to model=vae; got model={self.model}")
            need(self.arch == "mlp", "conditional needs arch=mlp (the label joins the "
                 "flattened image)")
            need(self.prior != "vamp", "conditional does not take prior=vamp (its pseudo-inputs "
                 "have no labels); use prior=normal or mog")

    # -- JSON -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_units"] = list(self.hidden_units)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        d = dict(d)
        if "hidden_units" in d:
            d["hidden_units"] = tuple(d["hidden_units"])
        return cls(**d)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def model_fields(self) -> dict[str, Any]:
        """The settings that fix the model's shape and data: a resumed run must match them."""
        return {k: v for k, v in self.to_dict().items() if k in _MODEL_FIELDS}


# A resumed run may change how long it trains, how it evaluates and where it
# runs, but not the model or the data it trains on.
_MODEL_FIELDS = ("model", "dataset", "binarize", "limit", "arch", "latent_dim", "hidden_units",
                 "decoder", "decoder_scale", "prior", "prior_components", "conditional",
                 "batch_size", "learning_rate", "objective", "num_samples", "analytic_kl",
                 "beta", "warmup_epochs", "free_bits", "seed", "precision")


def _is_positive_float(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def preset(name: str) -> Config:
    """Named presets: "default" (the README's run) and "tiny" (tests: seconds)."""
    presets = {
        "default": Config(),
        "tiny": Config(limit=256, latent_dim=2, hidden_units=(32,), epochs=1, batch_size=64,
                       eval_iwae_k=8),
    }
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(presets)}")
    return presets[name]
