"""tfp_vae.evaluate: closed forms on a linear-Gaussian VAE, and a trained tiny run
evaluated from its workdir and from its SavedModel."""

import os
import shutil

import h5py
import numpy as np
import pytest
import tensorflow as tf

from linear_gaussian import LinearGaussian
from tfp_vae import config as config_lib
from tfp_vae import evaluate, export, files, objectives, train


# -- closed forms on a linear-Gaussian model ------------------------------------------


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian(latent_dim=4, data_dim=6, sigma=0.5)


def test_active_units_counts_the_dimensions_whose_mean_depends_on_x(lg):
    vae = lg.vae()
    kernel, bias = vae.encoder.head.get_weights()          # [D, 2K], [2K]: loc then scale
    kernel[:, 2:4] = 0.0                                    # z_3, z_4's means ignore x
    vae.encoder.head.set_weights([kernel, bias])
    x = lg.sample_x(2000)
    count, variances = evaluate.active_units(vae, x, batch_size=300)
    assert count == 2
    assert variances.shape == (4,)
    np.testing.assert_array_equal(variances[2:], 0.0)
    # The exact posterior mean is m(x) = (x − b) A: its variance over x is
    # diag(Aᵀ Cov(x) A), with Cov(x) = W Wᵀ + σ² I for x drawn from the model.
    A = lg.W * lg.post_var / lg.sigma**2
    np.testing.assert_allclose(variances[:2], np.var((x - lg.b) @ A, axis=0)[:2], rtol=1e-4)
    closed = np.diag(A.T @ (lg.W @ lg.W.T + lg.sigma**2 * np.eye(lg.D)) @ A)
    np.testing.assert_allclose(variances[:2], closed[:2], rtol=0.1)
    # The threshold is a strict ">": raising it past a variance drops that unit.
    assert evaluate.active_units(vae, x, threshold=float(variances[:2].min()))[0] == 1


def test_iwae_rises_from_the_elbo_to_the_exact_log_likelihood(lg):
    vae = lg.vae(loc_shift=0.2, scale_factor=1.2)          # a deliberately poor q(z|x)
    x = lg.sample_x(200)
    exact = float(np.mean(lg.log_px(x)))
    elbo = evaluate.elbo_terms(vae, x, seed=3, batch_size=100)
    iwae_1000, per_example = evaluate.iwae_log_likelihood(vae, x, 1000, seed=3, batch_size=100)
    assert per_example.shape == (200,)
    np.testing.assert_allclose(iwae_1000, per_example.mean(), rtol=1e-6)
    # The ELBO's gap is E KL(q ‖ p(z|x)), about 1.1 nats here; k = 1000
    # importance samples close all but ~0.005 of it.
    assert elbo["elbo"] < exact - 0.5
    assert abs(iwae_1000 - exact) < 0.03
    again, _ = evaluate.iwae_log_likelihood(vae, x, 1000, seed=3, batch_size=100)
    assert again == iwae_1000                               # same seed, same number


def test_iwae_with_k_a_tensor_matches_k_a_python_int():
    """The SavedModel's iwae signature takes k as a tensor; objectives.iwae_bound
    then runs its chunked loop, which must draw exactly what a Python k draws."""
    lg = LinearGaussian(latent_dim=2, data_dim=5)
    vae = lg.vae(loc_shift=0.3)
    x = tf.constant(lg.sample_x(16))
    seed = tf.constant([4, 5], tf.int32)
    as_int = vae.iwae_bound(x, 250, seed=seed, chunk_size=100)
    as_tensor = tf.function(lambda x, k, s: vae.iwae_bound(x, k, seed=s, chunk_size=100))(
        x, tf.constant(250), seed)
    np.testing.assert_allclose(as_tensor.numpy(), as_int.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        objectives.iwae_bound(x, vae.encode(x), vae.decode, vae.prior_distribution(),
                              seed=seed, num_samples=tf.constant(3))


def test_probe_separates_separable_codes_and_not_random_labels():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(3, 5))
    y = rng.integers(0, 3, size=1200)
    codes = centres[y] + rng.normal(size=(1200, 5))
    assert evaluate.probe_accuracy(codes[:800], y[:800], codes[800:], y[800:]) > 0.95
    random_labels = rng.integers(0, 2, size=2000)
    noise = rng.normal(size=(2000, 5))
    chance = evaluate.probe_accuracy(noise[:1000], random_labels[:1000], noise[1000:],
                                     random_labels[1000:])
    assert abs(chance - 0.5) < 0.08                         # 5 standard errors at n = 1000


def test_linear_probe_reads_the_classes_off_the_posterior_means(lg):
    # Two classes that differ along W's first column: the posterior means
    # (affine in x) separate them, so a linear probe on E_q[z] must as well.
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=600)
    x = (lg.b + np.outer(np.where(y == 1, 3.0, -3.0), lg.W[:, 0])
         + lg.sigma * rng.normal(size=(600, lg.D))).astype(np.float32)
    accuracy = evaluate.linear_probe(lg.vae(), x[:400], y[:400], x[400:], y[400:])
    assert accuracy > 0.95


# -- a trained tiny run: workdir, SavedModel and the run's own metrics ----------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("evaluate") / "run")
    config = config_lib.preset("tiny").replace(figures=False)
    metrics = train.train_and_evaluate(config, workdir, verbose=0)
    return workdir, config, metrics


def test_workdir_and_saved_model_give_the_same_numbers(tiny_run, tmp_path):
    workdir, config, metrics = tiny_run
    options = dict(k=config.eval_iwae_k, batch_size=config.batch_size, probe=False)
    from_workdir = evaluate.evaluate_workdir(workdir, output=str(tmp_path / "w.json"),
                                             **options)
    from_saved = evaluate.evaluate_saved_model(os.path.join(workdir, "saved_model"),
                                               output=str(tmp_path / "s.json"), **options)
    assert files.read_json(tmp_path / "w.json") == from_workdir
    assert from_workdir["step"] == metrics["steps"]
    assert from_workdir["num_examples"] == metrics["num_examples"] == config.limit
    for key in ("elbo", "reconstruction", "kl"):
        # Same weights, images and seeds: the same number, whichever form the model is in,
        # and the same as the run's own metrics.json (same batch size and k too).
        np.testing.assert_allclose(from_saved[key], from_workdir[key], rtol=1e-6)
        np.testing.assert_allclose(metrics[key], from_workdir[key], rtol=1e-6)
    k = f"iwae_{config.eval_iwae_k}"
    np.testing.assert_allclose(metrics[k], from_workdir[k], rtol=1e-6)
    # The SavedModel draws its k samples in export.IWAE_CHUNK chunks, the
    # Keras model in one: the same estimator, other draws.
    assert abs(from_saved[k] - from_workdir[k]) < 0.5
    np.testing.assert_allclose(from_saved["active_unit_variances"],
                               from_workdir["active_unit_variances"], rtol=1e-5)



def test_a_runs_weights_file_alone_with_its_config_is_the_model(tiny_run, tmp_path):
    # What a published model is: config.json and model.weights.h5, copied
    # anywhere without the checkpoints. Evaluated, it gives the workdir's numbers.
    workdir, config, metrics = tiny_run
    published = tmp_path / "published"
    published.mkdir()
    for name in ("config.json", "model.weights.h5"):
        shutil.copy(os.path.join(workdir, name), published / name)
    options = dict(k=config.eval_iwae_k, batch_size=config.batch_size, probe=False,
                   tensorboard=False)
    from_weights = evaluate.evaluate_weights(str(published / "model.weights.h5"), **options)
    assert from_weights["source"] == "weights"
    with h5py.File(published / "model.weights.h5") as f:        # the model, not Adam's slots
        assert "optimizer" not in f and {"encoder", "decoder"} <= set(f.keys())
    assert files.read_json(published / "weights_evaluation.json") == from_weights
    k = f"iwae_{config.eval_iwae_k}"
    for key in ("elbo", "reconstruction", "kl", k):
        np.testing.assert_allclose(from_weights[key], metrics[key], rtol=1e-6)
    # A run made before runs wrote the file gets it from its checkpoint: the same weights.
    again = evaluate.export_run_weights(workdir, str(tmp_path / "again.weights.h5"))
    vae, _ = evaluate.restore_weights(again, config)
    want, _ = evaluate.restore_weights(os.path.join(workdir, "model.weights.h5"))
    for a, b in zip(vae.weights, want.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weights_that_do_not_fit_their_config_are_a_one_line_error(tiny_run, tmp_path):
    workdir, config, _ = tiny_run
    with pytest.raises(evaluate.EvaluationError, match="no weights file"):
        evaluate.evaluate_weights(str(tmp_path / "absent.weights.h5"))
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(os.path.join(workdir, "model.weights.h5"), other / "model.weights.h5")
    files.write_json(other / "config.json",
                     {**files.read_json(os.path.join(workdir, "config.json")), "latent_dim": 3})
    with pytest.raises(evaluate.EvaluationError, match="does not hold the weights") as e:
        evaluate.evaluate_weights(str(other / "model.weights.h5"), probe=False)
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(other)) == ["config.json", "model.weights.h5"]   # nothing written


def test_iwae_is_above_the_elbo_on_the_trained_model(tiny_run, tmp_path):
    workdir, config, _ = tiny_run
    result = evaluate.evaluate_workdir(workdir, k=50, batch_size=128, limit=128,
                                       output=str(tmp_path / "e.json"))
    assert result["iwae_50"] > result["elbo"]
    assert result["num_examples"] == 128
    assert 0.0 <= result["linear_probe_accuracy"] <= 1.0
    assert result["latent_dim"] == config.latent_dim


def test_missing_workdir_checkpoint_or_saved_model_is_a_one_line_error(tiny_run, tmp_path):
    workdir, _, _ = tiny_run
    with pytest.raises(evaluate.EvaluationError, match="no workdir"):
        evaluate.evaluate_workdir(str(tmp_path / "absent"))
    no_ckpt = tmp_path / "no_checkpoint"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
    with pytest.raises(evaluate.EvaluationError, match="no readable checkpoint") as e:
        evaluate.evaluate_workdir(str(no_ckpt))
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(no_ckpt)) == ["config.json"]       # nothing written
    with pytest.raises(evaluate.EvaluationError, match="no SavedModel"):
        evaluate.evaluate_saved_model(str(tmp_path))
    with pytest.raises(ValueError, match="k must be"):
        evaluate.iwae_log_likelihood(None, np.zeros((1, 2)), k=0)


def test_saved_model_without_an_iwae_signature_is_refused():
    class OldExport:
        signatures = {"encode": None, "elbo": None}
    with pytest.raises(evaluate.EvaluationError, match="re-export"):
        evaluate.elbo_terms(OldExport(), np.zeros((1, 2), np.float32))
    assert "iwae" in export.SIGNATURES


def test_the_iwae_standard_error_is_that_of_log_px_over_the_images(lg):
    # At the exact posterior every importance weight is p(x): the per-image
    # estimates are ln p(x) exactly, so their standard error over the images
    # is the closed form's.
    x = lg.sample_x(400)
    config = config_lib.Config(binarize="none", decoder="normal", batch_size=100, seed=3)
    out = evaluate.evaluate_model(lg.vae(), config, x, iwae_k=5)
    log_px = lg.log_px(x)
    assert out["iwae_5"] == pytest.approx(log_px.mean(), abs=1e-3)
    assert out["iwae_5_stderr"] == pytest.approx(log_px.std(ddof=1) / np.sqrt(400), rel=1e-3)
