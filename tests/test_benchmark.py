"""scripts/benchmark.py: its FLOP count against XLA's own, its ratios on made-up
figures, and (slow) one run end to end. Its speed is measured, never asserted."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from benchmarks import flops, ours, report, standard  # noqa: E402
from tfp_vae import evaluate  # noqa: E402

FIGURES = ("train_examples_per_sec", "eval_examples_per_sec", "iwae_samples_per_sec")


def _dot_flops(hlo: str) -> int:
    """2·m·n·k summed over the dot instructions of an HLO module's text."""
    total = 0
    for line in hlo.splitlines():
        match = re.search(r"= f32\[([\d,]+)\]\S* dot\(f32\[([\d,]+)\]", line)
        if not match:
            continue
        out = [int(d) for d in match.group(1).split(",")]
        lhs = [int(d) for d in match.group(2).split(",")]
        (contracting,) = re.search(r"lhs_contracting_dims=\{(\d+)\}", line).groups()
        total += 2 * math.prod(out) * lhs[int(contracting)]
    return total


def test_the_training_flop_count_is_what_xla_computes():
    # The matmuls in XLA's HLO of tfp_vae's training step, per example: the
    # forward pass, the weight gradients and every input gradient but the
    # data's. The benchmark's count comes from the layer sizes instead.
    x = standard.training_arrays()[:standard.BATCH]
    model = ours.TfpVae(x).model
    step = tf.function(model.train_step, jit_compile=True)
    hlo = step.experimental_get_compiler_ir(tf.constant((x > 0.5).astype("float32")))(
        stage="hlo")
    assert _dot_flops(hlo) == flops.model_flops()["train_flops_per_example"] * standard.BATCH


def _figures(train_all, as_written=True, xla=False):
    return {"train_examples_per_sec": float(np.median(train_all)),
            "train_examples_per_sec_all": train_all, "eval_examples_per_sec": 10.0,
            "iwae_samples_per_sec": 20.0, "as_written": as_written, "xla": xla}


def test_ratios_pair_repeats_and_pick_the_fastest_of_each_kind():
    ours_figures = _figures([300.0, 200.0, 600.0])                         # median 300
    references = {"slow_as_written": _figures([100.0, 100.0, 150.0]),       # median 100
                  "fast_with_xla": _figures([150.0, 250.0, 200.0], False),  # median 200
                  "broken": {"error": "ValueError: no"}}
    bounds = [1000.0, 400.0, 1200.0]
    ratios, by_repeat = report.ratios(ours_figures, references, bounds)
    assert ratios["train_vs_slow_as_written"] == pytest.approx(3.0)
    assert ratios["train_vs_fast_with_xla"] == pytest.approx(1.5)
    # Only references as their tutorials write them are idioms; the fastest
    # reference of all may be one switched to XLA.
    assert ratios["train_vs_fastest_idiom"] == pytest.approx(3.0)
    assert ratios["train_vs_fastest_reference"] == pytest.approx(1.5)
    assert ratios["eval_vs_fast_with_xla"] == ratios["iwae_vs_fast_with_xla"] == 1.0
    assert not any("broken" in k for k in ratios) and "broken" not in by_repeat
    assert by_repeat["fast_with_xla"] == [2.0, 0.8, 3.0]
    # Per repeat 0.3, 0.5, 0.5: median 0.5. Against the best bound: 300/1200.
    assert ratios["train_vs_flop_bound"] == pytest.approx(0.5)
    assert ratios["train_vs_best_flop_bound"] == pytest.approx(0.25)


@pytest.mark.slow
def test_a_run_end_to_end_writes_every_figure(tmp_path):
    # --nomemory: the per-implementation memory probes run the way the
    # bounded-memory IWAE probe below does (benchmarks.memory.run_probes).
    output = tmp_path / "benchmark.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--steps=1",
         "--warmup_steps=1", "--repeats=2", "--idioms=tf_tutorial", "--throughput_iwae_k=4",
         "--iwae_k=7", "--iwae_examples=30", "--iwae_batch=20", "--nomemory",
         f"--output={output}"],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert json.loads(output.read_text()) == result     # --output holds what was printed
    for figure in FIGURES:
        for figures in (result["tfp_vae"], result["references"]["tf_tutorial"]):
            assert math.isfinite(figures[figure]) and figures[figure] > 0, figure
    assert len(result["matmul_peak_gflops_all"]) == 2
    assert len(result["tfp_vae"]["train_examples_per_sec_all"]) == 2
    assert result["references"]["tf_tutorial"]["as_written"] is True
    assert set(result["ratios"]) >= {"train_vs_tf_tutorial", "train_vs_flop_bound",
                                     "train_vs_fastest_idiom"}
    probe = result["iwae_bounded_memory"]
    assert (probe["k"], probe["examples"]) == (7, 30) and probe["peak_rss_mb"] > 0
    # A log-likelihood bound of binarised digits from an untrained model:
    # about -545 nats (784 pixels at ln 2 each, less what the biases learn).
    assert -2000 < probe["mean_bound_nats"] < 0


def test_tfp_vae_scores_as_evaluate_scores_and_gets_the_compiled_numbers():
    # The benchmark's IWAE figure is the scoring users get: evaluate's, which
    # on a CPU at k = 100 x 100 examples runs the decoder's matmuls on
    # TensorFlow's kernels between XLA parts. It must score what the whole
    # bound compiled by XLA scores, on the same draws.
    impl = ours.TfpVae(standard.training_arrays()[:standard.BATCH])
    assert evaluate._scores_in_parts(impl.model, 100, 100, 100)
    x = tf.constant(standard.heldout_arrays(100))
    seed = tf.constant([0, 3], tf.int32)
    scored = impl.iwae_scorer(100)(x, seed).numpy()
    compiled = tf.function(lambda x, s: impl.model.iwae_bound(x, 100, seed=s),
                           jit_compile=True)(x, seed).numpy()
    np.testing.assert_allclose(scored, compiled, rtol=1e-5)
