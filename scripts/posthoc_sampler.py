"""Fit a post-hoc Gaussian mixture to a trained VAE's posterior means and sample from it.

    python scripts/posthoc_sampler.py --workdir=runs/default                 # 10 components
    python scripts/posthoc_sampler.py --workdir=runs/default --components=20 --seed=1

Fits the mixture to the codes E_q[z|x] of the run's training split, scores
the held-out split's codes under it and under N(0, I) (nats per code), and
writes WORKDIR/posthoc/ whole: mixture.npz, metrics.json, samples.png
(prior samples beside mixture samples) and saved_model/ (the run's
signatures plus sample_posthoc). The run's own saved_model/ is not touched.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from tfp_vae import cli, workdir as workdir_lib  # noqa: E402

# The library's defaults, without importing TensorFlow before the flags are checked.
_DEFAULT_COMPONENTS, _DEFAULT_REG = 10, 1e-6

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory (its latest "
                               "checkpoint is used).", required=True)
_COMPONENTS = flags.DEFINE_integer("components", _DEFAULT_COMPONENTS, "C, the number of "
                                   "Gaussians in the mixture.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the k-means++ start and of the figure's draws.")
_REG = flags.DEFINE_float("reg", _DEFAULT_REG, "Floor on every covariance eigenvalue.",
                          lower_bound=1e-12)
_MAX_ITER = flags.DEFINE_integer("max_iter", 500, "At most this many EM iterations.",
                                 lower_bound=0)
_RESTARTS = flags.DEFINE_integer("restarts", 1, "EM runs from different k-means++ starts; "
                                 "the best likelihood is kept.", lower_bound=1)
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "test"],
                           "The held-out split whose codes are scored.")


# (key of metrics.json's held_out, label) of the on-screen table, in order; absent keys
# are skipped.
_ROWS = (("mixture", "the mixture"), ("single_gaussian", "one Gaussian fitted alike"),
         ("standard_normal", "N(0, I)"), ("prior", "the model's learned prior"),
         ("mixture_minus_standard_normal", "mixture - N(0, I), paired"))


def format_table(m: dict) -> str:
    """The result as a header line and aligned `label  mean ± stderr` lines."""
    held = m["held_out"]
    lines = [f"{m['workdir']} ({m['checkpoint']}): {m['components']} components fitted to "
             f"{m['num_train_codes']} training codes (K = {m['latent_dim']}) in "
             f"{m['em_iterations']} EM iterations" + ("" if m["em_converged"] else
                                                      ", not converged"),
             f"  mean ln density of {held['num_codes']} {m['held_out_split']} codes, "
             "nats per code:"]
    for key, label in _ROWS:
        if key in held:
            lines.append(f"    {label:<28} {held[key]:8.2f} ± {held[key + '_stderr']:.2f}")
    return "\n".join(lines)


def main(argv):
    del argv   # cli.run has refused positional arguments
    workdir_lib.run_config(_WORKDIR.value)      # no run there: said before TF loads
    # A run training there: refused before TF loads too; held until the process ends.
    workdir_lib.Lock(_WORKDIR.value).acquire()
    from absl import logging
    from tfp_vae import posthoc     # TensorFlow loads here, once the flags are checked

    logging.set_verbosity(logging.WARNING)
    metrics = posthoc.posthoc_workdir(
        _WORKDIR.value, components=_COMPONENTS.value, seed=_SEED.value, reg=_REG.value,
        max_iter=_MAX_ITER.value, restarts=_RESTARTS.value, split=_SPLIT.value)
    print(format_table(metrics))
    print(f"written to {posthoc.posthoc_dir(_WORKDIR.value)}/")
    return 0


if __name__ == "__main__":
    cli.run(main)
