"""SavedModel and TFLite export, checked with the clients that load them: TensorFlow's
graph-session loader (what TF Serving's C++ loader does), `saved_model_cli show`
and `run`, a process that imports only TensorFlow, and the TFLite interpreter,
each against the Keras model's own numbers."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import data, export, factory, layers, objectives
from tfp_vae.config import preset
from tfp_vae.models import VAE

K = 3
SEED = np.array([3, 4], np.int32)
IWAE_K = 150                    # > export.IWAE_CHUNK: two chunks, the last one partial


@pytest.fixture(scope="module")
def trained():
    """A tiny VAE after 8 steps on real digits, and 6 test images."""
    keras.utils.set_random_seed(0)
    vae = VAE(layers.GaussianEncoder(K, hidden_units=(32,)),
              layers.BernoulliDecoder((28, 28, 1), hidden_units=(32,)), seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    vae.fit(data.load("mnist_5k", "train", batch_size=32, limit=256, binarize="static"),
            epochs=1, verbose=0)
    x, _ = data.load_arrays("mnist_5k", "test")
    return vae, (x[:6] > 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    vae, _ = trained
    return export.export_saved_model(vae, str(tmp_path_factory.mktemp("export") / "sm"))


def inputs(x, z, conditional=False):
    """The feeds of every signature, by name."""
    y = {"y": np.arange(len(x), dtype=np.int32) % 3} if conditional else {}
    yz = {"y": np.arange(len(z), dtype=np.int32) % 3} if conditional else {}
    label = {"label": np.int32(2)} if conditional else {}
    return {"encode": {"x": x, **y}, "decode": {"z": z, **yz},
            "sample": {"n": np.int32(5), "seed": SEED, **label},
            "reconstruct": {"x": x, **y}, "elbo": {"x": x, **y, "seed": SEED},
            "iwae": {"x": x, **y, "k": np.int32(IWAE_K), "seed": SEED}}


def keras_outputs(model, feeds, conditional=False):
    """What the Keras model gives for those feeds, signature by signature."""
    def xs(f):
        return (f["x"], f["y"]) if conditional else f["x"]

    q = model.encode(xs(feeds["encode"]))
    terms = model.elbo(xs(feeds["elbo"]), seed=SEED)
    prior_z = model.prior_distribution().sample(5, seed=SEED)
    labels = [tf.fill([5], 2)] if conditional else []
    decode_y = [feeds["decode"]["y"]] if conditional else []
    return {
        "encode": {"loc": q.mean(), "scale": q.stddev()},
        "decode": {"mean": model.decode(feeds["decode"]["z"], *decode_y).mean()},
        "sample": {"z": prior_z, "mean": model.decode(prior_z, *labels).mean()},
        "reconstruct": {"mean": model(xs(feeds["reconstruct"]))},
        "elbo": {"elbo": terms.elbo, "reconstruction": terms.reconstruction, "kl": terms.kl},
        "iwae": {"log_likelihood": model.iwae_bound(xs(feeds["iwae"]), tf.constant(IWAE_K),
                                                    seed=SEED, chunk_size=export.IWAE_CHUNK)},
    }


def graph_session(path, name, feeds) -> dict:
    """Runs signature `name` as TF Serving does: the SavedModel loaded into a
    TF1 graph session, its variables restored by the loader."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        signature = meta.signature_def[name]
        return session.run({k: v.name for k, v in signature.outputs.items()},
                           {signature.inputs[k].name: v for k, v in feeds.items()})


def assert_outputs(got, want, where):
    assert sorted(got) == sorted(want), where
    for key, value in want.items():
        np.testing.assert_allclose(got[key], np.asarray(value), rtol=1e-5, atol=1e-5,
                                   err_msg=f"{where}/{key}")


def test_every_signature_runs_in_a_graph_session_with_the_keras_numbers(trained, exported):
    vae, x = trained
    z = np.random.default_rng(0).normal(size=(4, K)).astype(np.float32)
    feeds = inputs(x, z)
    want = keras_outputs(vae, feeds)
    for name in export.SIGNATURES:
        assert_outputs(graph_session(exported, name, feeds[name]), want[name], name)
    # serving_default is encode: images to their codes.
    assert_outputs(graph_session(exported, "serving_default", feeds["encode"]), want["encode"],
                   "serving_default")
    # The k-sample bound lies above the ELBO (Burda et al. 2016): compare with
    # a 2,000-draw estimate of the ELBO, not the one-draw value.
    log_w = objectives.log_weights(x, vae.encode(x), vae.decode, vae.prior_distribution(),
                                   seed=(9, 9), num_samples=2000).numpy()     # [S, B]
    elbo, stderr = log_w.mean(0), log_w.std(0) / np.sqrt(len(log_w))
    assert np.all(want["iwae"]["log_likelihood"].numpy() >= elbo - 5 * stderr)


def test_a_conditional_models_signatures_take_the_labels(tmp_path):
    config = preset("tiny").replace(conditional=True)
    cvae = factory.build_vae(config, (28, 28, 1), num_classes=3)
    path = export.export_saved_model(cvae, str(tmp_path / "cvae"))
    x = (np.random.default_rng(1).uniform(size=(4, 28, 28, 1)) > 0.5).astype(np.float32)
    z = np.random.default_rng(2).normal(size=(4, 2)).astype(np.float32)
    feeds = inputs(x, z, conditional=True)
    want = keras_outputs(cvae, feeds, conditional=True)
    for name in export.SIGNATURES:
        assert_outputs(graph_session(path, name, feeds[name]), want[name], name)


def _cli(*args):
    return subprocess.run(["saved_model_cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.slow
def test_saved_model_cli_shows_every_signature_and_runs_every_kind_of_input(trained, exported, tmp_path):
    vae, x = trained
    shown = _cli("show", "--dir", exported, "--all")
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in export.SIGNATURES + ("serving_default",):
        assert f"signature_def['{name}']" in shown.stdout, name
    assert "inputs['x'] tensor_info:" in shown.stdout and "shape: (-1, 28, 28, 1)" in shown.stdout

    z = np.random.default_rng(0).normal(size=(4, K)).astype(np.float32)
    feeds = inputs(x, z)
    want = keras_outputs(vae, feeds)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "z.npy", z)
    arrays = {"x": f"x={tmp_path / 'x.npy'}", "z": f"z={tmp_path / 'z.npy'}"}
    # As a user types them, each a process, all at once. The CLI's own part is
    # reading --inputs files and --input_exprs literals and writing the outputs;
    # these three pass every input name and kind through it (the numbers of all
    # six, in the TF1 session the CLI also loads them into, are checked above).
    runs = {}
    for name in ("iwae", "decode", "sample"):
        files = [arrays[k] for k in feeds[name] if k in arrays]
        # saved_model_cli reads expressions as Python literals.
        exprs = [f"{k}={v.tolist()!r}" for k, v in feeds[name].items() if k not in arrays]
        command = ["run", "--dir", exported, "--tag_set", "serve", "--signature_def", name,
                   "--outdir", str(tmp_path / name)]
        command += (["--inputs", ";".join(files)] if files else [])
        command += (["--input_exprs", ";".join(exprs)] if exprs else [])
        runs[name] = subprocess.Popen(["saved_model_cli", *command], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    for name, proc in runs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
        got = {key: np.load(tmp_path / name / f"{key}.npy") for key in want[name]}
        assert_outputs(got, want[name], name)


# Runs in a fresh interpreter: loads the SavedModel with TensorFlow alone and
# calls two signatures; says whether tfp_vae or TFP got imported.
_TENSORFLOW_ONLY = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    m = tf.saved_model.load(sys.argv[1])
    x = np.zeros((2, 28, 28, 1), np.float32)
    m.signatures["encode"](x=x)
    m.signatures["elbo"](x=x, seed=tf.constant([1, 2]))
    assert "tfp_vae" not in sys.modules, "the SavedModel pulled in tfp_vae"
    assert not any(m.startswith("tensorflow_probability") for m in sys.modules), (
        "the SavedModel pulled in tensorflow_probability")
""")


@pytest.mark.slow
def test_a_process_that_imports_only_tensorflow_loads_it(exported):
    subprocess.run([sys.executable, "-c", _TENSORFLOW_ONLY, exported], check=True, timeout=300,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_decode_and_encode_convert_to_tflite_with_the_keras_numbers(trained, tmp_path):
    vae, x = trained
    path = export.export_tflite(vae, str(tmp_path / "vae.tflite"))
    interpreter = tf.lite.Interpreter(model_path=path)
    assert sorted(interpreter.get_signature_list()) == ["decode", "encode"]
    z = np.random.default_rng(0).normal(size=(4, K)).astype(np.float32)
    decoded = interpreter.get_signature_runner("decode")(z=z)["mean"]
    # TFLite's float32 kernels sum in their own order: pixel probabilities
    # agree to a few float32 roundings of the logits.
    np.testing.assert_allclose(decoded, vae.decode(z).mean().numpy(), atol=1e-5)
    encoded = interpreter.get_signature_runner("encode")(x=x)
    np.testing.assert_allclose(encoded["loc"], vae.encode(x).mean().numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="cannot convert to TFLite"):
        export.export_tflite(vae, str(tmp_path / "no.tflite"), signatures=("sample",))


def test_model_export_writes_the_same_signatures_as_tfp_vae_export(trained, exported,
                                                                   tmp_path):
    vae, x = trained
    vae.export(str(tmp_path / "via_keras"))
    ours = tf.saved_model.load(exported).signatures
    keras_way = tf.saved_model.load(str(tmp_path / "via_keras")).signatures
    assert sorted(keras_way) == sorted(ours) == sorted(export.SIGNATURES + ("serving_default",))
    np.testing.assert_array_equal(keras_way["encode"](x=x)["loc"].numpy(),
                                  ours["encode"](x=x)["loc"].numpy())
    ae = factory.build_autoencoder(preset("tiny"), (28, 28, 1))
    ae.export(str(tmp_path / "ae"))
    signatures = tf.saved_model.load(str(tmp_path / "ae")).signatures
    assert sorted(signatures) == sorted(export.AUTOENCODER_SIGNATURES + ("serving_default",))
    np.testing.assert_allclose(signatures["reconstruct"](x=x)["mean"].numpy(), ae(x).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_serving_versions_name_the_newest_export(trained, exported, tmp_path):
    base = str(tmp_path / "serving")
    export.serve_as_version(exported, base, 8)
    export.serve_as_version(exported, base, 16)          # a resumed run re-exports
    assert sorted(os.listdir(base)) == ["16"]
    assert os.path.exists(os.path.join(base, "16", "saved_model.pb"))


def test_export_replaces_the_previous_one_whole_or_not_at_all(trained, tmp_path):
    vae, x = trained
    path = str(tmp_path / "saved_model")
    export.export_saved_model(vae, path)
    with open(os.path.join(path, "stale.txt"), "w") as f:
        f.write("from the previous export")
    export.export_saved_model(vae, path)
    assert not os.path.exists(os.path.join(path, "stale.txt"))      # replaced whole
    assert sorted(os.listdir(tmp_path)) == ["saved_model"]            # no temp dirs left

    # An export that fails part-way (inputs of the wrong shape cannot be
    # traced) leaves the previous export in place and readable.
    with open(os.path.join(path, "stale.txt"), "w") as f:
        f.write("still here")
    with pytest.raises(Exception):
        export.export_saved_model(vae, path, data_shape=(5,))
    assert sorted(os.listdir(tmp_path)) == ["saved_model"]
    assert os.path.exists(os.path.join(path, "stale.txt"))
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.signatures["encode"](x=x)["loc"].numpy(),
                               vae.encode(x).mean().numpy(), rtol=1e-5, atol=1e-6)
