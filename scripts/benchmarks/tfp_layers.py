"""TFP's "Probabilistic Layers VAE" example on tf_keras (Keras 2), with the standard MLP.

IndependentNormal + KLDivergenceRegularizer, IndependentBernoulli, loss =
-log_prob. The KL regulariser is collected twice by the nested models, so
its weight is set to undo that (recorded as `kl_copies`). `xla=True`
compiles with XLA, which the example does not do.
"""

import math

import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras as tfk

from benchmarks.standard import BATCH, DATA_SHAPE, HIDDEN, LATENT, LR


class TfpLayers:
    """TFP's probabilistic-layers VAE example (tf_keras, Keras 2), with the MLP."""

    name = "tfp_layers"

    def __init__(self, x, xla: bool = False):

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
