"""The run's configuration: one frozen dataclass whose fields carry their own help,
choices and checks, and the presets.

Every setting is written once, here: `tfp_vae.cli` turns the fields into absl
flags (type, help, choices and validation from the field), `scripts/flags_table.py`
prints them, and the library reads only the `Config`. A run writes it to
`workdir/config.json`; a resumed run must match it in every field that is not
marked `may_change`. Importing this module imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, NamedTuple

from tfp_vae.errors import ConfigError

MODELS = ("vae", "hvae", "ae", "pca")
# The models train.train_and_evaluate trains (the others are experiments.baselines).
VARIATIONAL = ("vae", "hvae")
ARCHS = ("mlp", "conv", "resnet")
BODIES = ("relu", "gated")
DECODERS = ("bernoulli", "normal", "logistic")
OBJECTIVES = ("elbo", "iwae")
PRIORS = ("normal", "vamp", "mog")
BINARIZE = ("none", "static", "dynamic")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")

__all__ = ["VARIATIONAL", "ARCHS", "BINARIZE", "BODIES", "Check", "Config", "ConfigError", "DECODERS", "MODELS",
           "OBJECTIVES", "PRECISIONS", "PRESETS", "PRIORS", "STRATEGIES", "preset"]


class Check(NamedTuple):
    """A test of one value and what a failing value must be instead."""

    test: Callable[[Any], bool]
    says: str                    # completes "latent_dim ...", e.g. "must be > 0"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_positive_number(text) -> bool:
    try:
        return float(text) > 0
    except (TypeError, ValueError):
        return False


POSITIVE_INT = Check(lambda v: _is_int(v) and v > 0, "must be a positive integer")
POSITIVE = Check(lambda v: v > 0, "must be > 0")
NON_NEGATIVE = Check(lambda v: v >= 0, "must be >= 0")
POSITIVE_INTS = Check(lambda v: all(_is_int(u) and u > 0 for u in v),
                      "must be positive integers, e.g. 512,512")
SCALE = Check(lambda v: v in ("scalar", "diagonal") or _is_positive_number(v),
              "must be a positive number, 'scalar' or 'diagonal'")


def setting(default, help: str, *, choices: tuple[str, ...] = (), check: Check | None = None,
            may_change: bool = False):
    """A Config field: its default, one line of help, and what values it takes.

    choices: the allowed values of a string setting. check: a test of any other
    value (None passes for a field whose default is None). may_change: a
    resumed run may give it another value (how long or where it runs, how it
    is evaluated); every other field fixes the model or its data.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": tuple(choices), "check": check, "may_change": may_change})


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. Units: epochs, examples, nats."""

    model: str = setting("vae", "vae, hvae (two stochastic layers, z1 and z2 each of "
                         "latent_dim), ae (plain autoencoder) or pca.", choices=MODELS)
    dataset: str = setting("mnist_5k", "mnist_5k, fashion_mnist, a TFDS name, a path to an "
                           ".npz with x (and y), a folder of PNG/JPEG images or TFRecord files "
                           "(path/*.tfrecord).")
    data_dir: str | None = setting(None, "Where the data set's files are.", may_change=True)
    binarize: str = setting("dynamic", "none, static (x > 0.5) or dynamic (fresh draw each "
                            "epoch).", choices=BINARIZE)
    limit: int | None = setting(None, "Use only the first N examples of each split.",
                                check=POSITIVE_INT)
    image_size: str | None = setting(None, "Resize every image to H,W, e.g. 64,64 (needed "
                                     "when a folder's or TFRecords' images differ in size).",
                                     check=Check(lambda v: [u.strip().isdigit() and int(u) > 0
                                                            for u in v.split(",")] == [True, True],
                                                 "must be H,W: two positive integers, e.g. 64,64"))
    cache_mb: int = setting(512, "A folder's or TFRecords' training split of at most this "
                            "many MiB as float32 images is read into memory (faster); a "
                            "larger one is streamed (see --disk_cache). 0: always stream.",
                            check=NON_NEGATIVE)
    disk_cache: bool = setting(True, "A training split over --cache_mb is decoded once into an "
                               "unnamed temporary file (uint8; float32 if resized) when the "
                               "temporary directory has room, and each epoch reads it from "
                               "there; --nodisk_cache decodes its files every epoch (slower).")
    arch: str = setting("mlp", "mlp, conv (two stride-2 convolutions each way; H, W "
                        "divisible by 4) or resnet (residual stages halving H×W to 4×4 and "
                        "back; H, W of 4·2ⁿ: 8, 16, 32, 64, ...).", choices=ARCHS)
    channels: int = setting(64, "arch=resnet: channels of every convolution and residual "
                            "block.", check=POSITIVE_INT)
    body: str = setting("relu", "The MLP's layers: relu (Dense + ReLU) or gated (GatedDense, "
                        "(W₁x + b₁) ⊙ σ(W₂x + b₂)).", choices=BODIES)
    latent_dim: int = setting(32, "K, the size of z.", check=POSITIVE_INT)
    hidden_units: tuple[int, ...] = setting((512, 512), "Widths of the MLP layers, e.g. "
                                            "512,512; '' for affine.", check=POSITIVE_INTS)
    decoder: str = setting("bernoulli", "bernoulli, normal, or logistic (discretised "
                           "logistic over the 256 levels of 8-bit pixels; --binarize=none).",
                           choices=DECODERS)
    decoder_scale: str = setting("1.0", "Normal decoder's scale: a number, scalar or diagonal.",
                                 check=SCALE)
    latent_scale_min: float = setting(
        1e-4, "Floor added to every scale σ of the Gaussians over z (q(z|x), a VampPrior's "
        "components, the HVAE's q(z1|x, z2) and p(z1|z2)), after a softplus.", check=POSITIVE)
    latent_scale_max: float | None = setting(
        None, "Ceiling of those scales (none by default). The reference VampPrior and HVAE "
        "bound ln σ² to [-6, 2]: --latent_scale_min=0.05 --latent_scale_max=2.72.",
        check=POSITIVE)
    prior: str = setting("normal", "normal (N(0, I)), vamp (VampPrior) or mog (learned "
                         "mixture).", choices=PRIORS)
    prior_components: int = setting(50, "Pseudo-inputs (vamp) or components (mog).",
                                    check=POSITIVE_INT)
    conditional: bool = setting(False, "A conditional VAE: q(z|x, y) and p(x|z, y) on the data "
                                "set's labels (arch=mlp).")
    epochs: int = setting(30, "Passes over the training split.", check=POSITIVE_INT,
                          may_change=True)
    patience: int = setting(0, "Early stopping: stop once the validation ELBO has not improved "
                            "for N epochs after the warm-up, and keep the best epoch's "
                            "weights; 0 trains every epoch.", check=NON_NEGATIVE)
    batch_size: int = setting(128, "Examples per step.", check=POSITIVE_INT)
    learning_rate: float = setting(1e-3, "Adam's step size.", check=POSITIVE)
    objective: str = setting("elbo", "elbo or iwae.", choices=OBJECTIVES)
    num_samples: int = setting(1, "z draws per example (k for iwae).", check=POSITIVE_INT)
    analytic_kl: bool = setting(True, "Closed-form KL.")
    beta: float = setting(1.0, "Weight of the KL term.", check=NON_NEGATIVE)
    warmup_epochs: int = setting(0, "Ramp beta from 0 over N epochs.", check=NON_NEGATIVE)
    free_bits: float = setting(0.0, "Per-dimension KL floor, nats.", check=NON_NEGATIVE)
    seed: int = setting(0, "Seed of weights, data order and draws.")
    jit: bool = setting(True, "Compile the steps with XLA (not arch=conv or resnet on a "
                        "machine without GPU or TPU: TensorFlow's own convolutions are "
                        "faster there).", may_change=True)
    steps_per_execution: int = setting(32, "Training steps per compiled call, run as one XLA "
                                       "program when --jit on one device.", check=POSITIVE_INT,
                                       may_change=True)
    precision: str = setting("float32", "float32, mixed_float16 or mixed_bfloat16.",
                             choices=PRECISIONS)
    strategy: str = setting("default", "tf.distribute strategy.", choices=STRATEGIES,
                            may_change=True)
    tpu: str | None = setting(None, "TPU address for --strategy=tpu.", may_change=True)
    collective_timeout: float = setting(
        0.0, "multi_worker: seconds a collective may wait for a peer before the run stops "
        "(0: no limit; a peer whose process dies or freezes is caught within ~10 s anyway, "
        "by TF's heartbeats).", check=NON_NEGATIVE, may_change=True)
    eval_iwae_k: int = setting(100, "Importance samples for the test log-likelihood.",
                               check=POSITIVE_INT, may_change=True)
    figures: bool = setting(True, "Write figures at the end.", may_change=True)
    export: bool = setting(True, "Export a SavedModel at the end (and serving/<step>, TF "
                           "Serving's layout of it).", may_change=True)
    export_tflite: bool = setting(False, "Export model.tflite at the end: the decode and "
                                  "encode signatures, for TFLite.", may_change=True)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value, meta = getattr(self, field.name), field.metadata
            if meta["choices"] and value not in meta["choices"]:
                raise ConfigError(f"{field.name} must be one of {', '.join(meta['choices'])}; "
                                  f"got {value!r}")
            if meta["check"] is not None and value is not None and not _passes(meta["check"],
                                                                               value):
                raise ConfigError(f"{field.name} {meta['check'].says}; got {value!r}")
        self._check_combinations()

    def _check_combinations(self):
        def need(ok: bool, message: str):
            if not ok:
                raise ConfigError(message)

        need(self.latent_scale_max is None or self.latent_scale_max > self.latent_scale_min,
             f"latent_scale_max must exceed latent_scale_min ({self.latent_scale_min}); "
             f"got {self.latent_scale_max}")
        need(self.strategy != "tpu" or bool(self.tpu),
             "strategy=tpu needs the TPU's address (--tpu)")
        need(not (self.objective == "iwae" and self.free_bits > 0),
             "free_bits applies to the ELBO objective only; use objective=elbo")
        need(self.body == "relu" or self.arch == "mlp", "body=gated is an MLP body; use "
             "arch=mlp")
        need(self.model != "hvae" or self.arch == "mlp", "model=hvae is built of MLPs; use "
             "arch=mlp")
        need(self.model != "hvae" or bool(self.hidden_units), "model=hvae needs hidden_units "
             "(its joint layers read two inputs through a hidden layer each)")
        need(self.model != "hvae" or self.free_bits == 0, "free_bits needs a factorised KL; "
             "model=hvae has none")
        need(self.decoder != "logistic" or self.binarize == "none", "decoder=logistic models "
             f"8-bit pixel values; use --binarize=none (got binarize={self.binarize})")
        need(self.decoder != "logistic" or self.model in VARIATIONAL, "decoder=logistic is a "
             f"likelihood for model={' or '.join(VARIATIONAL)}; got model={self.model}")
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
        """The settings that fix the model and its data: a resumed run must match them."""
        fixed = {f.name for f in dataclasses.fields(self) if not f.metadata["may_change"]}
        return {k: v for k, v in self.to_dict().items() if k in fixed}


def _passes(check: Check, value) -> bool:
    try:
        return bool(check.test(value))
    except TypeError:         # a value of another type: "abc" > 0
        return False


PRESETS = {
    "default": Config(),     # the README's run
    "tiny": Config(limit=256, latent_dim=2, hidden_units=(32,), epochs=1, batch_size=64,
                   eval_iwae_k=8),    # tests: seconds
}


def preset(name: str) -> Config:
    """A named starting point: "default" (the README's run) or "tiny" (tests: seconds)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
