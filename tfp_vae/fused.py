"""`FusedSteps`: a Keras model's `steps_per_execution` steps run as one XLA program.

A mix-in for any `keras.Model` with a `train_step`/`test_step` (every model
here has it; a user's model may too). Why and what it saves:
docs/performance.md.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["FusedSteps"]


class FusedSteps:
    """Mix-in for a `keras.Model`: `steps_per_execution` steps as one XLA program.

    Keras 3 runs `compile(jit_compile=True, steps_per_execution=n)` as a
    TensorFlow while loop that launches one XLA program per step, each launch
    a round trip through the executor. With this mix-in (and no tf.distribute strategy), `fit` and
    `evaluate` pull n batches from the iterator, stack them and run all n
    steps inside one compiled `tf.while_loop`. The steps are the same ones in
    the same order (the optimizer still takes one step per batch), so results
    match the per-step path up to floating-point round-off. A group that the
    stack cannot hold (the data run out, or a batch of another size, such
    as an epoch's short last one) runs step by step instead, still compiled.
    Anything else falls back to Keras' own loop.
    """

    def make_train_function(self, force=False):
        if not self._fuses_steps():
            return super().make_train_function(force)
        return self._fused("train_function", self.train_step, force)

    def make_test_function(self, force=False):
        if not self._fuses_steps():
            return super().make_test_function(force)
        return self._fused("test_function", self.test_step, force)

    def _fused(self, attribute: str, step_fn, force: bool):
        if getattr(self, attribute) is None or force:
            setattr(self, attribute, _fused_function(step_fn, self.steps_per_execution))
        return getattr(self, attribute)

    def _fuses_steps(self) -> bool:
        return (bool(self.jit_compile) and not self.run_eagerly
                and int(self.steps_per_execution) > 1 and not tf.distribute.has_strategy())


def _fused_function(step_fn, steps: int):
    """Keras' `train_function` protocol (iterator -> logs, StopIteration at
    the end of the data), running up to `steps` calls of `step_fn` at once.

    Of the `steps` batches pulled, the leading ones shaped like the first go
    into one compiled loop; any after them (an epoch's short last batch, say)
    run one compiled step each, in order.
    """

    @tf.function(jit_compile=True, reduce_retracing=True)
    def one_step(batch):
        return step_fn(batch)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def leading_steps(stacked, count):
        # Step 0 outside the loop gives the logs' structure to carry.
        logs = step_fn(tf.nest.map_structure(lambda t: t[0], stacked))

        def body(i, _):
            return i + 1, step_fn(tf.nest.map_structure(lambda t: t[i], stacked))

        return tf.while_loop(lambda i, _: i < count, body, (tf.constant(1), logs))[1]

    def function(iterator):
        # Pulled here, eagerly: a graph that pulled them would need a tf.cond
        # per batch, and tracing those cost seconds at every start.
        batches = []
        for _ in range(steps):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            batches.append(optional.get_value())
        if not batches:
            raise StopIteration
        shape = _shapes(batches[0])
        count = next((i for i, b in enumerate(batches) if _shapes(b) != shape), len(batches))
        if count == 1:
            logs = one_step(batches[0])
        else:
            # Padded to `steps` with zeros, so the loop compiles once for every count.
            zeros = tf.nest.map_structure(tf.zeros_like, batches[0])
            padded = batches[:count] + [zeros] * (steps - count)
            logs = leading_steps(tf.nest.map_structure(lambda *t: tf.stack(t), *padded),
                                 tf.constant(count))
        for batch in batches[count:]:
            logs = one_step(batch)
        return logs

    return function


def _shapes(batch) -> tuple:
    return tuple(tuple(t.shape) for t in tf.nest.flatten(batch))
