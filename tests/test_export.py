"""SavedModel export: every signature round-trips into a process that imports only
TensorFlow, and an export replaces the previous one whole or not at all."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import data, export, layers, objectives
from tfp_vae.models import VAE

# Runs in a fresh interpreter: loads the SavedModel with TensorFlow alone and
# calls every signature on the inputs the parent saved; writes the outputs.
_CONSUMER = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    path, inputs, outputs = sys.argv[1:]
    m = tf.saved_model.load(path)
    i = dict(np.load(inputs))
    s = m.signatures
    out = {}
    for name, value in s["encode"](x=i["x"]).items():
        out["encode/" + name] = value
    out["decode/mean"] = s["decode"](z=i["z"])["mean"]
    out["reconstruct/mean"] = s["reconstruct"](x=i["x"])["mean"]
    for name, value in s["elbo"](x=i["x"], seed=i["seed"]).items():
        out["elbo/" + name] = value
    for name, value in s["sample"](n=tf.constant(5), seed=i["seed"]).items():
        out["sample/" + name] = value
    out["iwae/log_likelihood"] = s["iwae"](x=i["x"], k=tf.constant(int(i["k"])),
                                           seed=i["seed"])["log_likelihood"]
    assert "tfp_vae" not in sys.modules, "the SavedModel pulled in tfp_vae"
    assert not any(m.startswith("tensorflow_probability") for m in sys.modules), (
        "the SavedModel pulled in tensorflow_probability")
    np.savez(outputs, **{k: v.numpy() for k, v in out.items()})
""")


@pytest.fixture(scope="module")
def trained():
    """A tiny VAE after 8 steps on real digits, and 6 test images."""
    keras.utils.set_random_seed(0)
    vae = VAE(layers.GaussianEncoder(3, hidden_units=(32,)),
              layers.BernoulliDecoder((28, 28, 1), hidden_units=(32,)), seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    vae.fit(data.load("mnist_5k", "train", batch_size=32, limit=256, binarize="static"),
            epochs=1, verbose=0)
    x, _ = data.load_arrays("mnist_5k", "test")
    return vae, (x[:6] > 0.5).astype(np.float32)


@pytest.mark.slow
def test_every_signature_round_trips_into_a_tensorflow_only_process(trained, tmp_path):
    vae, x = trained
    path = export.export_saved_model(vae, str(tmp_path / "saved_model"))
    z = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    seed = np.array([3, 4], np.int32)
    k = 150                      # > export.IWAE_CHUNK: two chunks, the last one partial
    np.savez(tmp_path / "in.npz", x=x, z=z, seed=seed, k=k)
    subprocess.run([sys.executable, "-c", _CONSUMER, path, str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npz")], check=True, timeout=300,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    got = dict(np.load(tmp_path / "out.npz"))

    # The parent's numbers from the Keras model. Seeded draws agree because
    # both sides run TensorFlow's own (non-XLA) stateless kernels.
    q = vae.encode(x)
    terms = vae.elbo(x, seed=seed)
    prior_z = vae.prior_distribution().sample(5, seed=seed)
    want = {
        "encode/loc": q.mean(), "encode/scale": q.stddev(),
        "decode/mean": vae.decode(z).mean(),
        "reconstruct/mean": vae(x),
        "elbo/elbo": terms.elbo, "elbo/reconstruction": terms.reconstruction,
        "elbo/kl": terms.kl,
        "sample/z": prior_z, "sample/mean": vae.decode(prior_z).mean(),
        "iwae/log_likelihood": vae.iwae_bound(x, tf.constant(k), seed=seed,
                                              chunk_size=export.IWAE_CHUNK),
    }
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], np.asarray(value), rtol=1e-5, atol=1e-5,
                                   err_msg=name)
    assert got["encode/loc"].shape == (6, 3) and got["sample/mean"].shape == (5, 28, 28, 1)
    # The k-sample bound lies above the ELBO (Burda et al. 2016): compare with
    # a 2,000-draw estimate of the ELBO, not the one-draw value above.
    log_w = objectives.log_weights(x, vae.encode(x), vae.decode, vae.prior_distribution(),
                                   seed=(9, 9), num_samples=2000).numpy()     # [S, B]
    elbo, stderr = log_w.mean(0), log_w.std(0) / np.sqrt(len(log_w))
    assert np.all(got["iwae/log_likelihood"] >= elbo - 5 * stderr)


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
