"""What a benchmark run concludes from its measurements: the ratios of tfp_vae's
throughputs to each reference's, to the fastest, and to the FLOP bound.

Pure arithmetic on the measured figures (no TensorFlow), so it is tested on
numbers made up for the test.
"""

import statistics

__all__ = ["ratios"]


def ratios(ours: dict, references: dict, bounds: list[float]) -> tuple[dict, dict]:
    """(ratios, train ratios by repeat) for tfp_vae's figures `ours` beside `references`.

    ours, references[name]: medians `train_examples_per_sec`,
      `eval_examples_per_sec`, `iwae_samples_per_sec` and the per-repeat list
      `train_examples_per_sec_all`; a reference also has `as_written` (as its
      tutorial writes it). A reference holding an `error` is left out.
    bounds: each repeat's FLOP bound, examples/s, in the repeats' order.

    The repeats are interleaved, so a pair of the same repeat saw the machine
    in the same state: `train_vs_flop_bound` is the median over repeats of
    that repeat's rate over that repeat's bound, and the by-repeat ratios pair
    tfp_vae's repeat r with the reference's repeat r.
    """
    ok = {k: v for k, v in references.items() if "error" not in v}
    out = {}
    for figure, prefix in (("train_examples_per_sec", "train_vs_"),
                           ("eval_examples_per_sec", "eval_vs_"),
                           ("iwae_samples_per_sec", "iwae_vs_")):
        out.update({prefix + k: ours[figure] / v[figure] for k, v in ok.items()})
    for key, keep in (("fastest_idiom", lambda v: v["as_written"]),
                      ("fastest_reference", lambda v: True)):
        rates = [v["train_examples_per_sec"] for v in ok.values() if keep(v)]
        if rates:
            out["train_vs_" + key] = ours["train_examples_per_sec"] / max(rates)
    mine = ours["train_examples_per_sec_all"]
    out["train_vs_flop_bound"] = statistics.median(r / b for r, b in zip(mine, bounds))
    out["train_vs_best_flop_bound"] = ours["train_examples_per_sec"] / max(bounds)
    by_repeat = {k: [round(a / b, 3) for a, b in zip(mine, v["train_examples_per_sec_all"])]
                 for k, v in ok.items()}
    return out, by_repeat
