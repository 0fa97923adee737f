"""tf.distribute: Mirrored over two logical CPUs, MultiWorkerMirrored over two
local processes, checkpoints across strategies, and per-replica seeds.

Logical devices must be configured before TensorFlow initialises its devices,
and each multi-worker task needs a process of its own, so the distributed
code runs in subprocesses that print JSON; the tests read it.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Every test here starts TensorFlow in subprocesses of its own.
pytestmark = pytest.mark.slow

# Shared by every subprocess: the repository on the path, TF quiet.
_PRELUDE = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
"""

_MIRRORED = _PRELUDE + """
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tfp_vae import data, execution, factory, input_pipeline
from tfp_vae.config import Config

workdir = sys.argv[1]
# One step per call without XLA on one device: what compile_model makes of
# the defaults (XLA, 32 steps per call) under Mirrored here, asked for below.
config = Config(latent_dim=8, hidden_units=(64,), batch_size=64, epochs=3, seed=5,
                steps_per_execution=1, jit=False)
x = data.load_arrays("mnist_5k", "train")[0][:512]
out = {}

def run(strategy, config):
    with strategy.scope():
        keras.utils.set_random_seed(config.seed)
        model = factory.build_vae(config, x.shape[1:])
        optimizer = execution.compile_model(model, config)
    losses = [model.fit(input_pipeline.train_dataset(config, x, e), initial_epoch=e, epochs=e + 1,
                        verbose=0).history["loss"][0] for e in range(config.epochs)]
    return model, optimizer, losses

one, one_opt, out["one_device_losses"] = run(tf.distribute.get_strategy(), config)
mirrored = execution.make_strategy(config.replace(strategy="mirrored"))
out["replicas"] = mirrored.num_replicas_in_sync
two, two_opt, out["mirrored_losses"] = run(
    mirrored, config.replace(strategy="mirrored", jit=True, steps_per_execution=32))

out["mirrored_jit"] = bool(two.jit_compile)
out["mirrored_steps_per_execution"] = int(two.steps_per_execution)
# The reparameterisation noise of each replica at the same step.
def noise():
    return tf.random.stateless_normal([4], seed=two._step_seed(0))
per_replica = mirrored.run(tf.function(noise))
out["replica_noise"] = [v.numpy().tolist() for v in mirrored.experimental_local_results(per_replica)]

# A checkpoint written under Mirrored restores under the default strategy.
path = tf.train.Checkpoint(model=two, optimizer=two_opt).write(os.path.join(workdir, "m", "ckpt"))
keras.utils.set_random_seed(99)
fresh = factory.build_vae(config, x.shape[1:])
fresh_opt = execution.compile_model(fresh, config)
tf.train.Checkpoint(model=fresh, optimizer=fresh_opt).read(path).assert_existing_objects_matched()
out["mirrored_to_default_weights_equal"] = all(
    np.array_equal(a, b) for a, b in zip(two.get_weights(), fresh.get_weights()))
out["mirrored_to_default_optimizer_equal"] = all(
    np.array_equal(a.numpy(), b.numpy()) for a, b in zip(two_opt.variables, fresh_opt.variables))

# Last, as a failed collective poisons the process: what XLA does with
# replicas on two CPUs of one process (compile_model turns it off there;
# steps_per_execution > 1 fails there too, see compile_model).
with mirrored.scope():
    probe = factory.build_vae(config, x.shape[1:])
    probe.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
try:
    probe.fit(input_pipeline.train_dataset(config, x, 0), verbose=0)
    out["xla_error"] = None
except Exception as e:
    lines = [l for l in str(e).splitlines() if "Trying to access" in l] or str(e).splitlines()
    out["xla_error"] = f"{type(e).__name__}: {lines[0].strip()}"
print("RESULT " + json.dumps(out))
"""

# Its own process: a second MirroredStrategy in one process reuses the first
# one's collective instance keys and aborts on the other model's shapes.
_RESUME = _PRELUDE + """
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfp_vae import train
from tfp_vae.config import Config

workdir = sys.argv[1]
out = {}
# A run checkpointed under the default strategy resumes under Mirrored.
config = Config(limit=256, latent_dim=2, hidden_units=(32,), batch_size=64, epochs=1,
                eval_iwae_k=4, figures=False, export=False, seed=5, jit=False)
first = train.train_and_evaluate(config, os.path.join(workdir, "run"), verbose=0)
second = train.train_and_evaluate(config.replace(epochs=2, strategy="mirrored"),
                                  os.path.join(workdir, "run"), verbose=0)
out["resumed_steps"] = [first["steps"], second["steps"]]
print("RESULT " + json.dumps(out))
"""

def _env():
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.pop("TF_CONFIG", None)
    return env


def _result(stdout: str) -> dict:
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _free_ports(n: int) -> list[int]:
    """n ports free on 127.0.0.1 now (bound together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _two_workers(script: str, *args) -> list[dict]:
    """`script` run as worker 0 (the chief) and worker 1 of a MultiWorkerMirrored
    cluster on localhost, with `args`; their RESULT dicts."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        env = _env()
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                    "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return _results(procs)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """Both Mirrored scripts, run side by side; their merged results."""
    workdir = tmp_path_factory.mktemp("mirrored")
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(workdir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env()) for script in (_MIRRORED, _RESUME)]
    out = {}
    for result in _results(procs):
        out.update(result)
    return out


def _results(procs) -> list[dict]:
    """Waits for every process; all must succeed; their RESULT dicts in order."""
    out = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=900)
            assert proc.returncode == 0, stderr[-3000:]
            out.append(_result(stdout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return out


def test_mirrored_over_two_cpus_follows_the_one_device_loss_trajectory(mirrored):
    assert mirrored["replicas"] == 2
    one, two = np.array(mirrored["one_device_losses"]), np.array(mirrored["mirrored_losses"])
    # Same data, same global batch (64 = 2 x 32), same initial weights; the
    # replicas' gradients are averaged, so only the reparameterisation noise
    # differs (each replica folds its id into the seed). Epoch losses fall
    # from ~540 to ~200 nats; Monte-Carlo noise moves them by ~1 nat.
    assert one[-1] < one[0] - 100
    np.testing.assert_allclose(two, one, rtol=0.03)


def test_jit_and_steps_per_execution_on_replicas_over_logical_cpus(mirrored):
    # compile_model falls back to one step per call in the graph executor ...
    assert mirrored["mirrored_jit"] is False
    assert mirrored["mirrored_steps_per_execution"] == 1
    # ... because XLA fails there on this TF version (shown, not hidden).
    if mirrored["xla_error"]:
        pytest.xfail("TF 2.21, MirroredStrategy over two logical CPUs: jit_compile=True "
                     f"fails with {mirrored['xla_error']}")


def test_replicas_draw_different_noise(mirrored):
    noise = np.array(mirrored["replica_noise"])
    assert noise.shape == (2, 4)
    assert not np.allclose(noise[0], noise[1])


def test_checkpoints_restore_across_strategies(mirrored):
    assert mirrored["mirrored_to_default_weights_equal"]
    assert mirrored["mirrored_to_default_optimizer_equal"]
    # Epoch 1 under the default strategy (4 steps), epoch 2 resumed under Mirrored.
    assert mirrored["resumed_steps"] == [4, 8]


# Two workers over a streamed folder: what each reads of epoch 1, then that epoch
# trained; then, in the same cluster, a run on in-memory arrays (sharded by data).
# No XLA (jit=False): on CPU replicas the step falls back to uncompiled anyway
# (the Mirrored test checks that), and compiling the end-of-run evaluation
# would only add to the time; the one-machine resume must match it.
_STREAM_WORKER = _PRELUDE + """
from tfp_vae import execution, input_pipeline, train
from tfp_vae.config import Config

folder, workdir, memory_workdir = sys.argv[1], sys.argv[2], sys.argv[3]
config = Config(dataset=folder, binarize="none", latent_dim=2, hidden_units=(16,), batch_size=16,
                epochs=1, eval_iwae_k=4, figures=False, export=False, seed=5, jit=False,
                strategy="multi_worker", cache_mb=0)      # stream the folder, small as it is
strategy = execution.make_strategy(config)
execution.make_strategy = lambda config: strategy   # one MultiWorkerMirrored per process
stream = input_pipeline.train_source(input_pipeline.load_splits(config))[0]
seen = []
for batch in input_pipeline.train_dataset(config, stream, 0, strategy=strategy):
    for x in strategy.experimental_local_results(batch):
        pixels = np.round(x.numpy() * 255).astype(int).reshape(len(x), -1)
        seen.append((pixels[:, 0] + 256 * pixels[:, 1]).tolist())   # the image's number
metrics = train.train_and_evaluate(config, workdir, verbose=0)
memory = train.train_and_evaluate(
    Config(limit=256, latent_dim=2, hidden_units=(32,), batch_size=64, epochs=2, eval_iwae_k=4,
           figures=False, export=False, seed=5, jit=False, strategy="multi_worker"),
    memory_workdir, verbose=0)
print("RESULT " + json.dumps({"seen": seen, "n": len(stream), "steps": metrics["steps"],
                              "memory": memory}))
"""

@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """_STREAM_WORKER run by a two-worker cluster over a folder of numbered PNGs."""
    import tensorflow as tf

    tmp_path = tmp_path_factory.mktemp("two_workers")
    folder = tmp_path / "images"
    for split, count in (("train", 150), ("test", 20)):
        os.makedirs(folder / split)
        for i in range(count):
            pixels = np.random.default_rng(i).integers(0, 256, (4, 4, 1), np.uint8)
            pixels.flat[:2] = (i % 256, i // 256)                  # its number, in two pixels
            tf.io.write_file(str(folder / split / f"{i:03d}.png"), tf.io.encode_png(pixels))
    results = _two_workers(_STREAM_WORKER, folder, tmp_path / "run", tmp_path / "memory")
    return {"tmp_path": tmp_path, "folder": folder, "results": results}


def test_two_workers_read_their_own_shards_of_a_stream_and_one_machine_resumes(two_workers):
    tmp_path, folder = two_workers["tmp_path"], two_workers["folder"]
    chief, other = two_workers["results"]
    n = chief["n"]                                   # train/ less the validation it carves
    steps = -(-n // 16)
    assert 100 < n < 150 and len(chief["seen"]) == len(other["seen"]) == steps
    # Each global batch of 16 is split 8 + 8 (the last as evenly as it goes) and
    # together the workers read every training image of the epoch once.
    assert all(len(a) == len(b) == 8 for a, b in zip(chief["seen"][:-1], other["seen"][:-1]))
    mine, theirs = ([i for batch in w["seen"] for i in batch] for w in (chief, other))
    assert not set(mine) & set(theirs) and len(set(mine + theirs)) == len(mine + theirs) == n
    assert set(mine + theirs) <= set(range(150))
    assert chief["steps"] == other["steps"] == steps
    # The chief's checkpoint resumes on one machine, without a strategy: here,
    # in the test's own process (nothing in it needs a cluster or devices).
    # The Config is the workers' less the strategy, one epoch more; a resume
    # must match the model and data settings of the run's config.json.
    from tfp_vae import train
    from tfp_vae.config import Config
    alone = train.train_and_evaluate(
        Config(dataset=str(folder), binarize="none", latent_dim=2, hidden_units=(16,),
               batch_size=16, epochs=2, eval_iwae_k=4, figures=False, export=False, seed=5,
               jit=False, cache_mb=0), str(tmp_path / "run"), verbose=0)
    assert alone["steps"] == 2 * steps


def test_multi_worker_mirrored_two_local_workers_train_and_the_chief_checkpoints(two_workers):
    tmp_path, chief, other = two_workers["tmp_path"], *(w["memory"] for w in two_workers["results"])
    assert chief["steps"] == other["steps"] == 2 * (256 // 64)
    # The workers hold the same (all-reduced) weights, so they score the test set alike.
    np.testing.assert_allclose(chief["elbo"], other["elbo"], rtol=1e-5)
    assert np.isfinite(chief["elbo"])
    # Worker 0 is the chief: it writes the real checkpoints and metrics.
    ckpt = tmp_path / "memory" / "checkpoints"
    assert (ckpt / "checkpoint").exists() and any(ckpt.glob("ckpt-8.index"))
    assert (tmp_path / "memory" / "metrics.json").exists()
