"""Transfer: a classifier whose body is a trained encoder, against one trained from scratch.

The lecture's claim: an autoencoder's encoder, trained without labels, is a
good start for a classifier when labels are few. Here the claim is measured.
The classifier is the encoder's body with its code layer (an AE's codes, or a
VAE's posterior mean μ(x)) followed by Dense(num_classes) with a softmax. It is
trained on n labelled examples per class three ways:

  scratch    the same architecture, freshly initialised, all weights trained;
  fine_tune  initialised from the trained encoder, all weights trained;
  frozen     the trained encoder kept fixed, only the softmax layer trained
             (a linear probe on the codes).

Accuracies are on the test split, averaged over seeds (each seed draws its own
labelled subset and initialisation).
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_vae import data
from tfp_vae.models import Autoencoder

MODES = ("scratch", "fine_tune", "frozen")
_PACKAGE = "tfp_vae"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PosteriorMean(keras.layers.Layer):
    """Wraps a distribution-returning encoder: x `[B, *data]` -> q(z|x)'s mean `[B, K]`."""

    def __init__(self, encoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder

    def call(self, x):
        return self.encoder(x).mean()

    def get_config(self):
        return {**super().get_config(),
                "encoder": keras.saving.serialize_keras_object(self.encoder)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)


def encoder_body(model) -> keras.layers.Layer:
    """The feature map of a trained model, x `[B, *data]` -> `[B, K]`.

    An `Autoencoder`'s encoder (its codes), or a VAE's encoder wrapped so that
    it returns the posterior mean μ(x).
    """
    if isinstance(model, Autoencoder):
        return model.encoder
    return PosteriorMean(model.encoder)


class Classifier(keras.Model):
    """body (x `[B, *data]` -> `[B, K]`) followed by Dense(num_classes): logits `[B, C]`."""

    def __init__(self, body, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.body = body
        self.head = keras.layers.Dense(num_classes, dtype="float32")

    def call(self, x):
        return self.head(keras.ops.reshape(self.body(x), (keras.ops.shape(x)[0], -1)))


def fresh_copy(layer, data_shape, weights: bool = False) -> keras.layers.Layer:
    """A new, built layer with `layer`'s architecture: re-initialised, or with its weights.

    data_shape: one input example's shape, e.g. (28, 28, 1).
    """
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    copy(tf.zeros((1,) + tuple(int(d) for d in data_shape)))
    if weights:
        copy.set_weights(layer.get_weights())
    return copy


def labelled_subset(y: np.ndarray, n_per_class: int, seed: int) -> np.ndarray:
    """Indices of n examples of each class, drawn without replacement: `[C·n]`."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    picks = []
    for c in classes:
        rows = np.flatnonzero(y == c)
        if len(rows) < n_per_class:
            raise ValueError(f"class {c} has {len(rows)} training examples; "
                             f"n_per_class={n_per_class} is too many")
        picks.append(rng.choice(rows, n_per_class, replace=False))
    return np.sort(np.concatenate(picks))


def train_classifier(body, x, y, num_classes: int, *, steps: int = 300, batch_size: int = 100,
                     learning_rate: float = 1e-3, train_body: bool = True, seed: int = 0,
                     jit: bool = True) -> Classifier:
    """Fits Classifier(body) on (x `[N, *data]`, y `[N]`) for `steps` Adam steps.

    The number of steps is fixed rather than the epochs, so 10 and 100 labels
    per class get the same optimisation budget.
    """
    keras.utils.set_random_seed(seed)
    body.trainable = train_body
    model = Classifier(body, num_classes)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit)
    batch_size = min(batch_size, len(x))
    epochs = max(1, -(-steps * batch_size // len(x)))
    ds = data.make_dataset(x, y, batch_size, shuffle=True, seed=seed, drop_remainder=True)
    model.fit(ds, epochs=epochs, verbose=0, shuffle=False)
    return model


def accuracy(model, x, y, batch_size: int = 500) -> float:
    """Fraction of `x` `[N, *data]` whose argmax logit equals `y` `[N]`."""
    logits = np.concatenate([np.asarray(model(x[i:i + batch_size]))
                             for i in range(0, len(x), batch_size)])
    return float(np.mean(np.argmax(logits, axis=1) == y))


def transfer_vs_scratch(pretrained: dict[str, keras.layers.Layer], x_train, y_train, x_test,
                        y_test, *, n_per_class: Sequence[int] = (10, 100),
                        seeds: Sequence[int] = (0, 1, 2), steps: int = 300,
                        jit: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Test accuracy of classifiers on few labels: scratch vs each pretrained body.

    Args:
      pretrained: {name: trained body, x `[B, *data]` -> `[B, K]`} (see
        `encoder_body`). The scratch classifier of each name has that body's
        architecture, freshly initialised. The bodies are not modified.
      x_train, y_train: the pool `[N, *data]`, `[N]` the labels are drawn from.
      x_test, y_test: where accuracy is measured.
      n_per_class: labelled examples per class, one experiment each.
      seeds: one labelled subset and initialisation per seed.

    Returns:
      {name: {n: {mode: {"mean": acc, "std": acc, "runs": [acc per seed]}}}}
      for mode in MODES, accuracies as fractions.
    """
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    out: dict = {}
    for name, body in pretrained.items():
        out[name] = {}
        for n in n_per_class:
            runs = {mode: [] for mode in MODES}
            for seed in seeds:
                rows = labelled_subset(y_train, n, seed)
                for mode in MODES:
                    keras.utils.set_random_seed(seed)   # the scratch initialisation
                    copy = fresh_copy(body, x_train.shape[1:], weights=mode != "scratch")
                    model = train_classifier(copy, x_train[rows], y_train[rows], num_classes,
                                             steps=steps, train_body=mode != "frozen",
                                             seed=seed, jit=jit)
                    runs[mode].append(accuracy(model, x_test, y_test))
            out[name][int(n)] = {mode: {"mean": float(np.mean(a)), "std": float(np.std(a)),
                                        "runs": a} for mode, a in runs.items()}
            if log:
                log(f"transfer {name}, {n} labels/class: " + ", ".join(
                    f"{m} {out[name][int(n)][m]['mean']:.3f}" for m in MODES))
    return out
