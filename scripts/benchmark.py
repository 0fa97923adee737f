"""Speed and memory of tfp_vae beside plain implementations of the same VAE.

    python scripts/benchmark.py --output=benchmark.json
    python scripts/benchmark.py --idioms=tf_tutorial --steps=100 --repeats=3
    python scripts/benchmark.py --iwae_k=5000 --iwae_examples=1000   # bounded-memory IWAE
    python scripts/benchmark.py --scaling           # memory and speed against the data's size

The standard model: MLP 784-512-512, latent 32, Bernoulli decoder, batch 128,
Adam(1e-3), on the 4,000 `mnist_5k` training digits. Measured after warm-up,
in one process and interleaved (repeat r times: each implementation in turn),
so a load from other jobs falls on all of them alike and the ratios hold:

  train_examples_per_sec   training examples per second, in whole epochs
  eval_examples_per_sec    examples per second of the ELBO on those digits
  iwae_samples_per_sec     (examples x importance samples) per second
  peak_rss_mb              peak resident memory of a fresh process that only
                           builds, trains, evaluates and scores that one model

tfp_vae is measured on its own training path (benchmarks/ours.py). The
references are written the way their tutorials write them (one module each in
benchmarks/, deliberately not sharing code with tfp_vae or each other), fed
statically binarised arrays:

  keras_io         keras.io "Variational AutoEncoder": Sampling layer, z_mean /
                   z_log_var, custom train_step, fit on arrays; compiled as the
                   example compiles it: Keras 3's jit_compile="auto", which is
                   no XLA on a machine without accelerators
  tf_tutorial      tensorflow.org "Convolutional VAE" tutorial's loop (with this
                   MLP): a tf.function step, Monte-Carlo KL
  tfp_layers       TFP's "Probabilistic Layers VAE" example on tf_keras
                   (Keras 2): IndependentNormal + KLDivergenceRegularizer,
                   IndependentBernoulli, loss = -log_prob; its KL regulariser
                   is collected twice by the nested models, so the weight is
                   set to undo that (recorded as `kl_copies`)
  keras_io_xla     the same three, with XLA switched on (jit_compile=True),
  tf_tutorial_xla  which their tutorials do not do on a CPU: the strongest
  tfp_layers_xla   form of each idiom

Each reference records `xla` (whether its training step is compiled by XLA)
and `as_written` (false for the *_xla variants). `train_vs_fastest_idiom`
compares with the fastest reference as written, `train_vs_fastest_reference`
with the fastest of all; `train_ratios_by_repeat` holds, per reference, the
ratio within each repeat (the repeats are interleaved, so each pair shares the
machine's state of that moment).

FLOPs are counted from the layer sizes (benchmarks/flops.py). A shared VM's speed drifts (here by up to a third between minutes), so the
peak is measured again at the start of every repeat and `train_vs_flop_bound`
is the median over repeats of that repeat's training rate over that repeat's
bound; `train_vs_best_flop_bound` divides the median rate by the bound of the
best peak seen in the run instead.

With --scaling, the benchmark measures instead how memory and speed grow with
the data set (benchmarks/scaling.py): peak RSS and training examples/s of the
standard model trained from a TFRecord stream of N 28x28 images (written to a
temporary directory), decoded once into a temporary file as a run does and
decoded every epoch as with --nodisk_cache, and from the same number of
images held in memory.

Output: JSON on stdout (and in --output).
"""

import json
import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from benchmarks import IMPLEMENTATIONS  # noqa: E402
from tfp_vae import cli  # noqa: E402

IDIOMS = tuple(IMPLEMENTATIONS)

_STEPS = flags.DEFINE_integer("steps", 256, "Training steps per timed repeat (rounded up to "
                              "whole epochs of 32 steps).")
_WARMUP = flags.DEFINE_integer("warmup_steps", 64, "Untimed training steps first (compiles).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
_IDIOMS = flags.DEFINE_list("idioms", list(IDIOMS), f"References to measure: {IDIOMS}.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the JSON here.")
_EVAL_K = flags.DEFINE_integer("throughput_iwae_k", 100,
                               "Importance samples per example in the IWAE throughput run.")
_IWAE_K = flags.DEFINE_integer("iwae_k", 0, "With > 0: also score --iwae_examples held-out "
                               "digits with k importance samples in a fresh process and report "
                               "its peak memory and throughput.")
_IWAE_EXAMPLES = flags.DEFINE_integer("iwae_examples", 1000, "Held-out digits for --iwae_k.")
_IWAE_BATCH = flags.DEFINE_integer("iwae_batch", 100, "Examples per call in IWAE scoring.")
_MEMORY = flags.DEFINE_bool("memory", True, "Measure each implementation's peak RSS in a "
                            "fresh process.")
_INTRA = flags.DEFINE_integer("intra_op_threads", 0, "tf.config intra-op threads (0: TF's).")
_INTER = flags.DEFINE_integer("inter_op_threads", 0, "tf.config inter-op threads (0: TF's).")
_SPE = flags.DEFINE_integer("steps_per_execution", None,
                            "Override tfp_vae's steps_per_execution (default: the Config's).")
_SCALING = flags.DEFINE_bool("scaling", False, "Measure the scaling table instead: peak RSS "
                             "and training speed against the data set's size.")
_SCALING_SIZES = flags.DEFINE_list("scaling_sizes", ["10000", "100000", "1000000"],
                                   "--scaling: images in each TFRecord stream.")
_SCALING_MEMORY = flags.DEFINE_list("scaling_memory_sizes", ["10000", "100000"],
                                    "--scaling: images in each in-memory run.")
_SCALING_STEPS = flags.DEFINE_integer("scaling_steps", 512, "--scaling: timed training steps.")
_SCALING_DIR = flags.DEFINE_string("scaling_dir", None, "--scaling: where to write the "
                                   "TFRecords (default: a temporary directory, removed after).")
_PROBE = flags.DEFINE_string("probe", None, "Internal: run one measurement in this process "
                             "(memory:NAME, iwae, scaling:SOURCE:PATH:N or resume:PATH:N) and print its JSON.")

def probe_flags() -> list:
    """The flags a probe subprocess inherits."""
    return [f"--throughput_iwae_k={_EVAL_K.value}", f"--intra_op_threads={_INTRA.value}",
            f"--inter_op_threads={_INTER.value}"] + (
        [] if _SPE.value is None else [f"--steps_per_execution={_SPE.value}"])


def main(argv):
    del argv   # cli.run has refused positional arguments
    bad = sorted(set(_IDIOMS.value) - set(IDIOMS))
    if bad:
        raise app.UsageError(f"unknown --idioms {bad}; known: {', '.join(IDIOMS)}")
    # TensorFlow loads here, once the flags have been checked: a bad flag fails at once.
    import tensorflow as tf
    from benchmarks import flops, harness, memory, report, scaling
    from benchmarks.standard import BATCH, heldout_arrays, training_arrays

    if _IWAE_K.value and not _PROBE.value:
        try:
            heldout_arrays(_IWAE_EXAMPLES.value)   # too many asked for: say so before measuring
        except ValueError as e:
            raise app.UsageError(str(e)) from None
    harness.set_threads(_INTRA.value, _INTER.value)
    if _PROBE.value:
        if _PROBE.value.startswith("scaling:"):
            source, rest = _PROBE.value.split(":", 2)[1:]
            path, n = rest.rsplit(":", 1)
            result = scaling.probe(source, path, int(n), _SCALING_STEPS.value, _WARMUP.value)
        elif _PROBE.value.startswith("resume:"):
            path, n = _PROBE.value.split(":", 1)[1].rsplit(":", 1)
            with tempfile.TemporaryDirectory() as temporary:
                result = scaling.resume_probe(path, int(n), BATCH, temporary)
        elif _PROBE.value == "iwae":
            result = harness.iwae_probe(_IWAE_K.value, _IWAE_EXAMPLES.value, _IWAE_BATCH.value)
        else:
            result = harness.memory_probe(_PROBE.value.split(":", 1)[1], _EVAL_K.value,
                                          _SPE.value)
        print(json.dumps(result))
        return 0

    if _SCALING.value:
        with tempfile.TemporaryDirectory() as temporary:
            result = scaling.measure(
                __file__, [int(n) for n in _SCALING_SIZES.value], _SCALING_STEPS.value,
                _WARMUP.value, _SCALING_DIR.value or temporary,
                [int(n) for n in _SCALING_MEMORY.value], probe_flags() + [
                    f"--scaling_steps={_SCALING_STEPS.value}",
                    f"--warmup_steps={_WARMUP.value}"])
        return _emit(result, result["table"])

    model_flops = flops.model_flops()
    peak = flops.matmul_peak()
    load_before = os.getloadavg()
    names = ["tfp_vae"] + list(dict.fromkeys(_IDIOMS.value))
    measured = harness.measure(names, training_arrays(), _STEPS.value, _WARMUP.value,
                               _REPEATS.value, _EVAL_K.value, peak, _SPE.value)
    protocol = measured.pop("_protocol")
    peaks = measured.pop("_matmul_peaks")
    bounds = [p * 1e9 / model_flops["train_flops_per_example"] for p in peaks]
    if _MEMORY.value:      # all at once: each reports its own process's peak only
        probed = [name for name in names if "error" not in measured[name]]
        for name, peak_rss in zip(probed, memory.run_probes(
                __file__, [probe_flags() + [f"--probe=memory:{name}"] for name in probed])):
            measured[name].update(peak_rss)
    ours = measured.pop("tfp_vae")
    result = {
        "tfp_vae": ours,
        "references": measured,
        "matmul_peak_gflops": statistics.median(peaks),
        "matmul_peak_gflops_all": [round(p, 1) for p in peaks],
        **model_flops,
        "flop_bound_examples_per_sec": statistics.median(bounds),
        "protocol": {**protocol, "batch_size": BATCH, "model": "MLP 784-512-512, latent 32, "
                     "Bernoulli, Adam 1e-3", "data": "mnist_5k train (4,000 digits)"},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg(), "tensorflow": tf.__version__,
                    "intra_op_threads": _INTRA.value, "inter_op_threads": _INTER.value},
    }
    result["ratios"], result["train_ratios_by_repeat"] = report.ratios(ours, measured, bounds)
    if _IWAE_K.value:      # alone: it reports its throughput too
        result["iwae_bounded_memory"], = memory.run_probes(__file__, [probe_flags() + [
            "--probe=iwae", f"--iwae_k={_IWAE_K.value}",
            f"--iwae_examples={_IWAE_EXAMPLES.value}", f"--iwae_batch={_IWAE_BATCH.value}"]])
    return _emit(result)


def _emit(result: dict, table: str | None = None) -> int:
    """Prints the JSON (and writes it to --output), then the ratios (and a
    table) on stderr."""
    text = json.dumps(result, indent=2, sort_keys=True)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            f.write(text + "\n")
    print(text)
    for key, value in sorted(result["ratios"].items()):
        print(f"# {key}: {value:.2f}x", file=sys.stderr)
    if table:
        print(table, file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
