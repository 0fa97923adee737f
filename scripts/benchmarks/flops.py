"""FLOPs of the standard model, counted from its layer sizes, and the machine's matmul peak.

A Dense n->m costs 2nm per example forward, and its backward pass 2nm for the
weights' gradient and 2nm for its input's, except the first layer's, whose
input is the data: a training step is 3x the forward less 2*784*512 (the
usual "3x forward" would add that matmul, which XLA never computes, and
flatter the ratio). The FLOP bound is the measured float32 matmul peak
divided by the training FLOPs per example.
"""

import time

import tensorflow as tf

from benchmarks.standard import HIDDEN, LATENT, PIXELS


def dense_flops(sizes) -> int:
    """Forward matmul FLOPs per example of a Dense stack with widths `sizes` (2nm each)."""
    return sum(2 * n * m for n, m in zip(sizes[:-1], sizes[1:]))


def model_flops() -> dict:
    """FLOPs per example of the standard model, from its layer sizes."""
    encoder = dense_flops((PIXELS,) + HIDDEN + (2 * LATENT,))     # 784-512-512-64 (loc, scale)
    decoder = dense_flops((LATENT,) + HIDDEN[::-1] + (PIXELS,))   # 32-512-512-784 (logits)
    forward = encoder + decoder
    return {"forward_flops_per_example": forward,
            # forward, weight gradients, input gradients but the data's
            "train_flops_per_example": 3 * forward - dense_flops((PIXELS, HIDDEN[0])),
            "iwae_flops_per_sample": decoder}             # one decode per importance sample


def matmul_peak():
    """A function measuring the best float32 matmul rate (GFLOP/s) over a few
    square sizes, compiled with XLA (compiled here, so each call only times)."""
    cases = []
    for n in (512, 1024, 2048):
        a = tf.random.normal([n, n])
        b = tf.random.normal([n, n])
        mm = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=True)
        mm(a, b).numpy()
        cases.append((n, a, b, mm, max(2, int(2e9 // (2 * n ** 3)) * 4)))

    def measure_peak(repeats: int = 1) -> float:
        best = 0.0
        for n, a, b, mm, calls in cases:
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(calls):
                    out = mm(a, b)
                out.numpy()
                best = max(best, 2 * n ** 3 * calls / (time.perf_counter() - start) / 1e9)
        return best

    return measure_peak
