"""Where and how a run computes: the tf.distribute strategy, the precision policy,
and the compiled model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re

import keras
import tensorflow as tf

from tfp_vae import workdir
from tfp_vae.config import Config
from tfp_vae.errors import WorkerLost

log = logging.getLogger("tfp_vae")

__all__ = ["accelerated", "compile_model", "is_chief", "make_strategy", "peers_watched",
           "precision_policy", "task_id", "use_xla"]


def make_strategy(config: Config) -> tf.distribute.Strategy:
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.strategy == "multi_worker":
        # A collective's own timeout catches a peer that hangs with its runtime
        # alive (TF starts a thread per collective for it: off by default).
        timeout = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=config.collective_timeout or None)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=timeout)
    if config.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's artifacts: the chief, or worker 0
    of a cluster without one, or the only process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return workdir.is_chief_task(resolver.task_type, resolver.task_id,
                                 resolver.cluster_spec().as_dict())


def task_id() -> int:
    """This process's task index in TF_CONFIG (0 without one)."""
    return int(json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0))


@contextlib.contextmanager
def precision_policy(name: str):
    """Builds under the dtype policy `name` ("float32", "mixed_float16",
    "mixed_bfloat16"): layers take the policy when they are created and keep
    it, so the global policy is restored afterwards rather than leaking into
    whatever the process builds next."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# XLA on a CPU compiles convolutions, and most of all their gradients, into code far
# slower than TensorFlow's own (oneDNN) kernels. Measured on a 2-core AVX2 VM: an
# epoch of --arch=resnet on 32x32x3 images (26 steps of 64) took 6.5 min under XLA
# and 19 s without; two epochs of --arch=conv on the digits, with the run's
# evaluation, 277 s against 66.
_XLA_SLOW_ARCHS = ("conv", "resnet")


def accelerated() -> bool:
    """Whether this machine has a GPU or TPU for TensorFlow."""
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def use_xla(config: Config, jit: bool | None = None) -> bool:
    """Whether a run of `config` compiles with XLA: `jit` (default `config.jit`),
    except for the convolutional archs on a machine without GPU or TPU, which
    run faster on TensorFlow's kernels (said once in the log)."""
    jit = config.jit if jit is None else bool(jit)
    if jit and config.arch in _XLA_SLOW_ARCHS and not accelerated():
        if not getattr(use_xla, "_said", False):
            log.warning("XLA off: arch=%s on a CPU runs several times faster on TensorFlow's "
                        "own convolution kernels", config.arch)
            use_xla._said = True
        return False
    return jit


def compile_model(model: keras.Model, config: Config) -> keras.optimizers.Optimizer:
    """Compiles `model` for `fit` as a run does; returns its optimizer, built.

    Under mixed_float16 Keras wraps Adam in a LossScaleOptimizer: the wrapper
    (with its dynamic loss scale) is what is returned, built and checkpointed,
    and its `iterations` are Adam's. Call it inside the strategy's scope.
    """
    jit, steps = use_xla(config), config.steps_per_execution
    # Keras' multi-step loop fails under tf.distribute (keras-team/keras#19246)
    # and XLA cannot compile replicas on CPUs (tensorflow/tensorflow#45940);
    # docs/performance.md has the errors.
    if tf.distribute.has_strategy() and steps > 1:
        log.warning("steps_per_execution=1 under tf.distribute (Keras 3.15 fails otherwise)")
        steps = 1
    if jit and _replicas_on_cpus(tf.distribute.get_strategy()):
        log.warning("XLA off: replicas on CPUs (TF 2.21 fails otherwise)")
        jit = False
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), jit_compile=jit,
                  steps_per_execution=steps)
    model.optimizer.build(model.trainable_variables)
    return model.optimizer


def _replicas_on_cpus(strategy: tf.distribute.Strategy) -> bool:
    """True for two or more replicas in sync whose devices here are all CPUs."""
    try:
        devices = strategy.extended.worker_devices
    except (AttributeError, RuntimeError, NotImplementedError):   # the default strategy
        return False
    return (strategy.num_replicas_in_sync > 1
            and all(":CPU:" in d.upper() for d in devices))


# What a collective raises when a peer is gone: UnavailableError once TF's
# heartbeats find a task dead or frozen (~10 s), DeadlineExceededError after
# --collective_timeout, and CancelledError / AbortedError in the ops that were
# waiting alongside.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.AbortedError)


@contextlib.contextmanager
def peers_watched(strategy: tf.distribute.Strategy, resume_from: str):
    """Under MultiWorkerMirroredStrategy, turns a collective's failure into one
    `WorkerLost` line: which peer (task and address), and how to resume (the
    chief's newest checkpoint in `resume_from`). Other strategies: no change."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        yield
        return
    try:
        yield
    except _PEER_ERRORS as e:
        me = (resolver.task_type, int(resolver.task_id))
        lost = [(job, int(task)) for job, task in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)",
                                                            str(e))
                if (job, int(task)) != me]
        peers = sorted(set(lost)) or [(job, i) for job, tasks in cluster.items()
                                      for i in range(len(tasks)) if (job, i) != me]
        named = ", ".join(f"{job} {i} ({cluster[job][i]})" for job, i in peers
                          if job in cluster and i < len(cluster[job]))
        why = ("did not answer within --collective_timeout"
               if isinstance(e, tf.errors.DeadlineExceededError) else "stopped or froze")
        latest = tf.train.latest_checkpoint(resume_from)
        since = f"{os.path.basename(latest)}" if latest else "the start (no checkpoint yet)"
        raise WorkerLost(f"{'peer' if len(peers) == 1 else 'peers'} {named or 'unknown'} "
                         f"{why}; restart every worker with the same command: they resume "
                         f"from the chief's {since}") from None
