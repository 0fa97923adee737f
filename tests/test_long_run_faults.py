"""Faults a long run meets, end to end through scripts/train.py: a busy
workdir, a full disk, a lost worker, and a kill during the end-of-run phase.

The helpers (the tiny set-up, starting and finishing a run, comparing
checkpoints) are test_faults.py's.
"""

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_distribute import _free_ports as free_ports
from test_faults import (REPO, SCRIPT, _env, assert_same_state, checkpoint_steps, finish,
                         read_json, run, start, tensors, wait_for)

# Four steps an epoch: the runs here are about what happens between epochs.
QUICK = ["--preset=tiny", "--limit=128", "--batch_size=32", "--jit=false",
         "--figures=false", "--export=false", "--eval_iwae_k=2"]
QUICK_STEPS = 4


def quick(workdir, *extra, **kw):
    return subprocess.Popen([sys.executable, SCRIPT, f"--workdir={workdir}", *QUICK, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=kw.get("env", _env()))


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1] if err.strip() else ""


def leftovers(workdir) -> list[str]:
    """Temporary files of a write that did not finish, anywhere in `workdir`."""
    found = []
    for root, dirs, names in os.walk(workdir):
        for name in dirs + names:
            if name.endswith((".tmp", ".old")) or "_temp" in name or ".tmp" in name:
                found.append(os.path.join(root, name))
    return found


# -- one run per workdir ------------------------------------------------------------------


@pytest.mark.slow
def test_a_busy_workdir_is_refused_at_once_and_a_killed_holder_leaves_it_usable(tmp_path):
    workdir = str(tmp_path / "run")
    long = "--epochs=100"                      # longer than the test: it is killed
    holder = start(workdir, long)
    wait_for(os.path.join(workdir, "checkpoints", "ckpt-64.index"), holder)
    config_mtime = os.stat(os.path.join(workdir, "config.json")).st_mtime_ns

    began = time.monotonic()
    code, out, err = run(workdir, long)
    took = time.monotonic() - began
    assert code == 75, err
    assert last_line(err) == err.strip(), err                # one line, no traceback
    assert err.startswith(f"busy: workdir {workdir} is in use by pid {holder.pid} on host "), err
    assert " since " in err and "another --workdir" in err
    assert out == ""
    assert took < 20, f"refused after {took:.1f} s"          # before TensorFlow loads
    assert os.stat(os.path.join(workdir, "config.json")).st_mtime_ns == config_mtime

    # Evaluating a busy run is allowed: it reads a complete checkpoint. (In
    # this process, which is not the lock's holder either: what
    # scripts/evaluate.py calls.)
    from tfp_vae import evaluate
    evaluation = evaluate.evaluate_workdir(workdir, k=2, limit=16, probe=False, jit=False)
    assert evaluation["num_examples"] == 16 and np.isfinite(evaluation["elbo"]), evaluation
    assert holder.poll() is None, "the holder finished during the test: make it longer"

    holder.kill()                          # the kernel drops the lock with the process
    finish(holder)
    # Free for the next run at once (what that run does with it is the Lock's
    # test below; that a re-run resumes, test_faults').
    from tfp_vae import workdir as workdir_lib
    lock = workdir_lib.Lock(workdir)
    assert lock.acquire()
    lock.release()
    assert checkpoint_steps(workdir)


def test_the_lock_names_its_holder_and_is_free_again_once_released(tmp_path):
    from tfp_vae import workdir as workdir_lib
    from tfp_vae.config import Config
    from tfp_vae.errors import WorkdirBusy

    lock = workdir_lib.Lock(str(tmp_path))
    assert lock.acquire() and lock.acquire()                 # re-entrant in one process
    info = json.loads((tmp_path / ".lock").read_text())
    assert info["pid"] == os.getpid() and info["host"] and info["since"]
    # Another process (a child: flock locks are per open file) is refused.
    probe = ("import sys; from tfp_vae import workdir as w; w.Lock(sys.argv[1]).acquire()")
    child = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert child.returncode != 0 and "WorkdirBusy" in child.stderr
    assert f"in use by pid {os.getpid()}" in child.stderr
    lock.release()
    assert subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                          env={**os.environ, "PYTHONPATH": REPO}).returncode == 0
    # A missing workdir is not made by the lock; multi-worker tasks lock by name.
    assert not workdir_lib.Lock(str(tmp_path / "new")).acquire()
    assert not (tmp_path / "new").exists()
    tf_config = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    os.environ["TF_CONFIG"] = json.dumps(tf_config)
    try:
        multi = Config(strategy="multi_worker")
        assert workdir_lib.lock(multi, str(tmp_path)).path.endswith(".lock-worker-1")
        tf_config["task"]["index"] = 0
        os.environ["TF_CONFIG"] = json.dumps(tf_config)
        assert workdir_lib.lock(multi, str(tmp_path)).path.endswith(os.sep + ".lock")
    finally:
        del os.environ["TF_CONFIG"]
    assert issubclass(WorkdirBusy, Exception)


# -- a full disk --------------------------------------------------------------------------


def test_a_failed_write_removes_its_temporary_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from tfp_vae import files
    from tfp_vae.errors import WriteFailed

    path = tmp_path / "metrics.json"
    files.write_json(path, {"old": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(WriteFailed) as raised:
        files.write_json(path, {"new": 2})
    message = str(raised.value)
    assert message.startswith(f"could not write metrics.json to {path} (No space left on device;")
    assert " free there)" in message and "re-run the same command" in message
    assert "\n" not in message
    assert read_json(path) == {"old": 1}
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]
    with pytest.raises(WriteFailed):
        with files.atomic_directory(tmp_path / "saved_model") as tmp:
            with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
                f.write(b"x")
                os.fsync(f.fileno())
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


def test_a_failed_checkpoint_save_removes_what_it_wrote(tmp_path, monkeypatch):
    import tensorflow as tf
    from tfp_vae.checkpoints import Checkpoints
    from tfp_vae.errors import WriteFailed

    model = tf.Module()
    model.weights = [tf.Variable(np.ones(3, np.float32))]
    checkpoints = Checkpoints(model, tf.Module(), str(tmp_path))
    checkpoints.save(1)
    real_save = tf.train.CheckpointManager.save

    def save_then_fail(self, checkpoint_number=None, **kw):
        # What SaveV2 leaves when the disk fills: the temporary folder.
        os.makedirs(os.path.join(self.directory, f"ckpt-{checkpoint_number}_temp"))
        open(os.path.join(self.directory, "checkpoint.tmp0123"), "w").close()
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{self.directory}/ckpt-2_temp/part-0.tempstate1; No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save_then_fail)
    with pytest.raises(WriteFailed, match=r"could not write checkpoint ckpt-2 to .* \(No space "
                                          r"left on device; .* free there\)"):
        checkpoints.save(2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-1.data-00000-of-00001",
                                            "ckpt-1.index"]
    monkeypatch.setattr(tf.train.CheckpointManager, "save", real_save)
    model.weights[0].assign([5.0, 5.0, 5.0])
    assert Checkpoints(model, tf.Module(), str(tmp_path)).restore().endswith("ckpt-1")
    np.testing.assert_array_equal(model.weights[0].numpy(), np.ones(3))


@contextlib.contextmanager
def tmpfs(path, size_kb):
    """A tmpfs of `size_kb` at `path` (root only); yields a function that resizes it."""
    os.makedirs(path)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs",
                              str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); "
                    "the injected-error tests above cover the write path")
    try:
        yield lambda kb: subprocess.run(["mount", "-o", f"remount,size={kb}k", str(path)],
                                        check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


FULL_DISK = ["--epochs=4", "--figures=true", "--export=true"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The full-disk runs' uninterrupted reference: its workdir."""
    reference = str(tmp_path_factory.mktemp("full_disk") / "reference")
    code, _, err = finish(quick(reference, *FULL_DISK))
    assert code == 0, err
    return reference


def _stops_at_a_full_disk(workdir, reference) -> str:
    """Runs until the disk is full; checks the one-line stop and what it left;
    the line."""
    code, _, err = finish(quick(workdir, *FULL_DISK))
    assert code == 74, err
    message = last_line(err)
    assert message.startswith("write failed: could not write "), err
    assert "No space left on device" in message and " free there)" in message
    assert "Traceback" not in err
    assert not leftovers(workdir), leftovers(workdir)
    assert checkpoint_steps(workdir)
    for step in checkpoint_steps(workdir):          # every one written stays readable
        ours = os.path.join(workdir, "checkpoints", f"ckpt-{step}")
        theirs = os.path.join(reference, "checkpoints", f"ckpt-{step}")
        if os.path.exists(theirs + ".index"):        # (the reference rotated older ones away)
            assert_same_state(theirs, ours)
        else:
            assert tensors(ours)
    return message


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="a tmpfs needs root; the injected-error tests "
                    "above cover the write path without it")
def test_a_full_disk_stops_in_one_line_and_the_freed_run_ends_bit_identical(tmp_path,
                                                                           uninterrupted):
    # One run on a disk that grows. Room for 2.5 checkpoints fills at the
    # third. Resumed with room for 4.7 (MAX_TO_KEEP = 3 kept, a fourth while it
    # is written), it trains to the end and fills at the end-of-run artifacts
    # (figures, weights, SavedModel: 2.5 checkpoints' worth). With room
    # enough, it ends as the uninterrupted reference did.
    reference = uninterrupted
    ckpt = os.path.join(reference, "checkpoints", f"ckpt-{4 * QUICK_STEPS}")
    size_kb = sum(os.path.getsize(ckpt + s) for s in (".index", ".data-00000-of-00001")) / 1024

    with tmpfs(tmp_path / "disk", int(2.5 * size_kb)) as resize:
        workdir = str(tmp_path / "disk" / "run")
        message = _stops_at_a_full_disk(workdir, reference)
        assert message.startswith("write failed: could not write checkpoint ckpt-12 "), message
        resize(int(4.7 * size_kb))
        message = _stops_at_a_full_disk(workdir, reference)
        assert "checkpoint" not in message.split(" to ")[0], message
        assert checkpoint_steps(workdir)[-1] == 4 * QUICK_STEPS

        resize(64 * 1024)                               # space freed
        code, out, err = finish(quick(workdir, *FULL_DISK))
        assert code == 0, err
        assert "Resuming from ckpt-" in out
        final = f"ckpt-{4 * QUICK_STEPS}"
        assert_same_state(os.path.join(reference, "checkpoints", final),
                          os.path.join(workdir, "checkpoints", final))
        assert read_json(os.path.join(workdir, "history.json")) == \
            read_json(os.path.join(reference, "history.json"))
        ours, theirs = (read_json(os.path.join(d, "metrics.json")) for d in (workdir, reference))
        for key in ("elbo", "kl", "reconstruction", "iwae_2", "steps"):
            assert ours[key] == theirs[key], key
        assert os.path.exists(os.path.join(workdir, "saved_model", "saved_model.pb"))
        assert not leftovers(workdir)


# -- a lost worker ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_lost_worker_stops_its_peer_in_bounded_time_and_both_resume(tmp_path):
    workdir = str(tmp_path / "run")
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    flags = ["--limit=1024", "--batch_size=64", "--epochs=3", "--strategy=multi_worker"]

    def workers():
        procs = []
        for index in range(2):
            env = {**_env(), "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}})}
            procs.append(quick(workdir, *flags, env=env))
        return procs

    chief, peer = workers()
    for line in chief.stdout:                  # 16 steps an epoch: kill it within epoch 2
        if line.startswith("epoch 1/"):
            break
    time.sleep(0.5)
    peer.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code, _, err = finish(chief, timeout=300)
    took = time.monotonic() - killed
    finish(peer)
    assert code == 69, err
    message = last_line(err)
    assert message.startswith(f"worker lost: peer worker 1 ({cluster['worker'][1]}) stopped "
                              "or froze; restart every worker with the same command"), err
    assert "Traceback" not in err
    # README: TF's heartbeats find a dead peer within about 10 s.
    assert took < 60, f"the survivor took {took:.0f} s to stop"
    resume_at = message.rsplit("the chief's ", 1)[1]

    results = [finish(p, timeout=600) for p in workers()]
    for code, _, err in results:
        assert code == 0, err
    assert f"Resuming from {resume_at}:" in results[0][1]
    assert checkpoint_steps(workdir)[-1] == 3 * 16
    assert read_json(os.path.join(workdir, "metrics.json"))["steps"] == 3 * 16


# -- a kill during the end-of-run phase ---------------------------------------------------


@pytest.mark.slow
def test_a_run_killed_after_its_last_epoch_finishes_without_training_again(tmp_path):
    workdir = str(tmp_path / "run")
    extra = ["--epochs=2", "--figures=true", "--export=true"]   # a long end-of-run phase
    proc = quick(workdir, *extra)
    for line in proc.stdout:                   # printed once the checkpoint is listed
        if line.startswith("epoch 2/2:"):
            break
    proc.kill()
    finish(proc)
    if os.path.exists(os.path.join(workdir, "metrics.json")):
        pytest.fail("the end-of-run phase finished before the kill")
    code, out, err = finish(quick(workdir, *extra))
    assert code == 0, err
    assert f"Resuming from ckpt-{2 * QUICK_STEPS}: epoch 3, step {2 * QUICK_STEPS}" in out
    assert "Epoch " not in out and "epoch 1/" not in out      # no training line
    metrics = read_json(os.path.join(workdir, "metrics.json"))
    assert metrics["steps"] == 2 * QUICK_STEPS and np.isfinite(metrics["elbo"])
    assert os.path.exists(os.path.join(workdir, "saved_model", "saved_model.pb"))
