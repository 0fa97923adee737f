"""scripts/benchmark.py end to end on a handful of steps: its JSON, not its speed."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = ("train_examples_per_sec", "eval_examples_per_sec", "iwae_samples_per_sec",
           "peak_rss_mb")


def positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    output = tmp_path_factory.mktemp("benchmark") / "benchmark.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--steps=1",
         "--warmup_steps=1", "--repeats=1", "--idioms=tf_tutorial,tf_tutorial_xla", "--throughput_iwae_k=4",
         "--iwae_k=7", "--iwae_examples=30", "--iwae_batch=20", f"--output={output}"],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    assert json.loads(output.read_text()) == printed     # --output holds what was printed
    return printed


def test_json_has_every_figure_as_a_positive_finite_number(report):
    for figure in FIGURES:
        assert positive_finite(report["tfp_vae"][figure]), figure
        assert positive_finite(report["references"]["tf_tutorial"][figure]), figure
    for key in ("flop_bound_examples_per_sec", "matmul_peak_gflops",
                "train_flops_per_example", "forward_flops_per_example"):
        assert positive_finite(report[key]), key
    assert set(report["ratios"]) >= {"train_vs_tf_tutorial", "eval_vs_tf_tutorial",
                                     "iwae_vs_tf_tutorial", "train_vs_flop_bound"}
    assert all(positive_finite(v) for v in report["ratios"].values())


def test_references_as_written_and_with_xla_are_told_apart(report):
    refs, ratios = report["references"], report["ratios"]
    # The tutorial writes a plain tf.function step; the _xla variant adds jit_compile.
    assert (refs["tf_tutorial"]["as_written"], refs["tf_tutorial"]["xla"]) == (True, False)
    assert (refs["tf_tutorial_xla"]["as_written"], refs["tf_tutorial_xla"]["xla"]) == (False, True)
    # Only the as-written tutorial counts as an idiom; the fastest of all is
    # whichever of the two trained faster.
    assert ratios["train_vs_fastest_idiom"] == ratios["train_vs_tf_tutorial"]
    assert ratios["train_vs_fastest_reference"] == min(ratios["train_vs_tf_tutorial"],
                                                        ratios["train_vs_tf_tutorial_xla"])
    ours = report["tfp_vae"]["train_examples_per_sec_all"]
    for name in ("tf_tutorial", "tf_tutorial_xla"):
        theirs = refs[name]["train_examples_per_sec_all"]
        assert report["train_ratios_by_repeat"][name] == pytest.approx(
            [a / b for a, b in zip(ours, theirs)], rel=1e-3)


def test_flops_are_counted_from_the_layer_sizes(report):
    # Encoder 784-512-512-64, decoder 32-512-512-784: 2nm FLOPs per Dense n->m.
    forward = 2 * (784 * 512 + 512 * 512 + 512 * 64) + 2 * (32 * 512 + 512 * 512 + 512 * 784)
    assert report["forward_flops_per_example"] == forward
    # Backward: weight and input gradients, but none for the data x.
    train = 3 * forward - 2 * 784 * 512
    assert report["train_flops_per_example"] == train
    assert report["flop_bound_examples_per_sec"] == pytest.approx(
        report["matmul_peak_gflops"] * 1e9 / train)


def test_flop_bound_is_measured_with_every_repeat(report):
    peaks = report["matmul_peak_gflops_all"]
    rates = report["tfp_vae"]["train_examples_per_sec_all"]
    assert len(peaks) == len(rates) == report["protocol"]["repeats"]
    ratios = report["ratios"]
    # Against the best peak of the run the ratio can only be lower than paired.
    assert ratios["train_vs_best_flop_bound"] <= ratios["train_vs_flop_bound"] * (1 + 1e-3)


def test_bounded_memory_iwae_probe_reports_its_run(report):
    probe = report["iwae_bounded_memory"]
    assert probe["k"] == 7 and probe["examples"] == 30
    assert positive_finite(probe["samples_per_sec"]) and positive_finite(probe["peak_rss_mb"])
    # A log-likelihood bound of binarised digits: negative, hundreds of nats at most.
    assert -2000 < probe["mean_bound_nats"] < 0
