"""PCA vs AE vs VAE at the same latent sizes on the same data: one report.

    python scripts/compare.py --workdir=runs/compare                 # mnist_5k, k = 2, 8, 32
    python scripts/compare.py --preset=tiny --ks=2 --workdir=runs/compare_tiny  # seconds

Takes scripts/train.py's flags (data, widths, epochs, optimiser, seed; --model
and --latent_dim are set per run) plus the ones below, and writes report.md,
metrics.json, figures/*.png and models/*.keras into --workdir. Re-running with
the same workdir loads the trained models instead of training them again.
"""

import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from tfp_vae import cli  # noqa: E402

# The run's flags, as scripts/train.py has them (one definition: tfp_vae.config).
_CONFIG_FLAGS = cli.define_config_flags(workdir="runs/compare")
flags.FLAGS.set_default("binarize", "none")
_KS = flags.DEFINE_list("ks", ["2", "8", "32"], "Latent sizes to compare.")
_MODELS = flags.DEFINE_list("models", ["pca", "ae", "ae_tied", "vae"],
                            "Models: pca, ae, ae_tied (tied weights), vae.")
_TRANSFER_K = flags.DEFINE_integer("transfer_k", 32, "Latent size of the few-label transfer "
                                   "experiment; 0 skips it.")
_TRANSFER_LABELS = flags.DEFINE_list("transfer_labels", ["10", "100"],
                                     "Labelled examples per class, one experiment each.")
_TRANSFER_SEEDS = flags.DEFINE_integer("transfer_seeds", 3, "Seeds per transfer experiment.")
_TRANSFER_STEPS = flags.DEFINE_integer("transfer_steps", 300, "Adam steps per classifier.")
_JUDGE_STEPS = flags.DEFINE_integer("judge_steps", 1000, "Adam steps of the judge classifier.")

for _name in ("ks", "transfer_labels"):
    flags.register_validator(_name, lambda v: all(u.strip().isdigit() and int(u) > 0 for u in v),
                             message=f"--{_name} must be positive integers, e.g. 2,8,32")
for _flag in (_TRANSFER_SEEDS, _TRANSFER_STEPS, _JUDGE_STEPS):
    flags.register_validator(_flag.name, lambda v: v > 0,
                             message=f"--{_flag.name} must be a positive integer")


def main(argv):
    del argv   # cli.run has refused positional arguments
    from absl import logging
    # TensorFlow loads here, once the flags have been checked: a bad flag fails at once.
    from tfp_vae.experiments import compare

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    workdir = _CONFIG_FLAGS.workdir
    config = _CONFIG_FLAGS.config()
    metrics = compare.run(
        config, workdir, [int(k) for k in _KS.value], models=_MODELS.value,
        transfer_k=_TRANSFER_K.value or None,
        n_per_class=[int(n) for n in _TRANSFER_LABELS.value],
        transfer_seeds=list(range(_TRANSFER_SEEDS.value)),
        transfer_steps=_TRANSFER_STEPS.value, judge_steps=_JUDGE_STEPS.value,
        command="python scripts/compare.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        verbose=1)
    print(f"report in {os.path.join(workdir, 'report.md')} "
          f"({len(metrics['figures'])} figures, metrics.json)")
    return 0


if __name__ == "__main__":
    cli.run(main)
