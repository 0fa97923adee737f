"""TensorBoard summaries of a run: what `tensorboard --logdir DIR/tensorboard` shows.

The run's log directory holds two TensorBoard runs. "." is written each epoch
by one `tf.summary` writer, its step the epoch number (1 for the first), so a
resumed run's summaries continue the curves of the run it resumes:

  scalars      train/* and validation/* (Keras' logs), and latent/active_units
  images       reconstructions, samples, and latent/kl_per_dimension: a bar
               chart of each latent dimension's KL, mean over the first 1,000
               validation images (its bars dark where the unit is active)
  histograms   latent/mu and latent/log_sigma: μ and ln σ of q(z|x) over
               those images, every dimension pooled

"test" is written once, at the end (`write_run_end`): the run's config as an
HParams session with the test metrics as its test/* scalars, so that
`tensorboard --logdir runs/` sets runs side by side in one table, and the test
images' posterior means as a Projector embedding (`tfp_vae.projector`). What
each latent number means, and against what a dimension's KL is taken, is
`tfp_vae.latent_use`'s; a HierarchicalVAE has its layers' under latent/z2/
and latent/z1/.

Why a run of its own for the session: the HParams plugin reads a session's
metrics from its run and the runs below it, and fails to for a session in the
root run (it looks in "./."); there it would also make every per-epoch
scalar a column. And no experiment config (`hparams_config`) is written: the
plugin then builds the table from every session it finds, so runs written
apart (other workdirs, `scripts/compare.py`) meet in one table, where one
run's config would hide the settings of the others.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.plugins.hparams import api as hp

from tfp_vae import files, input_pipeline, latent_use, projector
from tfp_vae.config import Config

__all__ = ["END_RUN", "LATENT_EXAMPLES", "RunSummaries", "TB_IMAGES", "hparams", "kl_chart",
           "write_evaluation", "write_latent_use", "write_run_end", "write_session"]

# Images per grid: the first validation images and their reconstructions, and
# as many decoded prior draws.
TB_IMAGES = 8
# Validation images whose posterior the per-epoch latent summaries read: one
# encoder pass over them costs a few milliseconds.
LATENT_EXAMPLES = 1000
# The run, inside a run's log directory, of what is written once at its end.
END_RUN = "test"

# What a dimension's KL is taken against (latent_use.Layer.reference), in a tag
# and in words.
_KL_TAGS = {"prior": "kl_per_dimension",
            "conditional_prior": "kl_per_dimension",
            "standard_normal": "kl_to_standard_normal_per_dimension"}
_KL_WORDS = {"prior": "KL(q(z_u|x) ‖ p(z_u)), p = N(0, I), the model's prior",
             "conditional_prior": "KL(q(z1_u|x, z2) ‖ p(z1_u|z2)) at z2 = E_q[z2|x]",
             "standard_normal": "KL(q(z_u|x) ‖ N(0, 1)): not the model's KL, whose "
                                "prior is learned"}


class RunSummaries:
    """Writes a run's per-epoch summaries into `logdir`.

    images: the first `LATENT_EXAMPLES` validation images as the model sees them
    (binarised) `[n, *data]`, of which the first `TB_IMAGES` make the image
    grids; labels: theirs `[n]` for a conditional model, whose prior samples
    then cycle through the classes.
    """

    def __init__(self, logdir: str, config: Config, images: np.ndarray,
                 labels: np.ndarray | None = None, num_classes: int | None = None):
        self.writer = tf.summary.create_file_writer(logdir)
        self.config = config
        self.latent_inputs = _model_inputs(images[:LATENT_EXAMPLES], labels)
        self.images = images[:TB_IMAGES]
        self.inputs = self.images if labels is None else (self.images, labels[:TB_IMAGES])
        self.sample_labels = ({} if num_classes is None
                              else {"label": np.arange(len(self.images)) % num_classes})

    def epoch(self, model, epoch: int, logs: dict) -> None:
        """Summaries after `epoch` (1-based): train/* and validation/* scalars from
        `logs` (Keras' names: `val_` for validation), reconstructions, samples and
        how the model uses its latent dimensions."""
        with self.writer.as_default(step=epoch):
            for name, value in logs.items():
                tag = f"validation/{name[4:]}" if name.startswith("val_") else f"train/{name}"
                tf.summary.scalar(tag, float(value))
            # The images, then their reconstructions in the same order.
            tf.summary.image("reconstructions", tf.concat([self.images, model(self.inputs)], 0),
                             max_outputs=2 * TB_IMAGES)
            tf.summary.image("samples", model.sample(TB_IMAGES, seed=(self.config.seed, 7),
                                                     **self.sample_labels).mean(),
                             max_outputs=TB_IMAGES)
            write_latent_use(latent_use.posterior_layers(model, self.latent_inputs),
                             f"the first {len(tf.nest.flatten(self.latent_inputs)[0])} "
                             "validation images")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_latent_use(layers: list[latent_use.Layer], what: str) -> None:
    """Under the default writer: each layer's active-unit count, its KL bar
    chart and the histograms of μ and ln σ; `what` names the images."""
    for layer in layers:
        group = "latent" if len(layers) == 1 else f"latent/{layer.name}"
        tf.summary.scalar(f"{group}/active_units", layer.active_units, description=(
            f"Burda et al.'s active units of {layer.name}: dimensions u with Var_x E_q[z_u] > "
            f"{latent_use.ACTIVE_THRESHOLD}, over {what}; of {layer.mean.shape[1]}"))
        tf.summary.image(f"{group}/{_KL_TAGS[layer.reference]}", kl_chart(layer)[None],
                         description=f"{_KL_WORDS[layer.reference]}, nats, mean over {what}")
        tf.summary.histogram(f"{group}/mu", layer.mean,
                             description=f"E_q[{layer.name}|x], all dimensions, over {what}")
        tf.summary.histogram(f"{group}/log_sigma", layer.log_scale,
                             description=f"ln σ of q({layer.name}|x), all dimensions, over {what}")


def kl_chart(layer: latent_use.Layer, width: int = 480, height: int = 240) -> np.ndarray:
    """A bar chart of `layer.kl`, one bar per latent dimension, the active ones
    dark: `[height, width, 3]` uint8."""
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    dims = np.arange(len(layer.kl))
    active = layer.variances > latent_use.ACTIVE_THRESHOLD
    ax.bar(dims, layer.kl, color=np.where(active, "#1f4e79", "#a8c4e0"), width=0.8)
    ax.set_xlabel(f"dimension of {layer.name}")
    ax.set_ylabel("KL, nats")
    ax.set_xlim(-0.6, len(dims) - 0.4)
    ax.set_title(f"{layer.name}: {layer.active_units} of {len(dims)} units active (dark), "
                 f"KL {layer.kl.sum():.2f} nats in all", fontsize=9)
    ax.set_xticks(dims[::-(-len(dims) // 16)])          # at most 16 labels
    ax.tick_params(labelsize=8)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# -- a run's settings and end-of-run numbers, for the HParams dashboard ------------


def hparams(config: Config) -> dict:
    """The settings that make a run's numbers, as HParams values (bool, int,
    float or str; a tuple as "512,512"; unset ones left out): those that fix
    the model, its data and its training (`Config.model_fields`) and epochs.
    How it ran (XLA, strategy, exports: `may_change` settings) is config.json's."""
    out = {}
    for name, value in {**config.model_fields(), "epochs": config.epochs}.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        if value is not None:
            out[name] = value
    return out


def write_session(logdir: str, values: dict, metrics: dict, *, step: int,
                  trial_id: str) -> None:
    """One HParams session in its own `logdir`: the hparams `values`, the final
    `metrics` (name -> number) as test/* scalars at `step`, and `trial_id`, the
    session's name in the table."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=step):
        hp.hparams(values, trial_id=trial_id)
        _scalars("test", metrics)
    writer.close()


def _scalars(group: str, numbers: dict) -> None:
    """Under the default writer: `group`/name for each number of `numbers`
    (others, such as lists and strings, are left out)."""
    for name, value in numbers.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            tf.summary.scalar(f"{group}/{name}", float(value))


def write_run_end(logdir: str, model, config: Config, splits: input_pipeline.Splits,
                  metrics: dict) -> list[str]:
    """The end of a run, as the run `test` of `logdir`: the run's config as
    HParams, its test metrics (`metrics.json`'s, nats per example) and each
    layer's active units on the test images as test/* scalars at step
    `metrics["epochs_run"]`, and the posterior means of the first
    `projector.MAX_POINTS` test images (encoded as the run's evaluation sees
    them, drawn raw in the sprite) as a Projector embedding labelled with
    their labels. Returns the embeddings' names.
    """
    x = splits.x_test[:projector.MAX_POINTS]
    layers = latent_use.posterior_layers(model, _model_inputs(
        input_pipeline.evaluation_arrays(config, x), splits.labels("test")))
    numbers = _model_numbers(metrics)
    for layer in layers:
        numbers["active_units" if len(layers) == 1 else f"{layer.name}/active_units"] = \
            layer.active_units
    labels = None if splits.y_test is None else splits.y_test[:projector.MAX_POINTS]
    # The run is written whole each time, so a resumed run's end replaces the
    # last one's (the HParams plugin would show the first session's settings).
    with files.atomic_directory(os.path.join(logdir, END_RUN)) as run:
        write_session(run, hparams(config), numbers, step=int(metrics.get("epochs_run") or 0),
                      trial_id=_trial(logdir))
        return projector.write_embedding(run, {f"{layer.name}_mean": layer.mean
                                               for layer in layers}, x, labels)


def write_evaluation(logdir: str, result: dict, codes: dict[str, np.ndarray], images: np.ndarray,
                     labels: np.ndarray | None, *, step: int) -> list[str]:
    """An evaluation (`tfp_vae.evaluate`'s result) as a TensorBoard run of its
    own in `logdir`: its numbers as evaluation/* scalars at `step`, and `codes`
    (name -> `[N, K]`, the posterior means of `images` `[N, *data]`) as a
    Projector embedding labelled `labels` `[N]`; it replaces an earlier one
    there. Returns the embeddings' names."""
    with files.atomic_directory(logdir) as run:
        writer = tf.summary.create_file_writer(run)
        with writer.as_default(step=step):
            _scalars("evaluation", _model_numbers(result))
        writer.close()
        return projector.write_embedding(run, codes, images, labels)


def _model_numbers(metrics: dict) -> dict:
    """The numbers of `metrics` (metrics.json's, an evaluation's) that describe
    the model, not the run: ELBO terms, IWAE-k, active units, probe accuracy."""
    return {k: v for k, v in metrics.items() if k.startswith("iwae_") or k in (
        "elbo", "reconstruction", "kl", "active_units", "linear_probe_accuracy")}


def _model_inputs(images: np.ndarray, labels: np.ndarray | None):
    """What a model takes: images, or (images, labels) for a conditional one."""
    return images if labels is None else (images, labels[:len(images)])


def _trial(logdir: str) -> str:
    """A run's name in the HParams table: its workdir (the log directory's parent)."""
    return os.path.normpath(os.path.dirname(os.path.normpath(logdir))) or "."
