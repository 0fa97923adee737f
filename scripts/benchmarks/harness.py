"""The measurements of scripts/benchmark.py: interleaved throughputs, and the
probes that run in a fresh process of their own.
"""

import importlib
import time

import numpy as np
import tensorflow as tf

from benchmarks import IMPLEMENTATIONS, memory, ours
from benchmarks.standard import BATCH, heldout_arrays, training_arrays

def make(name, x, steps_per_execution=None):
    """Builds the implementation `name`, importing only its module."""
    if name == "tfp_vae":
        return ours.TfpVae(x, steps_per_execution)
    where, kwargs, _ = IMPLEMENTATIONS[name]
    module, cls = where.split(":")
    return getattr(importlib.import_module(f"benchmarks.{module}"), cls)(x, **kwargs)


# -- measuring -----------------------------------------------------------------------------


def iwae_batches(x, batch: int):
    return [tf.constant(x[i:i + batch]) for i in range(0, len(x), batch)]


def score_all(scorer, batches) -> float:
    """Runs the scorer over every batch; returns the mean bound (nats)."""
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


def measure(names, x, steps: int, warmup: int, repeats: int, iwae_k: int, peak,
            steps_per_execution=None) -> dict:
    """Interleaved throughputs: {name: {figure: median}}, plus error strings for
    failures; `peak()` (the matmul GFLOP/s) is measured at the start of each repeat."""
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
        impl = _attempt(name, results, lambda: make(name, x, steps_per_execution))
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


def memory_probe(name: str, iwae_k: int, steps_per_execution=None) -> dict:
    """In a fresh process: build, train one epoch, evaluate, score; peak RSS (MiB)."""
    x = training_arrays()
    impl = make(name, x, steps_per_execution)
    impl.train_epochs(1)
    impl.evaluate()
    score_all(impl.iwae_scorer(iwae_k), iwae_batches(heldout_arrays(200), 100))
    return {"peak_rss_mb": memory.peak_rss_mb()}


def iwae_probe(k: int, n: int, batch: int) -> dict:
    """In a fresh process: tfp_vae's k-sample IWAE bound on n held-out digits."""
    impl = ours.TfpVae(training_arrays()[:BATCH])
    scorer = impl.iwae_scorer(k, batch)
    batches = iwae_batches(heldout_arrays(n), batch)
    scorer(batches[0], tf.constant([0, 0], tf.int32)).numpy()     # compile outside the clock
    start = time.perf_counter()
    bound = score_all(scorer, batches)
    seconds = time.perf_counter() - start
    return {"k": k, "examples": n, "batch": batch, "mean_bound_nats": bound,
            "seconds": seconds, "samples_per_sec": n * k / seconds,
            "peak_rss_mb": memory.peak_rss_mb(),
            "model": "freshly initialised (throughput and memory do not depend on training)"}


def set_threads(intra: int, inter: int):
    """TensorFlow's thread pools, before its first op; 0 keeps TF's choice."""
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
