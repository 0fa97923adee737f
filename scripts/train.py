"""Train a VAE (PCA, AE) and leave checkpoints, figures, metrics and a SavedModel.

    python scripts/train.py                        # the default VAE on mnist_5k
    python scripts/train.py --flagfile=configs/fashion_mnist.flags --workdir=runs/fmnist

Flags are defined here and nowhere else; they become a tfp_vae.config.Config.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from tfp_vae import cli, config as config_lib  # noqa: E402

_PRESET = flags.DEFINE_enum("preset", "default", ["default", "tiny"],
                            "Settings to start from; other flags override them.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default",
                               "Run directory: config, checkpoints, figures, metrics. "
                               "Re-running with the same workdir resumes.")
_MODEL = flags.DEFINE_enum("model", None, list(config_lib.MODELS),
                           "vae, ae (plain autoencoder) or pca.")
_DATASET = flags.DEFINE_string("dataset", None, "mnist_5k, fashion_mnist, a TFDS name or a "
                               "path to an .npz with x (and y).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the data set's files are.")
_BINARIZE = flags.DEFINE_enum("binarize", None, list(config_lib.BINARIZE),
                              "none, static (x > 0.5) or dynamic (fresh draw each epoch).")
_LIMIT = flags.DEFINE_integer("limit", None, "Use only the first N examples of each split.")
_ARCH = flags.DEFINE_enum("arch", None, list(config_lib.ARCHS),
                          "mlp, or conv (two stride-2 convolutions each way; H, W divisible "
                          "by 4).")
_LATENT_DIM = flags.DEFINE_integer("latent_dim", None, "K, the size of z.")
_HIDDEN_UNITS = flags.DEFINE_list("hidden_units", None,
                                  "Widths of the MLP layers, e.g. 512,512; '' for affine.")
_DECODER = flags.DEFINE_enum("decoder", None, list(config_lib.DECODERS),
                             "bernoulli or normal.")
_DECODER_SCALE = flags.DEFINE_string("decoder_scale", None, "Normal decoder's scale: a "
                                     "number, scalar or diagonal.")
_PRIOR = flags.DEFINE_enum("prior", None, list(config_lib.PRIORS),
                           "normal (N(0, I)), vamp (VampPrior) or mog (learned mixture).")
_PRIOR_COMPONENTS = flags.DEFINE_integer("prior_components", None,
                                         "Pseudo-inputs (vamp) or components (mog).")
_CONDITIONAL = flags.DEFINE_bool("conditional", None, "A conditional VAE: q(z|x, y) and "
                                  "p(x|z, y) on the data set's labels (arch=mlp).")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Passes over the training split.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Examples per step.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", None, "Adam's step size.")
_OBJECTIVE = flags.DEFINE_enum("objective", None, list(config_lib.OBJECTIVES),
                               "elbo or iwae.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None,
                                    "z draws per example (k for iwae).")
_ANALYTIC_KL = flags.DEFINE_bool("analytic_kl", None, "Closed-form KL.")
_BETA = flags.DEFINE_float("beta", None, "Weight of the KL term.")
_WARMUP = flags.DEFINE_integer("warmup_epochs", None, "Ramp beta from 0 over N epochs.")
_FREE_BITS = flags.DEFINE_float("free_bits", None, "Per-dimension KL floor, nats.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of weights, data order and draws.")
_JIT = flags.DEFINE_bool("jit", None, "Compile the steps with XLA.")
_SPE = flags.DEFINE_integer("steps_per_execution", None, "Training steps per compiled call, "
                            "run as one XLA program when --jit on one device.")
_PRECISION = flags.DEFINE_enum("precision", None, list(config_lib.PRECISIONS),
                               "float32, mixed_float16 or mixed_bfloat16.")
_STRATEGY = flags.DEFINE_enum("strategy", None, list(config_lib.STRATEGIES),
                              "tf.distribute strategy.")
_TPU = flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu.")
_EVAL_K = flags.DEFINE_integer("eval_iwae_k", None,
                               "Importance samples for the test log-likelihood.")
_FIGURES = flags.DEFINE_bool("figures", None, "Write figures at the end.")
_EXPORT = flags.DEFINE_bool("export", None, "Export a SavedModel at the end.")

# Flags that map one-to-one onto Config fields.
_FIELDS = {"model": _MODEL, "dataset": _DATASET, "data_dir": _DATA_DIR, "binarize": _BINARIZE,
           "limit": _LIMIT,
           "arch": _ARCH, "latent_dim": _LATENT_DIM, "decoder": _DECODER, "decoder_scale": _DECODER_SCALE,
           "prior": _PRIOR, "prior_components": _PRIOR_COMPONENTS, "conditional": _CONDITIONAL,
           "epochs": _EPOCHS, "batch_size": _BATCH_SIZE, "learning_rate": _LEARNING_RATE,
           "objective": _OBJECTIVE, "num_samples": _NUM_SAMPLES, "analytic_kl": _ANALYTIC_KL,
           "beta": _BETA, "warmup_epochs": _WARMUP, "free_bits": _FREE_BITS, "seed": _SEED,
           "jit": _JIT, "steps_per_execution": _SPE, "precision": _PRECISION,
           "strategy": _STRATEGY, "tpu": _TPU, "eval_iwae_k": _EVAL_K, "figures": _FIGURES,
           "export": _EXPORT}

for _name, _flag in (("latent_dim", _LATENT_DIM), ("epochs", _EPOCHS),
                     ("batch_size", _BATCH_SIZE), ("num_samples", _NUM_SAMPLES),
                     ("steps_per_execution", _SPE), ("eval_iwae_k", _EVAL_K),
                     ("limit", _LIMIT), ("prior_components", _PRIOR_COMPONENTS)):
    flags.register_validator(_flag.name, lambda v: v is None or v > 0,
                             message=f"--{_name} must be a positive integer")
flags.register_validator("learning_rate", lambda v: v is None or v > 0,
                         message="--learning_rate must be > 0")
flags.register_validator("hidden_units",
                         lambda v: v is None or all(u.strip().isdigit() and int(u) > 0
                                                    for u in v),
                         message="--hidden_units must be positive integers, e.g. 512,512")


def config_from_flags() -> config_lib.Config:
    changes = {name: flag.value for name, flag in _FIELDS.items() if flag.value is not None}
    if _HIDDEN_UNITS.value is not None:
        changes["hidden_units"] = tuple(int(u) for u in _HIDDEN_UNITS.value)
    return config_lib.preset(_PRESET.value).replace(**changes)


def main(argv):
    del argv   # cli.run has refused positional arguments
    from absl import logging
    from tfp_vae import data, train

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # TensorFlow's INFO chatter off by default

    try:
        config = config_from_flags()
        if config.model != "vae":
            from tfp_vae import baselines
            metrics = baselines.train_baseline(config, _WORKDIR.value, verbose=2)
            print(f"{config.model} (k = {config.latent_dim}): test reconstruction error "
                  f"{metrics['reconstruction_squared_error']:.2f} (sum of squares per image); "
                  f"artifacts in {_WORKDIR.value}/: config.json figures/ metrics.json")
            return 0
        metrics = train.train_and_evaluate(config, _WORKDIR.value)
    except (config_lib.ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except train.TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:   # a second Ctrl-C, or one before training began
        print("interrupted: stopped at once; re-run the same command to resume from the "
              "last checkpoint", file=sys.stderr)
        return 130
    except train.TrainingDiverged as e:
        print(f"diverged: {e}", file=sys.stderr)
        return 3
    k = config.eval_iwae_k
    print(f"test ELBO {metrics['elbo']:.2f} nats (reconstruction {metrics['reconstruction']:.2f}, "
          f"KL {metrics['kl']:.2f}); IWAE-{k} log-likelihood estimate "
          f"{metrics[f'iwae_{k}']:.2f} nats, on {metrics['num_examples']} test images")
    print(f"artifacts in {_WORKDIR.value}/: config.json checkpoints/ tensorboard/ figures/ "
          "saved_model/ metrics.json")
    return 0


if __name__ == "__main__":
    cli.run(main)
