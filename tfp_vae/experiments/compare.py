"""PCA vs AE vs VAE on the same data at the same latent sizes: one measured report.

`run(config, workdir, ks)` fits PCA and trains (or loads, when the workdir
already holds them) an AE, optionally a tied-weight AE, and a VAE for every
latent size k, then measures on the test split:

  reconstruction  ‖x − x̂‖² per test image (x̂: PCA's projection, the AE's
                  output, the VAE's decoder mean at μ(x)); grey levels in [0, 1].
  prior KL        how far the aggregate codes are from N(0, I): KL(N(m, S) ‖
                  N(0, I)) = ½(tr S + mᵀm − K − ln det S) for the Gaussian
                  (m, S) fitted to the codes of the training images (for the
                  VAE, draws z ~ q(z|x), whose mixture is what meets the prior).
  holes           a classifier trained on real digits ("the judge") reads the
                  decoded images; its mean max-softmax confidence on codes drawn
                  from N(0, I), from the box [min, max] of the training codes,
                  and on midpoints between the codes of two test images of
                  different classes, beside its confidence on real test images.
                  Low confidence means the decoder produced something that is
                  no digit: the code fell in a hole. Judge-free beside it: the
                  squared distance from each decoded image to the nearest
                  training image.
  transfer        (optional) few-label classifiers on the AE's and the VAE's
                  encoders vs from scratch (`tfp_vae.transfer`).

It writes `report.md`, `metrics.json` and `figures/*.png` into the workdir,
and each model and latent size as a TensorBoard HParams session,
`tensorboard/<model>_k<k>/` (`write_tensorboard`).
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import factory, files, plots, summaries, workdir as workdir_lib
from tfp_vae.experiments import baselines, transfer
from tfp_vae.config import Config
from tfp_vae.errors import ConfigError
from tfp_vae.pca import PCA

tfd = tfp.distributions

MODELS = ("pca", "ae", "ae_tied", "vae")
HOLE_DRAWS = ("prior_draws", "box_draws", "midpoints")
TITLES = {"pca": "PCA", "ae": "AE", "ae_tied": "AE (tied)", "vae": "VAE"}


class Coder(NamedTuple):
    """One model seen as maps between images `[N, *data]` and codes `[N, K]` (numpy)."""

    codes: Callable          # x -> [N, K]: PCA codes, AE codes, VAE posterior means
    aggregate: Callable      # x -> [N, K]: draws of the aggregate code distribution
    decode: Callable         # z -> [N, *data] (PCA's may leave [0, 1])


def pca_coder(pca: PCA) -> Coder:
    # Unclipped, so its reconstruction error is PCA's own (pca.reconstruction_error).
    return Coder(pca.transform, pca.transform,
                 lambda z: pca.inverse_transform(z).astype(np.float32))


def model_coder(model, seed: int = 0, batch_size: int = 500) -> Coder:
    """An `Autoencoder` or a `VAE`: both answer encode(x) and decode(z) with distributions."""
    def batched(fn, a):
        return np.concatenate([np.asarray(fn(tf.constant(a[i:i + batch_size]), i))
                               for i in range(0, len(a), batch_size)])

    return Coder(
        codes=lambda x: batched(lambda b, i: model.encode(b).mean(), x),
        # For the AE the point mass's draw is the code itself.
        aggregate=lambda x: batched(lambda b, i: model.encode(b).sample(seed=(seed, i)), x),
        decode=lambda z: batched(lambda b, i: model.decode(b).mean(), z.astype(np.float32)))


def gaussian_kl_to_standard_normal(codes: np.ndarray) -> float:
    """KL(N(m, S) ‖ N(0, I)) in nats for the Gaussian fitted to codes `[N, K]`.

    m and S are the sample mean and covariance (a 1e-6 ridge keeps S
    invertible); the KL is TFP's closed form.
    """
    codes = np.asarray(codes, np.float64)
    k = codes.shape[1]
    cov = np.atleast_2d(np.cov(codes, rowvar=False)) + 1e-6 * np.eye(k)
    fitted = tfd.MultivariateNormalTriL(codes.mean(axis=0), np.linalg.cholesky(cov))
    standard = tfd.MultivariateNormalDiag(np.zeros(k))
    return float(tfd.kl_divergence(fitted, standard))


def confidence(judge, images: np.ndarray, batch_size: int = 500) -> float:
    """Mean over images `[N, *data]` (clipped to [0, 1]) of the judge's max softmax probability."""
    images = np.clip(images, 0.0, 1.0)
    probs = np.concatenate([tf.nn.softmax(judge(images[i:i + batch_size])).numpy()
                            for i in range(0, len(images), batch_size)])
    return float(np.mean(np.max(probs, axis=1)))


def nearest_distance(images: np.ndarray, reference: np.ndarray, batch_size: int = 500) -> float:
    """Mean over images `[N, *data]` (clipped to [0, 1]) of min_j ‖image − reference_j‖².

    A judge-free holes score: a decoded code that lies in a hole is far from
    every real digit (reference `[M, *data]`, the training images).
    """
    ref = tf.constant(reference.reshape(len(reference), -1), tf.float32)        # [M, D]
    ref_sq = tf.reduce_sum(tf.square(ref), axis=1)                              # [M]
    flat = np.clip(images, 0.0, 1.0).reshape(len(images), -1).astype(np.float32)
    out = []
    for i in range(0, len(flat), batch_size):
        b = tf.constant(flat[i:i + batch_size])                                 # [n, D]
        d2 = (tf.reduce_sum(tf.square(b), axis=1, keepdims=True) + ref_sq
              - 2.0 * tf.matmul(b, ref, transpose_b=True))                      # [n, M]
        out.append(tf.maximum(tf.reduce_min(d2, axis=1), 0.0).numpy())
    return float(np.mean(np.concatenate(out)))


def different_class_pairs(y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n index pairs (a, b), each `[n]`, with labels y[a] ≠ y[b]; fewer if classes are few."""
    rng = np.random.default_rng(seed)
    count = len(y)
    a, b = rng.integers(0, count, size=(2, 4 * n))
    keep = y[a] != y[b]
    return a[keep][:n], b[keep][:n]


def lerp(z_a: np.ndarray, z_b: np.ndarray, t) -> np.ndarray:
    """(1 − t) z_a + t z_b: codes `[..., K]` on the line between two codes."""
    return (1.0 - t) * z_a + t * z_b


def measure(coder: Coder, judge, x_train, x_test, y_test, *, n_draws: int = 1000,
            seed: int = 0) -> dict:
    """The comparison's numbers for one model (see the module docstring)."""
    rng = np.random.default_rng(seed)
    train_codes = coder.codes(x_train)                                  # [N, K]
    k = train_codes.shape[1]
    lo, hi = train_codes.min(axis=0), train_codes.max(axis=0)
    a, b = different_class_pairs(y_test, n_draws, seed)
    test_codes = coder.codes(x_test)
    recon = coder.decode(test_codes)
    decoded = {
        "prior_draws": coder.decode(rng.standard_normal((n_draws, k)).astype(np.float32)),
        "box_draws": coder.decode(rng.uniform(lo, hi, (n_draws, k)).astype(np.float32)),
        "midpoints": coder.decode(lerp(test_codes[a], test_codes[b], 0.5)),
    }
    out = {
        "reconstruction_squared_error": baselines.squared_error(x_test, recon),
        "prior_kl": gaussian_kl_to_standard_normal(coder.aggregate(x_train)),
        "confidence_reconstructions": confidence(judge, recon),
    }
    for what, images in decoded.items():
        out[f"confidence_{what}"] = confidence(judge, images)
        out[f"nearest_distance_{what}"] = nearest_distance(images, x_train)
    return out


def _train_judge(x_train, y_train, x_test, y_test, config: Config, steps: int):
    body = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(256, activation="relu")])
    judge = transfer.train_classifier(body, x_train, y_train, int(y_train.max()) + 1,
                                      steps=steps, seed=config.seed, jit=config.jit)
    return judge, transfer.accuracy(judge, x_test, y_test)


def _build(name: str, config: Config, data_shape):
    if name == "vae":
        return factory.build_vae(config.replace(model="vae"), data_shape)
    return factory.build_autoencoder(config, data_shape, tied=name == "ae_tied")


def run(config: Config, workdir: str, ks: Sequence[int] = (2, 8, 32), *,
        models: Sequence[str] = MODELS, transfer_k: int | None = None,
        n_per_class: Sequence[int] = (10, 100), transfer_seeds: Sequence[int] = (0, 1, 2),
        transfer_steps: int = 300, judge_steps: int = 1000, n_draws: int = 1000,
        command: str | None = None, verbose: int = 0) -> dict:
    """Trains or loads every model at every k, measures them, writes the report.

    Args:
      config: the shared settings (data, widths, epochs, optimiser, seed);
        `latent_dim` and `model` are set per run here.
      workdir: gets `config.json`, `models/*.keras`, `figures/*.png`,
        `metrics.json` and `report.md`; models already there are loaded.
      ks: latent sizes.
      models: a subset of MODELS; "pca" and "vae" are always compared.
      transfer_k: the latent size of the transfer experiment (None skips it).
      command: the command line to print in the report.

    Returns:
      the metrics written to metrics.json.
    """
    if config.conditional:
        raise ConfigError("compare sets unconditional models side by side; drop conditional")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"ks must be positive integers; got {ks}")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ConfigError(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    models = [m for m in MODELS if m in set(models) | {"pca", "vae"}]
    if transfer_k is not None and transfer_k not in ks:
        raise ConfigError(f"transfer_k={transfer_k} must be one of ks {ks}")

    splits = baselines.load_splits(config)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    if y_train is None or y_test is None:
        raise ConfigError(f"compare needs labels; data set {config.dataset!r} has none")
    if ks[-1] > min(x_train.shape[0], int(np.prod(x_train.shape[1:]))):
        raise ConfigError(f"k={ks[-1]} exceeds min(N, D) of the training data")
    workdir_lib.prepare(config, workdir)   # refuses another run's workdir
    log = (lambda msg: print(msg, flush=True)) if verbose else (lambda msg: None)
    data_shape = x_train.shape[1:]

    judge, judge_accuracy = _train_judge(x_train, y_train, x_test, y_test, config, judge_steps)
    log(f"judge: test accuracy {judge_accuracy:.3f}")
    results: dict = {m: {} for m in models}
    trained: dict = {}
    coders: dict = {}
    for k in ks:
        cfg = config.replace(latent_dim=k)
        for name in models:
            if name == "pca":
                pca = PCA(k).fit(x_train)
                coder = pca_coder(pca)
                history = {}
            else:
                model, history = baselines.load_or_train(
                    os.path.join(workdir, "models", f"{name}_k{k}.keras"),
                    lambda: _build(name, cfg, data_shape),
                    lambda m: baselines.fit(m, cfg, x_train, verbose=verbose),
                    seed=config.seed)
                trained[name, k] = model
                coder = model_coder(model, seed=config.seed)
            coders[name, k] = coder
            results[name][k] = measure(coder, judge, x_train, x_test, y_test,
                                       n_draws=n_draws, seed=config.seed)
            if history.get("loss"):
                results[name][k]["final_train_loss"] = history["loss"][-1]
            log(f"{TITLES[name]} k={k}: " + ", ".join(
                f"{key} {v:.3f}" for key, v in results[name][k].items()))

    transfer_results = None
    if transfer_k is not None:
        bodies = {TITLES[name]: transfer.encoder_body(trained[name, transfer_k])
                  for name in models if name != "pca"}
        transfer_results = transfer.transfer_vs_scratch(
            bodies, x_train, y_train, x_test, y_test, n_per_class=n_per_class,
            seeds=transfer_seeds, steps=transfer_steps, jit=config.jit, log=log)

    figure_paths = write_figures(coders, models, ks, x_test, y_test,
                                 os.path.join(workdir, "figures"), seed=config.seed)
    metrics = {
        "config": config.to_dict(), "ks": ks, "models": models,
        "judge_test_accuracy": judge_accuracy,
        "judge_confidence_real_test_images": confidence(judge, x_test),
        "nearest_distance_real_test_images": nearest_distance(x_test, x_train),
        "results": {m: {str(k): v for k, v in r.items()} for m, r in results.items()},
        "transfer": None if transfer_results is None else {
            "latent_dim": transfer_k, "steps": transfer_steps, "seeds": list(transfer_seeds),
            "results": {name: {str(n): r for n, r in by_n.items()}
                        for name, by_n in transfer_results.items()}},
        "figures": {k: os.path.relpath(v, workdir) for k, v in figure_paths.items()},
    }
    files.write_json(os.path.join(workdir, "metrics.json"), metrics)
    with files.atomic_write(os.path.join(workdir, "report.md")) as f:
        f.write(report_markdown(metrics, command))
    write_tensorboard(results, config, workdir)
    return metrics


def write_tensorboard(results: dict, config: Config, workdir: str) -> None:
    """Each model at each latent size as an HParams session of its own,
    `workdir/tensorboard/<model>_k<k>/`, as a training run writes its end
    (`summaries.write_session`): the config with that model and latent_dim,
    and the test measurements as test/* scalars. So `tensorboard --logdir
    runs/` lists them in one table with the training runs beside them.

    results: model -> k -> the measurements of `measure` (the final training
    loss is left out: it is no test number).
    """
    for name, by_k in results.items():
        for k, numbers in by_k.items():
            session = f"{name}_k{k}"
            # Written whole: a re-run's session replaces the last one's.
            with files.atomic_directory(os.path.join(workdir, "tensorboard", session)) as run:
                summaries.write_session(
                    run, {**summaries.hparams(config.replace(latent_dim=int(k))), "model": name},
                    {key: v for key, v in numbers.items() if key != "final_train_loss"},
                    step=0 if name == "pca" else config.epochs,
                    trial_id=os.path.join(os.path.normpath(workdir), session))


def write_figures(coders: dict, models: Sequence[str], ks: Sequence[int], x, y,
                  directory: str, seed: int = 0, n_samples: int = 12) -> dict[str, str]:
    """Embeddings, reconstructions, decoded random codes and interpolations; name -> path."""
    path = lambda name: os.path.join(directory, f"{name}.png")           # noqa: E731
    rng = np.random.default_rng(seed)
    out = {}
    k0 = ks[0]
    embeddings = {}
    for name in models:
        codes = coders[name, k0].codes(x)
        embeddings[TITLES[name]] = codes if k0 <= 2 else PCA(2).fit(codes).transform(codes)
    out["embeddings"] = plots.side_by_side_scatter(
        embeddings, y, path("embeddings"),
        title=f"Test images in the {k0}-D code space" + ("" if k0 <= 2 else
                                                         " (top two principal axes)"))
    originals = x[:10]
    rows, labels = [originals], ["test"]
    for k in ks:
        for name in models:
            coder = coders[name, k]
            rows.append(coder.decode(coder.codes(originals)))
            labels.append(f"{TITLES[name]} k={k}")
    out["reconstructions"] = plots.rows_by_class(
        np.concatenate(rows), len(originals), path("reconstructions"), row_labels=labels,
        title="Test images and their reconstructions")
    a, b = different_class_pairs(y, 1, seed)
    t = np.linspace(0.0, 1.0, 10, dtype=np.float32)[:, None]
    for k in ks:
        rows, labels = [], []
        for name in models:
            coder = coders[name, k]
            codes = coder.codes(x)
            lo, hi = codes.min(axis=0), codes.max(axis=0)
            draws = {"N(0, I)": rng.standard_normal((n_samples, k)),
                     "box": rng.uniform(lo, hi, (n_samples, k))}
            for what, z in draws.items():
                rows.append(coder.decode(z.astype(np.float32)))
                labels.append(f"{TITLES[name]}, z ~ {what}")
        out[f"random_codes_k{k}"] = plots.rows_by_class(
            np.concatenate(rows), n_samples, path(f"random_codes_k{k}"), row_labels=labels,
            title=f"Decoded random codes, k = {k} (box: uniform in the training codes' range)")
        rows = [coders[name, k].decode(lerp(coders[name, k].codes(x[a]),
                                            coders[name, k].codes(x[b]), t))
                for name in models]
        out[f"interpolation_k{k}"] = plots.rows_by_class(
            np.concatenate(rows), len(t), path(f"interpolation_k{k}"),
            row_labels=[TITLES[name] for name in models],
            title=f"Decoding the line between two test images' codes, k = {k}")
    return out


def report_markdown(metrics: dict, command: str | None = None) -> str:
    """The report: tables of metrics.json and links to the figures."""
    models, ks, res = metrics["models"], metrics["ks"], metrics["results"]
    cfg = metrics["config"]
    head = lambda cols: ("| " + " | ".join(cols) + " |\n|"      # noqa: E731
                         + "---|" * len(cols) + "\n")
    lines = ["# PCA vs AE vs VAE\n\n",
             f"Data: `{cfg['dataset']}`" + (f" (first {cfg['limit']} per split)"
                                           if cfg["limit"] else "")
             + f", binarize={cfg['binarize']}; MLP {cfg['hidden_units']}, "
               f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, seed {cfg['seed']}; "
               f"AE/VAE likelihood: {cfg['decoder']}.\n"]
    if command:
        lines.append(f"\n```\n{command}\n```\n")
    lines.append("\n## Test reconstruction error ‖x − x̂‖² (per image, grey levels)\n\n")
    lines.append(head(["k"] + [TITLES[m] for m in models]))
    for k in ks:
        lines.append(f"| {k} | " + " | ".join(
            f"{res[m][str(k)]['reconstruction_squared_error']:.2f}" for m in models) + " |\n")
    lines.append(
        "\n## Aggregate codes vs the prior, and holes\n\n"
        "prior KL: KL(N(m, S) ‖ N(0, I)), nats, for the Gaussian fitted to the training "
        "codes (VAE: z ~ q(z|x)). Confidence: the judge's mean max-softmax probability on "
        "decoded codes — drawn from N(0, I), uniform in the box of the training codes, or "
        "midpoints between two test images of different classes. "
        f"The judge (an MLP on real digits) has test accuracy "
        f"{metrics['judge_test_accuracy']:.3f} and confidence "
        f"{metrics['judge_confidence_real_test_images']:.3f} on real test images.\n\n")
    lines.append(
        "Nearest distance: mean over decoded images of the squared distance to the nearest "
        "training image (real test images: "
        f"{metrics['nearest_distance_real_test_images']:.1f}); a code in a hole decodes far "
        "from every digit.\n\n")
    lines.append(head(["model", "k", "prior KL", "conf. recon.", "conf. N(0, I)", "conf. box",
                       "conf. midpoints", "dist. N(0, I)", "dist. box", "dist. midpoints"]))
    for k in ks:
        for m in models:
            r = res[m][str(k)]
            lines.append(f"| {TITLES[m]} | {k} | {r['prior_kl']:.1f} | "
                         f"{r['confidence_reconstructions']:.3f} | " + " | ".join(
                             f"{r['confidence_' + w]:.3f}" for w in HOLE_DRAWS) + " | "
                         + " | ".join(f"{r['nearest_distance_' + w]:.1f}" for w in HOLE_DRAWS)
                         + " |\n")
    tr = metrics.get("transfer")
    if tr:
        lines.append(
            f"\n## Transfer: few labels, k = {tr['latent_dim']}\n\n"
            f"Test accuracy, mean ± std over seeds {tr['seeds']}; {tr['steps']} Adam steps "
            "each. scratch: the encoder's architecture freshly initialised; fine-tune: "
            "initialised from the trained encoder; frozen: trained encoder fixed, softmax "
            "layer only.\n\n")
        lines.append(head(["encoder", "labels per class"] + list(transfer.MODES)))
        for name, by_n in tr["results"].items():
            for n, modes in by_n.items():
                lines.append(f"| {name} | {n} | " + " | ".join(
                    f"{modes[m]['mean']:.3f} ± {modes[m]['std']:.3f}" for m in transfer.MODES)
                    + " |\n")
    lines.append("\n## Figures\n\n")
    for name, rel in metrics["figures"].items():
        lines.append(f"![{name}]({rel})\n\n")
    return "".join(lines)
