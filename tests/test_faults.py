"""Faults, end to end through scripts/train.py in subprocesses.

SIGKILL at a random moment, SIGTERM mid-epoch, corrupt checkpoints and a
diverging loss: each run is resumed with the same command and must end with
exactly the weights and optimizer state of an uninterrupted run. The runs
share one tiny set-up (64 steps an epoch, so a signal lands mid-epoch); one
run meets the faults in turn, so that the suite starts as few TensorFlow
processes as it can.
"""

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "train.py")
EPOCHS = 5
STEPS_PER_EPOCH = 64            # limit 128 / batch_size 2
TINY = ["--preset=tiny", "--limit=128", "--batch_size=2", f"--epochs={EPOCHS}", "--jit=false",
        "--figures=false", "--export=false", "--eval_iwae_k=2"]
FINAL = f"ckpt-{EPOCHS * STEPS_PER_EPOCH}"
# Bookkeeping, not training state: how many saves this directory has seen.
_NOT_STATE = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def start(workdir, *extra):
    return subprocess.Popen([sys.executable, SCRIPT, f"--workdir={workdir}", *TINY, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


def finish(proc, timeout=900):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run(workdir, *extra):
    return finish(start(workdir, *extra))


def wait_for(path, proc, timeout=900):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f"the run ended before {path} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def tensors(prefix):
    import tensorflow as tf
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k not in _NOT_STATE}


def assert_same_state(a, b):
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    assert any("optimizer/_trainable_variables" in k for k in ta)  # the weights are in there
    differ = [k for k in ta if not np.array_equal(ta[k], tb[k])]
    assert not differ, f"{a} and {b} differ in {differ}"


def checkpoint_steps(workdir):
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    return sorted(int(n[5:-6]) for n in names if n.startswith("ckpt-") and n.endswith(".index"))


def listed_steps(workdir):
    """Steps of the checkpoints the state file lists: what a resumed run tries.
    (A kill between writing a checkpoint and listing it leaves one unlisted.)"""
    import tensorflow as tf
    state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
    return sorted(int(p.rsplit("ckpt-", 1)[1]) for p in state.all_model_checkpoint_paths)


def _terminate_when(proc, prefix) -> str:
    """SIGTERM `proc` as soon as it prints a line starting with `prefix`; the
    lines it printed up to there."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            proc.terminate()
            break
    return "".join(lines)


@pytest.mark.slow
def test_kill_term_and_corrupt_checkpoint_resume_exactly(tmp_path):
    # One run meets the three faults in turn, beside an uninterrupted reference:
    # a SIGKILL, its newest checkpoint truncated, a SIGTERM mid-epoch of the
    # resumed run, and a last resume, which must end exactly as the reference.
    ref, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    reference, victim = start(ref), start(run_dir)

    # SIGKILL at a random moment once two checkpoints exist.
    wait_for(os.path.join(run_dir, "checkpoints", f"ckpt-{2 * STEPS_PER_EPOCH}.index"), victim)
    time.sleep(random.uniform(0.0, 0.5))
    victim.kill()
    code, _, _ = finish(victim)
    assert code == -9, "the run finished before the kill"
    steps = listed_steps(run_dir)
    assert steps[-1] < EPOCHS * STEPS_PER_EPOCH

    # The newest checkpoint is truncated too: the resumed run warns, falls back
    # to the one before (at most ckpt-192) and goes on. SIGTERM as its epoch 4
    # begins: it lands within that epoch's 64 steps.
    with open(os.path.join(run_dir, "checkpoints", f"ckpt-{steps[-1]}.data-00000-of-00001"),
              "r+b") as f:
        f.truncate(100)
    interrupted = start(run_dir)
    printed = _terminate_when(interrupted, "Epoch 4/")
    code, out, err = finish(interrupted)
    assert code == 130, err
    assert f"Resuming from ckpt-{steps[-2]}:" in printed + out
    assert f"ckpt-{steps[-1]} is unreadable" in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("interrupted:") and "Traceback" not in err, err
    step = int(message.split(" at step ")[1].split(";")[0])
    assert 3 * STEPS_PER_EPOCH < step < 4 * STEPS_PER_EPOCH, message   # mid-epoch
    assert checkpoint_steps(run_dir)[-1] == step

    outputs = [finish(proc) for proc in (reference, start(run_dir))]
    for code, _, err in outputs:
        assert code == 0, err
    assert f"Resuming from ckpt-{step}:" in outputs[1][1]
    assert_same_state(os.path.join(ref, "checkpoints", FINAL),
                      os.path.join(run_dir, "checkpoints", FINAL))
    # After the kill it redid whole epochs, number for number the uninterrupted
    # run's. The epoch stopped mid-way averaged its training metrics over the
    # steps after the resume only; every other number, and every validation
    # number, is the uninterrupted one's.
    history = {name: read_json(os.path.join(name, "history.json")) for name in (ref, run_dir)}
    assert all(len(v) == EPOCHS for v in history[ref].values())
    assert history[run_dir].keys() == history[ref].keys()
    stopped = step // STEPS_PER_EPOCH
    for key, values in history[ref].items():
        same = [e for e in range(EPOCHS) if key.startswith("val_") or e != stopped]
        assert [history[run_dir][key][e] for e in same] == [values[e] for e in same], key


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # One step an epoch; Adam's first step of size 1e30 leaves finite but huge
    # weights (checkpoint 1), and the second step's loss is not finite.
    workdir = str(tmp_path / "run")
    code, _, err = run(workdir, "--limit=64", "--batch_size=64", "--epochs=3",
                       "--learning_rate=1e30")
    assert code == 3, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("diverged:") and "at step 2" in message, err
    assert "Traceback" not in err
    assert checkpoint_steps(workdir) == [1]
    state = tensors(os.path.join(workdir, "checkpoints", "ckpt-1"))
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")


@pytest.mark.parametrize("flag, says", [
    ("--latent_dim=0", "latent_dim"), ("--batch_size=-1", "batch_size"),
    ("--learning_rate=0", "learning_rate"), ("--num_samples=0", "num_samples"),
    ("--decoder=gaussian", "decoder"), ("--objective=vi", "objective"),
    ("--epochs=ten", "epochs"), ("--no_such_flag=1", "no_such_flag"), ("stray", "stray"),
])
def test_bad_flags_exit_2_with_one_line_before_anything_is_written(tmp_path, flag, says):
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, SCRIPT, f"--workdir={workdir}", flag],
                          capture_output=True, text=True, env=_env(), timeout=300,
                          check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], proc.stderr
    assert not workdir.exists()


@pytest.mark.parametrize("script, flag, says", [
    ("evaluate.py", "--k=0", "--k"), ("compare.py", "--ks=4,x", "--ks"),
    ("benchmark.py", "--idioms=tf_tutorial,fortran", "fortran"),
])
def test_every_script_reports_a_bad_flag_in_one_line(script, flag, says):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), flag],
                          capture_output=True, text=True, env=_env(), timeout=300,
                          check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], proc.stderr


@pytest.mark.slow
def test_bad_data_exits_2_with_one_line_and_writes_nothing(tmp_path):
    x = np.full((40, 4, 4), 0.5, np.float32)
    x[7, 1, 2] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x=x)
    workdir = tmp_path / "run"
    code, _, err = run(str(workdir), f"--dataset={path}")
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "NaN or Inf" in last, err
    assert not workdir.exists()
