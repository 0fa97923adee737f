"""Evaluate a trained VAE: test ELBO, IWAE-k log-likelihood, active units, linear probe.

    python scripts/evaluate.py --workdir=runs/default              # latest checkpoint
    python scripts/evaluate.py --saved_model=runs/default/saved_model --k=5000
    python scripts/evaluate.py --weights=runs/default/model.weights.h5   # + config.json beside

Prints a table and writes it as JSON (default `WORKDIR/evaluation.json`, or
`saved_model_evaluation.json` beside a SavedModel, `weights_evaluation.json`
beside a weights file). All numbers are nats per
example except the counts, the probe's accuracy and the bits per dimension
(−ln p / (D ln 2), D = H·W·C: shown for a logistic decoder's 8-bit pixels and a
Bernoulli decoder's binarised ones, the standard unit for colour images).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from tfp_vae import cli, workdir as workdir_lib  # noqa: E402
from tfp_vae.errors import EvaluationError  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory: evaluates its "
                               "latest checkpoint.")
_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "A SavedModel directory (from "
                                   "export_saved_model) to evaluate instead of a workdir.")
_WEIGHTS = flags.DEFINE_string("weights", None, "A weights file (a run's model.weights.h5) "
                               "to evaluate instead, the model rebuilt from the config.json "
                               "beside it.")
_K = flags.DEFINE_integer("k", 1000, "Importance samples per example for the IWAE estimate.",
                          lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "Examples per evaluation step.",
                                   lower_bound=1)
_SEED = flags.DEFINE_integer("seed", None, "Seed of the z draws (default: the run's).")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON result.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the data set's files are "
                                "(default: the run's).")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"],
                           "Which split to evaluate on.")
_LIMIT = flags.DEFINE_integer("limit", None, "Use only the first N examples (default: the "
                              "run's limit).", lower_bound=1)
_PROBE = flags.DEFINE_bool("probe", True, "Fit a linear probe on the training split's codes.")
_JIT = flags.DEFINE_bool("jit", None, "Compile the evaluation with XLA (default: as the run "
                        "did, its config's --jit; XLA draws other samples).")
_TENSORBOARD = flags.DEFINE_bool("tensorboard", True, "Write the evaluation as a TensorBoard "
                                 "run (its numbers, the codes in the Projector): "
                                 "WORKDIR/tensorboard/evaluation_<split>, or beside the "
                                 "SavedModel.")

# (key, label, format) of the on-screen table, in order; absent keys are skipped.
_ROWS = (
    ("elbo", "ELBO", "{:.2f} nats"),
    ("reconstruction", "  reconstruction E_q[ln p(x|z)]", "{:.2f} nats"),
    ("kl", "  KL(q(z|x) || p(z))", "{:.2f} nats"),
    ("iwae", "IWAE-{k} estimate of ln p(x)", "{:.2f} nats"),
    ("iwae_stderr", "  its standard error over the images", "{:.2f} nats"),
    ("elbo_bpd", "ELBO in bits per dimension", "{:.3f} bits/dim"),
    ("iwae_bpd", "IWAE-{k} in bits per dimension", "{:.3f} bits/dim"),
    ("bpd_dimension", "  where a dimension is", "{}"),
    ("active_units", "active units (Var E_q[z_u] > 0.01)", "{} of {latent_dim}"),
    ("linear_probe_accuracy", "linear probe accuracy", "{:.3f}"),
)


def format_table(result: dict) -> str:
    """The result as aligned `label  value` lines, a header line first."""
    where = result.get("checkpoint") or {"weights": "weights file"}.get(result.get("source"),
                                                                       "SavedModel")
    lines = [f"{result['path']} ({where}), {result['split']} split, "
             f"{result['num_examples']} examples, seed {result['seed']}"]
    for key, label, fmt in _ROWS:
        if key.startswith("iwae"):
            key = key.replace("iwae", f"iwae_{result['k']}")
        if key not in result:
            continue
        lines.append(f"  {label.format(**result):<38} {fmt.format(result[key], **result)}")
    return "\n".join(lines)


def main(argv):
    del argv   # cli.run has refused positional arguments
    sources = [name for name, flag in (("workdir", _WORKDIR), ("saved_model", _SAVED_MODEL),
                                       ("weights", _WEIGHTS)) if flag.value is not None]
    if len(sources) != 1:
        raise app.UsageError("pass exactly one of --workdir, --saved_model and --weights")
    if _WORKDIR.value is not None:
        workdir_lib.run_config(_WORKDIR.value)      # no run there: said before TF loads
    if _WEIGHTS.value is not None:                  # nor a weights file, nor its config
        if not os.path.isfile(_WEIGHTS.value):
            raise EvaluationError(f"no weights file at {_WEIGHTS.value}; pass a run's "
                                  "model.weights.h5")
        workdir_lib.run_config(os.path.dirname(os.path.abspath(_WEIGHTS.value)))
    from absl import logging
    # TensorFlow loads here, once the flags have been checked: a bad flag fails at once.
    from tfp_vae import evaluate

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    options = dict(k=_K.value, split=_SPLIT.value, batch_size=_BATCH_SIZE.value,
                   seed=_SEED.value, limit=_LIMIT.value, data_dir=_DATA_DIR.value,
                   output=_OUTPUT.value, probe=_PROBE.value, jit=_JIT.value,
                   tensorboard=_TENSORBOARD.value)
    if _WORKDIR.value is not None:
        result = evaluate.evaluate_workdir(_WORKDIR.value, **options)
    elif _SAVED_MODEL.value is not None:
        result = evaluate.evaluate_saved_model(_SAVED_MODEL.value, **options)
    else:
        result = evaluate.evaluate_weights(_WEIGHTS.value, **options)
    where = dict(workdir=_WORKDIR.value, saved_model=_SAVED_MODEL.value, weights=_WEIGHTS.value)
    output = _OUTPUT.value or evaluate.default_output(**where)
    print(format_table(result))
    print(f"written to {output}")
    if _TENSORBOARD.value:
        logdir = evaluate.default_logdir(split=_SPLIT.value, **where)
        print(f"and to TensorBoard: tensorboard --logdir {os.path.dirname(logdir)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
