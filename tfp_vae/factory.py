"""Builds the model a `Config` describes: one place, for train, evaluate and benchmark."""

from __future__ import annotations

import keras
import numpy as np

from tfp_vae import bodies, layers, priors
from tfp_vae.config import Config
from tfp_vae.errors import ConfigError
from tfp_vae.hvae import HierarchicalVAE
from tfp_vae.models import VAE, Autoencoder, ConditionalVAE
from tfp_vae.tied import TiedDecoder


def decoder_scale(config: Config):
    """The NormalDecoder `scale` argument: a float, "scalar" or "diagonal"."""
    if config.decoder_scale in ("scalar", "diagonal"):
        return config.decoder_scale
    return float(config.decoder_scale)


def _conv_shape(data_shape):
    try:
        return bodies.check_conv_shape(data_shape)
    except ValueError as e:
        raise ConfigError(f"arch=conv: {e}") from None


def _spatial_body(config: Config, data_shape, role: str):
    """The conv or resnet body of `config.arch` for the "encoder" or the "decoder"."""
    if config.arch == "conv":
        build = bodies.conv_encoder_body if role == "encoder" else bodies.conv_decoder_body
        return build(_conv_shape(data_shape), name="body")
    try:
        shape = bodies.check_resnet_shape(data_shape)
    except ValueError as e:
        raise ConfigError(f"arch=resnet: {e}; use arch=conv for 28x28 images, or "
                          "--image_size=32,32") from None
    build = bodies.resnet_encoder_body if role == "encoder" else bodies.resnet_decoder_body
    return build(shape, channels=config.channels, name="body")


def _body(config: Config, data_shape, role: str):
    """The body `config` names for the "encoder" or the "decoder", or None for the
    layer's own ReLU MLP of `hidden_units`."""
    if config.arch in ("conv", "resnet"):
        return _spatial_body(config, data_shape, role)
    if config.body == "gated":
        # The encoder's body sees the images unflattened: it flattens them itself.
        return bodies.gated_mlp(config.hidden_units, flatten=role == "encoder", name="body")
    return None


def build_encoder(config: Config, data_shape, input_shape=None) -> keras.layers.Layer:
    """q(z|x) for images `[..., *data_shape]`; `input_shape` is what it reads
    when that is not the image itself (a conditional model's [x, onehot(y)])."""
    return layers.GaussianEncoder(config.latent_dim, hidden_units=config.hidden_units,
                                  body=_body(config, data_shape, "encoder"), name="encoder",
                                  data_shape=input_shape or data_shape,
                                  **_latent_scale_bounds(config))


def _latent_scale_bounds(config: Config) -> dict:
    """The scale bounds of every GaussianEncoder over z, as its keyword arguments."""
    return dict(min_scale=config.latent_scale_min, max_scale=config.latent_scale_max)


def build_decoder(config: Config, data_shape) -> keras.layers.Layer:
    body = _body(config, data_shape, "decoder")
    if config.decoder == "normal":
        return layers.NormalDecoder(data_shape, scale=decoder_scale(config), body=body,
                                    hidden_units=config.hidden_units, name="decoder")
    if config.decoder == "logistic":
        return layers.DiscretizedLogisticDecoder(data_shape, hidden_units=config.hidden_units,
                                                 body=body, name="decoder")
    return layers.BernoulliDecoder(data_shape, hidden_units=config.hidden_units, body=body,
                                   name="decoder")


def build_prior(config: Config, data_shape):
    """None for N(0, I); a learned prior layer otherwise."""
    if config.prior == "vamp":
        return priors.VampPrior(data_shape, num_components=config.prior_components, name="prior")
    if config.prior == "mog":
        return priors.MixturePrior(config.latent_dim, num_components=config.prior_components,
                                   name="prior")
    return None


def build_vae(config: Config, data_shape, num_classes: int | None = None) -> VAE:
    """The VAE of `config` for data `[B, *data_shape]`, built (all variables exist).

    With `config.conditional`, a `ConditionalVAE` over `num_classes` labels
    (`data.num_classes` of the data set); its inputs are pairs (x, y).
    """
    kwargs = dict(prior=build_prior(config, data_shape),
                  num_samples=config.num_samples, analytic_kl=config.analytic_kl,
                  beta=0.0 if config.warmup_epochs else config.beta, free_bits=config.free_bits,
                  objective=config.objective, seed=config.seed, name="vae")
    # Encoder first, then decoder: the initial weights are drawn in the order
    # the layers are made, and a run's numbers for a seed must not change.
    if not config.conditional:
        encoder = build_encoder(config, data_shape)
        vae = VAE(encoder, build_decoder(config, data_shape), **kwargs)
        vae.build((None,) + tuple(data_shape))
        return vae
    if num_classes is None or int(num_classes) < 2:
        raise ConfigError(f"conditional needs a data set with labels of 2 or more classes; "
                          f"{config.dataset!r} has {num_classes or 'none'}")
    # It reads the flattened image beside the label's one-hot code.
    encoder = build_encoder(config, data_shape,
                            input_shape=(int(np.prod(data_shape)) + int(num_classes),))
    vae = ConditionalVAE(encoder, build_decoder(config, data_shape),
                         num_classes=int(num_classes), **kwargs)
    vae.build(((None,) + tuple(data_shape), (None,)))
    return vae


def build_hvae(config: Config, data_shape):
    """The hierarchical VAE of `config`, built: z₁ and z₂ both of `latent_dim`.

    q(z₂|x) is the VAE's encoder; q(z₁|x, z₂) and p(x|z₁, z₂) read their two
    inputs through a hidden layer each and then the rest of `hidden_units`
    (`bodies.branched`); p(z₁|z₂) is an MLP encoder over z₂. With body=gated
    this is the reference model of Tomczak & Welling 2018.
    """
    K, D = config.latent_dim, int(np.prod(data_shape))
    gated = config.body == "gated"
    joint = lambda sizes, name: bodies.branched(sizes, config.hidden_units, gated=gated,  # noqa
                                                name=name)
    encoder_z1 = layers.GaussianEncoder(K, body=joint([D, K], "body"), data_shape=(D + K,),
                                        name="encoder_z1", **_latent_scale_bounds(config))
    prior_z1 = layers.GaussianEncoder(K, hidden_units=config.hidden_units, data_shape=(K,),
                                      body=bodies.gated_mlp(config.hidden_units) if gated
                                      else None, name="prior_z1",
                                      **_latent_scale_bounds(config))
    decoder_body = joint([K, K], "body")
    if config.decoder == "normal":
        decoder = layers.NormalDecoder(data_shape, scale=decoder_scale(config),
                                       body=decoder_body, name="decoder")
    elif config.decoder == "logistic":
        decoder = layers.DiscretizedLogisticDecoder(data_shape, body=decoder_body,
                                                    name="decoder")
    else:
        decoder = layers.BernoulliDecoder(data_shape, body=decoder_body, name="decoder")
    vae = HierarchicalVAE(build_encoder(config, data_shape), encoder_z1, prior_z1, decoder,
                          prior=build_prior(config, data_shape), num_samples=config.num_samples,
                          beta=0.0 if config.warmup_epochs else config.beta,
                          objective=config.objective, seed=config.seed, name="hvae")
    vae.build((None,) + tuple(data_shape))
    return vae


def _ae_layers(config: Config, data_shape, tied: bool):
    """(encoder x [B, *data] -> codes [B, K], decoder codes -> [B, *data]) for an AE."""
    data_shape = tuple(int(d) for d in data_shape)
    size = int(np.prod(data_shape))
    K = keras.layers
    if config.arch in ("conv", "resnet"):
        if tied:
            raise ConfigError("tied weights need arch=mlp (a tied decoder mirrors Dense layers)")
        encoder = keras.Sequential([_spatial_body(config, data_shape, "encoder"), K.Flatten(),
                                    K.Dense(config.latent_dim)], name="encoder")
        # A 1x1 convolution per pixel: the same head the VAE's decoders use.
        decoder = keras.Sequential([_spatial_body(config, data_shape, "decoder"),
                                    K.Conv2D(data_shape[-1], 1)], name="decoder")
        return encoder, decoder
    mlp = bodies.gated_mlp if config.body == "gated" else bodies.mlp
    body = mlp(config.hidden_units, name="body")
    encoder = keras.Sequential([K.Flatten()] + ([body] if body else [])
                               + [K.Dense(config.latent_dim)], name="encoder")
    if tied:
        return encoder, TiedDecoder(data_shape, name="decoder")
    body = mlp(config.hidden_units[::-1], name="body")
    decoder = keras.Sequential(([body] if body else []) + [K.Dense(size), K.Reshape(data_shape)],
                               name="decoder")
    return encoder, decoder


def build_autoencoder(config: Config, data_shape, tied: bool = False) -> Autoencoder:
    """The AE of `config` for data `[B, *data_shape]`, built.

    MLP (the mirror of `hidden_units`), conv or resnet (`arch`); the loss matches
    `decoder`: Bernoulli cross-entropy, or squared error for "normal".
    `tied=True` (MLP only) ties decoder kernels to the encoder's.
    """
    encoder, decoder = _ae_layers(config, data_shape, tied)
    ae = Autoencoder(encoder, decoder, name="autoencoder",
                     loss="bernoulli" if config.decoder == "bernoulli" else "squared_error")
    ae.build((None,) + tuple(data_shape))
    return ae


def build_model(config: Config, data_shape, num_classes: int | None = None) -> keras.Model:
    if config.model == "vae":
        return build_vae(config, data_shape, num_classes)
    if config.model == "hvae":
        return build_hvae(config, data_shape)
    if config.model == "ae":
        return build_autoencoder(config, data_shape)
    raise NotImplementedError(f"model={config.model!r} is not built by this version")
