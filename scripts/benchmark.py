"""Speed and memory of tfp_vae beside plain implementations of the same VAE.

    python scripts/benchmark.py --output=benchmark.json
    python scripts/benchmark.py --idioms=tf_tutorial --steps=100 --repeats=3
    python scripts/benchmark.py --iwae_k=5000 --iwae_examples=1000   # bounded-memory IWAE

The standard model: MLP 784-512-512, latent 32, Bernoulli decoder, batch 128,
Adam(1e-3), on the 4,000 `mnist_5k` training digits. Measured after warm-up,
in one process and interleaved (repeat r times: each implementation in turn),
so a load from other jobs falls on all of them alike and the ratios hold:

  train_examples_per_sec   training examples per second, in whole epochs
  eval_examples_per_sec    examples per second of the ELBO on those digits
  iwae_samples_per_sec     (examples x importance samples) per second
  peak_rss_mb              peak resident memory of a fresh process that only
                           builds, trains, evaluates and scores that one model

tfp_vae is measured on its own training path: `train.train_dataset` (each
epoch a fresh pass, shuffled and dynamically binarised at once by one compiled
function) and one `fit` per epoch, compiled as `train.compile_model` compiles
it: 32 steps per XLA program (`models.FusedSteps`). The references are written the
way their tutorials write them (each in one class below, deliberately not
sharing code with tfp_vae or each other), fed statically binarised arrays:

  keras_io         keras.io "Variational AutoEncoder": Sampling layer, z_mean /
                   z_log_var, custom train_step, fit on arrays; compiled as the
                   example compiles it: Keras 3's jit_compile="auto", which is
                   no XLA on a machine without accelerators
  tf_tutorial      tensorflow.org "Convolutional VAE" tutorial's loop (with this
                   MLP): a tf.function step, Monte-Carlo KL
  tfp_layers       TFP's "Probabilistic Layers VAE" example on tf_keras
                   (Keras 2): IndependentNormal + KLDivergenceRegularizer,
                   IndependentBernoulli, loss = -log_prob; its KL regulariser
                   is collected twice by the nested models, so the weight is
                   set to undo that (recorded as `kl_copies`)
  keras_io_xla     the same three, with XLA switched on (jit_compile=True),
  tf_tutorial_xla  which their tutorials do not do on a CPU: the strongest
  tfp_layers_xla   form of each idiom

Each reference records `xla` (whether its training step is compiled by XLA)
and `as_written` (false for the *_xla variants). `train_vs_fastest_idiom`
compares with the fastest reference as written, `train_vs_fastest_reference`
with the fastest of all; `train_ratios_by_repeat` holds, per reference, the
ratio within each repeat (the repeats are interleaved, so each pair shares the
machine's state of that moment).

FLOPs are counted from the layer sizes: a Dense n->m costs 2nm per example
forward, and its backward pass 2nm for the weights' gradient and 2nm for its
input's, except the first layer's, whose input is the data: a training step
is 3x the forward less 2*784*512 (the usual "3x forward" would add that
matmul, which XLA never computes, and flatter the ratio). The FLOP bound is
the measured float32 matmul peak divided by the training FLOPs per example.
A shared VM's speed drifts (here by up to a third between minutes), so the
peak is measured again at the start of every repeat and `train_vs_flop_bound`
is the median over repeats of that repeat's training rate over that repeat's
bound; `train_vs_best_flop_bound` divides the median rate by the bound of the
best peak seen in the run instead.

Output: JSON on stdout (and in --output).
"""

import json
import math
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from tfp_vae import cli  # noqa: E402

IDIOMS = ("keras_io", "tf_tutorial", "tfp_layers", "keras_io_xla", "tf_tutorial_xla",
          "tfp_layers_xla")

_STEPS = flags.DEFINE_integer("steps", 256, "Training steps per timed repeat (rounded up to "
                              "whole epochs of 32 steps).")
_WARMUP = flags.DEFINE_integer("warmup_steps", 64, "Untimed training steps first (compiles).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
_IDIOMS = flags.DEFINE_list("idioms", list(IDIOMS), f"References to measure: {IDIOMS}.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the JSON here.")
_EVAL_K = flags.DEFINE_integer("throughput_iwae_k", 100,
                               "Importance samples per example in the IWAE throughput run.")
_IWAE_K = flags.DEFINE_integer("iwae_k", 0, "With > 0: also score --iwae_examples held-out "
                               "digits with k importance samples in a fresh process and report "
                               "its peak memory and throughput.")
_IWAE_EXAMPLES = flags.DEFINE_integer("iwae_examples", 1000, "Held-out digits for --iwae_k.")
_IWAE_BATCH = flags.DEFINE_integer("iwae_batch", 100, "Examples per call in IWAE scoring.")
_MEMORY = flags.DEFINE_bool("memory", True, "Measure each implementation's peak RSS in a "
                            "fresh process.")
_INTRA = flags.DEFINE_integer("intra_op_threads", 0, "tf.config intra-op threads (0: TF's).")
_INTER = flags.DEFINE_integer("inter_op_threads", 0, "tf.config inter-op threads (0: TF's).")
_SPE = flags.DEFINE_integer("steps_per_execution", None,
                            "Override tfp_vae's steps_per_execution (default: the Config's).")
_PROBE = flags.DEFINE_string("probe", None, "Internal: run one measurement in this process "
                             "(memory:NAME or iwae) and print its JSON.")

BATCH, LATENT, HIDDEN, LR = 128, 32, (512, 512), 1e-3
DATA_SHAPE = (28, 28, 1)
PIXELS = 784
MB = 1024.0 * 1024.0


# -- FLOPs and the matmul peak -----------------------------------------------------------


def dense_flops(sizes) -> int:
    """Forward matmul FLOPs per example of a Dense stack with widths `sizes` (2nm each)."""
    return sum(2 * n * m for n, m in zip(sizes[:-1], sizes[1:]))


def model_flops() -> dict:
    """FLOPs per example of the standard model, from its layer sizes."""
    encoder = dense_flops((PIXELS,) + HIDDEN + (2 * LATENT,))     # 784-512-512-64 (loc, scale)
    decoder = dense_flops((LATENT,) + HIDDEN[::-1] + (PIXELS,))   # 32-512-512-784 (logits)
    forward = encoder + decoder
    return {"forward_flops_per_example": forward,
            # forward, weight gradients, input gradients but the data's
            "train_flops_per_example": 3 * forward - dense_flops((PIXELS, HIDDEN[0])),
            "iwae_flops_per_sample": decoder}             # one decode per importance sample


def matmul_peak(tf):
    """A function measuring the best float32 matmul rate (GFLOP/s) over a few
    square sizes, compiled with XLA (compiled here, so each call only times)."""
    cases = []
    for n in (512, 1024, 2048):
        a = tf.random.normal([n, n])
        b = tf.random.normal([n, n])
        mm = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=True)
        mm(a, b).numpy()
        cases.append((n, a, b, mm, max(2, int(2e9 // (2 * n ** 3)) * 4)))

    def measure_peak(repeats: int = 1) -> float:
        best = 0.0
        for n, a, b, mm, calls in cases:
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(calls):
                    out = mm(a, b)
                out.numpy()
                best = max(best, 2 * n ** 3 * calls / (time.perf_counter() - start) / 1e9)
        return best

    return measure_peak


# -- memory --------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec; getrusage's
    ru_maxrss would carry over the parent's peak into a probe subprocess.
    Elsewhere ru_maxrss (KiB, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024.0


def run_probe(argv_extra) -> dict:
    """Runs this script in a fresh process with --probe and returns its JSON."""
    cmd = [sys.executable, os.path.abspath(__file__)] + argv_extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- data ----------------------------------------------------------------------------------


def training_arrays():
    """The 4,000 `mnist_5k` training digits, float32 [N, 28, 28, 1] in [0, 1]."""
    from tfp_vae import data
    return data.load_arrays("mnist_5k", "train")[0]


def heldout_arrays(n: int):
    """Up to n held-out digits: mnist_5k's test then validation split, [n, 28, 28, 1] binarised."""
    import numpy as np
    from tfp_vae import data
    x = np.concatenate([data.load_arrays("mnist_5k", s)[0] for s in ("test", "validation")])
    if n > len(x):
        raise app.UsageError(f"--iwae_examples must be <= {len(x)} (mnist_5k held-out digits)")
    return (x[:n] > 0.5).astype("float32")


# -- tfp_vae: the project's own path ---------------------------------------------------------


class TfpVae:
    """tfp_vae trained as train.train_and_evaluate trains it."""

    name = "tfp_vae"

    def __init__(self, x, steps_per_execution=None):
        import keras
        from tfp_vae import factory, train
        from tfp_vae.config import Config

        changes = {} if steps_per_execution is None else {
            "steps_per_execution": steps_per_execution}
        self.config = Config(latent_dim=LATENT, hidden_units=HIDDEN, batch_size=BATCH,
                             learning_rate=LR, **changes)
        self.train = train
        self.x = x
        keras.utils.set_random_seed(self.config.seed)
        self.model = factory.build_vae(self.config, x.shape[1:])
        train.compile_model(self.model, self.config)
        self.epoch = 0
        self.eval_ds = train.eval_dataset(self.config, x)

    def train_epochs(self, epochs: int) -> int:
        for _ in range(epochs):
            ds = self.train.train_dataset(self.config, self.x, self.epoch)
            self.model.fit(ds, initial_epoch=self.epoch, epochs=self.epoch + 1, verbose=0,
                           shuffle=False)
            self.epoch += 1
        return epochs * len(self.x)

    def evaluate(self) -> int:
        self.model.evaluate(self.eval_ds, verbose=0)
        return len(self.x)

    def iwae_scorer(self, k: int):
        import tensorflow as tf
        model = self.model
        return tf.function(lambda x, seed: model.iwae_bound(x, k, seed=seed), jit_compile=True)


# -- references: each written the way its tutorial writes it ----------------------------------


class KerasIo:
    """keras.io/examples/generative/vae (Keras 3), with the standard MLP."""

    name = "keras_io"

    def __init__(self, x, xla=None):
        import keras
        import tensorflow as tf
        from keras import layers, ops

        keras.utils.set_random_seed(0)

        class Sampling(layers.Layer):
            """Uses (z_mean, z_log_var) to sample z, the vector encoding a digit."""

            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.seed_generator = keras.random.SeedGenerator(1337)

            def call(self, inputs):
                z_mean, z_log_var = inputs
                epsilon = keras.random.normal(shape=ops.shape(z_mean), seed=self.seed_generator)
                return z_mean + ops.exp(0.5 * z_log_var) * epsilon

        encoder_inputs = keras.Input(shape=DATA_SHAPE)
        h = layers.Flatten()(encoder_inputs)
        for units in HIDDEN:
            h = layers.Dense(units, activation="relu")(h)
        z_mean = layers.Dense(LATENT, name="z_mean")(h)
        z_log_var = layers.Dense(LATENT, name="z_log_var")(h)
        z = Sampling()([z_mean, z_log_var])
        encoder = keras.Model(encoder_inputs, [z_mean, z_log_var, z], name="encoder")

        latent_inputs = keras.Input(shape=(LATENT,))
        h = latent_inputs
        for units in HIDDEN:
            h = layers.Dense(units, activation="relu")(h)
        h = layers.Dense(PIXELS, activation="sigmoid")(h)
        decoder_outputs = layers.Reshape(DATA_SHAPE)(h)
        decoder = keras.Model(latent_inputs, decoder_outputs, name="decoder")

        class VAE(keras.Model):
            def __init__(self, encoder, decoder, **kwargs):
                super().__init__(**kwargs)
                self.encoder = encoder
                self.decoder = decoder
                self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
                self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
                self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

            @property
            def metrics(self):
                return [self.total_loss_tracker, self.reconstruction_loss_tracker,
                        self.kl_loss_tracker]

            def losses_of(self, data):
                z_mean, z_log_var, z = self.encoder(data)
                reconstruction = self.decoder(z)
                reconstruction_loss = ops.mean(ops.sum(
                    keras.losses.binary_crossentropy(data, reconstruction), axis=(1, 2)))
                kl_loss = -0.5 * (1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
                kl_loss = ops.mean(ops.sum(kl_loss, axis=1))
                return reconstruction_loss + kl_loss, reconstruction_loss, kl_loss

            def train_step(self, data):
                with tf.GradientTape() as tape:
                    total_loss, reconstruction_loss, kl_loss = self.losses_of(data)
                grads = tape.gradient(total_loss, self.trainable_weights)
                self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
                self.total_loss_tracker.update_state(total_loss)
                self.reconstruction_loss_tracker.update_state(reconstruction_loss)
                self.kl_loss_tracker.update_state(kl_loss)
                return {m.name: m.result() for m in self.metrics}

            def test_step(self, data):
                total_loss, reconstruction_loss, kl_loss = self.losses_of(data)
                self.total_loss_tracker.update_state(total_loss)
                return {"total_loss": self.total_loss_tracker.result()}

        self.x = (x > 0.5).astype("float32")
        self.encoder, self.decoder = encoder, decoder
        self.vae = VAE(encoder, decoder)
        if xla is None:     # as the example writes it
            self.vae.compile(optimizer=keras.optimizers.Adam(LR))
        else:
            self.vae.compile(optimizer=keras.optimizers.Adam(LR), jit_compile=xla)
        self.xla = bool(self.vae.jit_compile)      # "auto" as Keras resolved it

    def train_epochs(self, epochs: int) -> int:
        self.vae.fit(self.x, epochs=epochs, batch_size=BATCH, verbose=0)
        return epochs * len(self.x)

    def evaluate(self) -> int:
        self.vae.evaluate(self.x, batch_size=BATCH, verbose=0)
        return len(self.x)

    def iwae_scorer(self, k: int):
        # The example has no likelihood estimate; the obvious one in its terms:
        # tile x k times, decode, ln w = ln p(x|z) + ln p(z) - ln q(z|x).
        import keras
        import tensorflow as tf
        from keras import ops
        encoder, decoder = self.encoder, self.decoder

        def log_normal(z, mean, log_var):
            return -0.5 * ops.sum(ops.log(2 * math.pi) + log_var
                                  + ops.square(z - mean) / ops.exp(log_var), axis=-1)

        def score(x, seed):
            z_mean, z_log_var, _ = encoder(x)
            eps = tf.random.stateless_normal(tf.concat([[k], tf.shape(z_mean)], 0), seed=seed)
            z = z_mean + ops.exp(0.5 * z_log_var) * eps                      # [k, B, K]
            probs = decoder(ops.reshape(z, (-1, LATENT)))
            x_k = tf.reshape(tf.broadcast_to(x, tf.concat([[k], tf.shape(x)], 0)),
                             (-1,) + DATA_SHAPE)
            log_px = -ops.sum(keras.losses.binary_crossentropy(x_k, probs), axis=(1, 2))
            log_px = ops.reshape(log_px, (k, -1))
            log_w = log_px + log_normal(z, 0.0, 0.0) - log_normal(z, z_mean, z_log_var)
            return ops.logsumexp(log_w, axis=0) - math.log(k)

        return tf.function(score, jit_compile=self.xla)


class TfTutorial:
    """tensorflow.org/tutorials/generative/cvae's model and loop, with the MLP."""

    name = "tf_tutorial"

    def __init__(self, x, xla: bool = False):
        import tensorflow as tf

        tf.random.set_seed(0)

        class CVAE(tf.keras.Model):
            def __init__(self, latent_dim):
                super().__init__()
                self.latent_dim = latent_dim
                self.encoder = tf.keras.Sequential(
                    [tf.keras.layers.InputLayer(shape=DATA_SHAPE), tf.keras.layers.Flatten()]
                    + [tf.keras.layers.Dense(u, activation="relu") for u in HIDDEN]
                    + [tf.keras.layers.Dense(latent_dim + latent_dim)])
                self.decoder = tf.keras.Sequential(
                    [tf.keras.layers.InputLayer(shape=(latent_dim,))]
                    + [tf.keras.layers.Dense(u, activation="relu") for u in HIDDEN]
                    + [tf.keras.layers.Dense(PIXELS), tf.keras.layers.Reshape(DATA_SHAPE)])

            def encode(self, x):
                mean, logvar = tf.split(self.encoder(x), num_or_size_splits=2, axis=1)
                return mean, logvar

            def reparameterize(self, mean, logvar):
                eps = tf.random.normal(shape=tf.shape(mean))
                return eps * tf.exp(logvar * .5) + mean

            def decode(self, z):
                return self.decoder(z)

        def log_normal_pdf(sample, mean, logvar, raxis=1):
            log2pi = tf.math.log(2. * math.pi)
            return tf.reduce_sum(-.5 * ((sample - mean) ** 2. * tf.exp(-logvar) + logvar + log2pi),
                                 axis=raxis)

        def compute_loss(model, x):
            mean, logvar = model.encode(x)
            z = model.reparameterize(mean, logvar)
            x_logit = model.decode(z)
            cross_ent = tf.nn.sigmoid_cross_entropy_with_logits(logits=x_logit, labels=x)
            logpx_z = -tf.reduce_sum(cross_ent, axis=[1, 2, 3])
            logpz = log_normal_pdf(z, 0., 0.)
            logqz_x = log_normal_pdf(z, mean, logvar)
            return -tf.reduce_mean(logpx_z + logpz - logqz_x)

        model = CVAE(LATENT)
        optimizer = tf.keras.optimizers.Adam(LR)

        @tf.function(jit_compile=xla)
        def train_step(model, x, optimizer):
            with tf.GradientTape() as tape:
                loss = compute_loss(model, x)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))

        @tf.function(jit_compile=xla)
        def eval_step(model, x):
            return compute_loss(model, x)

        def score(x, seed, k):
            mean, logvar = model.encode(x)
            eps = tf.random.stateless_normal(tf.concat([[k], tf.shape(mean)], 0), seed=seed)
            z = eps * tf.exp(logvar * .5) + mean                                # [k, B, K]
            x_logit = model.decode(tf.reshape(z, [-1, LATENT]))
            x_k = tf.reshape(tf.broadcast_to(x, tf.concat([[k], tf.shape(x)], 0)),
                             tf.shape(x_logit))
            cross_ent = tf.nn.sigmoid_cross_entropy_with_logits(logits=x_logit, labels=x_k)
            logpx_z = tf.reshape(-tf.reduce_sum(cross_ent, axis=[1, 2, 3]), [k, -1])
            log_w = logpx_z + log_normal_pdf(z, 0., 0., 2) - log_normal_pdf(z, mean, logvar, 2)
            return tf.reduce_logsumexp(log_w, axis=0) - math.log(k)

        self.xla = xla
        self.x = (x > 0.5).astype("float32")
        self.model, self.optimizer = model, optimizer
        self.train_step, self.eval_step, self.score = train_step, eval_step, score
        self.train_dataset = (tf.data.Dataset.from_tensor_slices(self.x)
                              .shuffle(len(self.x)).batch(BATCH))

    def train_epochs(self, epochs: int) -> int:
        for _ in range(epochs):
            for train_x in self.train_dataset:
                self.train_step(self.model, train_x, self.optimizer)
        return epochs * len(self.x)

    def evaluate(self) -> int:
        import tensorflow as tf
        loss = tf.keras.metrics.Mean()
        for test_x in self.train_dataset:
            loss(self.eval_step(self.model, test_x))
        float(loss.result())
        return len(self.x)

    def iwae_scorer(self, k: int):
        import tensorflow as tf
        return tf.function(lambda x, seed: self.score(x, seed, k), jit_compile=self.xla)


class TfpLayers:
    """TFP's probabilistic-layers VAE example (tf_keras, Keras 2), with the MLP."""

    name = "tfp_layers"

    def __init__(self, x, xla: bool = False):
        import tensorflow as tf
        import tensorflow_probability as tfp
        import tf_keras as tfk

        tfpl, tfd = tfp.layers, tfp.distributions
        tf.random.set_seed(0)
        prior = tfd.Independent(tfd.Normal(loc=tf.zeros(LATENT), scale=1.),
                                reinterpreted_batch_ndims=1)

        def build(kl_weight):
            encoder = tfk.Sequential(
                [tfk.layers.InputLayer(input_shape=DATA_SHAPE), tfk.layers.Flatten()]
                + [tfk.layers.Dense(u, activation="relu") for u in HIDDEN]
                + [tfk.layers.Dense(tfpl.IndependentNormal.params_size(LATENT)),
                   tfpl.IndependentNormal(LATENT, activity_regularizer=
                                          tfpl.KLDivergenceRegularizer(prior, weight=kl_weight))])
            decoder = tfk.Sequential(
                [tfk.layers.InputLayer(input_shape=[LATENT])]
                + [tfk.layers.Dense(u, activation="relu") for u in HIDDEN]
                + [tfk.layers.Dense(tfpl.IndependentBernoulli.params_size(DATA_SHAPE)),
                   tfpl.IndependentBernoulli(DATA_SHAPE, tfd.Bernoulli.logits)])
            vae = tfk.Model(inputs=encoder.inputs, outputs=decoder(encoder.outputs[0]))
            return encoder, decoder, vae

        # The regulariser is collected once by the encoder and again by the
        # outer model: weight 1/copies makes the loss the negative ELBO.
        encoder, decoder, vae = build(1.0)
        self.kl_copies = len(vae.losses)
        if self.kl_copies != 1:
            encoder, decoder, vae = build(1.0 / self.kl_copies)
        vae.compile(optimizer=tfk.optimizers.Adam(learning_rate=LR),
                    loss=lambda x, rv_x: -rv_x.log_prob(x), jit_compile=xla)
        self.xla = xla
        self.x = (x > 0.5).astype("float32")
        self.encoder, self.decoder, self.vae, self.prior = encoder, decoder, vae, prior
        self.train_dataset = (tf.data.Dataset.from_tensor_slices((self.x, self.x))
                              .shuffle(len(self.x)).batch(BATCH).prefetch(tf.data.AUTOTUNE))

    def train_epochs(self, epochs: int) -> int:
        self.vae.fit(self.train_dataset, epochs=epochs, verbose=0)
        return epochs * len(self.x)

    def evaluate(self) -> int:
        self.vae.evaluate(self.train_dataset, verbose=0)
        return len(self.x)

    def iwae_scorer(self, k: int):
        import tensorflow as tf
        encoder, decoder, prior = self.encoder, self.decoder, self.prior

        def score(x, seed):
            q = encoder(x)
            z = q.sample(k, seed=seed)                                          # [k, B, K]
            p = decoder(tf.reshape(z, [-1, LATENT]))
            x_k = tf.reshape(tf.broadcast_to(x, tf.concat([[k], tf.shape(x)], 0)),
                             tf.concat([[-1], DATA_SHAPE], 0))
            log_w = (tf.reshape(p.log_prob(x_k), [k, -1]) + prior.log_prob(z) - q.log_prob(z))
            return tf.reduce_logsumexp(log_w, axis=0) - math.log(k)

        return tf.function(score, jit_compile=self.xla)


# name: (class, keyword arguments, written as its tutorial writes it)
IMPLEMENTATIONS = {"keras_io": (KerasIo, {}, True),
                   "tf_tutorial": (TfTutorial, {"xla": False}, True),
                   "tfp_layers": (TfpLayers, {"xla": False}, True),
                   "keras_io_xla": (KerasIo, {"xla": True}, False),
                   "tf_tutorial_xla": (TfTutorial, {"xla": True}, False),
                   "tfp_layers_xla": (TfpLayers, {"xla": True}, False)}


def make(name, x):
    if name == "tfp_vae":
        return TfpVae(x, _SPE.value)
    cls, kwargs, _ = IMPLEMENTATIONS[name]
    return cls(x, **kwargs)


# -- measuring -----------------------------------------------------------------------------


def iwae_batches(x, batch: int):
    import tensorflow as tf
    return [tf.constant(x[i:i + batch]) for i in range(0, len(x), batch)]


def score_all(scorer, batches) -> float:
    """Runs the scorer over every batch; returns the mean bound (nats)."""
    import numpy as np
    import tensorflow as tf
    out = [scorer(b, tf.constant([0, i], tf.int32)).numpy() for i, b in enumerate(batches)]
    return float(np.mean(np.concatenate(out)))


def _attempt(name: str, results: dict, fn):
    """fn()'s value; a reference that fails here is recorded in `results`, not fatal."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        if name == "tfp_vae":
            raise
        results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        return None


def measure(names, x, steps: int, warmup: int, repeats: int, iwae_k: int, peak) -> dict:
    """Interleaved throughputs: {name: {figure: median}}, plus error strings for
    failures; `peak()` (the matmul GFLOP/s) is measured at the start of each repeat."""
    import numpy as np
    steps_per_epoch = -(-len(x) // BATCH)
    epochs = max(1, -(-steps // steps_per_epoch))
    warm_epochs = max(1, -(-warmup // steps_per_epoch))
    iwae_x = iwae_batches(heldout_arrays(min(500, 10 * BATCH)), 100)
    impls, results, times = {}, {}, {}
    # Build every implementation before warming any up: their constructors set
    # TF's global seed, which drops the compiled functions of those built
    # earlier, and the recompile would land in the first timed repeat.
    built = {}
    for name in names:
        impl = _attempt(name, results, lambda: make(name, x))
        if impl is not None:
            built[name] = impl
    for name, impl in built.items():
        def warm_up():
            impl.train_epochs(warm_epochs)
            impl.evaluate()
            impl.evaluate()
            scorer = impl.iwae_scorer(iwae_k)
            score_all(scorer, iwae_x)
            return scorer

        scorer = _attempt(name, results, warm_up)
        if scorer is not None:
            impls[name] = (impl, scorer)
            times[name] = {"train": [], "eval": [], "iwae": []}
    peaks = []
    for _ in range(repeats):
        peaks.append(peak())
        for name, (impl, scorer) in impls.items():
            start = time.perf_counter()
            n = impl.train_epochs(epochs)
            times[name]["train"].append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            n = impl.evaluate()
            times[name]["eval"].append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            score_all(scorer, iwae_x)
            n = sum(int(b.shape[0]) for b in iwae_x) * iwae_k
            times[name]["iwae"].append(n / (time.perf_counter() - start))
    for name, t in times.items():
        impl = impls[name][0]
        results[name] = {
            "train_examples_per_sec": float(np.median(t["train"])),
            "eval_examples_per_sec": float(np.median(t["eval"])),
            "iwae_samples_per_sec": float(np.median(t["iwae"])),
            "train_examples_per_sec_all": [round(v, 1) for v in t["train"]],
        }
        if name != "tfp_vae":
            results[name]["xla"] = impl.xla
            results[name]["as_written"] = IMPLEMENTATIONS[name][2]
        if hasattr(impl, "kl_copies"):
            results[name]["kl_copies"] = impl.kl_copies
    results["_protocol"] = {"epochs_per_repeat": epochs, "steps_per_repeat": epochs *
                            steps_per_epoch, "warmup_epochs": warm_epochs, "repeats": repeats,
                            "throughput_iwae_k": iwae_k,
                            "iwae_examples": sum(int(b.shape[0]) for b in iwae_x)}
    results["_matmul_peaks"] = peaks
    return results


def memory_probe(name: str) -> dict:
    """In a fresh process: build, train one epoch, evaluate, score; peak RSS (MiB)."""
    x = training_arrays()
    impl = make(name, x)
    impl.train_epochs(1)
    impl.evaluate()
    score_all(impl.iwae_scorer(_EVAL_K.value), iwae_batches(heldout_arrays(200), 100))
    return {"peak_rss_mb": peak_rss_mb()}


def iwae_probe(k: int, n: int, batch: int) -> dict:
    """In a fresh process: tfp_vae's k-sample IWAE bound on n held-out digits."""
    import tensorflow as tf
    impl = TfpVae(training_arrays()[:BATCH])
    scorer = impl.iwae_scorer(k)
    batches = iwae_batches(heldout_arrays(n), batch)
    scorer(batches[0], tf.constant([0, 0], tf.int32)).numpy()     # compile outside the clock
    start = time.perf_counter()
    bound = score_all(scorer, batches)
    seconds = time.perf_counter() - start
    return {"k": k, "examples": n, "batch": batch, "mean_bound_nats": bound,
            "seconds": seconds, "samples_per_sec": n * k / seconds, "peak_rss_mb": peak_rss_mb(),
            "model": "freshly initialised (throughput and memory do not depend on training)"}


def set_threads():
    import tensorflow as tf
    if _INTRA.value:
        tf.config.threading.set_intra_op_parallelism_threads(_INTRA.value)
    if _INTER.value:
        tf.config.threading.set_inter_op_parallelism_threads(_INTER.value)


def probe_flags() -> list:
    """The flags a probe subprocess inherits."""
    return [f"--throughput_iwae_k={_EVAL_K.value}", f"--intra_op_threads={_INTRA.value}",
            f"--inter_op_threads={_INTER.value}"] + (
        [] if _SPE.value is None else [f"--steps_per_execution={_SPE.value}"])


def main(argv):
    del argv   # cli.run has refused positional arguments
    bad = sorted(set(_IDIOMS.value) - set(IDIOMS))
    if bad:
        raise app.UsageError(f"unknown --idioms {bad}; known: {', '.join(IDIOMS)}")
    if _IWAE_K.value and not _PROBE.value:
        heldout_arrays(_IWAE_EXAMPLES.value)   # too many asked for: say so before measuring
    set_threads()
    if _PROBE.value:
        if _PROBE.value == "iwae":
            result = iwae_probe(_IWAE_K.value, _IWAE_EXAMPLES.value, _IWAE_BATCH.value)
        else:
            result = memory_probe(_PROBE.value.split(":", 1)[1])
        print(json.dumps(result))
        return 0

    import tensorflow as tf
    import numpy as np
    flops = model_flops()
    peak = matmul_peak(tf)
    load_before = os.getloadavg()
    names = ["tfp_vae"] + list(dict.fromkeys(_IDIOMS.value))
    measured = measure(names, training_arrays(), _STEPS.value, _WARMUP.value, _REPEATS.value,
                       _EVAL_K.value, peak)
    protocol = measured.pop("_protocol")
    peaks = measured.pop("_matmul_peaks")
    bounds = [p * 1e9 / flops["train_flops_per_example"] for p in peaks]
    if _MEMORY.value:
        for name in names:
            if "error" not in measured[name]:
                measured[name].update(run_probe(probe_flags() + [f"--probe=memory:{name}"]))
    ours = measured.pop("tfp_vae")
    result = {
        "tfp_vae": ours,
        "references": measured,
        "matmul_peak_gflops": float(np.median(peaks)),
        "matmul_peak_gflops_all": [round(p, 1) for p in peaks],
        **flops,
        "flop_bound_examples_per_sec": float(np.median(bounds)),
        "protocol": {**protocol, "batch_size": BATCH, "model": "MLP 784-512-512, latent 32, "
                     "Bernoulli, Adam 1e-3", "data": "mnist_5k train (4,000 digits)"},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg(), "tensorflow": tf.__version__,
                    "intra_op_threads": _INTRA.value, "inter_op_threads": _INTER.value},
    }
    ok = {k: v for k, v in measured.items() if "error" not in v}
    result["ratios"] = {"train_vs_" + k: ours["train_examples_per_sec"] /
                        v["train_examples_per_sec"] for k, v in ok.items()}
    result["ratios"].update({"eval_vs_" + k: ours["eval_examples_per_sec"] /
                             v["eval_examples_per_sec"] for k, v in ok.items()})
    result["ratios"].update({"iwae_vs_" + k: ours["iwae_samples_per_sec"] /
                             v["iwae_samples_per_sec"] for k, v in ok.items()})
    for key, keep in (("fastest_idiom", lambda v: v["as_written"]),
                      ("fastest_reference", lambda v: True)):
        rates = [v["train_examples_per_sec"] for v in ok.values() if keep(v)]
        if rates:
            result["ratios"]["train_vs_" + key] = ours["train_examples_per_sec"] / max(rates)
    result["train_ratios_by_repeat"] = {
        k: [round(a / b, 3) for a, b in zip(ours["train_examples_per_sec_all"],
                                            v["train_examples_per_sec_all"])]
        for k, v in ok.items()}
    # Each repeat's rate over the bound measured just before it; and, for
    # comparison, the median rate over the bound of the best peak seen.
    result["ratios"]["train_vs_flop_bound"] = float(np.median(
        [rate / bound for rate, bound in zip(ours["train_examples_per_sec_all"], bounds)]))
    result["ratios"]["train_vs_best_flop_bound"] = (
        ours["train_examples_per_sec"] / max(bounds))
    if _IWAE_K.value:
        result["iwae_bounded_memory"] = run_probe(probe_flags() + [
            "--probe=iwae", f"--iwae_k={_IWAE_K.value}",
            f"--iwae_examples={_IWAE_EXAMPLES.value}", f"--iwae_batch={_IWAE_BATCH.value}"])
    text = json.dumps(result, indent=2, sort_keys=True)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            f.write(text + "\n")
    print(text)
    for key, value in sorted(result["ratios"].items()):
        print(f"# {key}: {value:.2f}x", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
