"""tfp_vae.posthoc: EM against sklearn, held-out densities against scipy, the
exported sample_posthoc signature under every loader (its draws against the
mixture's closed-form moments), and scripts/posthoc_sampler.py end to end."""

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import stats
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import GaussianMixture

from test_export import graph_session          # TF Serving's way of running a signature
from tfp_vae import export, factory, files, plots, posthoc, train
from tfp_vae.config import preset
from tfp_vae.errors import WorkdirBusy

tfd = tfp.distributions
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "posthoc_sampler.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def clusters(sizes, centres, seed):
    """sizes[c] points (or `sizes` for each, an int) around each centre `[C, K]`,
    each cluster with its own random full covariance (eigenvalues in [0.2, 1]):
    (points [Σ sizes, K], the true covariances [C, K, K])."""
    rng = np.random.default_rng(seed)
    k = centres.shape[1]
    sizes = np.broadcast_to(sizes, [len(centres)])
    covs = []
    for _ in centres:
        q, _ = np.linalg.qr(rng.normal(size=(k, k)))
        covs.append(q @ np.diag(rng.uniform(0.2, 1.0, size=k)) @ q.T)
    x = np.concatenate([rng.multivariate_normal(m, c, size=n)
                        for m, c, n in zip(centres, covs, sizes)])
    return x, np.stack(covs)


CENTRES = np.array([[0.0, 0.0, 0.0, 0.0], [8.0, 0.0, 0.0, 0.0], [0.0, 8.0, 8.0, 0.0]])


def matched(means, reference):
    """The order of `means`' rows that pairs each with its nearest row of `reference`."""
    cost = np.linalg.norm(means[:, None] - reference[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return rows[np.argsort(cols)]


# -- EM ---------------------------------------------------------------------------------


def test_em_finds_what_sklearn_finds_on_well_separated_clusters():
    sizes = np.array([800, 400, 200])
    x, covs = clusters(sizes, CENTRES, seed=0)
    fit = posthoc.fit_em(x, 3, seed=0, tol=1e-9)
    reference = GaussianMixture(3, covariance_type="full", reg_covar=1e-6, tol=1e-9,
                                max_iter=500, random_state=0).fit(x)
    assert fit.converged
    # The same optimum: mean log-likelihood per point, and each component.
    np.testing.assert_allclose(fit.log_likelihood[-1], reference.score(x), atol=1e-4)
    np.testing.assert_allclose(fit.mixture.log_prob(x), reference.score_samples(x), atol=1e-3)
    order = matched(fit.mixture.means, reference.means_)
    np.testing.assert_allclose(fit.mixture.means[order], reference.means_, atol=1e-4)
    np.testing.assert_allclose(fit.mixture.weights[order], reference.weights_, atol=1e-5)
    np.testing.assert_allclose(fit.mixture.covariances[order], reference.covariances_, atol=1e-4)
    # And the truth, within the sampling error of each cluster's points.
    order = matched(fit.mixture.means, CENTRES)
    stderr = np.sqrt(np.diagonal(covs, axis1=1, axis2=2) / sizes[:, None])     # [C, K]
    assert np.all(np.abs(fit.mixture.means[order] - CENTRES) < 5 * stderr)
    np.testing.assert_allclose(fit.mixture.weights[order], sizes / sizes.sum(), atol=1e-3)


@pytest.mark.parametrize("reg", [1e-6, 0.05])
def test_em_likelihood_never_decreases_even_where_the_floor_binds(reg):
    # Overlapping clusters (EM crawls) and one flat cluster (rank 1 in 3-D: its
    # covariance would be singular without the floor).
    rng = np.random.default_rng(1)
    x, _ = clusters(150, np.array([[0.0, 0, 0], [1.5, 0, 0], [0, 1.5, 0]]), seed=1)
    flat = np.outer(rng.normal(size=100), [1.0, 1.0, 0.0]) + [4.0, 4.0, 4.0]
    x = np.concatenate([x, flat])
    fit = posthoc.fit_em(x, 5, seed=2, reg=reg, max_iter=150, tol=-np.inf)
    assert fit.iterations == 150 and len(fit.log_likelihood) == 151 and not fit.converged
    steps = np.diff(fit.log_likelihood)
    assert steps.min() >= -1e-10, steps.min()
    assert fit.log_likelihood[-1] > fit.log_likelihood[0] + 0.01        # EM did something
    eigenvalues = np.linalg.eigvalsh(fit.mixture.covariances)
    assert eigenvalues.min() >= reg * (1 - 1e-6)
    assert np.all(np.isfinite(fit.mixture.log_prob(x)))


def test_the_same_seed_gives_the_same_mixture_and_restarts_keep_the_best():
    x, _ = clusters(100, CENTRES, seed=3)
    a, b = posthoc.fit_em(x, 4, seed=7), posthoc.fit_em(x, 4, seed=7)
    for u, v in zip(a.mixture, b.mixture):
        np.testing.assert_array_equal(u, v)
    best = posthoc.fit_em(x, 4, seed=7, restarts=3)
    assert best.log_likelihood[-1] >= a.log_likelihood[-1]          # the first start is one of 3


def test_bad_codes_or_settings_are_refused():
    x = np.zeros((5, 2))
    for kwargs, match in [(dict(num_components=6), "num_components"),
                          (dict(num_components=2, reg=0.0), "reg must be > 0"),
                          (dict(num_components=0), "num_components")]:
        with pytest.raises(ValueError, match=match):
            posthoc.fit_em(x, **kwargs)
    with pytest.raises(ValueError, match="finite"):
        posthoc.fit_em(np.full((5, 2), np.nan), 1)
    # Identical codes: every covariance is the floor, nothing is singular.
    fit = posthoc.fit_em(np.ones((20, 3)), 2)
    assert np.all(np.isfinite(fit.mixture.log_prob(np.ones((2, 3)))))


# -- the mixture as TFP, Keras and held-out numbers ---------------------------------------


def scipy_log_density(params, z):
    """ln Σ_c π_c N(z; m_c, Σ_c), by scipy: `[N]`."""
    per = np.stack([np.log(w) + stats.multivariate_normal(m, c).logpdf(z)
                    for w, m, c in zip(params.weights, params.means, params.covariances)], 1)
    return np.logaddexp.reduce(per, axis=1)


def test_held_out_log_density_is_scipys():
    x, _ = clusters(200, CENTRES, seed=4)
    params = posthoc.fit_em(x, 3, seed=0).mixture
    held, _ = clusters(100, CENTRES, seed=5)
    prior = tfd.MixtureSameFamily(tfd.Categorical(logits=tf.zeros([2], tf.float64)),
                                  tfd.MultivariateNormalDiag(
                                      tf.constant([[0.0] * 4, [8.0] * 4], tf.float64),
                                      tf.constant([[1.0] * 4, [2.0] * 4], tf.float64)))
    out = posthoc.held_out_log_density(params.distribution(tf.float64), held, prior)
    mixture = scipy_log_density(params, held)
    normal = stats.multivariate_normal(np.zeros(4), np.eye(4)).logpdf(held)
    learned = np.logaddexp(stats.multivariate_normal([0.0] * 4, np.eye(4)).logpdf(held),
                           stats.multivariate_normal([8.0] * 4, 4 * np.eye(4)).logpdf(held)
                           ) - np.log(2)
    assert out["num_codes"] == 300
    for name, values in [("mixture", mixture), ("standard_normal", normal), ("prior", learned)]:
        np.testing.assert_allclose(out[name], values.mean(), rtol=1e-9)
        np.testing.assert_allclose(out[f"{name}_stderr"], stats.sem(values), rtol=1e-9)
    np.testing.assert_allclose(out["mixture_minus_standard_normal_stderr"],
                               stats.sem(mixture - normal), rtol=1e-9)
    # A float32 mixture agrees to float32 accuracy; the numpy log_prob exactly.
    np.testing.assert_allclose(posthoc.held_out_log_density(params.distribution(), held)
                               ["mixture"], mixture.mean(), rtol=1e-5)
    np.testing.assert_allclose(params.log_prob(held), mixture, rtol=1e-9)


def test_mixture_layer_holds_the_parameters_and_round_trips_through_npz(tmp_path):
    x, _ = clusters(100, CENTRES, seed=6)
    params = posthoc.fit_em(x, 3, seed=0).mixture
    layer = posthoc.MixtureLayer.from_params(params)
    assert len(layer.non_trainable_weights) == 3 and not layer.trainable_weights
    np.testing.assert_allclose(layer(tf.constant(x, tf.float32)).numpy(), params.log_prob(x),
                               rtol=1e-4)
    path = posthoc.save_mixture(str(tmp_path / "m.npz"), params, extra=np.arange(3))
    loaded = posthoc.load_mixture(path)
    for u, v in zip(loaded, params):
        np.testing.assert_array_equal(u, v)
    assert isinstance(posthoc.fit_gaussian_mixture(x, 2), tfd.MixtureSameFamily)


def test_side_by_side_grids_draws_one_panel_per_name(tmp_path):
    rng = np.random.default_rng(0)
    path = plots.side_by_side_grids({"prior": rng.uniform(size=(16, 28, 28, 1)),
                                     "mixture": rng.uniform(size=(16, 28, 28, 1))},
                                    tmp_path / "s.png", title="two")
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[1] > 1.5 * pixels.shape[0]            # two square grids in a row
    assert os.listdir(tmp_path) == ["s.png"]
    with pytest.raises(ValueError, match=r"one \[H, W, C\]"):
        plots.side_by_side_grids({"a": np.zeros((2, 8, 8, 1)), "b": np.zeros((2, 9, 9, 1))},
                                 tmp_path / "bad.png")
    with pytest.raises(ValueError, match="non-empty dict"):
        plots.side_by_side_grids({}, tmp_path / "bad.png")


# -- the exported signature ------------------------------------------------------------------


# Three well-separated 2-D components with tilted covariances: a known mixture.
KNOWN = posthoc.GaussianMixtureParams(
    weights=np.array([0.5, 0.3, 0.2]),
    means=np.array([[-6.0, 0.0], [6.0, 1.0], [0.0, 7.0]]),
    scale_tril=np.array([[[1.0, 0.0], [0.6, 0.5]], [[0.7, 0.0], [-0.3, 1.2]],
                         [[0.5, 0.0], [0.0, 0.5]]]))


def moments(params):
    """The mixture's mean `[K]` and covariance `[K, K]`, in closed form."""
    mean = params.weights @ params.means
    second = np.einsum("c,cij->ij", params.weights, params.covariances
                       + np.einsum("ci,cj->cij", params.means, params.means))
    return mean, second - np.outer(mean, mean)


def assert_draws_follow(z, params, shares=True):
    """z `[n, K]` has the mixture's mean and covariance within 4.5 standard errors
    (those of the sample mean and of each sample covariance entry, estimated from
    z), and (`shares`, for well-separated components) each component's share of
    the nearest-mean assignments within 4.5 binomial standard errors of its weight."""
    n = len(z)
    mean, cov = moments(params)
    d = z - z.mean(0)
    np.testing.assert_array_less(np.abs(z.mean(0) - mean), 4.5 * z.std(0) / np.sqrt(n))
    products = d[:, :, None] * d[:, None, :]                                   # [n, K, K]
    np.testing.assert_array_less(np.abs(products.mean(0) - cov),
                                 4.5 * products.std(0) / np.sqrt(n) + 1e-6)
    if not shares:
        return
    nearest = np.argmin(np.linalg.norm(z[:, None] - params.means[None], axis=-1), axis=1)
    share = np.bincount(nearest, minlength=len(params.weights)) / n
    w = params.weights
    np.testing.assert_array_less(np.abs(share - w), 4.5 * np.sqrt(w * (1 - w) / n))


@pytest.fixture(scope="module")
def known_export(tmp_path_factory):
    """An untrained tiny VAE (K = 2) exported with KNOWN as its post-hoc mixture."""
    vae = factory.build_vae(preset("tiny"), (28, 28, 1))
    path = str(tmp_path_factory.mktemp("known") / "sm")
    export.export_saved_model(vae, path, posthoc=posthoc.MixtureLayer.from_params(KNOWN))
    return vae, path


def test_sample_posthoc_draws_the_mixture_under_every_python_loader(known_export):
    vae, path = known_export
    seed = tf.constant([3, 4], tf.int32)
    signatures = tf.saved_model.load(path).signatures
    assert sorted(signatures) == sorted(export.SIGNATURES
                                        + (export.POSTHOC_SIGNATURE, "serving_default"))
    out = signatures["sample_posthoc"](n=tf.constant(4000), seed=seed)
    z = out["z"].numpy()
    assert z.shape == (4000, 2) and out["mean"].shape == (4000, 28, 28, 1)
    assert_draws_follow(z.astype(np.float64), KNOWN)
    np.testing.assert_allclose(out["mean"].numpy(), vae.decode(z).mean().numpy(), atol=1e-5)
    # The same stateless draws as the mixture sampled in Python; the prior's
    # signature is still the prior's.
    np.testing.assert_allclose(z, KNOWN.distribution().sample(4000, seed=seed).numpy(),
                               atol=1e-5)
    prior_z = signatures["sample"](n=tf.constant(4000), seed=seed)["z"].numpy()
    assert abs(prior_z.mean()) < 0.1 and abs(prior_z.std() - 1) < 0.1
    # TF Serving's graph-session loader restores the mixture's variables.
    few = signatures["sample_posthoc"](n=tf.constant(50), seed=seed)
    session = graph_session(path, "sample_posthoc",
                            {"n": np.int32(50), "seed": np.array([3, 4], np.int32)})
    for key in ("z", "mean"):
        np.testing.assert_allclose(session[key], few[key].numpy(), atol=1e-6)
    # The parameters are variables of the SavedModel, not constants folded into
    # the graph: moving the loaded means moves the draws.
    loaded = tf.saved_model.load(path)
    (locs,) = [v for v in loaded.variables if v.shape == (3, 2)]
    np.testing.assert_array_equal(locs.numpy(), KNOWN.means.astype(np.float32))
    locs.assign_add(tf.fill([3, 2], 100.0))
    moved = loaded.signatures["sample_posthoc"](n=tf.constant(50), seed=seed)["z"].numpy()
    np.testing.assert_allclose(moved - 100.0, few["z"].numpy(), atol=1e-4)


def test_hierarchical_and_conditional_models_export_sample_posthoc(tmp_path):
    layer = posthoc.MixtureLayer.from_params(KNOWN)
    seed = tf.constant([1, 2], tf.int32)
    hvae = factory.build_model(preset("tiny").replace(model="hvae"), (28, 28, 1))
    path = str(tmp_path / "hvae")
    export.archive(hvae, signatures=[export.POSTHOC_SIGNATURE], posthoc=layer).write_out(
        path, verbose=False)
    out = tf.saved_model.load(path).signatures["sample_posthoc"](n=tf.constant(6), seed=seed)
    # z₂ from the mixture, decoded through E[z₁ | z₂], as the model's decode does.
    np.testing.assert_allclose(out["mean"].numpy(), hvae.decode(out["z"]).mean().numpy(),
                               atol=1e-5)
    cvae = factory.build_vae(preset("tiny").replace(conditional=True), (28, 28, 1),
                             num_classes=3)
    path = str(tmp_path / "cvae")
    export.archive(cvae, signatures=[export.POSTHOC_SIGNATURE], posthoc=layer).write_out(
        path, verbose=False)
    out = tf.saved_model.load(path).signatures["sample_posthoc"](
        n=tf.constant(6), seed=seed, label=tf.constant(2))
    np.testing.assert_allclose(out["mean"].numpy(),
                               cvae.decode(out["z"], tf.fill([6], 2)).mean().numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="pass posthoc="):
        export.archive(cvae, signatures=[export.POSTHOC_SIGNATURE])
    wide = posthoc.MixtureLayer(2, 5)
    with pytest.raises(ValueError, match="event shape"):
        export.archive(cvae, posthoc=wide)


# -- the script, end to end on a tiny run ------------------------------------------------------


def run(*args, timeout=600):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real epoch of the tiny preset on 256 digits (no figures, export or XLA:
    seconds), the script run on it, and what the workdir held before."""
    workdir = str(tmp_path_factory.mktemp("posthoc") / "run")
    train.train_and_evaluate(preset("tiny").replace(figures=False, export=False, jit=False),
                             workdir, verbose=0)
    before = sorted(os.listdir(workdir))
    result = run(f"--workdir={workdir}", "--components=3", "--seed=1")
    return workdir, result, before


def test_the_script_writes_the_mixture_its_scores_figure_and_saved_model(tiny_run):
    workdir, result, before = tiny_run
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(posthoc.posthoc_dir(workdir))
    assert sorted(os.listdir(out)) == ["metrics.json", "mixture.npz", "samples.png",
                                       "saved_model"]
    assert not [n for n in os.listdir(workdir) if n.startswith(".posthoc")], "temporary left"
    metrics = files.read_json(out / "metrics.json")
    assert (metrics["components"], metrics["seed"], metrics["latent_dim"]) == (3, 1, 2)
    assert metrics["num_train_codes"] == 256 and metrics["held_out_split"] == "validation"
    held = metrics["held_out"]
    assert held["num_codes"] == 256
    for key in ("mixture", "standard_normal", "single_gaussian",
                "mixture_minus_standard_normal"):
        assert np.isfinite(held[key]) and held[f"{key}_stderr"] > 0, key
    assert "prior" not in held                                       # the prior is N(0, I)
    with np.load(out / "mixture.npz") as npz:
        np.testing.assert_allclose(npz["log_likelihood"][-1], metrics["train_log_density"])
        assert npz["weights"].shape == (3,) and npz["scale_tril"].shape == (3, 2, 2)
    assert "mixture" in result.stdout and "N(0, I)" in result.stdout
    assert matplotlib.image.imread(out / "samples.png").shape[1] > 200
    # Nothing else of the run is touched (no saved_model/ of the run's made).
    assert sorted(os.listdir(workdir)) == sorted(before + ["posthoc"])


def test_saved_model_cli_runs_the_scripts_sample_posthoc(tiny_run, tmp_path):
    workdir, result, _ = tiny_run
    assert result.returncode == 0, result.stderr[-3000:]
    path = os.path.join(posthoc.posthoc_dir(workdir), "saved_model")
    params = posthoc.load_mixture(os.path.join(posthoc.posthoc_dir(workdir), "mixture.npz"))
    cli = subprocess.run(["saved_model_cli", "run", "--dir", path, "--tag_set", "serve",
                          "--signature_def", "sample_posthoc", "--input_exprs",
                          "n=3000;seed=[5, 6]", "--outdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=ENV)
    assert cli.returncode == 0, cli.stderr[-3000:]
    z, mean = np.load(tmp_path / "z.npy"), np.load(tmp_path / "mean.npy")
    assert z.shape == (3000, 2) and mean.shape == (3000, 28, 28, 1)
    np.testing.assert_allclose(z, params.distribution().sample(3000, seed=(5, 6)).numpy(),
                               atol=1e-5)
    # The fitted components may overlap: the moments, not the assignments.
    assert_draws_follow(z.astype(np.float64), params, shares=False)
    signatures = tf.saved_model.load(path).signatures
    assert sorted(signatures) == sorted(export.SIGNATURES
                                        + (export.POSTHOC_SIGNATURE, "serving_default"))
    np.testing.assert_allclose(signatures["decode"](z=z)["mean"].numpy(), mean, atol=1e-5)


def test_the_script_refuses_bad_input_in_one_line(tiny_run, tmp_path):
    workdir, _, _ = tiny_run
    missing = run(f"--workdir={tmp_path / 'absent'}")
    assert missing.returncode == 2 and "no workdir" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bad = run(f"--workdir={workdir}", "--components=0")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_a_run_training_in_the_workdir_is_not_disturbed(tiny_run):
    workdir, _, _ = tiny_run
    before = sorted(os.listdir(posthoc.posthoc_dir(workdir)))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), os.path.join(workdir, ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusy, match="in use"):
            posthoc.posthoc_workdir(workdir, components=2)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(os.listdir(posthoc.posthoc_dir(workdir))) == before


def test_the_scripts_defaults_are_the_librarys():
    # The script states them so that a bad flag fails before TensorFlow loads.
    line = re.search(r"^_DEFAULT_COMPONENTS, _DEFAULT_REG = (.+)$", Path(SCRIPT).read_text(),
                     re.MULTILINE)
    components, reg = (float(v) for v in line.group(1).split(","))
    assert (components, reg) == (posthoc.DEFAULT_COMPONENTS, posthoc.DEFAULT_REG)
