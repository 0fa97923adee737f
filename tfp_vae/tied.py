"""Tied weights: a decoder that mirrors an MLP encoder with the transposes of its kernels.

`DenseTranspose` is one Dense layer run backwards on another's kernel;
`TiedDecoder` mirrors a whole encoder with them. `tfp_vae.models.Autoencoder`
ties a `TiedDecoder` to its encoder (and again when it is loaded from
`.keras`).
"""

from __future__ import annotations

import keras
import numpy as np

_PACKAGE = "tfp_vae"

__all__ = ["DenseTranspose", "TiedDecoder", "dense_layers"]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DenseTranspose(keras.layers.Layer):
    """A Dense layer that reuses another Dense's kernel, transposed (tied weights).

    With `dense` mapping `[B, n] -> [B, m]` through kernel W `[n, m]`, this maps
    `[B, m] -> [B, n]` as activation(x Wᵀ + b). W is the same variable as
    `dense.kernel`, not a copy; only the bias `b` `[n]` is new.

    >>> enc = keras.layers.Dense(3); _ = enc(tf.zeros([1, 5]))
    >>> dec = DenseTranspose(enc); dec(tf.zeros([2, 3])).shape
    TensorShape([2, 5])
    """

    def __init__(self, dense: keras.layers.Dense, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(dense, keras.layers.Dense):
            raise TypeError(f"DenseTranspose ties to a keras.layers.Dense, got {type(dense).__name__}")
        # Held outside Keras' tracking: the Dense's bias is not ours. Only its
        # kernel is, and build() tracks that very variable (Keras de-duplicates
        # shared variables, so a model lists it once).
        object.__setattr__(self, "dense", dense)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias

    def build(self, input_shape):
        if not self.dense.built:
            raise ValueError("build the tied Dense layer before the DenseTranspose that uses it")
        self.kernel = self.dense.kernel
        units = int(self.kernel.shape[0])
        self.bias = (self.add_weight(name="bias", shape=(units,), initializer="zeros")
                     if self.use_bias else None)
        self.built = True

    def call(self, x):
        kernel = keras.ops.cast(self.kernel, self.compute_dtype)
        y = keras.ops.matmul(x, keras.ops.transpose(kernel))
        if self.bias is not None:
            y = y + keras.ops.cast(self.bias, self.compute_dtype)
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (int(self.dense.kernel.shape[0]),)

    def get_config(self):
        # The tie is a reference to another layer: the model that owns both
        # layers (tfp_vae.models.Autoencoder) re-creates it when it loads.
        config = super().get_config()
        config.update(activation=keras.activations.serialize(self.activation),
                      use_bias=self.use_bias)
        return config


_SHAPE_ONLY = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
               keras.layers.Activation, keras.layers.InputLayer)


def dense_layers(layer) -> list:
    """The Dense layers of `layer` in call order, looking inside Sequentials and models.

    Shape-only layers (Flatten, Reshape, Dropout, Activation) are skipped; any
    other layer raises, because a tied decoder can mirror only Dense layers
    (checked by type, since an unbuilt Conv2D has no weights yet).
    """
    if isinstance(layer, keras.layers.Dense):
        return [layer]
    inner = getattr(layer, "layers", None)
    if inner is not None:
        return [d for sub in inner for d in dense_layers(sub)]
    if isinstance(layer, _SHAPE_ONLY):
        return []
    raise TypeError(f"a tied decoder mirrors Dense layers only; the encoder has a "
                    f"{type(layer).__name__}")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TiedDecoder(keras.layers.Layer):
    """The mirror image of an MLP encoder, with tied weights.

    With encoder Dense layers 1 … L (kernels W_ℓ), decoder layer ℓ is
    `DenseTranspose(encoder layer L−ℓ+1)`: it uses W_{L−ℓ+1}ᵀ, the same
    variable, and adds only a bias. Hidden layers use `activation`; the last
    is affine (logits or means). Codes `[B, K]` -> `[B, *data_shape]`.

    The tie is a reference to another layer, which no config can carry: the
    owner of both layers calls `tie(encoder)` (`tfp_vae.models.Autoencoder`
    does so in its constructor, so a loaded `.keras` model is tied again).

    >>> enc = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> _ = enc(tf.zeros([1, 2, 2, 1]))
    >>> dec = TiedDecoder((2, 2, 1)); dec.tie(enc)
    >>> dec(tf.zeros([5, 3])).shape
    TensorShape([5, 2, 2, 1])
    """

    def __init__(self, data_shape, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.data_shape = tuple(int(d) for d in data_shape)
        if not self.data_shape or any(d <= 0 for d in self.data_shape):
            raise ValueError(f"data_shape must be positive integers, got {data_shape!r}")
        self.activation = activation
        self.transposes = None

    def tie(self, encoder) -> None:
        """Builds the decoder layers on `encoder`'s Dense kernels (no variables copied)."""
        if self.transposes is not None:
            raise ValueError("this TiedDecoder is tied already; make a new one per encoder")
        denses = dense_layers(encoder)
        if not denses:
            raise ValueError("the encoder has no Dense layers to tie to")
        last = len(denses) - 1
        self.transposes = [
            DenseTranspose(dense, activation=None if i == last else self.activation,
                           name=f"transpose_{i}")
            for i, dense in enumerate(reversed(denses))]

    def build(self, input_shape):
        if self.transposes is None:
            raise ValueError("call tie(encoder) before using a TiedDecoder")
        shape = tuple(input_shape)
        for layer in self.transposes:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        if int(shape[-1]) != int(np.prod(self.data_shape)):
            raise ValueError(f"the tied decoder emits {shape[-1]} values per example but "
                             f"data_shape {self.data_shape} needs {int(np.prod(self.data_shape))}")
        self.built = True

    def build_from_config(self, config):
        # Loading deserialises this layer before its owner ties it; the owner
        # builds it afterwards, once the encoder's kernels exist.
        if self.transposes is not None:
            super().build_from_config(config)

    def call(self, z):
        h = z
        for layer in self.transposes:
            h = layer(h)
        return keras.ops.reshape(h, (keras.ops.shape(h)[0],) + self.data_shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self.data_shape

    def get_config(self):
        config = super().get_config()
        config.update(data_shape=list(self.data_shape), activation=self.activation)
        return config
