"""Faults a new user runs into with train.py, evaluate.py, export and the checkpoint converter:
each must be a clear error naming what is wrong, never lost files or a meaningless result."""
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import load_config
from tests.helpers import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, cwd=ROOT, env=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return run_python(args, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def list_flags(tmp_path_factory):
    """train.py flags for a tiny run on a list file of 48x64 PNG pairs with .flo flow."""
    import cv2

    from cmp_tf.data import formats

    folder = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for i in range(4):
        image = cv2.GaussianBlur(rng.uniform(0, 255, (48, 64, 3)).astype(np.float32), (0, 0), 2)
        cv2.imwrite(str(folder / f"{i}.png"), image.astype(np.uint8))
        formats.write_flo(folder / f"{i}.flo", np.full((48, 64, 2), 1.5, np.float32))
    (folder / "list.txt").write_text("".join(f"{i}.png {i}.png {i}.flo\n" for i in range(4)))
    listing = str(folder / "list.txt")
    return ["--config=configs/cpu_bins.py:runlocal", f"--config.data.train=({listing!r},)",
            f"--config.data.val=({listing!r},)", "--config.data.short_size=128",
            "--config.data.batch_size=2", "--config.data.shuffle_buffer=4",
            "--config.train.log_every=1", "--config.train.image_every=100",
            "--config.schedule.warmup_steps=0"]


def _user_folder(path):
    """A folder of a user's work that happens to be named as a workdir."""
    (path / "sub").mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "sub" / "notes.md").write_text("more")
    return sorted(p.relative_to(path) for p in path.rglob("*"))


# --------------------------------------------------------------- train.py --overwrite


def test_overwrite_refuses_a_folder_that_is_not_a_run_and_keeps_its_files(tmp_path):
    from cmp_tf import rundir

    before = _user_folder(tmp_path / "P")
    config = load_config("cpu_bins", "runlocal")
    with pytest.raises(ValueError, match=r"holds no run's config.json but sub, thesis.tex"):
        rundir.prepare_workdir(str(tmp_path / "P"), config, overwrite=True)
    assert sorted(p.relative_to(tmp_path / "P") for p in (tmp_path / "P").rglob("*")) == before


def test_a_new_run_refuses_a_folder_of_other_files_as_overwrite_does(tmp_path):
    """Without --overwrite a run went into a folder of unrelated files (an export, a thesis)
    and mixed its own in, which --overwrite then refused to replace: both refuse it now. An
    empty folder, or one holding only what runs write, is a run's."""
    from cmp_tf import rundir

    before = _user_folder(tmp_path / "P")
    config = load_config("cpu_bins", "runlocal")
    with pytest.raises(ValueError, match=r"--workdir=.*P holds sub, thesis.tex, files no run "
                                         r"writes"):
        rundir.prepare_workdir(str(tmp_path / "P"), config)
    assert sorted(p.relative_to(tmp_path / "P") for p in (tmp_path / "P").rglob("*")) == before
    (tmp_path / "empty").mkdir()
    rundir.prepare_workdir(str(tmp_path / "empty"), config)
    (tmp_path / "killed" / "tb").mkdir(parents=True)  # a run's own entries, no config yet
    rundir.prepare_workdir(str(tmp_path / "killed"), config)
    assert (tmp_path / "killed" / "config.json").exists()
    (tmp_path / "killed" / "config.json").write_text("{garbled")  # nor resumed on a lost one
    with pytest.raises(ValueError, match=r"config.json is not a run's config"):
        rundir.prepare_workdir(str(tmp_path / "killed"), config)


def test_overwrite_refuses_a_run_folder_that_holds_other_files(tmp_path):
    from cmp_tf import rundir

    config = load_config("cpu_bins", "runlocal")
    run = tmp_path / "run"
    rundir.prepare_workdir(str(run), config)
    (run / "checkpoints").mkdir()
    (run / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match=r"also holds thesis.tex: files no run writes"):
        rundir.prepare_workdir(str(run), config, overwrite=True)
    assert (run / "thesis.tex").read_text() == "years of work"
    assert (run / "checkpoints").is_dir() and (run / "config.json").exists()


def test_overwrite_replaces_only_what_a_run_wrote(tmp_path):
    from cmp_tf import rundir

    config = load_config("cpu_bins", "runlocal")
    run = tmp_path / "run"
    rundir.prepare_workdir(str(run), config)
    for name in ("checkpoints/ckpt-2.index", "checkpoints_worker1/ckpt-2.index", "tb/events",
                 "eval/validation.json", "export/model.tflite"):
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text("x")
    for name in ("log.txt", "encoder.keras", "summary.json"):
        (run / name).write_text("x")
    outside = tmp_path / "kept.keras"
    outside.write_text("kept")
    os.symlink(outside, run / "model.keras")  # a link is removed, never followed
    config.train.steps = 7
    rundir.prepare_workdir(str(run), config, overwrite=True)
    assert sorted(os.listdir(run)) == [rundir.RUN_LOCK, "config.json", "eval"]  # held
    assert os.listdir(run / "eval") == []
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 7
    assert outside.read_text() == "kept"


def test_overwrite_refuses_the_current_home_and_package_folders(tmp_path, monkeypatch):
    from cmp_tf import rundir

    config = load_config("cpu_bins", "runlocal")
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    for workdir, what in ((".", "the current folder"), (str(home), "the home folder"),
                          ("/", "the home folder"), (ROOT, "the folder of the cmp_tf package")):
        with pytest.raises(ValueError, match=f"is or holds {what}"):
            rundir.prepare_workdir(workdir, config, overwrite=True)
    with pytest.raises(ValueError, match="is or holds the folder of the cmp_tf package"):
        rundir.prepare_workdir(ROOT, config)  # not even to start a run there
    assert os.listdir(home) == [] and os.listdir(here) == []


@pytest.mark.slow
def test_train_py_overwrite_keeps_a_user_folder_even_with_a_bad_config(tmp_path, list_flags):
    before = _user_folder(tmp_path / "P")
    bad = _run("train.py", *list_flags, f"--workdir={tmp_path / 'P'}", "--overwrite",
               "--config.data.batch_size=0")
    assert bad.returncode != 0 and "config.data.batch_size=0 must be" in bad.stderr
    valid = _run("train.py", *list_flags, f"--workdir={tmp_path / 'P'}", "--overwrite")
    assert valid.returncode != 0 and "thesis.tex" in valid.stderr
    assert sorted(p.relative_to(tmp_path / "P") for p in (tmp_path / "P").rglob("*")) == before
    assert (tmp_path / "P" / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("section, key, value", [
    ("train", "steps", -5), ("train", "steps", 0), ("data", "batch_size", 0),
    ("train", "checkpoint_every", 0), ("schedule", "lr", -0.1), ("schedule", "lr", float("nan")),
    ("data", "crop", (128,)), ("data", "crop", (0, 128)),
])
def test_meaningless_training_numbers_are_refused_naming_the_field(tmp_path, section, key,
                                                                    value):
    from cmp_tf import training

    config = load_config("cpu_bins", "runlocal")
    config[section][key] = value
    with pytest.raises(ValueError, match=rf"config\.{section}\.{key}="):
        training.train(config, str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ------------------------------------------------------------ resume after corruption


def test_resume_falls_back_from_a_corrupt_newest_checkpoint(tmp_path, capsys):
    import tensorflow as tf

    from cmp_tf import training

    weights, step = tf.Variable(tf.zeros([256])), tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(weights=weights, step=step)
    folder = str(tmp_path / "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, folder, max_to_keep=3)
    for number in (2, 4):
        weights.assign(tf.fill([256], float(number)))
        step.assign(number)
        manager.save(checkpoint_number=number)
    data = tmp_path / "checkpoints" / "ckpt-4.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])  # a crash mid-write
    weights.assign(tf.zeros([256]))
    step.assign(0)
    assert training.restore_latest(checkpoint, folder) == f"{folder}/ckpt-2"
    assert int(step) == 2 and float(weights[0]) == 2.0
    warning = capsys.readouterr().err
    assert f"{folder}/ckpt-4" in warning and f"previous intact one, {folder}/ckpt-2" in warning
    # The folder's list now ends at the intact one, so whatever restores "the latest" next
    # (a preemption handler) reads it, not the corrupt one.
    manager = tf.train.CheckpointManager(checkpoint, folder, max_to_keep=3)
    assert manager.latest_checkpoint == f"{folder}/ckpt-2"
    data = tmp_path / "checkpoints" / "ckpt-2.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"No checkpoint in {folder} can be read"):
        training.restore_latest(checkpoint, folder)


@pytest.mark.parametrize("damage", ["missing", "garbage", "empty"])
def test_a_lost_or_unreadable_checkpoint_list_resumes_from_the_files_beside_it(tmp_path,
                                                                               capsys, damage):
    import tensorflow as tf

    from cmp_tf import training

    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(step=step)
    folder = str(tmp_path / "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, folder, max_to_keep=3)
    for number in (2, 4, 10):  # ckpt-10 is the newest, though it sorts before ckpt-2 as text
        step.assign(number)
        manager.save(checkpoint_number=number)
    listing = tmp_path / "checkpoints" / "checkpoint"
    if damage == "missing":
        listing.unlink()
    else:
        listing.write_bytes(b"\xff\xfe\x00 torn" if damage == "garbage" else b"")
    step.assign(0)
    assert training.restore_latest(checkpoint, folder) == f"{folder}/ckpt-10"
    assert int(step) == 10
    assert f"The checkpoint list {listing} is " in capsys.readouterr().err
    # The list is written again: a resumed run's manager goes on from there.
    assert tf.train.CheckpointManager(checkpoint, folder, 3).latest_checkpoint == \
        f"{folder}/ckpt-10"


_INTERRUPTED_RUN = """
import os, signal, sys
import tensorflow as tf
from cmp_tf import losses, training
from tests.helpers import load_config

# Python's Ctrl-C handler, also where the suite runs in the background (a shell starts a
# background job with SIGINT ignored, and Python then installs no handler).
signal.signal(signal.SIGINT, signal.default_int_handler)
real, calls = losses.make_loss, [0]

def interrupting_loss(config):
    loss = real(config)

    def tick():  # inside the third step, as a user's Ctrl-C would land
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return 0

    def wrapped(logits, flow, valid):
        done = tf.py_function(tick, [], tf.int32)
        with tf.control_dependencies([done]):
            return tf.identity(loss(logits, flow, valid))
    return wrapped

losses.make_loss = interrupting_loss
config = load_config("cpu_bins", "runlocal")
config.data.train = config.data.val = (sys.argv[2],)
config.data.batch_size, config.data.shuffle_buffer, config.data.short_size = 2, 4, 128
config.train.steps, config.train.checkpoint_every = 50, 1000
try:
    training.train(config, sys.argv[1], progress=False)
except training.Interrupted as stop:
    print(stop)
"""


@pytest.mark.slow
def test_ctrl_c_saves_the_weights_with_their_own_step(tmp_path, list_flags):
    """The interrupt arrives while a step runs; the save must hold the weights of exactly the
    steps it says (the optimizer's count drives the learning rate), so a resume neither trains
    a batch twice nor shifts the schedule."""
    import tensorflow as tf

    listing = next(f.split("=(")[1].strip("',)") for f in list_flags
                   if f.startswith("--config.data.train="))
    run = tmp_path / "run"
    result = _run("-c", _INTERRUPTED_RUN, str(run), listing,
                  env={"PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Interrupted at step 3. Saved " in result.stdout, result.stdout[-2000:]
    reader = tf.train.load_checkpoint(str(run / "checkpoints"))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 3
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 3


def test_a_keras_file_that_is_not_one_is_named_so(tmp_path):
    from cmp_tf import runners

    for content in (b"", b"PK\x03\x04 cut short", b"plain text"):
        path = tmp_path / "model.keras"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=r"model.keras is not a .keras file: a .keras "
                           r"file is a zip archive, and this one \(\d+ bytes\) is empty"):
            runners.KerasRunner(str(path))


@pytest.mark.slow
def test_a_run_resumes_past_a_corrupt_checkpoint_and_overwrite_replaces_it(tmp_path,
                                                                             list_flags):
    run = tmp_path / "run"
    flags = [*list_flags, f"--workdir={run}", "--config.train.steps=4",
             "--config.train.checkpoint_every=2"]
    first = _run("train.py", *flags)
    assert first.returncode == 0, first.stderr[-3000:]
    # Killed after its last checkpoint (validating): the rerun trains no step, so its loss is
    # the one the log recorded at that step (it was null; NaN is not JSON).
    last_loss = json.loads((run / "summary.json").read_text())["final_loss"]
    (run / "summary.json").unlink()
    finished = _run("train.py", *flags)
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text(),
                         parse_constant=lambda name: pytest.fail(f"{name} in summary.json"))
    assert summary["steps"] == 4 and summary["final_loss"] == round(last_loss, 4)
    # Killed after saving ckpt-4 half-way: the newest checkpoint is corrupt, the run unfinished.
    data = run / "checkpoints" / "ckpt-4.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:200])
    (run / "summary.json").unlink()
    resumed = _run("train.py", *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{run}/checkpoints/ckpt-4" in resumed.stderr
    assert f"previous intact one, {run}/checkpoints/ckpt-2" in resumed.stderr
    assert f"resumed from {run}/checkpoints/ckpt-2 at step 2" in (run / "log.txt").read_text()
    again = _run("train.py", *flags, "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" not in (run / "log.txt").read_text()  # a new log: a new run
    assert json.loads((run / "summary.json").read_text())["steps"] == 4


@pytest.mark.slow
def test_a_start_refused_for_its_loss_or_data_leaves_every_run_folder_as_it_was(tmp_path,
                                                                                 list_flags):
    """The loss settings, the videos' ingestion and the validation preview were checked after
    the run folder was made: `--overwrite` had deleted the finished run (checkpoints and
    model.keras) by then, and a first start left a folder the corrected command refused."""
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    flags = [*list_flags, "--config.train.steps=2", "--config.train.checkpoint_every=2"]
    first = _run("train.py", *flags, f"--workdir={run}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    for bad, message in [
            ("--config.flow.relative=True", "config.flow.relative=True needs a regression loss"),
            (f"--config.data.train=({str(corrupt)!r},)",
             "config.data.train: no training pairs in ['" + str(corrupt) + "'] (Ingestion: 0 "
             "pairs from 0 of 1 files. 1 of 1 files failed to ingest: corrupt.mp4 (")]:
        kept = [f for f in flags if not f.startswith(bad.split("=")[0] + "=")]  # one value
        for workdir in ([f"--workdir={run}", "--overwrite"], [f"--workdir={fresh}"]):
            result = _run("train.py", *kept, bad, *workdir)
            assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
            assert "Traceback" not in result.stderr
        assert {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")} == before
        assert not fresh.exists()


def test_training_values_that_cannot_mean_anything_are_refused_before_a_step(tmp_path,
                                                                              list_flags):
    """A crop larger than the resized frames padded every sample with black pixels without
    flow; a NaN weight decay ran until the loss was NaN; a number for a source was a
    TypeError; a dict for a recipe's options dict dropped its other keys silently."""
    for bad, message in [
            ("--config.data.crop=(256, 256)", "config.data.crop=(256, 256) is larger than the "
                                               "frames' short side after resizing"),
            ("--config.optim.weight_decay=nan", "config.optim.weight_decay=nan must be a finite "
                                                "number >= 0"),
            ("--config.data.train=(5,)", "config.data.train=(5,) must name paths"),
            ("--config.model.options.mobilenet_v3={'variant': 'small'}",
             "--config.model.options.mobilenet_v3={'variant': 'small'} would replace the "
             "recipe's whole model.options.mobilenet_v3, dropping ")]:
        kept = [f for f in list_flags if not f.startswith(bad.split("=")[0] + "=")]
        result = _run("train.py", *kept, bad, f"--workdir={tmp_path / 'run'}")
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ evaluate.py


def _zero(image, points, vectors):
    return np.zeros(image.shape[:2] + (2,), np.float32)


def _still_pair(size=32):
    """One pair moving as a whole: no motion edges, so no pixel is 'near' one."""
    rng = np.random.default_rng(0)
    return (rng.integers(0, 255, (size, size, 3), np.uint8),
            np.full((size, size, 2), 2.0, np.float32), np.ones((size, size), bool))


def test_uniform_guidance_alone_reports_and_draws_panels(tmp_path):
    from cmp_tf.evaluation import benchmark
    from cmp_tf.evaluation import pairs as pairs_lib
    from cmp_tf.evaluation import report as report_lib

    result = benchmark.evaluate({"zero": _zero}, pairs_lib.generated_pairs(2, size=48),
                                ks=(1, 5), strategies=("uniform",), progress=False,
                                keep_examples=1)
    assert result["example_setting"] == ["uniform", 5]  # K=10 was not scored: the nearest
    text = report_lib.write_report(result, str(tmp_path))
    assert "| K (uniform) |" in text
    for name in report_lib.REPORT_FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    # A report without panels removes the earlier one instead of leaving it beside.
    result = benchmark.evaluate({"zero": _zero}, pairs_lib.generated_pairs(1, size=48),
                                ks=(1,), strategies=("uniform",), progress=False)
    report_lib.write_report(result, str(tmp_path))
    assert not (tmp_path / "panels.png").exists()
    # Cut short while drawing: this report's tables were left beside the last one's plot.
    from unittest import mock

    with mock.patch.object(report_lib, "plot_relative", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            report_lib.write_report(result, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md"]
    with pytest.raises(ValueError, match=r"--strategies=\['grid'\]"):
        benchmark.evaluate({"zero": _zero}, [_still_pair()], ks=(1,), strategies=("grid",),
                           progress=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_method_returning_non_finite_flow_is_named(bad):
    from cmp_tf.evaluation import benchmark

    def broken(image, points, vectors):
        flow = np.zeros(image.shape[:2] + (2,), np.float32)
        flow[3, 4, 0] = bad
        return flow

    with pytest.raises(ValueError, match=r"Method 'broken' returned NaN or infinite flow"):
        benchmark.evaluate({"zero": _zero, "broken": broken}, [_still_pair()], ks=(1,),
                           strategies=("uniform",), progress=False)


def test_results_json_holds_no_bare_nan(tmp_path):
    from cmp_tf.evaluation import benchmark
    from cmp_tf.evaluation import report as report_lib

    result = benchmark.evaluate({"zero": _zero}, [_still_pair()], ks=(1,),
                                strategies=("uniform",), progress=False)
    assert np.isnan(result["rows"][0]["epe_near"])  # no pixel near a motion edge
    report_lib.write_report(result, str(tmp_path))

    def refuse(constant):
        raise AssertionError(f"results.json holds {constant}, which is not JSON")

    saved = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    row = saved["rows"][0]
    assert row["epe_near"] is None and abs(row["epe"] - 2 * np.sqrt(2)) < 1e-5


@pytest.mark.parametrize("pairs", ["0", "-3"])
def test_evaluate_refuses_pairs_that_are_not_a_count(tmp_path, pairs):
    result = _run("evaluate.py", f"--checkpoint={tmp_path / 'none.keras'}", f"--pairs={pairs}",
                  f"--out={tmp_path / 'out'}")
    assert result.returncode != 0
    assert f"--pairs={pairs} must be a positive count, or -1 for all pairs" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags,message", [
    (["--reference=dis_medium"], "--reference=dis_medium scores generated scenes against a "
                                 "teacher's flow: use it with --data=generated"),
    (["--reference=dis", "--data=generated"], "--reference=dis is unknown; known: exact, "
                                              "dis_ultrafast")])
def test_evaluate_refuses_a_reference_it_cannot_score_against(tmp_path, flags, message):
    result = _run("evaluate.py", f"--checkpoint={tmp_path / 'none.keras'}", *flags,
                  f"--out={tmp_path / 'out'}")
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_evaluate_without_the_fade_says_so_and_one_guide_moves_everything(tmp_path,
                                                                          saved_default):
    out = tmp_path / "eval"
    shipped = os.path.join(ROOT, "cmp_tf", "pretrained", "default")
    result = _run("evaluate.py", f"--checkpoint={shipped}", "--nofade", "--data=generated",
                  "--pairs=2", "--ks=1", "--strategies=uniform", "--baselines=nearest",
                  "--panels=0", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert report["fade"] is False
    assert "(its fade off: --nofade)" in (out / "results.md").read_text()
    epe = {r["method"]: r["epe"] for r in report["rows"]}
    # one guide, no fade: both fills carry its vector everywhere, as the nearest fill does
    assert epe["cmp"] == pytest.approx(epe["nearest"], abs=0.02)
    refused = _run("evaluate.py", f"--checkpoint={saved_default}", "--nofade",
                   "--data=generated", "--pairs=1", f"--out={tmp_path / 'refused'}")
    assert refused.returncode != 0 and "fade applies to models whose read-out" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_evaluate_py_with_uniform_guidance_only(tmp_path, saved_default):
    out = tmp_path / "eval"
    result = _run("evaluate.py", f"--checkpoint={saved_default}", "--data=generated",
                  "--pairs=2", "--ks=1,5", "--strategies=uniform", "--baselines=nearest",
                  f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| K (uniform) |" in result.stdout
    assert "results.md, results.json, relative_epe.png, panels.png" in result.stdout
    for name in ("results.md", "results.json", "relative_epe.png", "panels.png"):
        assert (out / name).stat().st_size > 0, name
    again = _run("evaluate.py", f"--checkpoint={saved_default}", "--data=generated",
                 "--pairs=1", "--ks=1", "--strategies=uniform", "--baselines=nearest",
                 "--panels=0", f"--out={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "relative_epe.png\n" in again.stdout and "panels.png" not in again.stdout
    assert not (out / "panels.png").exists()


# ---------------------------------------------------------- PyTorch checkpoint reading


def _craft(path, legacy, size, stride):
    """A checkpoint whose tensor state_dict.w of 4 float32 declares `size` and `stride`."""
    from cmp_tf import torch_checkpoint

    torch_checkpoint.save({"state_dict": {"w": np.zeros(4, np.float32)}}, path, legacy=legacy)

    def ints(values):
        return pickle.MARK + b"".join(pickle.BININT + struct.pack("<i", v) for v in values) + \
            pickle.TUPLE

    def rewrite(raw):
        for old, new in ((ints((4,)), ints(size)), (ints((1,)), ints(stride))):
            assert raw.count(old) == 1
            raw = raw.replace(old, new)
        return raw

    if legacy:
        path.write_bytes(rewrite(path.read_bytes()))
        return path
    # The zip layout: rewrite the pickle member itself (the zip's headers may hold any byte).
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    name = next(n for n in members if n.endswith("data.pkl"))
    members[name] = rewrite(members[name])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for n, data in members.items():
            archive.writestr(n, data)
    return path


@pytest.mark.parametrize("legacy", [True, False])
def test_a_checkpoint_tensor_larger_than_its_storage_is_refused(tmp_path, legacy):
    from cmp_tf import torch_checkpoint

    path = _craft(tmp_path / "huge.pth", legacy, (10**6, 10**6), (0, 0))  # 3.6 TiB asked
    assert path.stat().st_size < 2000
    with pytest.raises(ValueError, match=r"tensor state_dict\.w has size \(1000000, 1000000\)"
                                         r": 1000000000000 elements .* more than its storage "
                                         r"holds \(4 elements, 16 bytes\)"):
        torch_checkpoint.load(path)
    path = _craft(tmp_path / "far.pth", legacy, (2, 2), (1, 3))  # reads element 4 of 0..3
    with pytest.raises(ValueError, match=r"tensor state_dict\.w of size \(2, 2\), stride "
                                         r"\(1, 3\) at offset 0 reads past the end"):
        torch_checkpoint.load(path)
    path = _craft(tmp_path / "ok.pth", legacy, (2, 2), (1, 2))  # a transposed view: fine
    assert torch_checkpoint.load(path)["state_dict"]["w"].shape == (2, 2)


# ------------------------------------------------------------------- python -m export


def _earlier_export(out):
    """A folder holding an earlier export (every format, both parts) and a user's notes."""
    out.mkdir()
    (out / "model_saved_model").mkdir()
    (out / "model_saved_model" / "saved_model.pb").write_bytes(b"old")
    for name in ("model.tflite", "encoder_int8.onnx", "export.json", "parity.md"):
        (out / name).write_text("old")
    (out / "notes.txt").write_text("mine")


def test_export_refuses_a_folder_holding_an_earlier_export(tmp_path):
    from cmp_tf import models
    from export import export_lib

    config = load_config("cpu_bins")
    config.model.decoder_combo = (1, 2)  # minimum side 64
    out = tmp_path / "out"
    _earlier_export(out)
    with pytest.raises(ValueError, match=r"--out=.* holds an earlier export \(model_saved_model, "
                                         r"model.tflite, encoder_int8.onnx, export.json, "
                                         r"parity.md\): pass --overwrite"):
        export_lib.export(models.build_cmp(config), config, str(out), formats=("tflite",),
                          size=(64, 64), log=lambda _: None)
    assert (out / "model.tflite").read_text() == "old"


def test_an_export_cut_short_is_cleared_and_done_again_by_the_same_command(tmp_path):
    """An export interrupted mid-way left files without export.json, and every rerun refused
    them as "an earlier export" until --overwrite."""
    from unittest import mock

    from cmp_tf import models
    from export import export_lib

    config = load_config("cpu_bins")
    config.model.decoder_combo = (1, 2)
    model, out = models.build_cmp(config), tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    kwargs = dict(formats=("tflite", "onnx"), size=(64, 64), parity_samples=1, repeats=1,
                  encoder=False)
    with mock.patch.object(export_lib.tflite, "convert", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            export_lib.export(model, config, str(out), log=lambda _: None, **kwargs)
    (out / "model.tflite").write_bytes(b"half a file")  # as a kill mid-write leaves it
    assert export_lib.UNFINISHED in os.listdir(out)
    said = []
    export_lib.export(model, config, str(out), log=said.append, **kwargs)
    assert said[0] == f"removed the unfinished export in {out}: model.tflite"
    assert sorted(os.listdir(out)) == ["export.json", "model.onnx", "model.tflite", "notes.txt",
                                       "parity.md"]
    with pytest.raises(ValueError, match=r"holds an earlier export"):  # now a whole one
        export_lib.export(model, config, str(out), log=lambda _: None, **kwargs)


def test_export_names_a_bad_flag_in_one_line_without_a_traceback(tmp_path):
    """`python -m export` with a missing checkpoint, fill cells the decoder cannot take, or a
    size the model cannot take: a usage error naming the flag, nothing written."""
    out = tmp_path / "out"
    for flag, message in [(f"--checkpoint={tmp_path / 'none.keras'}", "none.keras does not "
                           "exist"),
                          ("--fill_stride=8", "--fill_stride must be a power of two dividing "
                           "the decoder's stride 4; got 8."),
                          ("--size=70", "--size=70,70: this model takes sides that are "
                           "multiples of 32 (its encoders' stride), at least 128 and at most "
                           "2048; got 70, 70."),
                          ("--size=65536", "at most 2048; got 65536, 65536."),
                          ("--size=128,128,128", "--size=128,128,128 must be H,W, or one side "
                           "for a square.")]:
        result = _run("-m", "export", flag, f"--out={out}", "--formats=tflite")
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
    assert not out.exists()


def test_export_overwrite_keeps_the_earlier_export_when_the_data_is_missing(tmp_path):
    from cmp_tf import models
    from export import export_lib

    config = load_config("cpu_bins")
    config.model.decoder_combo = (1, 2)
    config.data.val = (str(tmp_path / "gone.mp4"),)
    out = tmp_path / "out"
    _earlier_export(out)
    before = sorted(os.listdir(out))
    with pytest.raises(ValueError, match=r"config.data.val: .*gone.mp4 does not exist"):
        export_lib.export(models.build_cmp(config), config, str(out), formats=("tflite",),
                          size=(64, 64), log=lambda _: None, overwrite=True)
    assert sorted(os.listdir(out)) == before


@pytest.mark.slow
def test_export_overwrite_replaces_the_whole_earlier_export(tmp_path):
    from cmp_tf import models
    from export import export_lib

    config = load_config("cpu_bins")
    config.model.decoder_combo = (1, 2)
    out = tmp_path / "out"
    _earlier_export(out)
    report = export_lib.export(models.build_cmp(config), config, str(out), formats=("tflite",),
                               size=(64, 64), parity_samples=1, repeats=1, encoder=False,
                               log=lambda _: None, overwrite=True)
    assert sorted(os.listdir(out)) == ["export.json", "model.tflite", "notes.txt", "parity.md"]
    assert [row["artifact"] for row in report["rows"]] == ["model.tflite"]
    assert json.loads((out / "export.json").read_text())["rows"][0]["artifact"] == "model.tflite"
    assert (out / "notes.txt").read_text() == "mine"  # not an export's: left in place


def test_a_second_process_on_a_run_being_trained_is_refused_naming_the_first(tmp_path):
    """Two train.py on one folder both trained, saved into one checkpoints/ and each wrote
    model.keras and summary.json: a folder mixing two runs, reported as one."""
    from cmp_tf import rundir

    config = load_config("cpu_bins", "runlocal")
    run = str(tmp_path / "run")
    rundir.prepare_workdir(run, config)
    rundir.prepare_workdir(run, config)  # this process again: the same hold
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        from cmp_tf import rundir
        from tests.helpers import load_config
        try:
            rundir.prepare_workdir({run!r}, load_config("cpu_bins", "runlocal"),
                                   overwrite=True)
        except ValueError as error:
            print(error)
        """)
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
    assert f"{run} is being trained by process {os.getpid()} on " in other.stdout, other.stderr
    assert os.path.exists(os.path.join(run, "config.json"))  # --overwrite deleted nothing
    rundir.release_run(run)
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
    assert other.returncode == 0 and not other.stdout, other.stdout + other.stderr


def test_a_resumed_run_removes_what_writes_cut_short_left(tmp_path):
    """A kill while a checkpoint or model.keras was written left TensorFlow's temporary folder
    or a partial file, each up to a whole model, that nothing ever removed."""
    from cmp_tf import rundir

    config = load_config("cpu_bins", "runlocal")
    run = tmp_path / "run"
    rundir.prepare_workdir(str(run), config)
    (run / "checkpoints" / "ckpt-6_temp").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-6_temp" / "part-0.tempstate1").write_text("x")
    (run / "checkpoints" / "ckpt-4.index").write_text("x")
    (run / ".model.123.partial.keras").write_text("x")
    (run / ".config.123.partial.json").write_text("x")
    rundir.release_run(str(run))
    rundir.prepare_workdir(str(run), config)
    assert sorted(os.listdir(run / "checkpoints")) == ["ckpt-4.index"]
    assert sorted(os.listdir(run)) == [rundir.RUN_LOCK, "checkpoints", "config.json", "eval"]


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    """A run killed after logging steps past its last checkpoint (4) logs them again once
    resumed; TensorBoard's loader keeps the resumed run's values, each step once."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import plugin_event_accumulator

    from cmp_tf import training

    first = tf.summary.create_file_writer(str(tmp_path / "tb"), filename_suffix=".a")
    training._mark_start(first, 0, resumed=False)
    with first.as_default():
        for step in range(1, 8):
            tf.summary.scalar("train/loss", float(step), step=step)
    first.close()
    resumed = tf.summary.create_file_writer(str(tmp_path / "tb"), filename_suffix=".b")
    training._mark_start(resumed, 4, resumed=True)
    with resumed.as_default():
        for step in range(5, 11):
            tf.summary.scalar("train/loss", 100.0 + step, step=step)
    resumed.close()
    loaded = plugin_event_accumulator.EventAccumulator(str(tmp_path / "tb"),
                                                       size_guidance={"tensors": 0})
    loaded.Reload()
    events = loaded.Tensors("train/loss")
    assert [e.step for e in events] == list(range(1, 11))
    assert [float(tf.make_ndarray(e.tensor_proto)) for e in events] == \
        [1.0, 2.0, 3.0, 4.0, *(100.0 + s for s in range(5, 11))]


def test_the_preview_colours_diagonal_motion_in_range_and_marks_the_guides():
    """The colour scale was the largest component, so diagonal motion, longer than that,
    was drawn as out of range (dimmed)."""
    import tensorflow as tf

    from cmp_tf import flow as flow_lib
    from cmp_tf import training

    sparse = np.zeros((1, 24, 24, 3), np.float32)
    sparse[0, 12, 12] = (3.0, 3.0, 1.0)
    x = {"image": tf.fill((1, 24, 24, 3), 200.0), "sparse": tf.constant(sparse)}
    target = np.full((1, 24, 24, 2), 3.0, np.float32)
    y = {"flow": tf.constant(target), "valid": tf.ones((1, 24, 24))}

    def model(inputs, training=False):
        return {"flow": tf.constant(target)}

    panel = training._preview_panels(model, (x, y))[0]
    image, predicted, reference = np.split(panel, 3, axis=1)
    np.testing.assert_array_equal(reference, flow_lib.flow_to_color(target[0], 3 * 2 ** 0.5))
    assert reference.max() == 255  # fully saturated, not dimmed to three quarters
    assert (image[12, 11:14] == (255, 0, 0)).all() and (image[11:14, 12] == (255, 0, 0)).all()
    assert (image[12, [10, 14]] == 0).all() and (image[[10, 14], 12] == 0).all()  # its ring
