"""How a VAE uses its latent dimensions: per-dimension KL, active units, the posterior's spread.

    layers = posterior_layers(vae, x)     # x [N, *data], or (x, y) for a ConditionalVAE
    layers[0].kl                          # [K] nats: KL of each dimension, mean over x
    layers[0].active_units                # Burda et al.'s count: Var_x E_q[z_u] > 0.01

A dimension the model does not use has, at the optimum, its prior as its
posterior for every x: its KL is 0 and its posterior mean does not move with x
(posterior collapse). Both numbers are read off the Gaussian posterior's
parameters, μ = q.mean() and σ = q.stddev(), with no sampling, so they are
exact and the same on every call.

What the KL of a dimension is taken against (`Layer.reference`):
  "prior"               p(z) = N(0, I), the model's prior: the KL terms sum
                        to the model's KL(q(z|x) ‖ p(z)).
  "standard_normal"     N(0, I) where the prior is learned (vamp, mog): still a
                        measure of use (a dimension at N(0, 1) for every x
                        carries nothing), but not the model's KL, which has
                        no per-dimension form for a mixture prior.
  "conditional_prior"   p(z₁|z₂) of a HierarchicalVAE's lower layer z₁, at
                        z₂ = E_q[z₂|x]; q(z₁|x, z₂) is taken at that z₂ too.
A HierarchicalVAE has two layers, "z2" (the top, q(z₂|x)) and "z1"; every
other VAE one, "z".
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfp_vae.hvae import HierarchicalVAE

__all__ = ["ACTIVE_THRESHOLD", "Layer", "active_units", "gaussian_kl", "posterior_layers"]

# Burda et al. 2016: a unit is active when Var_x E_q[z_u] exceeds this.
ACTIVE_THRESHOLD = 0.01
# Examples per encoder call: bounds the memory of a conv encoder on a large set.
_CHUNK = 1000


class Layer(NamedTuple):
    """One latent layer's posterior over N examples, float64."""

    name: str                 # "z", or "z2" / "z1" of a HierarchicalVAE
    reference: str            # what `kl` is taken against: see the module docstring
    mean: np.ndarray          # [N, K] μ = E_q[z|x]
    log_scale: np.ndarray     # [N, K] ln σ of q(z|x)
    kl: np.ndarray            # [K] nats: KL(q(z_u|x) ‖ r(z_u)), mean over the N examples
    variances: np.ndarray     # [K] Var_x μ_u (1/N)

    @property
    def active_units(self) -> int:
        """Dimensions whose posterior mean varies with x: Var_x μ_u > 0.01."""
        return int(np.sum(self.variances > ACTIVE_THRESHOLD))


def active_units(means: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> tuple[int, np.ndarray]:
    """(the number of u with Var_x means_u > threshold, the variances `[K]`) for
    posterior means `[N, K]`; the variance is 1/N, over the examples."""
    variances = np.var(np.asarray(means, np.float64), axis=0)
    return int(np.sum(variances > threshold)), variances


def posterior_layers(model, inputs) -> list[Layer]:
    """Every latent layer of `model`'s posterior at inputs x `[N, *data]` (pairs
    (x, y) for a ConditionalVAE), read in chunks of 1,000 examples."""
    chunks = [_parameters(model, part) for part in _chunks(inputs)]
    layers = []
    for name, reference in _references(model):
        loc, scale, ref_loc, ref_scale = (
            np.concatenate([c[name][i] for c in chunks]).astype(np.float64) for i in range(4))
        layers.append(Layer(name, reference, loc, np.log(scale),
                            gaussian_kl(loc, scale, ref_loc, ref_scale).mean(axis=0),
                            active_units(loc)[1]))
    return layers


def gaussian_kl(loc, scale, ref_loc, ref_scale) -> np.ndarray:
    """KL(N(loc, scale²) ‖ N(ref_loc, ref_scale²)) elementwise, nats; with
    ref = N(0, 1) it is ½(μ² + σ² − 1 − 2 ln σ)."""
    return (np.log(ref_scale / scale) + (scale ** 2 + (loc - ref_loc) ** 2) / (2 * ref_scale ** 2)
            - 0.5)


def _references(model) -> list[tuple[str, str]]:
    """(layer name, what its KL is taken against) for each latent layer, top first."""
    top = "prior" if model.prior is None else "standard_normal"
    if isinstance(model, HierarchicalVAE):
        return [("z2", top), ("z1", "conditional_prior")]
    return [("z", top)]


def _parameters(model, inputs) -> dict[str, tuple[tf.Tensor, ...]]:
    """name -> (μ, σ, the reference's mean, its scale), each `[n, K]`."""
    if isinstance(model, HierarchicalVAE):
        q2 = model.encode(inputs)
        z2 = q2.mean()
        q1, p1 = model.posterior(inputs).model[1](z2), model.prior_z1(z2)
        return {"z2": _standard(q2), "z1": (q1.mean(), q1.stddev(), p1.mean(), p1.stddev())}
    return {"z": _standard(model.encode(inputs))}


def _standard(q) -> tuple[tf.Tensor, ...]:
    loc = q.mean()
    return loc, q.stddev(), tf.zeros_like(loc), tf.ones_like(loc)


def _chunks(inputs):
    """inputs (x, or a tuple (x, y)) in slices of `_CHUNK` examples."""
    n = len(tf.nest.flatten(inputs)[0])
    for start in range(0, n, _CHUNK):
        yield tf.nest.map_structure(lambda a: tf.constant(a[start:start + _CHUNK]), inputs)
