"""tfp_vae: PCA, autoencoders and VAEs as TensorFlow Probability models.

    import tfp_vae
    vae = tfp_vae.VAE(tfp_vae.GaussianEncoder(32), tfp_vae.BernoulliDecoder((28, 28, 1)))

Submodules load on first use, so `import tfp_vae.plots` does not pull in
TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("bodies", "callbacks", "checkpoints", "cli", "config", "data", "distributions",
               "errors", "evaluate", "execution", "experiments", "export", "factory", "figures",
               "files", "fused", "hvae", "input_pipeline", "latent_use", "layers", "models",
               "objectives", "pca", "plots", "priors", "projector", "summaries", "tied", "train",
               "workdir")
_NAMES = {
    "GaussianEncoder": "layers", "BernoulliDecoder": "layers", "NormalDecoder": "layers",
    "DiscretizedLogisticDecoder": "layers",
    "DenseTranspose": "tied", "TiedDecoder": "tied", "VAE": "models",
    "ConditionalVAE": "models", "HierarchicalVAE": "hvae", "Autoencoder": "models",
    "ELBO": "objectives", "PCA": "pca",
    "VampPrior": "priors", "MixturePrior": "priors",
}
__all__ = list(_SUBMODULES) + list(_NAMES)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"tfp_vae.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"tfp_vae.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'tfp_vae' has no attribute {name!r}")


def __dir__():
    return sorted(__all__ + ["__version__"])
