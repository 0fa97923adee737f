"""Bodies: the networks between an input and a distribution head.

A body is any Keras layer; a distribution layer (`tfp_vae.layers`) adds only
its head. These build the ones a `Config` names: an MLP of ReLU or gated
layers, the conv stacks of `arch=conv` (28×28 digits), or the residual stacks
of `arch=resnet` (colour images of 32×32, 64×64 and larger).
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

__all__ = ["Branched", "GatedDense", "ResidualBlock", "branched", "check_conv_shape",
           "check_resnet_shape", "check_units", "conv_decoder_body", "conv_encoder_body",
           "gated_mlp", "mlp", "resnet_decoder_body", "resnet_encoder_body"]


def check_units(hidden_units: Sequence[int]) -> tuple[int, ...]:
    """`hidden_units` as a tuple of ints; ValueError unless all are positive."""
    units = tuple(int(u) for u in hidden_units)
    if any(u <= 0 for u in units):
        raise ValueError(f"hidden_units must be positive integers, got {hidden_units!r}")
    return units


def mlp(hidden_units: Sequence[int], activation: str = "relu", name: str | None = None):
    """A stack of Dense layers (`[B, D] -> [B, hidden_units[-1]]`), or None for ()."""
    units = check_units(hidden_units)
    if not units:
        return None
    return keras.Sequential(
        [keras.layers.Dense(u, activation=activation) for u in units], name=name
    )


def check_conv_shape(data_shape) -> tuple[int, int, int]:
    """`data_shape` as (H, W, C); ValueError unless H and W are divisible by 4."""
    shape = tuple(int(d) for d in data_shape)
    if len(shape) != 3 or shape[0] % 4 or shape[1] % 4:
        raise ValueError(f"conv bodies need images [H, W, C] with H and W divisible by 4; "
                         f"got {shape}")
    return shape


def conv_encoder_body(data_shape, filters: Sequence[int] = (32, 64), activation="relu",
                      name: str | None = None):
    """Two stride-2 convolutions: x `[B, H, W, C]` -> features `[B, H/4, W/4, filters[-1]]`."""
    check_conv_shape(data_shape)
    return keras.Sequential(
        [keras.layers.Conv2D(f, 3, strides=2, padding="same", activation=activation)
         for f in filters], name=name)


def conv_decoder_body(data_shape, filters: Sequence[int] = (64, 32), activation="relu",
                      name: str | None = None):
    """The mirror: z `[B, K]` -> features `[B, H, W, filters[-1]]`, image-shaped, so a
    decoder layer puts a per-pixel (1x1) head on it."""
    height, width, _ = check_conv_shape(data_shape)
    return keras.Sequential(
        [keras.layers.Dense(height // 4 * width // 4 * filters[0], activation=activation),
         keras.layers.Reshape((height // 4, width // 4, filters[0]))]
        + [keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation=activation)
           for f in filters], name=name)


# arch=resnet downsamples until the feature map is this many pixels on a side.
RESNET_BOTTOM = 4


def check_resnet_shape(data_shape) -> tuple[int, int, int]:
    """`data_shape` as (H, W, C); ValueError unless H and W are 4·2ⁿ with n ≥ 1
    (8, 16, 32, 64, ...), so that stride-2 steps take each to 4."""
    shape = tuple(int(d) for d in data_shape)

    def reaches_bottom(side: int) -> bool:
        n = side // RESNET_BOTTOM
        return side % RESNET_BOTTOM == 0 and n >= 2 and n & (n - 1) == 0

    if len(shape) != 3 or not (reaches_bottom(shape[0]) and reaches_bottom(shape[1])):
        raise ValueError(f"resnet bodies need images [H, W, C] with H and W of 4·2ⁿ (8, 16, 32, "
                         f"64, ...), halved to {RESNET_BOTTOM}x{RESNET_BOTTOM}; got {shape}")
    return shape


def _resnet_strides(data_shape) -> list[tuple[int, int]]:
    """The (row, column) strides of each stage that takes H×W to 4×4: 2 along an axis
    still larger than 4, else 1 (a 32×64 image halves its width once more)."""
    height, width, _ = check_resnet_shape(data_shape)
    strides = []
    while height > RESNET_BOTTOM or width > RESNET_BOTTOM:
        stride = (2 if height > RESNET_BOTTOM else 1, 2 if width > RESNET_BOTTOM else 1)
        strides.append(stride)
        height, width = height // stride[0], width // stride[1]
    return strides


@keras.saving.register_keras_serializable(package="tfp_vae")
class ResidualBlock(keras.layers.Layer):
    """x + conv₁ₓ₁(act(conv₃ₓ₃(act(x)))): `[B, H, W, channels] -> [B, H, W, channels]`.

    The residual block of VQ-VAE (van den Oord et al. 2017), pre-activation
    (He et al. 2016): the identity path is untouched, so a stack of them
    starts near the identity and trains deep.

    >>> tuple(ResidualBlock(4)(keras.ops.zeros([2, 8, 8, 4])).shape)
    (2, 8, 8, 4)
    """

    def __init__(self, channels: int, activation="relu", **kwargs):
        super().__init__(**kwargs)
        if int(channels) <= 0:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        self.channels = int(channels)
        self.activation = activation
        self._act = keras.activations.get(activation)
        self.conv3 = keras.layers.Conv2D(self.channels, 3, padding="same", name="conv3")
        self.conv1 = keras.layers.Conv2D(self.channels, 1, name="conv1")

    def build(self, input_shape):
        if int(input_shape[-1]) != self.channels:
            raise ValueError(f"ResidualBlock({self.channels}) got {input_shape[-1]} channels")
        if not self.conv3.built:                # loading builds sublayers first
            self.conv3.build(input_shape)
            self.conv1.build(tuple(input_shape[:-1]) + (self.channels,))
        self.built = True

    def call(self, x):
        return x + self.conv1(self._act(self.conv3(self._act(x))))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "activation": self.activation}


def resnet_encoder_body(data_shape, channels: int = 64, blocks: int = 1, activation="relu",
                        name: str | None = None):
    """Residual stages down to 4×4: x `[B, H, W, C]` -> features `[B, 4, 4, channels]`.

    Each stage is a stride-2 4×4 convolution (VQ-VAE's downsampling) and
    `blocks` ResidualBlocks; every layer has `channels` channels; a last
    activation feeds the encoder's dense head. 32×32 takes 3 stages, 64×64 4.
    """
    layers = []
    for stride in _resnet_strides(data_shape):
        layers.append(keras.layers.Conv2D(channels, 4, strides=stride, padding="same",
                                          activation=activation))
        layers += [ResidualBlock(channels, activation) for _ in range(int(blocks))]
    layers.append(keras.layers.Activation(activation))
    return keras.Sequential(layers, name=name)


def resnet_decoder_body(data_shape, channels: int = 64, blocks: int = 1, activation="relu",
                        name: str | None = None):
    """The mirror: z `[B, K]` -> a dense map to `[B, 4, 4, channels]`, then per stage
    `blocks` ResidualBlocks and a stride-2 4×4 transposed convolution, to
    features `[B, H, W, channels]`: image-shaped, so the decoder layer puts a
    per-pixel (1x1) head on them."""
    strides = _resnet_strides(data_shape)
    layers = [keras.layers.Dense(RESNET_BOTTOM * RESNET_BOTTOM * channels, activation=activation),
              keras.layers.Reshape((RESNET_BOTTOM, RESNET_BOTTOM, channels))]
    for stride in reversed(strides):
        layers += [ResidualBlock(channels, activation) for _ in range(int(blocks))]
        layers.append(keras.layers.Conv2DTranspose(channels, 4, strides=stride, padding="same",
                                                   activation=activation))
    return keras.Sequential(layers, name=name)


@keras.saving.register_keras_serializable(package="tfp_vae")
class GatedDense(keras.layers.Layer):
    """A gated dense layer: h = (W₁x + b₁) ⊙ σ(W₂x + b₂), `[..., D] -> [..., units]`.

    Dauphin et al.'s gated linear unit, the hidden layer of the VampPrior and
    Exemplar-VAE reference models (Tomczak & Welling 2018). The weights start
    as theirs do: He-normal kernels, zero biases.

    >>> tuple(GatedDense(3)(keras.ops.zeros([2, 5])).shape)
    (2, 3)
    """

    def __init__(self, units: int, kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        if int(units) <= 0:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        self.units = int(units)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # One Dense of 2·units: the linear part and the gate in one matmul.
        self.linear_and_gate = keras.layers.Dense(2 * self.units,
                                                  kernel_initializer=self.kernel_initializer,
                                                  name="linear_and_gate")

    def build(self, input_shape):
        if not self.linear_and_gate.built:      # loading builds sublayers first
            self.linear_and_gate.build(input_shape)
        self.built = True

    def call(self, x):
        linear, gate = keras.ops.split(self.linear_and_gate(x), 2, axis=-1)
        return linear * keras.ops.sigmoid(gate)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


def gated_mlp(hidden_units: Sequence[int], flatten: bool = False, name: str | None = None):
    """A stack of GatedDense layers (`[B, D] -> [B, hidden_units[-1]]`), after a
    Flatten when `flatten` (an encoder's images); None for ()."""
    units = check_units(hidden_units)
    if not units:
        return None
    return keras.Sequential(([keras.layers.Flatten()] if flatten else [])
                            + [GatedDense(u) for u in units], name=name)


@keras.saving.register_keras_serializable(package="tfp_vae")
class Branched(keras.layers.Layer):
    """A body over a vector of joined parts: `[N, Σ sizes]` is split into its
    parts, each goes through its own branch, the results are concatenated and
    go through the trunk.

    The reference hierarchical VAE reads (x, z₂) and (z₁, z₂) this way: one
    hidden layer per input, then a joint one (Tomczak & Welling 2018). A
    distribution layer over the concatenated vector can so take two inputs.
    """

    def __init__(self, sizes, branches, trunk=None, **kwargs):
        super().__init__(**kwargs)
        self.sizes = [int(s) for s in sizes]
        if len(self.sizes) != len(branches) or any(s <= 0 for s in self.sizes):
            raise ValueError(f"one positive size per branch; got sizes {sizes} for "
                             f"{len(branches)} branches")
        self.branches = list(branches)
        self.trunk = trunk

    def build(self, input_shape):
        for size, branch in zip(self.sizes, self.branches):
            if not branch.built:                # loading builds sublayers first
                branch.build((None, size))
        if self.trunk is not None and not self.trunk.built:
            width = sum(int(b.compute_output_shape((None, s))[-1])
                        for s, b in zip(self.sizes, self.branches))
            self.trunk.build((None, width))
        self.built = True

    def call(self, x):
        parts = keras.ops.split(x, list(np.cumsum(self.sizes)[:-1]), axis=-1)
        h = keras.ops.concatenate([b(p) for b, p in zip(self.branches, parts)], axis=-1)
        return h if self.trunk is None else self.trunk(h)

    def get_config(self):
        return {**super().get_config(), "sizes": self.sizes,
                "branches": [keras.saving.serialize_keras_object(b) for b in self.branches],
                "trunk": (None if self.trunk is None
                          else keras.saving.serialize_keras_object(self.trunk))}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["branches"] = [keras.saving.deserialize_keras_object(b)
                              for b in config["branches"]]
        if config.get("trunk") is not None:
            config["trunk"] = keras.saving.deserialize_keras_object(config["trunk"])
        return cls(**config)


def branched(sizes, hidden_units: Sequence[int], gated: bool = False,
             name: str | None = None) -> Branched:
    """A `Branched` body for inputs of `sizes`: each through a layer of
    `hidden_units[0]` units, then the rest of `hidden_units` on the join;
    gated or ReLU layers."""
    units = check_units(hidden_units)
    if not units:
        raise ValueError("a branched body needs at least one hidden layer")
    layer = (lambda u: GatedDense(u)) if gated else (
        lambda u: keras.layers.Dense(u, activation="relu"))
    trunk = (gated_mlp(units[1:]) if gated else mlp(units[1:])) if units[1:] else None
    return Branched(sizes, [layer(units[0]) for _ in sizes], trunk, name=name)
