"""Reliability, in process: bad input fails with one line before anything is
written, checkpoints fall back without losing the good one, writes are atomic,
and loading a model or a user's file never runs code.

The subprocess faults (SIGKILL, SIGTERM, a diverging loss) are in test_faults.py.
"""

import ast
import glob
import json
import os
import signal
import threading
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import (callbacks, data, errors, export, factory, files, input_pipeline, train,
                     workdir as workdir_lib)
from tfp_vae.checkpoints import Checkpoints
from tfp_vae.config import preset
from tfp_vae.errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = preset("tiny").replace(jit=False, figures=False, export=False, eval_iwae_k=2)
SHAPE = (4, 4, 1)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


def snapshot(directory) -> dict:
    """Every file under `directory`: its bytes and modification time."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[path] = (f.read(), os.stat(path).st_mtime_ns)
    return out


# -- bad settings and bad data -------------------------------------------------------------


@pytest.mark.parametrize("change, names", [
    ({"latent_dim": 0}, "latent_dim"), ({"batch_size": -4}, "batch_size"),
    ({"learning_rate": 0.0}, "learning_rate"), ({"num_samples": 0}, "num_samples"),
    ({"decoder": "gaussian"}, "decoder"), ({"objective": "vi"}, "objective"),
])
def test_out_of_range_settings_are_one_line_config_errors(change, names):
    with pytest.raises(ConfigError) as error:
        TINY.replace(**change)
    assert names in one_line(error)


def test_check_images_names_the_problem():
    good = np.full((3, *SHAPE), 0.5, np.float32)
    data.check_images(good, "ok", unit_interval=True)
    data.check_images(good * 7 - 2, "standardised", unit_interval=False)
    nan, inf = good.copy(), good.copy()
    nan[1, 2, 3, 0], inf[0, 0, 0, 0] = np.nan, -np.inf
    cases = [(nan, {}, "NaN or Inf"), (inf, {}, "NaN or Inf"),
             (good[0], {}, "[N, H, W, C]"), (good[:0], {}, "non-empty"),
             (good.astype(np.uint8), {}, "float"),
             (good + 1, {"unit_interval": True, "fix": "try this"},
              "[1.5, 1.5], outside [0, 1]; try this")]
    for x, kwargs, expected in cases:
        with pytest.raises(DataError) as error:
            data.check_images(x, "where", **kwargs)
        assert expected in one_line(error) and "where" in str(error.value)


def test_the_run_asks_for_unit_interval_pixels_only_where_the_model_needs_them():
    bright = np.full((3, *SHAPE), 1.5, np.float32)
    for decoder, binarize, says in (("bernoulli", "none", "--decoder=normal"),
                                    ("normal", "dynamic", "--binarize=static")):
        with pytest.raises(DataError) as error:
            input_pipeline.check_split(TINY.replace(decoder=decoder, binarize=binarize),
                                       "train", bright)
        assert says in one_line(error) and "(train)" in str(error.value)
    for decoder, binarize in (("normal", "none"), ("bernoulli", "static")):
        input_pipeline.check_split(TINY.replace(decoder=decoder, binarize=binarize), "train",
                                   bright)


def _bad_npz(tmp_path):
    """(name, arrays) of user files that train_and_evaluate must refuse."""
    pickled = np.empty(30, dtype=object)
    pickled[:] = [{"a": i} for i in range(30)]
    nan = np.full((30, *SHAPE), 0.5, np.float32)
    nan[4, 0, 0, 0] = np.nan
    return [("no_x", {"images": np.zeros((30, 4, 4), np.uint8)}, "no array 'x'"),
            ("int64", {"x": np.zeros((30, 4, 4), np.int64)}, "dtype int64"),
            ("empty", {"x": np.zeros((0, 4, 4), np.uint8)}, "empty"),
            ("pickled", {"x": pickled}, "pickled"),
            ("nan", {"x": nan}, "NaN or Inf")]


def test_train_and_evaluate_refuses_bad_data_before_writing_anything(tmp_path):
    for name, arrays, expected in _bad_npz(tmp_path):
        path = str(tmp_path / f"{name}.npz")
        np.savez(path, **arrays)
        workdir = tmp_path / f"run_{name}"
        with pytest.raises(DataError) as error:
            train.train_and_evaluate(TINY.replace(dataset=path), str(workdir))
        assert expected in one_line(error), name
        assert not workdir.exists(), name
    workdir = tmp_path / "run_unknown"
    with pytest.raises(DataError) as error:
        train.train_and_evaluate(TINY.replace(dataset="no_such_dataset_xyz",
                                              data_dir=str(tmp_path)), str(workdir))
    assert "unknown data set 'no_such_dataset_xyz'" in one_line(error)
    assert not workdir.exists()


def test_a_workdir_holding_another_run_is_refused_and_left_untouched(tmp_path):
    workdir = str(tmp_path / "run")
    workdir_lib.prepare(TINY, workdir)
    os.makedirs(os.path.join(workdir, "checkpoints"))
    with open(os.path.join(workdir, "checkpoints", "ckpt-4.index"), "wb") as f:
        f.write(b"another run's checkpoint")
    before = snapshot(workdir)
    with pytest.raises(ConfigError) as error:
        train.train_and_evaluate(TINY.replace(latent_dim=3), workdir)
    assert "latent_dim=2 (asked 3)" in one_line(error)
    assert snapshot(workdir) == before

    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("not a directory")
    with pytest.raises(ConfigError) as error:
        workdir_lib.prepare(TINY, str(in_the_way))
    assert "cannot use workdir" in one_line(error)
    assert in_the_way.read_text() == "not a directory"


def test_layers_name_the_expected_and_the_given_shape_at_trace_time():
    vae = factory.build_vae(TINY, SHAPE)
    elbo = tf.function(lambda x: vae.elbo(x, seed=(1, 2)).elbo)
    assert elbo(tf.zeros([3, *SHAPE])).shape == (3,)
    cases = [(vae.encoder, [3, 16], "expects input of shape [..., 4, 4, 1]; got [3, 16]"),
             (vae.encoder, [4, 1], "expects input of shape [..., 4, 4, 1]; got [4, 1]"),
             (vae.decoder, [3, 5], "expects input of shape [..., 2]; got [3, 5]"),
             (elbo, [3, 4, 5, 1], "expects input of shape [..., 4, 4, 1]; got [3, 4, 5, 1]")]
    for fn, shape, expected in cases:
        with pytest.raises(ValueError) as error:
            fn(tf.zeros(shape))
        assert expected in str(error.value)


# -- checkpoints and signals ----------------------------------------------------------------


def _model_and_optimizer():
    vae = factory.build_vae(TINY, SHAPE)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(vae.trainable_variables)
    return vae, optimizer


def _save_numbered(directory, steps):
    """Checkpoints at `steps`; in each, every weight of the encoder's head equals its step."""
    vae, optimizer = _model_and_optimizer()
    checkpoints = Checkpoints(vae, optimizer, directory)
    for step in steps:
        vae.encoder.head.kernel.assign(tf.fill(vae.encoder.head.kernel.shape, float(step)))
        checkpoints.save(step)


def _corrupt(directory, step):
    with open(os.path.join(directory, f"ckpt-{step}.data-00000-of-00001"), "r+b") as f:
        f.truncate(10)


def test_corrupt_checkpoints_fall_back_and_the_restored_one_survives_later_saves(tmp_path):
    directory = str(tmp_path / "checkpoints")
    _save_numbered(directory, [10, 20, 30])
    _corrupt(directory, 20)
    _corrupt(directory, 30)

    vae, optimizer = _model_and_optimizer()
    checkpoints = Checkpoints(vae, optimizer, directory)
    assert checkpoints.restore().endswith("ckpt-10")
    np.testing.assert_array_equal(vae.encoder.head.kernel.numpy(), 10.0)
    # Resumed at a mid-epoch step, the new saves do not reuse the corrupt
    # numbers; with the corrupt ones still counted, max_to_keep=3 would now
    # delete ckpt-10 and keep two unreadable checkpoints beside one good one.
    checkpoints.save(14)
    checkpoints.save(18)
    assert os.path.exists(os.path.join(directory, "ckpt-10.index"))
    assert [os.path.basename(p) for p in checkpoints.manager.checkpoints] == [
        "ckpt-10", "ckpt-14", "ckpt-18"]
    # The corrupt files stay on disk (out of rotation) for inspection.
    assert os.path.exists(os.path.join(directory, "ckpt-30.index"))


def test_a_checkpoint_state_without_timestamps_is_still_resumed(tmp_path):
    # Copied or hand-written state files often lack timestamps; the manager
    # then lists no checkpoints, and a run used to start again from step 0.
    directory = str(tmp_path / "checkpoints")
    _save_numbered(directory, [5, 7])
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "ckpt-7"\nall_model_checkpoint_paths: "ckpt-7"\n')
    vae, optimizer = _model_and_optimizer()
    checkpoints = Checkpoints(vae, optimizer, directory)
    assert checkpoints.manager.checkpoints == []          # what TensorFlow sees
    assert checkpoints.restore().endswith("ckpt-7")
    np.testing.assert_array_equal(vae.encoder.head.kernel.numpy(), 7.0)


def test_no_readable_checkpoint_is_an_error_that_deletes_nothing(tmp_path):
    directory = str(tmp_path / "checkpoints")
    _save_numbered(directory, [1, 2])
    _corrupt(directory, 1)
    _corrupt(directory, 2)
    before = snapshot(directory)
    vae, optimizer = _model_and_optimizer()
    with pytest.raises(ConfigError) as error:
        Checkpoints(vae, optimizer, directory).restore()
    assert "none of the 2 checkpoints" in one_line(error)
    assert snapshot(directory) == before


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    directory = str(tmp_path / "checkpoints")
    vae, optimizer = _model_and_optimizer()
    checkpoints = Checkpoints(vae, optimizer, directory)
    checkpoints.save(1)
    vae.decoder.head.bias.assign(tf.fill(vae.decoder.head.bias.shape, np.nan))
    with pytest.raises(errors.TrainingDiverged) as error:
        checkpoints.save(2)
    assert "step 2" in one_line(error)
    assert [os.path.basename(p) for p in checkpoints.manager.checkpoints] == ["ckpt-1"]


def test_signals_ask_the_guard_to_stop_and_a_second_ctrl_c_stops_at_once():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set from the main thread")
    before = signal.getsignal(signal.SIGTERM)
    guard = callbacks.StopOnSignal()
    with pytest.raises(KeyboardInterrupt):
        with callbacks.catch_signals(guard):
            os.kill(os.getpid(), signal.SIGTERM)
            assert guard.signal == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


# -- atomic writes ------------------------------------------------------------------------------


def _leftovers(directory):
    return [n for n in os.listdir(directory) if n.endswith((".tmp", ".old"))]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(path, {"elbo": -100.0})
    with pytest.raises(RuntimeError):
        with files.atomic_write(path) as f:
            f.write('{"elbo": -9')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"elbo": -100.0}
    with pytest.raises(RuntimeError):
        with files.atomic_write(tmp_path / "new.png", "wb") as f:
            f.write(b"\x89PNG")
            raise RuntimeError("killed mid-write")
    assert not (tmp_path / "new.png").exists()
    assert _leftovers(tmp_path) == []


def test_atomic_directory_keeps_the_old_export_when_the_writer_fails(tmp_path):
    path = tmp_path / "saved_model"
    with files.atomic_directory(path) as tmp:
        with open(os.path.join(tmp, "saved_model.pb"), "w") as f:
            f.write("old")
    with pytest.raises(RuntimeError):
        with files.atomic_directory(path) as tmp:
            with open(os.path.join(tmp, "saved_model.pb"), "w") as f:
                f.write("half")
            raise RuntimeError("killed mid-export")
    assert os.listdir(path) == ["saved_model.pb"]
    assert (path / "saved_model.pb").read_text() == "old"
    assert _leftovers(tmp_path) == []
    with files.atomic_directory(path) as tmp:
        with open(os.path.join(tmp, "saved_model.pb"), "w") as f:
            f.write("new")
    assert (path / "saved_model.pb").read_text() == "new"
    assert _leftovers(tmp_path) == []


# -- safe loading ---------------------------------------------------------------------------


def test_keras_file_holds_no_code_and_loads_with_safe_mode(tmp_path):
    vae = factory.build_vae(TINY, SHAPE)
    path = str(tmp_path / "vae.keras")
    vae.save(path)
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert "tfp_vae>GaussianEncoder" in config   # the layers are in there, by name
    for code in ("Lambda", "__lambda__", "lambda", "pickle", "marshal", "function_type"):
        assert code not in config, code
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = tf.random.stateless_uniform([2, *SHAPE], seed=(3, 4))
    np.testing.assert_allclose(loaded(x).numpy(), vae(x).numpy(), rtol=1e-6)


_PY_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def test_saved_model_holds_graph_ops_only(tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2
    path = export.export_saved_model(factory.build_vae(TINY, SHAPE), str(tmp_path / "sm"))
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    assert {"MatMul", "Softplus"} <= ops        # the model's own ops are all there
    assert not ops & _PY_OPS, ops & _PY_OPS


def _unsafe_calls(source: str) -> list[str]:
    """Calls that could unpickle or run stored code: np.load without
    allow_pickle=False, pickle-family loaders, Lambda layers, safe_mode=False."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [f"import {n}" for n in names
                      if n.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib", "marshal")]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if name in ("np.load", "numpy.load"):
            flag = keywords.get("allow_pickle")
            if not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(ast.unparse(node))
        if name.endswith("Lambda"):
            found.append(ast.unparse(node))
        mode = keywords.get("safe_mode")
        if mode is not None and not (isinstance(mode, ast.Constant) and mode.value is True):
            found.append(ast.unparse(node))
    return found


def test_the_unsafe_call_scanner_catches_what_it_looks_for():
    bad = ("import pickle\nnp.load(p)\nnp.load(p, allow_pickle=True)\n"
           "keras.layers.Lambda(f)\nkeras.saving.load_model(p, safe_mode=False)\n")
    assert len(_unsafe_calls(bad)) == 5
    assert _unsafe_calls("np.load(p, allow_pickle=False)\nload_model(p, safe_mode=True)") == []


def test_no_source_file_reads_pickles_or_stores_code():
    sources = sorted(glob.glob(os.path.join(REPO, "tfp_vae", "**", "*.py"), recursive=True)
                     + glob.glob(os.path.join(REPO, "scripts", "**", "*.py"), recursive=True))
    assert any(p.endswith(os.path.join("tfp_vae", "data.py")) for p in sources)
    loads = 0
    for path in sources:
        with open(path) as f:
            source = f.read()
        loads += source.count("np.load(")
        assert _unsafe_calls(source) == [], path
    assert loads >= 1   # data.py reads .npz files: the scan saw it and passed it
