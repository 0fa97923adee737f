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
    TensorFlow while loop that launches one XLA program per step; each launch
    costs a round trip through the executor and leaves XLA no room across
    steps. With this mix-in (and no tf.distribute strategy), `fit` and
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
    into one compiled loop; any after them (the data ran out, or an epoch's
    short last batch) run one compiled step each, in order.
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

    def like(value, first) -> tf.Tensor:
        return tf.reduce_all([tf.reduce_all(tf.equal(tf.shape(t), tf.shape(f)))
                              for t, f in zip(tf.nest.flatten(value), tf.nest.flatten(first))])

    def run(optionals):
        """The steps, when the first optional holds a batch."""
        first = optionals[0].get_value()
        present = [o.has_value() for o in optionals]
        fits = [tf.constant(True)] + [
            tf.cond(p, lambda o=o: like(o.get_value(), first), lambda: False)
            for p, o in zip(present[1:], optionals[1:])]
        count = tf.reduce_sum(tf.math.cumprod(tf.cast(tf.stack(fits), tf.int32)))
        zeros = tf.nest.map_structure(tf.zeros_like, first)
        values = [first] + [tf.cond(f, lambda o=o: o.get_value(), lambda: zeros)
                            for f, o in zip(fits[1:], optionals[1:])]
        logs = leading_steps(tf.nest.map_structure(lambda *t: tf.stack(t), *values), count)
        for i in range(1, steps):
            logs = tf.cond(tf.logical_and(present[i], i >= count),
                           lambda o=optionals[i]: one_step(o.get_value()),
                           lambda logs=logs: logs)
        return logs

    @tf.function(reduce_retracing=True)
    def multi_step(iterator):
        optionals = [iterator.get_next_as_optional() for _ in range(steps)]
        spec = tf.nest.map_structure(
            tf.TensorSpec.from_tensor,
            one_step.get_concrete_function(iterator.element_spec).structured_outputs)
        return tf.cond(optionals[0].has_value(),
                       lambda: tf.experimental.Optional.from_value(run(optionals)),
                       lambda: tf.experimental.Optional.empty(spec))

    def function(iterator):
        outputs = multi_step(iterator)
        if not outputs.has_value():
            raise StopIteration
        return outputs.get_value()

    return function
