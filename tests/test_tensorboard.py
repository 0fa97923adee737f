"""TensorBoard as a user sees it: a tiny run, `evaluate_workdir` and `compare.run` write their
logs, a real `tensorboard` serves them, and its own HTTP data endpoints (and headless
Chromium's screenshots of its dashboards) show this run's numbers.

Every number is checked against an independent source: metrics.json and history.json,
the trained model re-read from its checkpoint and recomputed with numpy, TFP's closed-form
KL, the images and labels of the data set.
"""

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import (config as config_lib, data, evaluate, factory, input_pipeline, latent_use,
                     projector, summaries, train)
from tfp_vae.experiments import compare

tfd = tfp.distributions

# Two epochs of 256 digits, three latent dimensions (so the Projector has a 3-D PCA).
# Without XLA: what the dashboards show does not depend on it, and compiling costs seconds.
CONFIG = config_lib.preset("tiny").replace(epochs=2, latent_dim=3, figures=False, export=False,
                                           eval_iwae_k=4, jit=False)
COMPARE = config_lib.preset("tiny").replace(figures=False, export=False, binarize="none",
                                            jit=False)
DASHBOARDS = ("scalars", "images", "hparams", "projector")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _images(n=64):
    """n validation digits, binarised at 0.5: `[n, 28, 28, 1]`."""
    x = data.load_arrays("mnist_5k", "validation")[0][:n]
    return (x > 0.5).astype(np.float32)


def _model(**changes):
    """An untrained model of the tiny preset with `changes`: its posterior is no N(0, I)."""
    config = config_lib.preset("tiny").replace(**changes)
    return factory.build_model(config, (28, 28, 1), 10 if config.conditional else None), config


# -- what the per-epoch latent summaries read off the posterior ---------------------------


@pytest.mark.parametrize("changes", [{}, {"conditional": True}], ids=["vae", "conditional"])
def test_the_kl_of_each_dimension_sums_to_the_models_kl(changes):
    model, _ = _model(latent_dim=4, **changes)
    x = _images()
    inputs = x if not changes else (x, np.arange(len(x)) % 10)
    (layer,) = latent_use.posterior_layers(model, inputs)
    assert layer.name == "z" and layer.reference == "prior" and layer.kl.shape == (4,)
    kl = model.elbo(inputs, seed=(0, 1)).kl.numpy()            # TFP's closed form, [B]
    np.testing.assert_allclose(layer.kl.sum(), kl.mean(), rtol=1e-5)
    assert np.all(layer.kl >= 0)


def test_with_a_learned_prior_the_kl_is_taken_against_n01_and_says_so():
    model, _ = _model(latent_dim=4, prior="vamp", prior_components=5)
    x = _images()
    (layer,) = latent_use.posterior_layers(model, x)
    assert layer.reference == "standard_normal"
    q = model.encode(x)
    standard = tfd.MultivariateNormalDiag(tf.zeros([4]))
    np.testing.assert_allclose(layer.kl.sum(), tfd.kl_divergence(q, standard).numpy().mean(),
                               rtol=1e-5)


def test_a_hierarchical_vae_has_two_layers_each_against_its_own_prior():
    model, _ = _model(model="hvae", latent_dim=3)
    x = _images()
    z2_layer, z1_layer = latent_use.posterior_layers(model, x)
    assert (z2_layer.name, z2_layer.reference) == ("z2", "prior")
    assert (z1_layer.name, z1_layer.reference) == ("z1", "conditional_prior")
    q2 = model.encode(x)
    np.testing.assert_allclose(z2_layer.kl.sum(), tfd.kl_divergence(
        q2, tfd.MultivariateNormalDiag(tf.zeros([3]))).numpy().mean(), rtol=1e-5)
    # z1 at z2 = E[z2|x]: KL(q(z1|x, z2) ‖ p(z1|z2)), TFP's closed form.
    z2 = q2.mean()
    q1, p1 = model.posterior(x).model[1](z2), model.prior_z1(z2)
    np.testing.assert_allclose(z1_layer.kl.sum(), tfd.kl_divergence(q1, p1).numpy().mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(z1_layer.mean, q1.mean().numpy(), rtol=1e-6)
    np.testing.assert_allclose(z1_layer.log_scale, np.log(q1.stddev().numpy()), atol=1e-6)


def test_active_units_are_those_whose_posterior_mean_varies_more_than_001():
    means = np.zeros([1000, 4])
    rng = np.random.default_rng(0)
    means[:, 0] = rng.normal(0, 1.0, 1000)            # Var ≈ 1: active
    means[:, 1] = rng.normal(0, 0.05, 1000)           # Var ≈ 0.0025: not
    means[:, 3] = rng.normal(5, 0.2, 1000)            # Var ≈ 0.04: active, whatever its mean
    count, variances = latent_use.active_units(means)
    assert count == 2
    np.testing.assert_allclose(variances, np.var(means, axis=0))


def _event_tags(logdir):
    tags = set()
    for path in tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    return tags


@pytest.mark.parametrize("changes, latent_tags", [
    ({"conditional": True}, {"latent/active_units", "latent/kl_per_dimension", "latent/mu",
                             "latent/log_sigma"}),
    ({"prior": "mog", "prior_components": 3}, {"latent/kl_to_standard_normal_per_dimension"}),
    ({"model": "hvae"}, {"latent/z2/active_units", "latent/z1/active_units",
                         "latent/z2/kl_per_dimension", "latent/z1/kl_per_dimension",
                         "latent/z2/mu", "latent/z1/log_sigma"}),
], ids=["conditional", "mixture_prior", "hvae"])
def test_every_model_type_writes_its_latent_summaries(changes, latent_tags, tmp_path):
    model, config = _model(**changes)
    x = _images(20)
    labels = np.arange(20) % 10 if config.conditional else None
    tb = summaries.RunSummaries(str(tmp_path), config, x, labels, 10 if labels is not None
                                else None)
    tb.epoch(model, 1, {"loss": 1.0, "val_elbo": -1.0})
    tb.close()
    tags = _event_tags(str(tmp_path))
    assert latent_tags | {"train/loss", "validation/elbo", "reconstructions", "samples"} <= tags


def test_the_kl_chart_is_an_rgb_image_one_bar_per_dimension():
    def colours(variances):
        layer = latent_use.Layer("z", "prior", np.zeros([5, 3]), np.zeros([5, 3]),
                                 np.array([2.0, 0.5, 1.0]), np.array(variances))
        chart = summaries.kl_chart(layer)
        assert chart.shape == (240, 480, 3) and chart.dtype == np.uint8
        return {tuple(c) for c in chart.reshape(-1, 3)}

    dark, pale = (0x1f, 0x4e, 0x79), (0xa8, 0xc4, 0xe0)
    assert {dark, pale} <= colours([1.0, 0.0, 0.5])       # dark: the active units
    assert dark in colours([1.0, 1.0, 1.0]) and pale not in colours([1.0, 1.0, 1.0])


# -- the Projector's files --------------------------------------------------------------


def test_an_embedding_is_the_projectors_checkpoint_metadata_and_sprite(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(10, 6, 4, 1)).astype(np.float32)      # not square: W ≠ H
    codes = rng.normal(size=(10, 5)).astype(np.float32)
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    names = projector.write_embedding(str(tmp_path), {"z_mean": codes}, images, labels)
    assert names == ["z_mean/.ATTRIBUTES/VARIABLE_VALUE"]
    reader = tf.train.load_checkpoint(str(tmp_path))               # the latest, as the Projector
    np.testing.assert_array_equal(reader.get_tensor(names[0]), codes)
    rows = (tmp_path / "metadata.tsv").read_text().splitlines()
    assert rows[0] == "label\tindex"
    assert [tuple(map(int, r.split("\t"))) for r in rows[1:]] == list(zip(labels, range(10)))
    sheet = tf.io.decode_png((tmp_path / "sprite.png").read_bytes()).numpy()
    assert sheet.shape == (4 * 6, 4 * 4, 1)                          # ⌈√10⌉ = 4 cells a side
    for i in range(10):
        row, col = divmod(i, 4)
        np.testing.assert_array_equal(sheet[row * 6:(row + 1) * 6, col * 4:(col + 1) * 4],
                                      np.round(images[i] * 255))
    assert not sheet[2 * 6:, 2 * 4:].any()                           # the empty cells
    text = (tmp_path / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "z_mean/.ATTRIBUTES/VARIABLE_VALUE"' in text
    assert "single_image_dim: 4\n    single_image_dim: 6" in text    # [width, height]


def test_an_embedding_keeps_the_first_points_and_shrinks_its_sprite_to_the_limit(
        tmp_path, monkeypatch):
    monkeypatch.setattr(projector, "MAX_POINTS", 7)
    monkeypatch.setattr(projector, "MAX_SPRITE_SIZE", 20)
    images = np.ones([9, 28, 28, 3], np.float32)
    projector.write_embedding(str(tmp_path), {"codes": np.ones([9, 2])}, images)
    assert tf.train.load_checkpoint(str(tmp_path)).get_tensor(
        projector.tensor_name("codes")).shape == (7, 2)
    assert (tmp_path / "metadata.tsv").read_text().splitlines() == [str(i) for i in range(7)]
    sheet = tf.io.decode_png((tmp_path / "sprite.png").read_bytes()).numpy()
    assert sheet.shape == (18, 18, 3)                   # 3 cells of 6 px: 3 · 28 > 20 shrank
    with pytest.raises(ValueError, match=r"must be \[N, K\] with N = 9"):
        projector.write_embedding(str(tmp_path), {"codes": np.ones([8, 2])}, images)


# -- a run, an evaluation and a comparison, served by TensorBoard ---------------------------


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """root/tiny (a training run, then evaluate_workdir on it) and root/compare."""
    root = tmp_path_factory.mktemp("runs")
    run = str(root / "tiny")
    metrics = train.train_and_evaluate(CONFIG, run, verbose=0)
    evaluation = evaluate.evaluate_workdir(run, k=4, batch_size=64, probe=False)
    compared = compare.run(COMPARE, str(root / "compare"), [2], models=["pca", "vae"],
                           judge_steps=20)
    return {"root": str(root), "run": run, "metrics": metrics, "evaluation": evaluation,
            "compared": compared}


@pytest.fixture(scope="module")
def model(logs):
    """The run's model as its checkpoint holds it (its last epoch's weights)."""
    return evaluate.restore_vae(logs["run"]).vae


def _evaluation_images(split, n=None):
    """A split's images as the run's evaluation sees them (raw, binarised)."""
    x, y = input_pipeline.load_split(CONFIG, split)
    keras.utils.set_random_seed(CONFIG.seed)
    return x[:n], input_pipeline.evaluation_arrays(CONFIG, x[:n]), y[:n]


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoard:
    """A `tensorboard` process on a free localhost port, and its HTTP API."""

    def __init__(self, logdir):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def raw(self, path, body=None) -> bytes:
        request = urllib.request.Request(
            self.url + path, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def get(self, path, **query):
        return json.loads(self.raw(path + ("?" + urllib.parse.urlencode(query) if query else "")))

    def post(self, path, body):
        return json.loads(self.raw(path, body))

    def wait_for(self, runs, timeout=90):
        """Waits until the server lists every one of `runs`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("tensorboard exited: " + self.process.stderr.read().decode())
            with contextlib.suppress(OSError):
                if set(runs) <= set(self.get("/data/runs")):
                    return
            time.sleep(0.5)
        raise TimeoutError(f"tensorboard did not list {runs} within {timeout} s")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


RUN, END, EVALUATION = "tiny/tensorboard", "tiny/tensorboard/test", \
    "tiny/tensorboard/evaluation_test"


@pytest.fixture(scope="module")
def board(logs):
    tb = TensorBoard(logs["root"])
    try:
        tb.wait_for([RUN, END, EVALUATION, "compare/tensorboard/pca_k2"])
        yield tb
    finally:
        tb.stop()


def test_the_scalars_dashboard_has_the_runs_curves_and_its_active_units(board, logs, model):
    tags = board.get("/data/plugin/scalars/tags")
    assert {"train/elbo", "validation/elbo", "validation/kl", "latent/active_units"} <= set(
        tags[RUN])
    with open(os.path.join(logs["run"], "history.json")) as f:
        history = json.load(f)
    curve = board.get("/data/plugin/scalars/scalars", run=RUN, tag="validation/elbo")
    assert [step for _, step, _ in curve] == [1, 2]
    np.testing.assert_allclose([v for *_, v in curve], history["val_elbo"], rtol=1e-6)
    # The last epoch's active units: its weights are the checkpoint's; numpy recounts them.
    _, x_val, _ = _evaluation_images("validation", summaries.LATENT_EXAMPLES)
    mu = model.encode(x_val).mean().numpy().astype(np.float64)
    units = board.get("/data/plugin/scalars/scalars", run=RUN, tag="latent/active_units")
    assert units[-1][1:] == [2, float(np.sum(np.var(mu, axis=0) > 0.01))]
    # ... and the histogram of μ holds every μ of those images.
    histograms = board.get("/data/plugin/histograms/histograms", run=RUN, tag="latent/mu")
    *_, (_, step, buckets) = histograms
    assert step == 2 and sum(count for *_, count in buckets) == pytest.approx(mu.size)
    assert buckets[0][0] == pytest.approx(mu.min(), abs=1e-5)
    assert buckets[-1][1] == pytest.approx(mu.max(), abs=1e-5)


def test_the_images_dashboard_has_the_grids_and_the_kl_chart_each_epoch(board):
    tags = board.get("/data/plugin/images/tags")[RUN]
    assert tags["reconstructions"]["samples"] == 2 * summaries.TB_IMAGES
    assert tags["samples"]["samples"] == summaries.TB_IMAGES
    assert "the model's prior" in tags["latent/kl_per_dimension"]["description"]
    charts = board.get("/data/plugin/images/images", run=RUN, tag="latent/kl_per_dimension",
                       sample=0)
    assert [c["step"] for c in charts] == [1, 2]
    png = board.raw("/data/plugin/images/individualImage?" + charts[-1]["query"])
    assert tf.io.decode_png(png).shape == (240, 480, 3)


def test_the_hparams_dashboard_sets_the_run_beside_the_compared_models(board, logs, model):
    experiment = board.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = {h["name"]: h for h in experiment["hparamInfos"]}
    assert infos["latent_dim"]["differs"] and infos["model"]["differs"]
    assert set(infos["model"]["domainDiscrete"]) == {"vae", "pca"}
    metric_names = [m["name"] for m in experiment["metricInfos"]]
    assert {"test/elbo", "test/iwae_4", "test/active_units",
            "test/reconstruction_squared_error"} <= {m["tag"] for m in metric_names}
    groups = board.post("/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 100,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_RUNNING"],
        "colParams": [{"metric": name} for name in metric_names]})["sessionGroups"]
    by_name = {g["name"]: g for g in groups}
    root = os.path.normpath(logs["root"])
    assert set(by_name) == {os.path.join(root, n) for n in ("tiny", "compare/pca_k2",
                                                            "compare/vae_k2")}
    ours = by_name[os.path.join(root, "tiny")]
    assert ours["hparams"]["latent_dim"] == 3 and ours["hparams"]["model"] == "vae"
    values = {m["name"]["tag"]: m["value"] for m in ours["metricValues"]}
    for key in ("elbo", "reconstruction", "kl", "iwae_4"):
        assert values[f"test/{key}"] == pytest.approx(logs["metrics"][key], rel=1e-6), key
    _, x_test, _ = _evaluation_images("test")
    mu = model.encode(x_test).mean().numpy().astype(np.float64)
    assert values["test/active_units"] == np.sum(np.var(mu, axis=0) > 0.01)
    pca = by_name[os.path.join(root, "compare/pca_k2")]
    assert pca["hparams"]["model"] == "pca" and pca["hparams"]["latent_dim"] == 2
    assert {m["name"]["tag"]: m["value"] for m in pca["metricValues"]}[
        "test/reconstruction_squared_error"] == pytest.approx(
        logs["compared"]["results"]["pca"]["2"]["reconstruction_squared_error"], rel=1e-6)


@pytest.mark.parametrize("run", [END, EVALUATION])
def test_the_projector_shows_the_test_sets_codes_with_their_digits_and_labels(run, board, model):
    assert run in board.get("/data/plugin/projector/runs")
    (embedding,) = board.get("/data/plugin/projector/info", run=run)["embeddings"]
    name = embedding["tensorName"]
    x, x_test, y = _evaluation_images("test")
    assert name == "z_mean/.ATTRIBUTES/VARIABLE_VALUE"
    assert embedding["tensorShape"] == [len(x), CONFIG.latent_dim]
    assert embedding["sprite"]["singleImageDim"] == [28, 28]
    codes = np.frombuffer(board.raw("/data/plugin/projector/tensor?" + urllib.parse.urlencode(
        {"run": run, "name": name})), np.float32).reshape(len(x), CONFIG.latent_dim)
    np.testing.assert_allclose(codes, model.encode(x_test).mean().numpy(), atol=1e-5)
    rows = board.raw("/data/plugin/projector/metadata?" + urllib.parse.urlencode(
        {"run": run, "name": name})).decode().splitlines()
    assert rows[0] == "label\tindex" and [int(r.split("\t")[0]) for r in rows[1:]] == list(y)
    sheet = tf.io.decode_png(board.raw("/data/plugin/projector/sprite_image?" +
                                       urllib.parse.urlencode({"run": run, "name": name})))
    assert sheet.shape == (16 * 28, 16 * 28, 1)              # 256 digits, 16 a side
    np.testing.assert_array_equal(sheet[28:56, 56:84], np.round(x[18] * 255))  # row 1, col 2


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install "
                                             "chromium; .ci/run installs it)")
def test_chromium_renders_each_dashboard(board, tmp_path):
    shots = {}
    for dashboard in DASHBOARDS:
        path = tmp_path / f"{dashboard}.png"
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / ('profile-' + dashboard)}",
             "--window-size=1280,800", "--virtual-time-budget=15000", f"--screenshot={path}",
             f"{board.url}/#{dashboard}"], capture_output=True, timeout=120)
        assert path.exists(), done.stderr.decode()[-2000:]
        shots[dashboard] = tf.io.decode_png(path.read_bytes(), channels=3).numpy()
    for dashboard, shot in shots.items():
        assert shot.shape == (800, 1280, 3), dashboard
        # TensorBoard's orange bar on top, and a dashboard below it, not a blank page.
        assert np.abs(shot[5, 640].astype(int) - (245, 124, 0)).max() < 40, dashboard
        assert shot[100:].std() > 20, dashboard
    # Four dashboards, four pictures.
    for a in DASHBOARDS:
        for b in DASHBOARDS[DASHBOARDS.index(a) + 1:]:
            assert np.abs(shots[a].astype(int) - shots[b]).mean() > 1, (a, b)
