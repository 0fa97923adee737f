"""The ELBO and the importance-weighted bound, read off distributions.

Both take the approximate posterior q(z|x) as a distribution, the decoder as a
function z `[N, K]` -> distribution over x with batch `[N]`, and the prior
p(z). Everything is per example, in nats. Samples are reparameterised and
drawn with explicit stateless seeds (shape `[2]` int32), so the same seed
gives the same number and the computation compiles under XLA.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae.distributions import LogitBernoulli

tfd = tfp.distributions

DecodeFn = Callable[[tf.Tensor], tfd.Distribution]


class ELBO(NamedTuple):
    """Per-example terms, each `[B]`, in nats.

    elbo = reconstruction − β·kl (the evidence lower bound itself when β = 1).
    """

    elbo: tf.Tensor            # [B]
    reconstruction: tf.Tensor  # [B]  E_q[ln p(x|z)]
    kl: tf.Tensor              # [B]  KL(q(z|x) ‖ p(z)), or its free-bits floor when asked


def _decode_samples(decode: DecodeFn, z: tf.Tensor) -> tfd.Distribution:
    """Decode z `[S, B, K]` in one batch of S·B; the result has batch `[S·B]`."""
    return decode(tf.reshape(z, [-1, tf.shape(z)[-1]]))


def _log_likelihood(decode: DecodeFn, z: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """ln p(x|z) for z `[S, B, K]` and x `[B, *data]` -> `[S, B]`."""
    num_samples = tf.shape(z)[0]
    likelihood = _decode_samples(decode, z)
    x = tf.cast(x, likelihood.dtype)
    x_tiled = tf.reshape(
        tf.broadcast_to(x[tf.newaxis], tf.concat([[num_samples], tf.shape(x)], 0)),
        tf.concat([[-1], tf.shape(x)[1:]], 0))
    return tf.reshape(likelihood.log_prob(x_tiled), [num_samples, -1])


def elbo(x: tf.Tensor, posterior: tfd.Distribution, decode: DecodeFn, prior: tfd.Distribution,
         *, seed, num_samples: int = 1, analytic_kl: bool = True, beta=1.0,
         free_bits: float = 0.0) -> ELBO:
    """E_q[ln p(x|z)] − β·KL(q‖p) per example, with S = num_samples draws.

    Args:
      x: data `[B, *data_shape]`.
      posterior: q(z|x), batch `[B]`, event `[K]`.
      decode: z `[N, K]` -> p(x|z), batch `[N]`.
      prior: p(z), event `[K]`.
      seed: a stateless seed, `[2]` int32.
      num_samples: S, reparameterised draws per example.
      analytic_kl: use `tfd.kl_divergence` when a closed form exists (else the
        Monte-Carlo estimate E_q[ln q(z|x) − ln p(z)] on the same draws).
      beta: weight on the KL term (a float or a scalar tensor/variable).
      free_bits: with > 0, each latent dimension's KL is floored at this many
        nats (Kingma et al. 2016); needs a factorised q and p with analytic KL.

    Returns:
      ELBO(elbo, reconstruction, kl), each `[B]`.
    """
    z = posterior.sample(num_samples, seed=seed)                      # [S, B, K]
    reconstruction = tf.reduce_mean(_log_likelihood(decode, z, x), axis=0)
    if free_bits > 0:
        kl = _free_bits_kl(posterior, prior, free_bits)
    else:
        kl = _kl(posterior, prior, z, analytic_kl)
    return terms(reconstruction, kl, beta)


def terms(reconstruction: tf.Tensor, kl: tf.Tensor, beta=1.0) -> ELBO:
    """ELBO(reconstruction − β·kl, reconstruction, kl), in reconstruction's dtype."""
    kl = tf.cast(kl, reconstruction.dtype)
    beta = tf.cast(beta, reconstruction.dtype)
    return ELBO(elbo=reconstruction - beta * kl, reconstruction=reconstruction, kl=kl)


def _kl(posterior, prior, z, analytic_kl: bool, log_q=None, log_p=None) -> tf.Tensor:
    """KL(q ‖ p) `[B]`: the closed form when asked for and TFP has one, else the
    Monte-Carlo mean of ln q(z|x) − ln p(z) over the draws z `[S, B, K]` (or
    over their log-densities, when the caller has them already)."""
    if analytic_kl:
        try:
            return tfd.kl_divergence(posterior, prior)
        except NotImplementedError:      # a mixture prior: no closed form
            pass
    if log_q is None:
        log_q, log_p = posterior.log_prob(z), prior.log_prob(z)
    return tf.reduce_mean(log_q - log_p, axis=0)


def _marginals(d: tfd.Distribution) -> tfd.Distribution:
    """The per-dimension Normal factors of a diagonal Gaussian, batch `[..., K]`."""
    if isinstance(d, tfd.MultivariateNormalDiag):
        return tfd.Normal(d.loc if d.loc is not None else tf.zeros_like(d.stddev()), d.stddev())
    if isinstance(d, tfd.Independent) and isinstance(d.distribution, tfd.Normal):
        return d.distribution
    raise ValueError(
        f"free bits needs diagonal-Gaussian q and p, got {type(d).__name__}")


def _free_bits_kl(posterior, prior, free_bits) -> tf.Tensor:
    """Σ_k max(free_bits, KL_k), with KL_k the k-th dimension's KL per example."""
    per_dim = tfd.kl_divergence(_marginals(posterior), _marginals(prior))   # [B, K]
    return tf.reduce_sum(tf.maximum(per_dim, tf.cast(free_bits, per_dim.dtype)), axis=-1)


class _Draws(NamedTuple):
    """Log-densities at S draws z ~ q(z|x), each `[S, B]`."""

    log_px_z: tf.Tensor       # ln p(x|z)
    log_pz: tf.Tensor         # ln p(z)
    log_qz: tf.Tensor         # ln q(z|x)

    def log_weights(self) -> tf.Tensor:
        """ln w = ln p(x|z) + ln p(z) − ln q(z|x), `[S, B]`."""
        return self.log_px_z + self.log_pz - self.log_qz


def _bernoulli_logits(likelihood: tfd.Distribution):
    """The logits `[N, *data]` of an `Independent(LogitBernoulli)` with batch `[N]`
    and event `data` (what `layers.BernoulliDecoder` returns), else None."""
    if not (isinstance(likelihood, tfd.Independent)
            and isinstance(likelihood.distribution, LogitBernoulli)
            and likelihood.distribution.logits is not None
            and likelihood.batch_shape.rank == 1):
        return None
    logits = tf.convert_to_tensor(likelihood.distribution.logits)
    return logits if logits.shape.rank == 1 + likelihood.event_shape.rank else None


def _product_group(size: int) -> int:
    """How many factors 1 + e^{−|l|} (each in (1, 2]) one float32 product takes:
    the largest divisor of `size` up to 16, so a product stays ≤ 2¹⁶."""
    return max(g for g in range(1, 17) if size % g == 0)


def bernoulli_log_likelihood(logits: tf.Tensor, x: tf.Tensor, num_samples) -> tf.Tensor:
    """Σ_d ln Bernoulli(x_d; σ(l_d)) for logits `[S·B, *data]` (S-major) and x
    `[B, *data]`: `[S, B]` nats, without tiling x S times.

    ln p(x_d) = x_d·l_d − max(l_d, 0) − ln(1 + e^{−|l_d|}), the negative
    sigmoid cross-entropy. The last term is summed as ln Π (1 + e^{−|l_d|})
    over groups of up to 16 pixels, one log per group instead of one log1p
    per pixel; every factor lies in (1, 2], so each product is exact to a few
    float32 roundings, and the sum differs from the per-pixel one by rounding
    alone (at most 6·10⁻⁸ nats a pixel). The groups are reduced over a
    non-minor axis, which XLA fuses into the same loop as the exp; the
    per-pixel reduction over the minor axis it emits as a separate pass at a
    third of the speed (docs/performance.md).
    """
    size = int(np.prod(logits.shape[1:]))
    group = _product_group(size)
    l = tf.reshape(logits, [num_samples, -1, group, size // group])       # [S, B, G, D/G]
    x = tf.reshape(tf.cast(x, logits.dtype), [-1, group, size // group])  # [B, G, D/G]
    linear = tf.reduce_sum(x * l - tf.nn.relu(l), axis=2)                  # [S, B, D/G]
    log_norm = tf.math.log(tf.reduce_prod(1 + tf.exp(-tf.abs(l)), axis=2))
    return tf.reduce_sum(linear - log_norm, axis=-1)


def _log_likelihood_of(likelihood: tfd.Distribution, x, num_samples) -> tf.Tensor:
    """ln p(x|z) `[S, B]` from the decoded distribution (batch `[S·B]`) of S
    draws for each of the B examples of x."""
    logits = _bernoulli_logits(likelihood)
    if logits is not None:
        return bernoulli_log_likelihood(logits, x, num_samples)
    x = tf.cast(x, likelihood.dtype)
    x_tiled = tf.reshape(
        tf.broadcast_to(x[tf.newaxis], tf.concat([[num_samples], tf.shape(x)], 0)),
        tf.concat([[-1], tf.shape(x)[1:]], 0))
    return tf.reshape(likelihood.log_prob(x_tiled), [num_samples, -1])


def _scoring_draw(x, posterior, decode: DecodeFn, prior, *, xla_parts: bool):
    """draw(seed, n) -> ln w `[n, B]` for the importance-weighted bound.

    The same draws and the same log-weights as `log_weights`, up to float
    rounding; the Bernoulli likelihood is `bernoulli_log_likelihood`. With
    `xla_parts`, the sampling with ln p(z) − ln q(z|x), and ln p(x|z) from the
    decoded distribution, are each an XLA program of their own, and the
    decoder runs between them as the caller runs it. Called in a plain
    `tf.function`, the decoder's matmuls then run on TensorFlow's own kernels
    (oneDNN on x86), faster than XLA's at the shapes of scoring on a CPU, and
    the draws are XLA's, as when the whole bound is compiled; inside an
    XLA-compiled caller the parts are inlined and everything is XLA's.
    """
    dtype = posterior.dtype

    def sample(seed, n):
        z = posterior.sample(n, seed=seed)                                   # [n, B, K]
        return z, tf.cast(prior.log_prob(z), dtype), tf.cast(posterior.log_prob(z), dtype)

    if not xla_parts:
        def draw(seed, n):
            z, log_pz, log_qz = sample(seed, n)
            log_px_z = _log_likelihood_of(_decode_samples(decode, z), x, n)
            return tf.cast(log_px_z, dtype) + log_pz - log_qz
        return draw

    def draw(seed, n):
        z, log_pz, log_qz = tf.function(lambda s: sample(s, n), jit_compile=True)(seed)
        likelihood = _decode_samples(decode, z)
        logits = _bernoulli_logits(likelihood)
        if logits is not None:
            log_px_z = tf.function(lambda l, xs: bernoulli_log_likelihood(l, xs, n),
                                   jit_compile=True)(logits, x)
        else:
            log_px_z = tf.function(lambda: _log_likelihood_of(likelihood, x, n),
                                   jit_compile=True)()
        return tf.cast(log_px_z, dtype) + log_pz - log_qz

    return draw


def _draws(x, posterior, decode: DecodeFn, prior, *, seed, num_samples) -> tuple[tf.Tensor, _Draws]:
    """(z `[S, B, K]`, the log-densities at z) for S draws z ~ q."""
    z = posterior.sample(num_samples, seed=seed)                      # [S, B, K]
    log_px_z = _log_likelihood(decode, z, x)
    cast = lambda t: tf.cast(t, log_px_z.dtype)                       # noqa: E731
    return z, _Draws(log_px_z, cast(prior.log_prob(z)), cast(posterior.log_prob(z)))


def log_weights(x, posterior, decode: DecodeFn, prior, *, seed, num_samples) -> tf.Tensor:
    """ln w = ln p(x|z) + ln p(z) − ln q(z|x) for S draws z ~ q: `[S, B]`."""
    return _draws(x, posterior, decode, prior, seed=seed, num_samples=num_samples)[1].log_weights()


def iwae_objective(x, posterior, decode: DecodeFn, prior, *, seed, num_samples: int,
                   analytic_kl: bool = True) -> tuple[tf.Tensor, ELBO]:
    """The k-sample bound to train on, `[B]` nats, and ELBO terms from the same k draws.

    The bound is `iwae_bound` in one chunk (the same draws for the same seed).
    The terms, for reporting, are their k-draw averages: reconstruction
    E_q[ln p(x|z)], and KL in closed form when asked for and known, else the
    mean of ln q − ln p; so the encoder and decoder run once per step.
    """
    k = int(num_samples)
    if k < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    z, d = _draws(x, posterior, decode, prior, seed=seed, num_samples=k)
    bound = tf.reduce_logsumexp(d.log_weights(), axis=0) - math.log(k)
    kl = _kl(posterior, prior, z, analytic_kl, log_q=d.log_qz, log_p=d.log_pz)
    return bound, terms(tf.reduce_mean(d.log_px_z, axis=0), kl)


def iwae_bound(x, posterior, decode: DecodeFn, prior, *, seed, num_samples: int,
               chunk_size: int | None = None, xla_parts: bool = False) -> tf.Tensor:
    """ln (1/k) Σ_i w_i with k = num_samples importance samples: `[B]` nats.

    The bound rises towards ln p(x) as k grows (Burda et al. 2016). Samples
    are drawn `chunk_size` at a time (`log_mean_weight`), so memory is
    O(chunk_size · B) whatever k is; k = 5000 fits easily. The log-weights
    are `log_weights`' up to float rounding (a Bernoulli decoder's ln p(x|z)
    is `bernoulli_log_likelihood`). `xla_parts`: compile the sampling and the
    densities as XLA programs of their own around the decoder
    (`_scoring_draw`), for a caller that runs the bound in a plain
    `tf.function` so that the decoder's matmuls take TensorFlow's kernels.
    """
    draw = _scoring_draw(x, posterior, decode, prior, xla_parts=xla_parts)
    return log_mean_weight(draw, seed=seed, num_samples=num_samples, chunk_size=chunk_size,
                           batch=tf.shape(x)[0], dtype=posterior.dtype)


def log_mean_weight(draw: Callable[[tf.Tensor, int], tf.Tensor], *, seed, num_samples,
                    chunk_size: int | None, batch, dtype) -> tf.Tensor:
    """ln (1/k) Σ_i w_i, `[B]`, for k = num_samples log-weights drawn by
    `draw(seed, n) -> ln w [n, B]`, `chunk_size` at a time.

    The chunks are folded into a running logsumexp. Gradients flow through it
    (the IWAE objective) when it runs in one chunk or inside a tape.
    `num_samples` may be a scalar int32 tensor (a k chosen at call time, as in
    the SavedModel's `iwae` signature); it then needs a Python `chunk_size`
    and always takes the chunked path. Every model's bound is this one
    function over its own log-weights.
    """
    if tf.is_tensor(num_samples):
        if chunk_size is None:
            raise ValueError("a tensor num_samples needs a Python int chunk_size")
        chunk = max(1, int(chunk_size))
        log_k = tf.math.log(tf.cast(num_samples, dtype))
    else:
        num_samples = int(num_samples)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        chunk = num_samples if chunk_size is None else max(1, min(int(chunk_size), num_samples))
        log_k = math.log(num_samples)
    if not tf.is_tensor(num_samples) and chunk == num_samples:
        return tf.reduce_logsumexp(draw(seed, num_samples), axis=0) - log_k

    num_chunks = -(-num_samples // chunk)
    seeds = tfp.random.split_seed(seed, n=num_chunks)

    def body(i, running_max, running_sum):
        lw = draw(tf.gather(seeds, i), chunk)                                  # [chunk, B]
        # The last chunk may overrun k: its surplus draws get weight zero.
        valid = tf.range(chunk) + i * chunk < num_samples
        lw = tf.where(valid[:, tf.newaxis], lw, tf.constant(-float("inf"), lw.dtype))
        new_max = tf.maximum(running_max, tf.reduce_max(lw, axis=0))
        running_sum = (running_sum * tf.exp(running_max - new_max)
                       + tf.reduce_sum(tf.exp(lw - new_max), axis=0))
        return i + 1, new_max, running_sum

    _, m, s = tf.while_loop(
        lambda i, *_: i < num_chunks, body,
        (tf.constant(0), tf.fill([batch], tf.constant(-float("inf"), dtype)),
         tf.zeros([batch], dtype)))
    return m + tf.math.log(s) - log_k
