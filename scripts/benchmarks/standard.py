"""The standard model every implementation trains, and the digits it trains on.

MLP 784-512-512, latent 32, Bernoulli decoder, batch 128, Adam(1e-3), on the
4,000 `mnist_5k` training digits.
"""

import numpy as np

from tfp_vae import data

BATCH, LATENT, HIDDEN, LR = 128, 32, (512, 512), 1e-3
DATA_SHAPE = (28, 28, 1)
PIXELS = 784


def training_arrays() -> np.ndarray:
    """The 4,000 `mnist_5k` training digits, float32 [N, 28, 28, 1] in [0, 1]."""
    return data.load_arrays("mnist_5k", "train")[0]


def heldout_arrays(n: int) -> np.ndarray:
    """The first n held-out digits (mnist_5k's test, then validation split),
    [n, 28, 28, 1] binarised; ValueError if there are fewer."""
    x = np.concatenate([data.load_arrays("mnist_5k", s)[0] for s in ("test", "validation")])
    if n > len(x):
        raise ValueError(f"--iwae_examples must be <= {len(x)} (mnist_5k held-out digits)")
    return (x[:n] > 0.5).astype("float32")
