"""Keras 3 layers whose `call` returns a `tfd.Distribution`.

TFP's own `tfp.layers` work only with the legacy Keras 2 (tf_keras); these are
their Keras 3 counterparts for the models of this project. Each layer is a
body (an MLP by default, any Keras layer when `body=` is given) followed by a
distribution head sized by the number of parameters its distribution needs.
The head always computes in float32, so the distributions, their `log_prob`
and their KL terms stay float32 under a mixed-precision policy.

Keras 3's functional and Sequential APIs demand tensors between layers, so a
model that carries these distributions is a subclassed `keras.Model`
(`tfp_vae.models.VAE`, or a user's own).

Example:

>>> import tensorflow as tf
>>> from tfp_vae.layers import GaussianEncoder, BernoulliDecoder
>>> encoder = GaussianEncoder(latent_dim=2, hidden_units=(64,))
>>> decoder = BernoulliDecoder(data_shape=(28, 28, 1), hidden_units=(64,))
>>> q = encoder(tf.zeros([5, 28, 28, 1]))            # batch [5], event [2]
>>> p = decoder(q.sample(seed=(1, 2)))                # batch [5], event [28, 28, 1]
>>> p.log_prob(tf.zeros([5, 28, 28, 1])).shape        # nats per example
TensorShape([5])
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

_PACKAGE = "tfp_vae"
# Lower bound on every learned scale: keeps log-densities finite when a scale
# would otherwise collapse to zero.
_DEFAULT_MIN_SCALE = 1e-4


def _inverse_softplus(y: float) -> float:
    return float(y + math.log(-math.expm1(-y)))


def _check_units(hidden_units: Sequence[int]) -> tuple[int, ...]:
    units = tuple(int(u) for u in hidden_units)
    if any(u <= 0 for u in units):
        raise ValueError(f"hidden_units must be positive integers, got {hidden_units!r}")
    return units


def mlp(hidden_units: Sequence[int], activation: str = "relu", name: str | None = None):
    """A stack of Dense layers (`[B, D] -> [B, hidden_units[-1]]`), or None for ()."""
    units = _check_units(hidden_units)
    if not units:
        return None
    return keras.Sequential(
        [keras.layers.Dense(u, activation=activation) for u in units], name=name
    )


def _check_conv_shape(data_shape) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in data_shape)
    if len(shape) != 3 or shape[0] % 4 or shape[1] % 4:
        raise ValueError(f"conv bodies need images [H, W, C] with H and W divisible by 4; "
                         f"got {shape}")
    return shape


def conv_encoder_body(data_shape, filters: Sequence[int] = (32, 64), activation="relu",
                      name: str | None = None):
    """Two stride-2 convolutions: x `[B, H, W, C]` -> features `[B, H/4, W/4, filters[-1]]`."""
    _check_conv_shape(data_shape)
    return keras.Sequential(
        [keras.layers.Conv2D(f, 3, strides=2, padding="same", activation=activation)
         for f in filters], name=name)


def conv_decoder_body(data_shape, filters: Sequence[int] = (64, 32), activation="relu",
                      name: str | None = None):
    """The mirror: z `[B, K]` -> features `[B, H, W, filters[-1]]`, image-shaped, so a
    decoder layer puts a per-pixel (1x1) head on it."""
    height, width, _ = _check_conv_shape(data_shape)
    return keras.Sequential(
        [keras.layers.Dense(height // 4 * width // 4 * filters[0], activation=activation),
         keras.layers.Reshape((height // 4, width // 4, filters[0]))]
        + [keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation=activation)
           for f in filters], name=name)


class LogitBernoulli(tfd.Bernoulli):
    """`tfd.Bernoulli` with a one-pass `log_prob` for finite logits.

    TFP's Bernoulli evaluates ln p(x) as
    `multiply_no_nan(-softplus(l), 1 - x) + multiply_no_nan(-softplus(-l), x)`:
    two softplus and two masked products per pixel, so that infinite logits
    work. A decoder's logits are finite, and then the same number is the
    negative sigmoid cross-entropy, one exp and one log1p per pixel:
    `−(max(l, 0) − l·x + log1p(exp(−|l|)))`. Under XLA that halves the
    cost of the likelihood, a fifth of an importance-weighted bound's time.
    Everything else (sampling, mean, entropy, KL) is TFP's, and so is
    `log_prob` when the distribution was given probs.

    >>> d = LogitBernoulli(logits=[-1.0, 2.0], dtype=tf.float32)
    >>> bool(np.allclose(d.log_prob([1.0, 0.0]),
    ...                  tfd.Bernoulli(logits=[-1.0, 2.0]).log_prob([1.0, 0.0])))
    True
    """

    def _log_prob(self, event):
        if self.logits is None:      # given probs: TFP's own
            return super()._log_prob(event)
        logits = tf.convert_to_tensor(self.logits)
        event = tf.cast(event, logits.dtype)
        return -tf.nn.sigmoid_cross_entropy_with_logits(labels=event, logits=logits)


def standard_normal(shape, seed, dtype=tf.float32) -> tf.Tensor:
    """N(0, 1) draws of `shape` for a stateless `seed` (`[2]` ints): Φ⁻¹(u).

    u is TensorFlow's Philox uniform, k·2⁻²³ on [0, 1) in float32, moved up
    by half a grid step to the midpoints (2k + 1)·2⁻²⁴: all inside (0, 1)
    and symmetric about ½, so every draw is finite (|ε| ≤ 5.29) and ε and −ε
    are equally likely (float64: k·2⁻⁵², |ε| ≤ 8.21). Inverting the CDF
    (`tf.math.ndtri`) costs under XLA a fraction of what
    `tf.random.stateless_normal` does; compiled and eager runs draw different
    numbers for the same seed (XLA's Philox stream is its own). 16-bit
    dtypes draw in float32 and round.
    """
    draw = tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32
    u = tf.random.stateless_uniform(shape, seed, dtype=draw, alg="philox")
    return tf.cast(tf.math.ndtri(u + np.finfo(draw.as_numpy_dtype).eps / 2), dtype)


class NdtriNormalDiag(tfd.MultivariateNormalDiag):
    """`tfd.MultivariateNormalDiag` that samples with :func:`standard_normal`.

    TFP draws the standard-normal base with `tf.random.stateless_normal` in
    the layout `[n, K, B]` and transposes it; here ε `[n, B, K]` comes from
    Φ⁻¹ of Philox uniforms, and z = loc + scale·ε through the distribution's
    own bijector (so `log_prob` of a sample reuses the cached ε). Under XLA
    this halves the time of an importance-weighted bound with k = 100. The
    law and the reparameterisation are the same; for the same seed the
    numbers are not TFP's. log_prob, KL, entropy and everything else are
    TFP's. A stateful seed (None or an int) takes TFP's own sampler.

    >>> q = NdtriNormalDiag(loc=[0.0, 1.0], scale_diag=[1.0, 2.0])
    >>> q.sample(3, seed=(1, 2)).shape
    TensorShape([3, 2])
    """

    def _call_sample_n(self, sample_shape, seed, **kwargs):
        if kwargs or seed is None or isinstance(seed, (int, np.integer)):
            return super()._call_sample_n(sample_shape, seed, **kwargs)
        shape = tf.concat([tf.reshape(tf.cast(sample_shape, tf.int32), [-1]),
                           self.batch_shape_tensor(), self.event_shape_tensor()], axis=0)
        eps = standard_normal(shape, tfp.random.sanitize_seed(seed), self.dtype)
        return self.bijector.forward(eps)


class _DistributionLayer(keras.layers.Layer):
    """Body + float32 head; subclasses say how head outputs become a distribution."""

    def __init__(self, hidden_units=(512, 512), body=None, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = _check_units(hidden_units)
        self.activation = activation
        self._user_body = body is not None
        self.body = body if body is not None else mlp(self.hidden_units, activation, name="body")

    def _check_input(self, x):
        """A clear ValueError at trace time when x is not `[B, *shape built for]`;
        without it, a wrong shape surfaces as a Dense deep inside the body."""
        expected = getattr(self, "_input_dims", None)
        shape = tf.TensorShape(x.shape)
        if expected is None or shape.rank is None:
            return
        got = shape.as_list()
        if len(got) != len(expected) + 1 or any(
                e is not None and g is not None and e != g for e, g in zip(expected, got[1:])):
            want = ", ".join("?" if d is None else str(d) for d in expected)
            hint = " (no batch axis?)" if got == list(expected) else ""
            raise ValueError(f"{type(self).__name__} {self.name!r} expects input of shape "
                             f"[B, {want}]; got {got}{hint}")

    def _features(self, x):
        """Body output: [B, ...] in the layer's compute dtype."""
        self._check_input(x)
        if not self._user_body:
            # The MLP body and the affine map act on flattened inputs.
            x = keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))
        return x if self.body is None else self.body(x)

    def build(self, input_shape):
        # Build every sublayer by running once on a dummy batch: a user's body
        # may not know its output shape otherwise, and `.keras` loading needs
        # all variables to exist before weights are restored.
        if self.built:
            return
        self._input_dims = tuple(None if d is None else int(d) for d in input_shape[1:])
        dummy = tf.zeros([1] + [int(d) for d in input_shape[1:]], dtype=self.compute_dtype)
        self._head_params(self._features(dummy))
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_units=list(self.hidden_units),
            activation=self.activation,
            body=keras.saving.serialize_keras_object(self.body) if self._user_body else None,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("body") is not None:
            config["body"] = keras.saving.deserialize_keras_object(config["body"])
        return cls(**config)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GaussianEncoder(_DistributionLayer):
    """q(z|x) = N(loc(x), diag(scale(x)²)) as `tfd.MultivariateNormalDiag`.

    Input `[B, *data_shape]` -> distribution with batch `[B]`, event
    `[latent_dim]`. The head emits `params_size(latent_dim) = 2·latent_dim`
    numbers: the loc, and the scale through softplus plus `min_scale`.

    Args:
      latent_dim: K, the size of z.
      hidden_units: widths of the MLP body; `()` makes loc and the scale's
        pre-activation affine in x.
      body: any Keras layer or model used in place of the MLP (a conv stack,
        say); it sees x unflattened and its output is flattened for the head.
      activation: the MLP's activation.
      min_scale: floor added to every scale.

    >>> q = GaussianEncoder(2, hidden_units=())(tf.zeros([3, 4]))
    >>> q.batch_shape, q.event_shape
    (TensorShape([3]), TensorShape([2]))
    """

    def __init__(self, latent_dim, hidden_units=(512, 512), body=None, activation="relu",
                 min_scale=_DEFAULT_MIN_SCALE, **kwargs):
        super().__init__(hidden_units=hidden_units, body=body, activation=activation, **kwargs)
        if int(latent_dim) <= 0:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = int(latent_dim)
        self.min_scale = float(min_scale)
        self.head = keras.layers.Dense(self.params_size(self.latent_dim), dtype="float32",
                                       name="head")

    @staticmethod
    def params_size(latent_dim: int) -> int:
        return 2 * int(latent_dim)

    def _head_params(self, features):
        flat = keras.ops.reshape(features, (keras.ops.shape(features)[0], -1))
        return self.head(flat)

    def call(self, x):
        params = self._head_params(self._features(x))
        loc, raw_scale = tf.split(params, 2, axis=-1)
        return NdtriNormalDiag(loc=loc, scale_diag=tf.math.softplus(raw_scale) + self.min_scale)

    def get_config(self):
        config = super().get_config()
        config.update(latent_dim=self.latent_dim, min_scale=self.min_scale)
        return config


class _Decoder(_DistributionLayer):
    """z `[B, K]` -> a distribution with batch `[B]` and event `data_shape`."""

    _params_per_dim = 1

    def __init__(self, data_shape, hidden_units=(512, 512), body=None, activation="relu",
                 **kwargs):
        super().__init__(hidden_units=hidden_units, body=body, activation=activation, **kwargs)
        self.data_shape = tuple(int(d) for d in data_shape)
        if not self.data_shape or any(d <= 0 for d in self.data_shape):
            raise ValueError(f"data_shape must be positive integers, got {data_shape!r}")
        self.event_size = int(np.prod(self.data_shape))
        # Units of the head are settled in build(): per pixel when the body is
        # already spatial, dense over all of data_shape otherwise.
        self.head = None

    @classmethod
    def params_size(cls, data_shape) -> int:
        return cls._params_per_dim * int(np.prod(data_shape))

    def _head_params(self, features):
        """Head output shaped `[B, *data_shape, params_per_dim]`."""
        per_pixel = (len(self.data_shape) >= 2 and len(features.shape) == len(self.data_shape) + 1
                     and tuple(features.shape[1:-1]) == self.data_shape[:-1])
        if self.head is None:
            # A spatial body (a conv decoder) gets a 1x1 map per pixel; a flat one a Dense.
            units = (self.data_shape[-1] * self._params_per_dim if per_pixel
                     else self.params_size(self.data_shape))
            self.head = keras.layers.Dense(units, dtype="float32", name="head")
            self._per_pixel = per_pixel
        if not self._per_pixel:
            features = keras.ops.reshape(features, (keras.ops.shape(features)[0], -1))
        params = self.head(features)
        return keras.ops.reshape(
            params, (keras.ops.shape(params)[0],) + self.data_shape + (self._params_per_dim,))

    def call(self, z):
        return self._distribution(self._head_params(self._features(z)))

    def get_config(self):
        config = super().get_config()
        config.update(data_shape=list(self.data_shape))
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BernoulliDecoder(_Decoder):
    """p(x|z) = Π Bernoulli(x_d; sigmoid(logits_d(z))) as `tfd.Independent`.

    z `[B, K]` -> batch `[B]`, event `data_shape`; `log_prob(x)` is the
    negative binary cross-entropy in nats (defined for grey levels in [0, 1]
    too) and `mean()` the pixel probabilities.

    >>> p = BernoulliDecoder((28, 28, 1), hidden_units=(32,))(tf.zeros([3, 2]))
    >>> p.batch_shape, p.event_shape
    (TensorShape([3]), TensorShape([28, 28, 1]))
    """

    def _distribution(self, params):
        return tfd.Independent(
            LogitBernoulli(logits=params[..., 0], dtype=tf.float32),
            reinterpreted_batch_ndims=len(self.data_shape))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NormalDecoder(_Decoder):
    """p(x|z) = Π N(x_d; loc_d(z), scale_d²) as `tfd.Independent(tfd.Normal)`.

    z `[B, K]` -> batch `[B]`, event `data_shape`. With `scale=1.0`,
    -log_prob(x) = ½‖x − loc‖² + const: the autoencoder's squared error.

    Args:
      scale: a positive float (fixed), "scalar" (one learned scale shared by
        every dimension) or "diagonal" (one learned scale per dimension).
      min_scale: floor added to a learned scale.

    >>> p = NormalDecoder((4,), scale="scalar", hidden_units=())(tf.zeros([3, 2]))
    >>> p.batch_shape, p.event_shape
    (TensorShape([3]), TensorShape([4]))
    """

    def __init__(self, data_shape, scale=1.0, hidden_units=(512, 512), body=None,
                 activation="relu", min_scale=_DEFAULT_MIN_SCALE, **kwargs):
        super().__init__(data_shape, hidden_units=hidden_units, body=body,
                         activation=activation, **kwargs)
        if isinstance(scale, str):
            if scale not in ("scalar", "diagonal"):
                raise ValueError(
                    f"scale must be a positive float, 'scalar' or 'diagonal', got {scale!r}")
            self.raw_scale = self.add_weight(
                name="raw_scale", shape=() if scale == "scalar" else self.data_shape,
                initializer=keras.initializers.Constant(_inverse_softplus(1.0)),
                dtype="float32")
        else:
            if not float(scale) > 0:
                raise ValueError(f"a fixed scale must be positive, got {scale!r}")
            scale = float(scale)
        self.scale = scale
        self.min_scale = float(min_scale)

    def scale_tensor(self):
        """The decoder's scale: a scalar or `data_shape` tensor, float32."""
        if isinstance(self.scale, str):
            return tf.math.softplus(self.raw_scale) + self.min_scale
        return tf.constant(self.scale, tf.float32)

    def _distribution(self, params):
        loc = params[..., 0]
        scale = tf.broadcast_to(self.scale_tensor(), tf.shape(loc))
        return tfd.Independent(tfd.Normal(loc=loc, scale=scale),
                               reinterpreted_batch_ndims=len(self.data_shape))

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, min_scale=self.min_scale)
        return config


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
