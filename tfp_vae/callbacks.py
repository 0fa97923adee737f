"""The Keras callbacks of a run that Keras does not have: stop on a signal, and
a progress bar that counts the run's epochs.

A non-finite loss is Keras' own `keras.callbacks.TerminateOnNaN`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

import keras

__all__ = ["EpochProgress", "StopOnSignal", "catch_signals"]


class StopOnSignal(keras.callbacks.Callback):
    """Stops `fit` after the current step once SIGTERM or SIGINT has arrived
    (inside `catch_signals`); `signal` says which."""

    def __init__(self):
        super().__init__()
        self.signal = None

    def on_train_batch_end(self, batch, logs=None):
        if self.signal is not None:
            self.model.stop_training = True


@contextlib.contextmanager
def catch_signals(stop: StopOnSignal):
    """SIGTERM and SIGINT ask `stop` to stop; the handlers are restored on the way out.

    A second Ctrl-C stops at once (KeyboardInterrupt): the last checkpoint
    is kept, only the steps since it are lost.
    """
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.signal = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class EpochProgress(keras.callbacks.Callback):
    """`keras.utils.Progbar` for one epoch of a run, headed "Epoch e/E".

    A run calls `fit` once per epoch (each epoch's data is a fresh dataset),
    and Keras' own bar would head each of them "Epoch 1/1".
    """

    def __init__(self, epoch: int, epochs: int, steps: int, verbose: int):
        super().__init__()
        self.bar = keras.utils.Progbar(steps, verbose=verbose, stateful_metrics=(
            "loss", "elbo", "reconstruction", "kl"), unit_name="step")
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        # With steps_per_execution > 1 Keras reports the batch index in
        # strides; the last stride may overshoot the epoch's step count.
        self.bar.update(min(batch + 1, self.bar.target),
                        [(k, float(logs[k])) for k in ("loss", "kl") if k in logs])
