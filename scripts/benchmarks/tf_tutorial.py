"""tensorflow.org's "Convolutional VAE" tutorial's model and loop, with the standard MLP.

As the tutorial writes it: a `tf.function` train step, Monte-Carlo KL, no XLA;
`xla=True` compiles the steps with XLA, which the tutorial does not do.
"""

import math

import tensorflow as tf

from benchmarks.standard import BATCH, DATA_SHAPE, HIDDEN, LATENT, LR, PIXELS


class TfTutorial:
    """tensorflow.org/tutorials/generative/cvae's model and loop, with the MLP."""

    name = "tf_tutorial"

    def __init__(self, x, xla: bool = False):

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
        loss = tf.keras.metrics.Mean()
        for test_x in self.train_dataset:
            loss(self.eval_step(self.model, test_x))
        float(loss.result())
        return len(self.x)

    def iwae_scorer(self, k: int):
        return tf.function(lambda x, seed: self.score(x, seed, k), jit_compile=self.xla)
