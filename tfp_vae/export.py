"""SavedModel export: the VAE as graph-only signatures that need only TensorFlow.

    export_saved_model(vae, "saved_model")
    m = tf.saved_model.load("saved_model")            # no tfp_vae import needed
    m.signatures["encode"](x=images)                 # {"loc": [B, K], "scale": [B, K]}

Signatures (all float32; x is `[B, *data_shape]` in [0, 1], z is `[B, K]`):
  encode(x)          -> loc, scale                 q(z|x)'s mean and standard deviation
  decode(z)          -> mean                       E[x|z] (pixel probabilities for Bernoulli)
  sample(n, seed)    -> mean, z                    decoder means of n prior draws; seed int32 [2]
  reconstruct(x)     -> mean                       E[x | z = E_q[z]]
  elbo(x, seed)      -> elbo, reconstruction, kl   per example, nats; seed int32 [2]
  iwae(x, k, seed)   -> log_likelihood             ln (1/k) Σ w, the IWAE-k estimate of
                                                   ln p(x) per example, nats; k int32 []

A `ConditionalVAE`'s signatures take its labels too: y int32 `[B]` beside x
(encode, reconstruct, elbo, iwae) and beside z (decode), and sample takes
`label` int32 `[]`, the class of all n draws.
"""

from __future__ import annotations

import tensorflow as tf

from tfp_vae import files

SIGNATURES = ("encode", "decode", "sample", "reconstruct", "elbo", "iwae")
# The iwae signature draws k at run time in chunks of this many samples
# (memory O(chunk · B); k need not be a multiple of it).
IWAE_CHUNK = 100


class _Exported(tf.Module):
    """The signatures. Each function takes the model's inputs first: `x`, or
    `x, y` for a conditional model (`inputs` below is a tuple of one or two)."""

    def __init__(self, vae, data_shape):
        super().__init__(name="tfp_vae_export")
        self.vae = vae
        self.conditional = hasattr(vae, "num_classes")
        x_spec = tf.TensorSpec([None, *data_shape], tf.float32, name="x")
        z_spec = tf.TensorSpec([None, vae.latent_dim], tf.float32, name="z")
        y = [tf.TensorSpec([None], tf.int32, name="y")] if self.conditional else []
        label = [tf.TensorSpec([], tf.int32, name="label")] if self.conditional else []
        seed_spec = tf.TensorSpec([2], tf.int32, name="seed")
        n_spec = tf.TensorSpec([], tf.int32, name="n")
        self.encode = tf.function(self._encode, input_signature=[x_spec, *y])
        self.decode = tf.function(self._decode, input_signature=[z_spec, *y])
        self.sample = tf.function(self._sample, input_signature=[n_spec, seed_spec, *label])
        self.reconstruct = tf.function(self._reconstruct, input_signature=[x_spec, *y])
        self.elbo = tf.function(self._elbo, input_signature=[x_spec, *y, seed_spec])
        self.iwae = tf.function(self._iwae, input_signature=[
            x_spec, *y, tf.TensorSpec([], tf.int32, name="k"), seed_spec])

    def _model_inputs(self, inputs):
        return tuple(inputs) if self.conditional else inputs[0]

    def _encode(self, *inputs):
        q = self.vae.encode(self._model_inputs(inputs))
        return {"loc": q.mean(), "scale": q.stddev()}

    def _decode(self, z, *y):
        return {"mean": self.vae.decode(z, *y).mean()}

    def _sample(self, n, seed, *label):
        z = self.vae.prior_distribution().sample(n, seed=seed)
        y = [tf.fill([n], label[0])] if label else []
        return {"mean": self.vae.decode(z, *y).mean(), "z": z}

    def _reconstruct(self, *inputs):
        return {"mean": self.vae(self._model_inputs(inputs))}

    def _elbo(self, *args):
        *inputs, seed = args
        terms = self.vae.elbo(self._model_inputs(inputs), seed=seed)
        return {"elbo": terms.elbo, "reconstruction": terms.reconstruction, "kl": terms.kl}

    def _iwae(self, *args):
        *inputs, k, seed = args
        with tf.control_dependencies([tf.debugging.assert_positive(k, message="k must be >= 1")]):
            k = tf.identity(k)
        return {"log_likelihood": self.vae.iwae_bound(self._model_inputs(inputs), k, seed=seed,
                                                      chunk_size=IWAE_CHUNK)}


def export_saved_model(vae, path: str, data_shape=None) -> str:
    """Writes `vae` as a SavedModel at `path` (atomically); returns `path`.

    data_shape: one example's shape; default: the shape the model was built with.
    """
    if data_shape is None:
        data_shape = _built_data_shape(vae)
    module = _Exported(vae, tuple(int(d) for d in data_shape))
    with files.atomic_directory(path) as tmp:
        tf.saved_model.save(module, tmp, signatures={name: getattr(module, name)
                                                     for name in SIGNATURES})
    return path


def _built_data_shape(vae):
    decoder_shape = getattr(vae.decoder, "data_shape", None)
    if decoder_shape is not None:
        return decoder_shape
    shapes = getattr(vae, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    if shape is None:
        raise ValueError("cannot tell the data shape: pass data_shape= to export_saved_model")
    return tuple(shape[1:])
