"""Models: the VAE (and, beside it, the deterministic autoencoder).

Subclassed `keras.Model`s, because Keras 3's functional API cannot carry a
`tfd.Distribution` between layers. Any layer that returns a distribution can
serve as encoder or decoder: the model reads its objective off `log_prob`
and `kl_divergence` and never looks inside the layers.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import export, objectives
from tfp_vae.callbacks import StepProgbar
from tfp_vae.config import OBJECTIVES
from tfp_vae.distributions import LogitBernoulli, standard_normal_prior
from tfp_vae.fused import FusedSteps

tfd = tfp.distributions

_PACKAGE = "tfp_vae"
# Separate seed streams for training draws and evaluation draws, so that
# evaluating mid-run never changes the training trajectory.
_TRAIN_STREAM, _EVAL_STREAM = 0, 1


# The steps are plain Python over TF ops (loops are tf.while_loop, branches on
# Python values), as the evaluation functions are (evaluate.py traces those with
# autograph=False). Keras traces `train_function` with AutoGraph on, and
# AutoGraph's rewriting of every method a step calls, TFP's included, was a
# fifth of a tiny in-process run's profile (6% of a tiny script run's wall
# time, docs/performance.md): the steps opt out of it, whichever loop calls
# them (Keras', FusedSteps'). A subclass's own step is converted as Keras does.
_plain_python = tf.autograph.experimental.do_not_convert


def _descend(model: keras.Model, tape: tf.GradientTape, loss: tf.Tensor) -> None:
    """One optimizer step on the batch mean of the per-example `loss` `[B]`.

    tf.distribute sums the replicas' gradients: each replica's mean over its
    share counts 1/replicas, so the update is the global batch's. The loss is
    scaled (and the gradients unscaled) under a mixed_float16 policy.
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    with tape:
        scaled = model.optimizer.scale_loss(tf.reduce_mean(loss) / replicas)
    grads = tape.gradient(scaled, model.trainable_variables)
    model.optimizer.apply(grads, model.trainable_variables)


class _Model(FusedSteps, keras.Model):
    """What every model here shares beyond Keras: fused steps, a progress bar
    that counts the steps that ran, a build config so that a `.keras` file
    restores the optimizer, and an `export` of this package's signatures."""

    def fit(self, *args, verbose="auto", callbacks=None, **kwargs):
        """Keras' `fit`, its progress bar counting real steps (`callbacks.StepProgbar`)."""
        verbose, callbacks = _own_progbar(verbose, callbacks)
        return super().fit(*args, verbose=verbose, callbacks=callbacks, **kwargs)

    def evaluate(self, *args, verbose="auto", callbacks=None, **kwargs):
        """Keras' `evaluate`, its progress bar stopping at the steps that ran."""
        verbose, callbacks = _own_progbar(verbose, callbacks)
        return super().evaluate(*args, verbose=verbose, callbacks=callbacks, **kwargs)

    def _input_shape(self):
        """The shape `build` takes, or None when the model cannot tell (then
        Keras' own record of `build`'s last call is the build config)."""
        return None

    def get_build_config(self):
        # Keras rebuilds a loaded model from this, and only a built model gets
        # its optimizer's variables (moments, step count) back from the file.
        # These models are often built by their first fit, not by build(), so
        # Keras' own record can be missing: the shape is read off the model.
        shape = self._input_shape()
        return super().get_build_config() if shape is None else {"input_shape": shape}

    def build_from_config(self, config):
        if config and not self.built:
            self.build(config["input_shape"])

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """Keras' `model.export`, writing the signatures of `tfp_vae.export`.

        format "tf_saved_model": the SavedModel `export.export_saved_model`
        writes (encode, decode, sample, reconstruct, elbo, iwae and
        serving_default; an autoencoder's encode, decode and reconstruct);
        "litert": the TFLite model of `export.export_tflite`. Other formats
        are Keras' own, of the model's call.
        """
        if format == "tf_saved_model":
            export.export_saved_model(self, filepath)
        elif format == "litert":
            export.export_tflite(self, filepath)
        else:
            return super().export(filepath, format=format, verbose=verbose,
                                  input_signature=input_signature, **kwargs)
        if verbose:
            print(f"Saved {format} at {filepath}", flush=True)
        return None


def _own_progbar(verbose, callbacks):
    """(0, callbacks + a StepProgbar) for a `verbose` fit or evaluate: Keras
    then adds no bar of its own. A CallbackList is Keras' own business."""
    if isinstance(callbacks, keras.callbacks.CallbackList) or not verbose:
        return verbose, callbacks
    verbose = 1 if verbose == "auto" else verbose
    return 0, list(callbacks or []) + [StepProgbar(verbose)]


def _inputs(data):
    """`x` from what a tf.data pipeline yields: x, (x,), (x, y) or (x, y, w)."""
    if isinstance(data, (tuple, list)):
        return data[0]
    return data


@keras.saving.register_keras_serializable(package=_PACKAGE)
class VAE(_Model):
    """A variational autoencoder: q(z|x), p(x|z) and a prior p(z).

    Args:
      encoder: layer, x `[B, *data]` -> q(z|x) with batch `[B]`, event `[K]`.
      decoder: layer, z `[N, K]` -> p(x|z) with batch `[N]`, event `data`.
      prior: None for N(0, I); a `tfd.Distribution` with event `[K]`; or a
        layer with a `distribution(encoder)` method (a learned prior, see
        `tfp_vae.priors`); with no closed-form KL the ELBO uses the
        Monte-Carlo estimate.
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
        return self.prior.distribution(self.encoder)

    @property
    def latent_dim(self) -> int:
        if getattr(self.encoder, "latent_dim", None) is not None:
            return int(self.encoder.latent_dim)
        if self.prior is not None:
            return int(self.prior_distribution().event_shape[-1])   # learned or fixed prior
        raise ValueError("latent_dim is unknown: give the encoder a latent_dim attribute")

    def elbo(self, x, num_samples=1, analytic_kl=True, beta=1.0, *, seed=None,
             free_bits=0.0) -> objectives.ELBO:
        """Per-example ELBO terms `[B]` in nats: ELBO(elbo, reconstruction, kl).

        `seed`: a stateless seed (pair of ints); None draws a fresh one.
        """
        x, q, decode = self._bound_parts(x)
        return objectives.elbo(
            x, q, decode, self.prior_distribution(q.event_shape[-1]),
            seed=tfp.random.sanitize_seed(seed), num_samples=num_samples,
            analytic_kl=analytic_kl, beta=beta, free_bits=free_bits)

    def iwae_bound(self, x, num_samples, *, seed=None, chunk_size=None,
                   xla_parts=False) -> tf.Tensor:
        """ln (1/k) Σ w_i with k = num_samples: `[B]` nats; → ln p(x) as k grows.

        Drawn `chunk_size` samples at a time (default min(k, 100)), so memory
        stays bounded for k in the thousands. `xla_parts`: see
        `objectives.iwae_bound` (how `evaluate.iwae_function` scores on a CPU).
        """
        x, q, decode = self._bound_parts(x)
        if chunk_size is None:
            chunk_size = min(int(num_samples), 100)
        return objectives.iwae_bound(
            x, q, decode, self.prior_distribution(q.event_shape[-1]),
            seed=tfp.random.sanitize_seed(seed), num_samples=num_samples, chunk_size=chunk_size,
            xla_parts=xla_parts)

    def _bound_parts(self, inputs):
        """(x, q(z|x), decode: z [N, K] -> p(x|z)) for the objectives."""
        return inputs, self.encode(inputs), self.decode

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
            self.prior.distribution(self.encoder)
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
            x, q, decode = self._bound_parts(x)
            bound, terms = objectives.iwae_objective(
                x, q, decode, self.prior_distribution(q.event_shape[-1]), seed=seed,
                num_samples=self.num_samples, analytic_kl=self.analytic_kl)
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
        logs = {name: t.result() for name, t in self._trackers.items()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras averages step logs over workers along axis 0, which
            # rejects scalars (tensorflow/tensorflow#72388).
            logs = {name: tf.reshape(v, [1]) for name, v in logs.items()}
        return logs

    def _model_inputs(self, data):
        """What the objectives take, from what a dataset yields."""
        return _inputs(data)

    @_plain_python
    def train_step(self, data):
        x = self._model_inputs(data)
        with tf.GradientTape() as tape:
            loss, terms = self.objective_terms(x, self._step_seed(_TRAIN_STREAM))
        _descend(self, tape, loss)
        return self._update_metrics(loss, terms)

    @_plain_python
    def test_step(self, data):
        x = self._model_inputs(data)
        loss, terms = self.objective_terms(x, self._step_seed(_EVAL_STREAM))
        return self._update_metrics(loss, terms)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def _input_shape(self):
        shape = getattr(self.decoder, "data_shape", None)      # the images the model reads
        return None if shape is None else (None, *shape)

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


AE_LOSSES = ("squared_error", "bernoulli")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Autoencoder(_Model):
    """A deterministic autoencoder: codes = encoder(x), x̂ = decoder(codes).

    Args:
      encoder: any Keras layer, x `[B, *data]` -> codes `[B, K]`.
      decoder: any Keras layer, codes `[B, K]` -> `[B, *data]` (means for
        squared error, logits for Bernoulli); or a `layers.TiedDecoder`, which
        this model ties to the encoder's Dense kernels (again on loading).
      loss: "squared_error", ‖x − x̂‖² summed over pixels; or "bernoulli",
        the sigmoid cross-entropy of x given logits, nats. Either per example,
        averaged over the batch.

    `fit` minimises the loss; its metrics are loss and squared_error
    (‖x − x̂‖² per example with x̂ the mean, the number PCA is compared on).
    Like the VAE, it answers `encode`/`decode` with distributions:
    `encode(x)` is a point mass at the codes (`tfd.VectorDeterministic`, event
    `[K]`) and `decode(z)` the likelihood the loss is the negative log of, up
    to constants (`Independent(Bernoulli)` or `Independent(Normal(x̂, 1))`).
    The plain AE has no prior; `sample` decodes z ~ N(0, I) only to show what
    such codes become.

    >>> enc = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> dec = keras.Sequential([keras.layers.Dense(4), keras.layers.Reshape((2, 2, 1))])
    >>> ae = Autoencoder(enc, dec)
    >>> ae(tf.zeros([3, 2, 2, 1])).shape
    TensorShape([3, 2, 2, 1])
    """

    def __init__(self, encoder, decoder, *, loss="squared_error", **kwargs):
        super().__init__(**kwargs)
        if loss not in AE_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(AE_LOSSES)}; got {loss!r}")
        self.encoder = encoder
        self.decoder = decoder
        self.loss_kind = loss
        if callable(getattr(decoder, "tie", None)):
            decoder.tie(encoder)
        self._latent_dim = None
        self._trackers = {name: keras.metrics.Mean(name=name)
                          for name in ("loss", "squared_error")}

    # -- the maps ------------------------------------------------------------------------

    def codes(self, x) -> tf.Tensor:
        """The codes `[B, K]`, float32."""
        return tf.cast(self.encoder(x), tf.float32)

    def decoder_output(self, z, like=None) -> tf.Tensor:
        """The decoder's raw output, float32: logits (Bernoulli) or means, `[B, *data]`."""
        out = tf.cast(self.decoder(z), tf.float32)
        return out if like is None else tf.reshape(out, tf.shape(like))

    def _mean(self, out):
        return tf.sigmoid(out) if self.loss_kind == "bernoulli" else out

    def encode(self, x) -> tfd.Distribution:
        """A point mass at the codes: batch `[B]`, event `[K]`."""
        return tfd.VectorDeterministic(self.codes(x))

    def decode(self, z) -> tfd.Distribution:
        """The likelihood behind the loss: batch `[N]`, event `data`; `.mean()` is x̂."""
        out = self.decoder_output(z)
        ndims = len(out.shape) - 1
        if self.loss_kind == "bernoulli":
            return tfd.Independent(LogitBernoulli(logits=out, dtype=tf.float32), ndims)
        return tfd.Independent(tfd.Normal(out, 1.0), ndims)

    def call(self, x):
        """The reconstruction x̂ `[B, *data]` (pixel probabilities for Bernoulli)."""
        return self._mean(self.decoder_output(self.codes(x), like=x))

    def sample(self, n, seed=None) -> tfd.Distribution:
        """Decode n draws z ~ N(0, I): no prior was fitted, so expect garbage."""
        z = standard_normal_prior(self.latent_dim).sample(n, seed=tfp.random.sanitize_seed(seed))
        return self.decode(z)

    @property
    def latent_dim(self) -> int:
        if self._latent_dim is None:
            raise ValueError("latent_dim is known once the model is built: call build() first")
        return self._latent_dim

    def _input_shape(self):
        return getattr(self, "_seen_input_shape", None)

    def build(self, input_shape):
        # Encoder first: a tied decoder needs the encoder's kernels to exist.
        self._seen_input_shape = (None, *[int(d) for d in input_shape[1:]])
        x = tf.zeros([1] + [int(d) for d in input_shape[1:]])
        z = self.codes(x)
        self._latent_dim = int(z.shape[-1])
        self.decoder_output(z)
        self.built = True

    # -- training ---------------------------------------------------------------------------

    def losses_per_example(self, x) -> tuple[tf.Tensor, tf.Tensor]:
        """(loss `[B]`, squared error ‖x − x̂‖² `[B]`), both float32."""
        x = tf.cast(x, tf.float32)
        if getattr(self, "_seen_input_shape", None) is None:    # built by its first fit
            self._seen_input_shape = (None, *x.shape[1:])
        out = self.decoder_output(self.codes(x), like=x)
        axes = list(range(1, len(x.shape)))
        squared = tf.reduce_sum(tf.square(x - self._mean(out)), axis=axes)
        if self.loss_kind == "squared_error":
            return squared, squared
        cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=out)
        return tf.reduce_sum(cross_entropy, axis=axes), squared

    def _update_metrics(self, loss, squared):
        self.built = True
        self._trackers["loss"].update_state(loss)
        self._trackers["squared_error"].update_state(squared)
        return {name: t.result() for name, t in self._trackers.items()}

    def _model_inputs(self, data):
        """What the objectives take, from what a dataset yields."""
        return _inputs(data)

    @_plain_python
    def train_step(self, data):
        x = self._model_inputs(data)
        with tf.GradientTape() as tape:
            loss, squared = self.losses_per_example(x)
        _descend(self, tape, loss)
        return self._update_metrics(loss, squared)

    @_plain_python
    def test_step(self, data):
        return self._update_metrics(*self.losses_per_example(_inputs(data)))

    @property
    def metrics(self):
        return list(self._trackers.values())

    # -- serialisation ------------------------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "loss": self.loss_kind,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConditionalVAE(VAE):
    """A VAE conditioned on a class label y: q(z|x, y), p(x|z, y), p(z).

    The encoder sees `[flatten(x), onehot(y)]` (`[B, D + C]`) and the decoder
    `[z, onehot(y)]` (`[B, K + C]`), so any of this package's MLP layers
    serve. Inputs are pairs `(x, y)` with x `[B, *data]` and int labels y `[B]`:
    `elbo((x, y))`, `iwae_bound((x, y), k)`, `fit` on a dataset of `(x, y)`.
    `sample(n, label=c)` decodes prior draws for class c.

    >>> from tfp_vae.layers import GaussianEncoder, BernoulliDecoder
    >>> cvae = ConditionalVAE(GaussianEncoder(2, (16,)), BernoulliDecoder((4,), (16,)),
    ...                       num_classes=3)
    >>> cvae.sample(5, label=2, seed=(0, 1)).batch_shape
    TensorShape([5])
    """

    def __init__(self, encoder, decoder, prior=None, *, num_classes, **kwargs):
        super().__init__(encoder, decoder, prior, **kwargs)
        if hasattr(prior, "pseudo_inputs"):
            raise ValueError("a VampPrior runs the encoder on unlabelled pseudo-inputs; "
                             "a ConditionalVAE needs prior=None or a MixturePrior")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
        self.num_classes = int(num_classes)

    def _one_hot(self, y):
        return tf.one_hot(tf.cast(y, tf.int32), self.num_classes, dtype=tf.float32)

    def encode(self, inputs) -> tfd.Distribution:
        """q(z|x, y) for inputs (x `[B, *data]`, y `[B]`): batch `[B]`, event `[K]`."""
        x, y = inputs
        size = int(np.prod(x.shape[1:]))                       # static, for the layers
        flat = tf.reshape(tf.cast(x, tf.float32), [-1, size])
        return self.encoder(tf.concat([flat, self._one_hot(y)], axis=-1))

    def decode(self, z, y=None) -> tfd.Distribution:
        """p(x|z, y) for z `[N, K]` and labels y `[N]`."""
        if y is None:
            raise ValueError("a ConditionalVAE decodes z with its labels: decode(z, y)")
        return self.decoder(tf.concat([z, self._one_hot(y)], axis=-1))

    def _bound_parts(self, inputs):
        x, y = inputs
        batch = tf.shape(x)[0]

        def decode(z):     # z [S·B, K], S-major as the objectives lay draws out
            return self.decode(z, tf.tile(y, [tf.shape(z)[0] // batch]))

        return x, self.encode(inputs), decode

    def _model_inputs(self, data):
        if not isinstance(data, (tuple, list)) or len(data) < 2:
            raise ValueError("a ConditionalVAE trains on a dataset of (x, y) pairs")
        return data[0], data[1]

    def sample(self, n, seed=None, label=0) -> tfd.Distribution:
        """p(x|z, y=label) for n prior draws z: batch `[n]`; `label` is one
        class for all, or `[n]` classes, one per draw."""
        z = self.prior_distribution().sample(n, seed=tfp.random.sanitize_seed(seed))
        return self.decode(z, tf.broadcast_to(tf.cast(label, tf.int32), [n]))

    def call(self, inputs):
        """The reconstruction `[B, *data]` at the posterior mean, for inputs (x, y)."""
        return self.decode(self.encode(inputs).mean(), inputs[1]).mean()

    def _input_shape(self):
        shape = super()._input_shape()
        return None if shape is None else (shape, (None,))

    def build(self, input_shape):
        x_shape = input_shape[0] if isinstance(input_shape[0], (tuple, list)) else input_shape
        x = tf.zeros([1] + [int(d) for d in x_shape[1:]])
        y = tf.zeros([1], tf.int32)
        self.decode(self.encode((x, y)).mean(), y)
        if self.prior is not None and not isinstance(self.prior, tfd.Distribution):
            self.prior.distribution(self.encoder)
        self.built = True

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
