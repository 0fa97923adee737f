"""Train a VAE (PCA, AE) and leave checkpoints, figures, metrics and a SavedModel.

    python scripts/train.py                        # the default VAE on mnist_5k
    python scripts/train.py --flagfile=configs/fashion_mnist.flags --workdir=runs/fmnist

Its flags are the fields of tfp_vae.config.Config (see the README's table).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging  # noqa: E402

from tfp_vae import cli, workdir as workdir_lib  # noqa: E402

_FLAGS = cli.define_config_flags()


def main(argv):
    del argv   # cli.run has refused positional arguments
    config, workdir = _FLAGS.config(), _FLAGS.workdir
    workdir_lib.check(config, workdir)           # another run's workdir: refused before TF loads
    workdir_lib.lock(config, workdir).acquire()  # a busy one too; held until the process ends
    # TensorFlow loads here, once the flags and the workdir have been checked.
    from tfp_vae import train
    from tfp_vae.experiments import baselines

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # TensorFlow's INFO chatter off by default
    if config.model in ("pca", "ae"):
        metrics = baselines.train_baseline(config, workdir, verbose=2)
        print(f"{config.model} (k = {config.latent_dim}): test reconstruction error "
              f"{metrics['reconstruction_squared_error']:.2f} (sum of squares per image); "
              f"{_artifacts(workdir, 'config.json figures/ metrics.json')}")
        return 0
    metrics = train.train_and_evaluate(config, workdir)
    k = config.eval_iwae_k
    print(f"test ELBO {metrics['elbo']:.2f} nats (reconstruction {metrics['reconstruction']:.2f}, "
          f"KL {metrics['kl']:.2f}); IWAE-{k} log-likelihood estimate "
          f"{metrics[f'iwae_{k}']:.2f} nats, on {metrics['num_examples']} test images")
    print(_artifacts(workdir, "config.json checkpoints/ tensorboard/ figures/ saved_model/ "
                              "serving/ model.weights.h5 metrics.json"))
    return 0


def _artifacts(workdir: str, names: str) -> str:
    """"artifacts in workdir/: ..." with those of `names` the run has written
    (--nofigures, --noexport write fewer)."""
    there = [name for name in names.split() if os.path.exists(os.path.join(workdir, name))]
    return f"artifacts in {workdir}/: {' '.join(there)}"


if __name__ == "__main__":
    cli.run(main)
