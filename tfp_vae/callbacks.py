"""The Keras callbacks Keras does not have: stop on a signal, and a progress bar
that counts the steps that ran. A non-finite loss is Keras' own
`keras.callbacks.TerminateOnNaN`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

import keras

__all__ = ["StepProgbar", "StopOnSignal", "catch_signals"]


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


class StepProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, counting the steps that ran.

    With `steps_per_execution` > 1 Keras reports the index of the last step an
    execution could have run, so an epoch's last, partial execution (or an
    epoch shorter than one execution) overshot the bar: "32/4", a negative
    ETA. Here a training bar counts the optimizer's steps since the epoch
    began; an evaluation bar stops at its known number of steps.

    verbose: as `fit`'s (1 a bar, 2 a line per epoch). epochs: the number the
    header "Epoch e/E" shows (default: `fit`'s `epochs`).
    """

    def __init__(self, verbose: int = 1, epochs: int | None = None):
        super().__init__()
        self._verbosity, self._epochs = verbose, epochs
        self._first_step = None

    def set_params(self, params):
        super().set_params({**params, "verbose": self._verbosity})
        if self._epochs is not None:
            self.epochs = self._epochs

    def _steps_taken(self) -> int | None:
        optimizer = getattr(self.model, "optimizer", None)
        return None if optimizer is None else int(optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self._first_step = self._steps_taken()
        super().on_epoch_begin(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if self.target is not None:
            batch = min(batch, self.target - 1)
        elif self._first_step is not None:      # a stream of unknown length
            batch = self._steps_taken() - self._first_step - 1
        self._update_progbar(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        if self.target is not None:
            batch = min(batch, self.target - 1)
        super().on_test_batch_end(batch, logs)
