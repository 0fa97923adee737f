"""Keras 3 layers whose `call` returns a `tfd.Distribution`: the encoder and the decoders.

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

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae.bodies import check_units, mlp
from tfp_vae.distributions import DiscretizedLogistic, LogitBernoulli, NdtriNormalDiag
# A public name of this module (tfp_vae.layers.DenseTranspose); it lives with
# the tied decoder it serves.
from tfp_vae.tied import DenseTranspose

tfd = tfp.distributions

__all__ = ["BernoulliDecoder", "DenseTranspose", "DiscretizedLogisticDecoder", "GaussianEncoder",
           "NormalDecoder"]

_PACKAGE = "tfp_vae"
# Lower bound on every learned scale: keeps log-densities finite when a scale
# would otherwise collapse to zero.
_DEFAULT_MIN_SCALE = 1e-4


def _inverse_softplus(y: float) -> float:
    return float(y + math.log(-math.expm1(-y)))


class _DistributionLayer(keras.layers.Layer):
    """Body + float32 head; subclasses say how head outputs become a distribution.

    The batch-shape rule of TFP's layers and Keras' Dense: an input is
    `[..., *input_dims]`, every leading axis is batch, and the distribution
    has those leading axes as its batch shape. `input_dims` come from the
    constructor (a decoder's z is a vector, an encoder may be given its
    `data_shape`) or else from the first build, which reads one batch axis.
    """

    def __init__(self, hidden_units=(512, 512), body=None, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = check_units(hidden_units)
        self.activation = activation
        self._user_body = body is not None
        self.body = body if body is not None else mlp(self.hidden_units, activation, name="body")
        self._input_dims = None          # one example's input shape, settled by build

    def _input_dims_from(self, input_shape) -> tuple:
        """One example's input shape, from the first build's full input shape."""
        return tuple(input_shape[1:])

    def _check_input(self, x):
        """A clear ValueError at trace time when x is not `[..., *input_dims]`;
        without it, a wrong shape surfaces as a Dense deep inside the body."""
        expected, shape = self._input_dims, tf.TensorShape(x.shape)
        if expected is None or shape.rank is None:
            return
        got, n = shape.as_list(), len(expected)
        if len(got) < n or any(e is not None and g is not None and e != g
                               for e, g in zip(expected, got[len(got) - n:])):
            want = ", ".join("?" if d is None else str(d) for d in expected)
            raise ValueError(f"{type(self).__name__} {self.name!r} expects input of shape "
                             f"[..., {want}]; got {got}")

    def _params(self, x):
        """The head's parameters for x `[..., *input_dims]`: `[..., *params]`, in float32.

        The leading axes are folded into one for the body and the head, and
        unfolded again after them."""
        x = tf.convert_to_tensor(x)
        self._check_input(x)
        n = len(self._input_dims)
        rank = x.shape.rank
        dims = tf.shape(x)[rank - n:]
        flat = tf.reshape(x, tf.concat([[-1], dims], 0))
        if not self._user_body:
            # The MLP body and the affine map act on flattened inputs.
            flat = tf.reshape(flat, [-1, int(np.prod(self._input_dims))])
        else:
            flat.set_shape([None, *self._input_dims])
        params = self._head_params(flat if self.body is None else self.body(flat))
        out = tf.reshape(params, tf.concat([tf.shape(x)[:rank - n], tf.shape(params)[1:]], 0))
        out.set_shape(x.shape[:rank - n].concatenate(params.shape[1:]))
        return out

    def build(self, input_shape):
        # Build every sublayer by running once on a dummy batch: a user's body
        # may not know its output shape otherwise, and `.keras` loading needs
        # all variables to exist before weights are restored.
        if self.built:
            return
        if self._input_dims is None:
            self._input_dims = tuple(None if d is None else int(d)
                                     for d in self._input_dims_from(input_shape))
        dummy = tf.zeros([1] + [int(d) for d in self._input_dims], dtype=self.compute_dtype)
        self._params(dummy)
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

    x `[..., *data_shape]` -> distribution with batch `[...]`, event
    `[latent_dim]`: every leading axis is batch. The head emits
    `params_size(latent_dim) = 2·latent_dim` numbers: the loc, and the scale
    through softplus plus `min_scale`, clipped at `max_scale` if one is given.

    Args:
      latent_dim: K, the size of z.
      hidden_units: widths of the MLP body; `()` makes loc and the scale's
        pre-activation affine in x.
      body: any Keras layer or model used in place of the MLP (a conv stack,
        say); it sees x unflattened and its output is flattened for the head.
      activation: the MLP's activation.
      min_scale: floor added to every scale.
      data_shape: one example's shape, e.g. (28, 28, 1); without it the first
        call reads its input as `[B, *data_shape]`.
      max_scale: ceiling of every scale, or None for none. A scale clipped
        at it gets no gradient, as a hardtanh-bounded log-variance gets none
        outside its bounds.

    >>> q = GaussianEncoder(2, hidden_units=())(tf.zeros([3, 4]))
    >>> q.batch_shape, q.event_shape
    (TensorShape([3]), TensorShape([2]))
    """

    def __init__(self, latent_dim, hidden_units=(512, 512), body=None, activation="relu",
                 min_scale=_DEFAULT_MIN_SCALE, data_shape=None, max_scale=None, **kwargs):
        super().__init__(hidden_units=hidden_units, body=body, activation=activation, **kwargs)
        if int(latent_dim) <= 0:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if data_shape is not None:
            self._input_dims = tuple(int(d) for d in data_shape)
        self.latent_dim = int(latent_dim)
        self.min_scale = float(min_scale)
        if max_scale is not None and not float(max_scale) > self.min_scale:
            raise ValueError(f"max_scale must exceed min_scale ({self.min_scale}), "
                             f"got {max_scale!r}")
        self.max_scale = None if max_scale is None else float(max_scale)
        self.head = keras.layers.Dense(self.params_size(self.latent_dim), dtype="float32",
                                       name="head")

    @staticmethod
    def params_size(latent_dim: int) -> int:
        return 2 * int(latent_dim)

    def _head_params(self, features):
        flat = keras.ops.reshape(features, (keras.ops.shape(features)[0], -1))
        return self.head(flat)

    def call(self, x):
        loc, raw_scale = tf.split(self._params(x), 2, axis=-1)
        scale = tf.math.softplus(raw_scale) + self.min_scale
        if self.max_scale is not None:
            scale = tf.minimum(scale, self.max_scale)
        return NdtriNormalDiag(loc=loc, scale_diag=scale)

    def get_config(self):
        config = super().get_config()
        config.update(latent_dim=self.latent_dim, min_scale=self.min_scale,
                      max_scale=self.max_scale,
                      data_shape=None if self._input_dims is None else list(self._input_dims))
        return config


class _Decoder(_DistributionLayer):
    """z `[..., K]` -> a distribution with batch `[...]` and event `data_shape`."""

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

    def _input_dims_from(self, input_shape) -> tuple:
        return tuple(input_shape[-1:])          # z is a vector: [..., K]

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
        return self._distribution(self._params(z))

    def get_config(self):
        config = super().get_config()
        config.update(data_shape=list(self.data_shape))
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BernoulliDecoder(_Decoder):
    """p(x|z) = Π Bernoulli(x_d; sigmoid(logits_d(z))) as `tfd.Independent`.

    z `[..., K]` -> batch `[...]`, event `data_shape`; `log_prob(x)` is the
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

    z `[..., K]` -> batch `[...]`, event `data_shape`. With `scale=1.0`,
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
class DiscretizedLogisticDecoder(_Decoder):
    """p(x|z) = Π DiscretizedLogistic(x_d; loc_d(z), scale_d(z)) over 256 levels, as
    `tfd.Independent`: the likelihood of 8-bit images (PixelCNN++'s, one logistic
    per sub-pixel).

    z `[..., K]` -> batch `[...]`, event `data_shape` (e.g. `[32, 32, 3]`); x is
    in [0, 1] on the grid k/255, as the sources decode 8-bit images.
    `log_prob(x)` is ln P(pixel values) in nats: the log-probability of the
    integer values 255·x, a number ≤ 0 that bits per dimension divide by
    D·ln 2 (see `tfp_vae.evaluate.bits_per_dim`). `mean()` is the exact
    E[x|z] in [0, 1] (what the `decode` signature returns), `sample()` gives
    images on the grid. The head emits `params_size = 2·D` per example: per
    sub-pixel the loc (in the units of x, offset by ½ so that a fresh decoder
    is centred on mid-grey, as PixelCNN++'s is in its [−1, 1] units) and the
    scale through softplus plus `min_scale`.

    Args:
      min_scale: floor added to every scale, in the units of x (1/255 is one level).

    >>> p = DiscretizedLogisticDecoder((4, 4, 3), hidden_units=(16,))(tf.zeros([2, 5]))
    >>> p.batch_shape, p.event_shape
    (TensorShape([2]), TensorShape([4, 4, 3]))
    """

    _params_per_dim = 2

    def __init__(self, data_shape, hidden_units=(512, 512), body=None, activation="relu",
                 min_scale=_DEFAULT_MIN_SCALE, **kwargs):
        super().__init__(data_shape, hidden_units=hidden_units, body=body,
                         activation=activation, **kwargs)
        if not float(min_scale) > 0:
            raise ValueError(f"min_scale must be positive, got {min_scale!r}")
        self.min_scale = float(min_scale)

    def _distribution(self, params):
        loc, raw_scale = params[..., 0] + 0.5, params[..., 1]
        return tfd.Independent(
            DiscretizedLogistic(loc=loc, scale=tf.math.softplus(raw_scale) + self.min_scale),
            reinterpreted_batch_ndims=len(self.data_shape))

    def get_config(self):
        config = super().get_config()
        config.update(min_scale=self.min_scale)
        return config
