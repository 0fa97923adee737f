"""SavedModel and TFLite export: a model's signatures as graph-only functions that
need only TensorFlow, written so that every loader runs them.

    export_saved_model(vae, "saved_model")
    m = tf.saved_model.load("saved_model")            # no tfp_vae import needed
    m.signatures["encode"](x=images)                 # {"loc": [B, K], "scale": [B, K]}

Signatures (all float32; x is `[B, *data_shape]` in [0, 1], z is `[B, K]`):
  encode(x)          -> loc, scale                 q(z|x)'s mean and standard deviation
  decode(z)          -> mean                       E[x|z] (pixel probabilities for Bernoulli;
                                                   for the discretised logistic the exact
                                                   mean over the 256 levels, in [0, 1])
  sample(n, seed)    -> mean, z                    decoder means of n prior draws; seed int32 [2]
  reconstruct(x)     -> mean                       E[x | z = E_q[z]]
  elbo(x, seed)      -> elbo, reconstruction, kl   per example, nats; seed int32 [2]
  iwae(x, k, seed)   -> log_likelihood             ln (1/k) Σ w, the IWAE-k estimate of
                                                   ln p(x) per example, nats; k int32 []
  serving_default    = encode                      what TF Serving runs when no signature
                                                   is named (see SERVING_DEFAULT)
  sample_posthoc(n, seed) -> mean, z               with `posthoc=` a fitted density of z
                                                   (`tfp_vae.posthoc.MixtureLayer`): as
                                                   sample, z drawn from it instead of p(z)

A `ConditionalVAE`'s signatures take its labels too: y int32 `[B]` beside x
(encode, reconstruct, elbo, iwae) and beside z (decode), and sample takes
`label` int32 `[]`, the class of all n draws. A `HierarchicalVAE`'s encode is
q(z₂|x), its decode z₂ -> E[x | z₁ = E[z₁|z₂], z₂].

The SavedModel is written by `keras.export.ExportArchive`, which tracks the
Keras variables so that TensorFlow's graph-session loader (what
`saved_model_cli run` and TF Serving's C++ loader use) restores them; a
plain `tf.Module` saved with `tf.saved_model.save` restores only in eager
Python (keras-team/keras#19274).
"""

from __future__ import annotations

import os
import tempfile

import keras
import tensorflow as tf
from keras.src.saving import saving_lib     # save_weights_only(objects_to_skip=): no public form

from tfp_vae import files

SIGNATURES = ("encode", "decode", "sample", "reconstruct", "elbo", "iwae")
# Added when the export is given a post-hoc density of z (`posthoc=`).
POSTHOC_SIGNATURE = "sample_posthoc"
# TF Serving's REST `predict` runs `serving_default` when no signature is named:
# images to their codes, what a dimensionality-reduction model is served for.
SERVING_DEFAULT = "encode"
# Signatures a TFLite model can hold: the others draw random numbers with ops
# TFLite lacks (see the README's "On-device" section).
TFLITE_SIGNATURES = ("decode", "encode", "reconstruct")
# The iwae signature draws k at run time in chunks of this many samples
# (memory O(chunk · B); k need not be a multiple of it).
IWAE_CHUNK = 100

__all__ = ["AUTOENCODER_SIGNATURES", "IWAE_CHUNK", "POSTHOC_SIGNATURE", "SERVING_DEFAULT",
           "SIGNATURES", "TFLITE_SIGNATURES", "archive", "built_data_shape",
           "export_saved_model", "export_tflite", "model_signatures", "save_weights",
           "serve_as_version"]


def _endpoints(model, data_shape, posthoc=None) -> dict:
    """{name: (function, input signature)} of `model`'s signatures. Each function
    takes the model's inputs first: `x`, or `x, y` for a conditional model.
    With `posthoc` (a layer whose `distribution()` has event `[K]`), also
    POSTHOC_SIGNATURE."""
    conditional = hasattr(model, "num_classes")
    x_spec = tf.TensorSpec([None, *data_shape], tf.float32, name="x")
    z_spec = tf.TensorSpec([None, model.latent_dim], tf.float32, name="z")
    y = [tf.TensorSpec([None], tf.int32, name="y")] if conditional else []
    label = [tf.TensorSpec([], tf.int32, name="label")] if conditional else []
    seed = tf.TensorSpec([2], tf.int32, name="seed")
    n = tf.TensorSpec([], tf.int32, name="n")
    k = tf.TensorSpec([], tf.int32, name="k")

    def inputs(values):
        return tuple(values) if conditional else values[0]

    def encode(*xs):
        q = model.encode(inputs(xs))
        return {"loc": q.mean(), "scale": q.stddev()}

    def decode(z, *ys):
        return {"mean": model.decode(z, *ys).mean()}

    def sample(n, seed, *labels):
        z = model.prior_distribution().sample(n, seed=seed)
        ys = [tf.fill([n], labels[0])] if labels else []
        return {"mean": model.decode(z, *ys).mean(), "z": z}

    def reconstruct(*xs):
        return {"mean": model(inputs(xs))}

    def elbo(*args):
        *xs, s = args
        terms = model.elbo(inputs(xs), seed=s)
        return {"elbo": terms.elbo, "reconstruction": terms.reconstruction, "kl": terms.kl}

    def iwae(*args):
        *xs, k, s = args
        with tf.control_dependencies([tf.debugging.assert_positive(k, message="k must be >= 1")]):
            k = tf.identity(k)
        return {"log_likelihood": model.iwae_bound(inputs(xs), k, seed=s,
                                                   chunk_size=IWAE_CHUNK)}

    def sample_posthoc(n, seed, *labels):
        z = posthoc.distribution().sample(n, seed=seed)
        ys = [tf.fill([n], labels[0])] if labels else []
        return {"mean": model.decode(z, *ys).mean(), "z": z}

    out = {"encode": (encode, [x_spec, *y]), "decode": (decode, [z_spec, *y]),
           "sample": (sample, [n, seed, *label]), "reconstruct": (reconstruct, [x_spec, *y]),
           "elbo": (elbo, [x_spec, *y, seed]), "iwae": (iwae, [x_spec, *y, k, seed])}
    if posthoc is not None:
        out[POSTHOC_SIGNATURE] = (sample_posthoc, [n, seed, *label])
    return out


# A deterministic autoencoder has no likelihood bound to score nor a prior to sample.
AUTOENCODER_SIGNATURES = ("encode", "decode", "reconstruct")


def model_signatures(model) -> tuple[str, ...]:
    """The signatures `model` has: all of SIGNATURES for a VAE, fewer for an autoencoder."""
    return SIGNATURES if hasattr(model, "iwae_bound") else AUTOENCODER_SIGNATURES


def archive(model, data_shape=None, signatures=None,
            posthoc=None) -> keras.export.ExportArchive:
    """A `keras.export.ExportArchive` holding `model` and its `signatures` (default:
    `model_signatures(model)`, and POSTHOC_SIGNATURE with `posthoc`), the
    `SERVING_DEFAULT` one first (ExportArchive serves its first endpoint as
    `serving_default`). data_shape: one example's shape; default: the model's.
    posthoc: a built Keras layer whose `distribution()` is a density of z,
    event `[K]`; the archive tracks it, so its weights are saved as variables."""
    available = model_signatures(model) + ((POSTHOC_SIGNATURE,) if posthoc is not None else ())
    signatures = available if signatures is None else tuple(signatures)
    if data_shape is None:
        data_shape = built_data_shape(model)
    data_shape = tuple(int(d) for d in data_shape)
    if posthoc is not None:
        event = posthoc.distribution().event_shape
        if event != [model.latent_dim]:
            raise ValueError(f"the post-hoc density has event shape {event}; the model's z "
                             f"has [{model.latent_dim}]")
    endpoints = _endpoints(model, data_shape, posthoc)
    unknown = sorted(set(signatures) - set(available))
    if unknown:
        hint = (f"; pass posthoc= for {POSTHOC_SIGNATURE}" if POSTHOC_SIGNATURE in unknown
                else "")
        raise ValueError(f"{type(model).__name__} has no signatures {unknown}; it has "
                         f"{', '.join(available)}{hint}")
    ordered = sorted(signatures, key=lambda name: name != SERVING_DEFAULT)
    out = keras.export.ExportArchive()
    out.track(model)
    if posthoc is not None:
        out.track(posthoc)
    for name in ordered:
        fn, spec = endpoints[name]
        out.add_endpoint(name, fn, input_signature=spec)
    return out


def save_weights(model, path: str) -> str:
    """Writes `model`'s weights to `path` (a `.weights.h5` file, Keras' format)
    atomically; returns `path`. With the run's config.json beside it, that is
    the whole model: `tfp_vae.evaluate.evaluate_weights` rebuilds and scores it."""
    if not path.endswith(".weights.h5"):
        raise ValueError(f"a Keras weights file ends in .weights.h5; got {path}")
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.getpid()}.{os.path.basename(path)}")
    with files.writing("the weights", path):
        os.makedirs(directory, exist_ok=True)
        try:
            # A compiled model's save_weights also writes its optimizer's slots
            # (Adam's two per weight: 3x the file); the model is its weights alone.
            optimizer = getattr(model, "optimizer", None)
            if optimizer is None:
                model.save_weights(tmp)
            else:
                saving_lib.save_weights_only(model, tmp, objects_to_skip=[optimizer])
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


def export_saved_model(model, path: str, data_shape=None, posthoc=None) -> str:
    """Writes `model` as a SavedModel at `path` (atomically); returns `path`.

    data_shape: one example's shape; default: the shape the model was built with.
    posthoc: a fitted density layer of z (`tfp_vae.posthoc.MixtureLayer`): adds
    the POSTHOC_SIGNATURE signature, its parameters saved as variables.
    """
    exported = archive(model, data_shape, posthoc=posthoc)
    with files.atomic_directory(path) as tmp:
        exported.write_out(tmp, verbose=False)
    return path


def serve_as_version(saved_model: str, base: str, version: int) -> str:
    """Makes `base/<version>` name the SavedModel at `saved_model` (a relative
    symbolic link), the layout TF Serving loads with `--model_base_path=base`;
    other versions' links in `base` go. Returns the link's path."""
    os.makedirs(base, exist_ok=True)
    link = os.path.join(base, str(int(version)))
    target = os.path.relpath(os.path.abspath(saved_model), os.path.abspath(base))
    tmp = os.path.join(base, f".{int(version)}.link.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if name.isdigit() and name != str(int(version)) and os.path.islink(path):
            os.unlink(path)
    return link


def export_tflite(model, path: str, signatures=("decode", "encode"), data_shape=None) -> str:
    """Writes `signatures` of `model` as one TFLite model at `path` (atomically).

    Run it with `tf.lite.Interpreter(path).get_signature_runner("decode")(z=...)`.
    Only `TFLITE_SIGNATURES` convert: the others draw random numbers.
    """
    blocked = sorted(set(signatures) - set(TFLITE_SIGNATURES))
    if blocked:
        raise ValueError(f"signatures {blocked} cannot convert to TFLite (they draw random "
                         f"numbers with ops TFLite lacks); use some of "
                         f"{', '.join(TFLITE_SIGNATURES)}")
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        archive(model, data_shape, signatures).write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(
            signatures))
        flat = converter.convert()
    with files.atomic_write(path, "wb") as f:
        f.write(flat)
    return path


def built_data_shape(model) -> tuple:
    """One example's shape, as the model was built for it."""
    decoder_shape = getattr(model.decoder, "data_shape", None)
    if decoder_shape is not None:       # a VAE's decoder layer, or a TiedDecoder
        return tuple(decoder_shape)
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    if isinstance(shape, (tuple, list)) and shape and isinstance(shape[0], (tuple, list)):
        shape = shape[0]                # a conditional model's ((None, *data), (None,))
    if shape is None:
        raise ValueError("cannot tell the data shape: pass data_shape= to the export")
    return tuple(shape[1:])
