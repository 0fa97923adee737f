"""Bodies: the networks between an input and a distribution head.

A body is any Keras layer; a distribution layer (`tfp_vae.layers`) adds only
its head. These build the ones a `Config` names: an MLP, or the conv stacks
of `arch=conv`.
"""

from __future__ import annotations

from typing import Sequence

import keras

__all__ = ["check_conv_shape", "check_units", "conv_decoder_body", "conv_encoder_body", "mlp"]


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
