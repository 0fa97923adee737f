"""keras.io's "Variational AutoEncoder" (Keras 3), with the standard MLP.

As the example writes it: a Sampling layer, z_mean / z_log_var, a custom
train_step, `fit` on arrays, compiled with Keras 3's default
jit_compile="auto" (no XLA on a machine without accelerators); `xla=True`
switches XLA on, which the example does not do.
"""

import math

import keras
import tensorflow as tf
from keras import layers, ops

from benchmarks.standard import BATCH, DATA_SHAPE, HIDDEN, LATENT, LR, PIXELS


class KerasIo:
    """keras.io/examples/generative/vae (Keras 3), with the standard MLP."""

    name = "keras_io"

    def __init__(self, x, xla=None):

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
