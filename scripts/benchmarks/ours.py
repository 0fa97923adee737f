"""tfp_vae on its own path: trained as `tfp_vae.train` trains it."""

import keras

from benchmarks.standard import BATCH, HIDDEN, LATENT, LR
from tfp_vae import evaluate, execution, factory, input_pipeline
from tfp_vae.config import Config


class TfpVae:
    """tfp_vae trained as train.train_and_evaluate trains it: each epoch a fresh pass
    (`input_pipeline.train_dataset`), one `fit` per epoch, compiled as
    `execution.compile_model` compiles it (32 steps per XLA program)."""

    name = "tfp_vae"

    def __init__(self, x, steps_per_execution=None):
        changes = {} if steps_per_execution is None else {
            "steps_per_execution": steps_per_execution}
        self.config = Config(latent_dim=LATENT, hidden_units=HIDDEN, batch_size=BATCH,
                             learning_rate=LR, **changes)
        self.x = x
        keras.utils.set_random_seed(self.config.seed)
        self.model = factory.build_vae(self.config, x.shape[1:])
        execution.compile_model(self.model, self.config)
        self.epoch = 0
        self.eval_ds = input_pipeline.eval_dataset(self.config, x)

    def train_epochs(self, epochs: int) -> int:
        for _ in range(epochs):
            ds = input_pipeline.train_dataset(self.config, self.x, self.epoch)
            self.model.fit(ds, initial_epoch=self.epoch, epochs=self.epoch + 1, verbose=0,
                           shuffle=False)
            self.epoch += 1
        return epochs * len(self.x)

    def evaluate(self) -> int:
        self.model.evaluate(self.eval_ds, verbose=0)
        return len(self.x)

    def iwae_scorer(self, k: int, batch_size: int = 100):
        # Scored as `evaluate.iwae_log_likelihood` scores (chunks of 100 samples).
        return evaluate.iwae_function(self.model, k, chunk_size=100, batch_size=batch_size)
