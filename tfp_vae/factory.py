"""Builds the model a `Config` describes: one place, for train, evaluate and benchmark."""

from __future__ import annotations

import keras

from tfp_vae import layers
from tfp_vae.config import Config
from tfp_vae.models import VAE


def decoder_scale(config: Config):
    """The NormalDecoder `scale` argument: a float, "scalar" or "diagonal"."""
    if config.decoder_scale in ("scalar", "diagonal"):
        return config.decoder_scale
    return float(config.decoder_scale)


def build_encoder(config: Config, data_shape) -> keras.layers.Layer:
    return layers.GaussianEncoder(config.latent_dim, hidden_units=config.hidden_units,
                                  name="encoder")


def build_decoder(config: Config, data_shape) -> keras.layers.Layer:
    if config.decoder == "normal":
        return layers.NormalDecoder(data_shape, scale=decoder_scale(config),
                                    hidden_units=config.hidden_units, name="decoder")
    return layers.BernoulliDecoder(data_shape, hidden_units=config.hidden_units, name="decoder")


def build_vae(config: Config, data_shape) -> VAE:
    """The VAE of `config` for data `[B, *data_shape]`, built (all variables exist)."""
    vae = VAE(build_encoder(config, data_shape), build_decoder(config, data_shape),
              num_samples=config.num_samples, analytic_kl=config.analytic_kl,
              beta=0.0 if config.warmup_epochs else config.beta, free_bits=config.free_bits,
              objective=config.objective, seed=config.seed, name="vae")
    vae.build((None,) + tuple(data_shape))
    return vae


def build_model(config: Config, data_shape) -> keras.Model:
    if config.model == "vae":
        return build_vae(config, data_shape)
    raise NotImplementedError(f"model={config.model!r} is not built by this version")
