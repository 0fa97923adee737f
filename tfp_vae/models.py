"""Models: the VAE (and, beside it, the deterministic autoencoder).

Subclassed `keras.Model`s, because Keras 3's functional API cannot carry a
`tfd.Distribution` between layers. Any layer that returns a distribution can
serve as encoder or decoder: the model reads its objective off `log_prob`
and `kl_divergence` and never looks inside the layers.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import objectives

tfd = tfp.distributions

_PACKAGE = "tfp_vae"
OBJECTIVES = ("elbo", "iwae")
# Separate seed streams for training draws and evaluation draws, so that
# evaluating mid-run never changes the training trajectory.
_TRAIN_STREAM, _EVAL_STREAM = 0, 1


def standard_normal_prior(latent_dim: int, dtype=tf.float32) -> tfd.Distribution:
    """p(z) = N(0, I_K): batch `[]`, event `[K]`."""
    return tfd.MultivariateNormalDiag(loc=tf.zeros([latent_dim], dtype))


def _inputs(data):
    """`x` from what a tf.data pipeline yields: x, (x,), (x, y) or (x, y, w)."""
    if isinstance(data, (tuple, list)):
        return data[0]
    return data


@keras.saving.register_keras_serializable(package=_PACKAGE)
class VAE(keras.Model):
    """A variational autoencoder: q(z|x), p(x|z) and a prior p(z).

    Args:
      encoder: layer, x `[B, *data]` -> q(z|x) with batch `[B]`, event `[K]`.
      decoder: layer, z `[N, K]` -> p(x|z) with batch `[N]`, event `data`.
      prior: None for N(0, I); a `tfd.Distribution` with event `[K]`; or a
        layer with a `distribution()` method (a learned prior).
      num_samples: S, draws of z per example in the training objective.
      analytic_kl: closed-form KL when one exists; Monte-Carlo otherwise.
      beta: initial weight on the KL term; `model.beta` is a variable, so it
        can change during training (warm-up) without retracing the step.
      free_bits: per-dimension KL floor in nats (0 disables).
      objective: "elbo", or "iwae" (the k = num_samples importance-weighted
        bound as the training objective).
      seed: base of the stateless seeds of every draw in `fit`/`evaluate`:
        the draw of step t is a fixed function of (seed, t), so resumed runs
        repeat the same randomness.

    `fit` maximises the objective; its metrics are loss (= −objective),
    elbo, reconstruction and kl, all nats per example averaged over the epoch.

    >>> from tfp_vae.layers import GaussianEncoder, BernoulliDecoder
    >>> vae = VAE(GaussianEncoder(2, (32,)), BernoulliDecoder((28, 28, 1), (32,)))
    >>> vae.elbo(tf.zeros([4, 28, 28, 1]), seed=(1, 2)).elbo.shape
    TensorShape([4])
    """

    def __init__(self, encoder, decoder, prior=None, *, num_samples=1, analytic_kl=True,
                 beta=1.0, free_bits=0.0, objective="elbo", seed=0, **kwargs):
        super().__init__(**kwargs)
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if float(free_bits) < 0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits!r}")
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.num_samples = int(num_samples)
        self.analytic_kl = bool(analytic_kl)
        self.free_bits = float(free_bits)
        self.objective = objective
        self.seed = int(seed)
        self.beta = self.add_weight(name="beta", shape=(), trainable=False,
                                    initializer=keras.initializers.Constant(float(beta)),
                                    dtype="float32")
        self._trackers = {name: keras.metrics.Mean(name=name)
                          for name in ("loss", "elbo", "reconstruction", "kl")}

    # -- the probability model ---------------------------------------------------

    def encode(self, x) -> tfd.Distribution:
        """q(z|x): batch `[B]`, event `[K]`."""
        return self.encoder(x)

    def decode(self, z) -> tfd.Distribution:
        """p(x|z): batch `[N]`, event `data_shape`."""
        return self.decoder(z)

    def prior_distribution(self, latent_dim: int | None = None) -> tfd.Distribution:
        """p(z), event `[K]`."""
        if self.prior is None:
            if latent_dim is None:
                latent_dim = self.latent_dim
            return standard_normal_prior(latent_dim)
        if isinstance(self.prior, tfd.Distribution):
            return self.prior
        return self.prior.distribution()

    @property
    def latent_dim(self) -> int:
        if getattr(self.encoder, "latent_dim", None) is not None:
            return int(self.encoder.latent_dim)
        if self.prior is not None:
            return int(self.prior_distribution().event_shape[-1])
        raise ValueError("latent_dim is unknown: give the encoder a latent_dim attribute")

    def elbo(self, x, num_samples=1, analytic_kl=True, beta=1.0, *, seed=None,
             free_bits=0.0) -> objectives.ELBO:
        """Per-example ELBO terms `[B]` in nats: ELBO(elbo, reconstruction, kl).

        `seed`: a stateless seed (pair of ints); None draws a fresh one.
        """
        q = self.encode(x)
        return objectives.elbo(
            x, q, self.decode, self.prior_distribution(q.event_shape[-1]),
            seed=tfp.random.sanitize_seed(seed), num_samples=num_samples,
            analytic_kl=analytic_kl, beta=beta, free_bits=free_bits)

    def iwae_bound(self, x, num_samples, *, seed=None, chunk_size=None) -> tf.Tensor:
        """ln (1/k) Σ w_i with k = num_samples: `[B]` nats; → ln p(x) as k grows.

        Drawn `chunk_size` samples at a time (default min(k, 100)), so memory
        stays bounded for k in the thousands.
        """
        q = self.encode(x)
        if chunk_size is None:
            chunk_size = min(int(num_samples), 100)
        return objectives.iwae_bound(
            x, q, self.decode, self.prior_distribution(q.event_shape[-1]),
            seed=tfp.random.sanitize_seed(seed), num_samples=num_samples, chunk_size=chunk_size)

    def sample(self, n, seed=None) -> tfd.Distribution:
        """Decode n draws from the prior: p(x|z), batch `[n]`, z ~ p(z)."""
        z = self.prior_distribution().sample(n, seed=tfp.random.sanitize_seed(seed))
        return self.decode(z)

    def call(self, x):
        """The reconstruction `[B, *data]`: the decoder's mean at the posterior mean."""
        return self.decode(self.encode(x).mean()).mean()

    def build(self, input_shape):
        # Run once on a dummy batch: builds encoder, decoder and a learned
        # prior whatever their kind, so weights can be restored into them.
        x = tf.zeros([1] + [int(d) for d in input_shape[1:]])
        self.decode(self.encode(x).mean())
        if self.prior is not None and not isinstance(self.prior, tfd.Distribution):
            self.prior.distribution()
        self.built = True

    # -- training ------------------------------------------------------------------

    def _step_seed(self, stream: int) -> tf.Tensor:
        """A stateless seed for this step, replica and stream, `[2]` int32."""
        step = self.optimizer.iterations if self.optimizer is not None else tf.constant(0)
        ctx = tf.distribute.get_replica_context()
        replica = ctx.replica_id_in_sync_group if ctx is not None else 0
        seed = tf.constant([self.seed, stream], tf.int32)
        for data in (tf.cast(step, tf.int32), tf.cast(replica, tf.int32)):
            seed = tf.random.experimental.stateless_fold_in(seed, data)
        return seed

    def objective_terms(self, x, seed) -> tuple[tf.Tensor, objectives.ELBO]:
        """Per-example loss `[B]` (−objective, nats) and the ELBO terms `[B]`."""
        if self.objective == "iwae":
            bound = self.iwae_bound(x, self.num_samples, seed=seed, chunk_size=self.num_samples)
            terms = self.elbo(x, num_samples=1, analytic_kl=self.analytic_kl, seed=seed)
            return -bound, terms
        terms = self.elbo(x, num_samples=self.num_samples, analytic_kl=self.analytic_kl,
                          beta=self.beta, seed=seed, free_bits=self.free_bits)
        return -terms.elbo, terms

    def _update_metrics(self, loss, terms):
        # The sublayers are built by now; the model has nothing else to build.
        self.built = True
        self._trackers["loss"].update_state(loss)
        self._trackers["elbo"].update_state(terms.reconstruction - terms.kl)
        self._trackers["reconstruction"].update_state(terms.reconstruction)
        self._trackers["kl"].update_state(terms.kl)
        return {name: t.result() for name, t in self._trackers.items()}

    def train_step(self, data):
        x = _inputs(data)
        with tf.GradientTape() as tape:
            loss, terms = self.objective_terms(x, self._step_seed(_TRAIN_STREAM))
            scaled = self.optimizer.scale_loss(tf.reduce_mean(loss))
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return self._update_metrics(loss, terms)

    def test_step(self, data):
        x = _inputs(data)
        loss, terms = self.objective_terms(x, self._step_seed(_EVAL_STREAM))
        return self._update_metrics(loss, terms)

    @property
    def metrics(self):
        return list(self._trackers.values())

    # -- serialisation -----------------------------------------------------------------

    def get_config(self):
        prior = self.prior
        if isinstance(prior, tfd.Distribution):
            raise ValueError("a VAE with a fixed tfd.Distribution prior cannot be saved to "
                             ".keras; use prior=None or a prior layer")
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "prior": None if prior is None else keras.saving.serialize_keras_object(prior),
            "num_samples": self.num_samples,
            "analytic_kl": self.analytic_kl,
            "beta": float(self.beta.numpy()),
            "free_bits": self.free_bits,
            "objective": self.objective,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder", "prior"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
