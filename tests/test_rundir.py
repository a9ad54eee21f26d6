"""Run directories, recipes of earlier versions, and the package standing on its own."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest

from cmp_tf import rundir
from tests.helpers import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A recipe as earlier versions wrote config.json: the guidance prior as flags on `model`.
LEGACY_MODEL = dict(image_encoder="mobilenet_v3", sparse_encoder="shallownet32x",
                    decoder="skip_layer", decoder_combo=[1, 2, 4], dense_prior=True,
                    prior_sigma=2.0, init_gain=0.02, honour_guidance=False, prior_skips=False,
                    prior_fill="nearest", fill_gain=False, gain_profile="exponential",
                    learn_blend_weight=True, pull_push=dict(pull="box", relax=0), sync_bn=True,
                    options={})


def _legacy(**model):
    return dict(model={**LEGACY_MODEL, **model},
                flow=dict(nbins=99, fmax=50.0, loss="discrete", targets="one_hot",
                          readout_weight=0.0),
                data=dict(layered=dict(ratio=0.5, still_background=0.0)))


def test_earlier_recipes_map_onto_a_head():
    bins = rundir.upgrade_config(_legacy())
    assert bins["model"]["head"] == "bins"
    assert bins["model"]["options"]["bins"] == dict(nearest_prior=True, prior_sigma=2.0)
    assert "targets" not in bins["flow"] and "still_background" not in bins["data"]["layered"]
    assert not {"dense_prior", "prior_fill", "pull_push", "gain_profile"} & set(bins["model"])
    regression = _legacy()
    regression["flow"]["loss"] = "l1"
    assert rundir.upgrade_config(regression)["model"]["head"] == "regression"
    shipped = rundir.upgrade_config(_legacy(prior_fill="blend", fill_gain=True,
                                            gain_profile="gaussian",
                                            pull_push=dict(pull="tent", relax=4)))
    assert shipped["model"]["head"] == "fill_correction"
    assert shipped["model"]["options"]["fill_correction"] == dict(gain=True, pull="tent",
                                                                   relax=4)
    current = load_config("propagation").to_dict()
    assert rundir.upgrade_config(current) == json.loads(json.dumps(current))  # left alone


def _subset(small, big, path="config"):
    """Fields of `small` that `big` holds differently (fields `big` adds are not compared)."""
    if isinstance(small, dict) and isinstance(big, dict):
        return [d for k in small for d in _subset(small[k], big.get(k), f"{path}.{k}")]
    return [] if small == big else [f"{path}: {small!r} != {big!r}"]


def test_the_shipped_recipe_is_the_earlier_one_upgraded():
    """The shipped model's recipe as it was saved before heads existed, upgraded, is today's
    configs/propagation.py (which may add fields later versions brought, with defaults)."""
    with open(os.path.join(ROOT, "tests", "data", "legacy_propagation_config.json")) as f:
        legacy = json.load(f)
    upgraded = rundir.upgrade_config(legacy)
    shipped = json.loads(json.dumps(load_config("propagation").to_dict()))
    assert upgraded["model"]["head"] == shipped["model"]["head"] == "fill_correction"
    for recipe in (upgraded, shipped):  # the embedded clips' paths: where the checkout lies
        del recipe["data"]["train"], recipe["data"]["val"]
    assert _subset(upgraded, shipped) == []


@pytest.mark.parametrize("field,value", [
    ("prior_skips", True), ("honour_guidance", True), ("learn_blend_weight", False),
    ("prior_fill", "pull_push")])
def test_removed_options_are_named_not_dropped(field, value):
    with pytest.raises(ValueError, match=rf"old.json: model.{field}.* removed; use cmp_tf at "
                                         r"commit 83284d6"):
        rundir.upgrade_config(_legacy(**{field: value}), "old.json")
    with pytest.raises(ValueError, match="model.gain_profile='exponential'"):
        rundir.upgrade_config(_legacy(prior_fill="blend", fill_gain=True), "old.json")
    two_hot = _legacy()
    two_hot["flow"]["targets"] = "two_hot"
    with pytest.raises(ValueError, match="flow.targets is an option cmp_tf removed"):
        rundir.upgrade_config(two_hot, "old.json")


def test_a_blend_layer_of_an_earlier_version_loads_and_a_removed_profile_is_named():
    from cmp_tf.models import heads

    base = heads.BlendFills(True, 2).get_config()
    assert heads.BlendFills.from_config({**base, "profile": "gaussian"}).gain
    with pytest.raises(ValueError, match="profile='exponential', an option later versions"):
        heads.BlendFills.from_config({**base, "profile": "exponential"})
    with pytest.raises(ValueError, match="learn_weight=False"):
        heads.BlendFills.from_config({**base, "learn_weight": False})


def test_results_go_beside_the_run_and_never_into_the_package(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "model.keras").write_bytes(b"")
    assert rundir.results_dir(str(run), "eval") == str(run / "eval")
    assert rundir.results_dir(str(run / "model.keras"), "export") == str(run / "export")
    loose = tmp_path / "mine.keras"
    loose.write_bytes(b"")
    assert rundir.results_dir(str(loose), "eval") == os.path.join("runs", "eval", "mine")
    assert rundir.results_dir(rundir.PRETRAINED, "export") == os.path.join(
        "runs", "pretrained", "export")


def test_an_exported_file_belongs_to_its_run_and_has_results_of_its_own(tmp_path, monkeypatch):
    """A run's export/model.tflite was scored on the shipped model's data, and every
    model.tflite and model.onnx anywhere wrote its results into one runs/eval/model."""
    import json

    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": {"val": ["mine.txt"]}}))
    (run / "model.keras").write_bytes(b"")
    (run / "export" / "export.json").write_text(json.dumps({"checkpoint": str(run)}))
    for name in ("model.tflite", "model.onnx"):
        (run / "export" / name).write_bytes(b"")
    tflite, onnx = str(run / "export" / "model.tflite"), str(run / "export" / "model.onnx")
    assert rundir.run_folder(tflite) == str(run)
    assert rundir.results_dir(tflite, "eval") == str(run / "eval" / "model.tflite")
    assert rundir.results_dir(onnx, "eval") == str(run / "eval" / "model.onnx")
    assert rundir.results_dir(str(run / "model.keras"), "eval") == str(run / "eval")
    # moved with its run: the source export.json recorded is gone, the export/ folder says it
    moved = tmp_path / "moved"
    os.replace(run, moved)
    assert rundir.run_folder(str(moved / "export" / "model.tflite")) == str(moved)
    # exported elsewhere (--out): export.json names the run
    elsewhere = tmp_path / "files"
    elsewhere.mkdir()
    (elsewhere / "export.json").write_text(json.dumps({"checkpoint": str(moved)}))
    (elsewhere / "model.onnx").write_bytes(b"")
    assert rundir.run_folder(str(elsewhere / "model.onnx")) == str(moved)
    # the shipped model's exports: results under runs/, never into the package
    monkeypatch.chdir(tmp_path)
    shipped = tmp_path / "runs" / "pretrained" / "export"
    shipped.mkdir(parents=True)
    (shipped / "export.json").write_text(json.dumps({"checkpoint": rundir.PRETRAINED}))
    (shipped / "model.tflite").write_bytes(b"")
    assert rundir.results_dir(str(shipped / "model.tflite"), "eval") == os.path.join(
        "runs", "pretrained", "eval", "model.tflite")
    loose = tmp_path / "loose.onnx"
    loose.write_bytes(b"")
    assert rundir.results_dir(str(loose), "eval") == os.path.join("runs", "eval", "loose.onnx")


def test_a_model_file_outside_a_run_reads_the_shipped_recipe(tmp_path):
    loose = tmp_path / "mine.keras"
    loose.write_bytes(b"")
    config, from_run = rundir.read_config(str(loose))
    assert not from_run and config.model.head == "fill_correction"
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json could not be read as a recipe"):
        rundir.read_config(str(loose))


def test_a_run_moved_from_another_checkout_finds_the_sample_clips_here(tmp_path):
    from cmp_tf import data

    fields = json.loads(open(os.path.join(rundir.PRETRAINED, rundir.CONFIG_FILE)).read())
    elsewhere = "/home/someone/old/cmp_tf/data/samples"
    mine = str(tmp_path / "my_clip.mp4")
    open(mine, "wb").close()
    fields["data"]["train"] = [f"{elsewhere}/bikes.mp4", mine, f"{elsewhere}/gone.mp4"]
    fields["data"]["val"] = [f"{elsewhere}/carphone.mp4"]
    (tmp_path / "config.json").write_text(json.dumps(fields))
    config, from_run = rundir.read_config(str(tmp_path))
    assert from_run
    assert list(config.data.train) == [data.sample_clip("bikes"), mine,
                                       f"{elsewhere}/gone.mp4"]  # no copy here: still named
    assert list(config.data.val) == [data.sample_clip("carphone")]
    shipped, _ = rundir.read_config(rundir.PRETRAINED)
    assert all(os.path.isfile(path) for path in (*shipped.data.train, *shipped.data.val))


def test_checkpoints_of_transfer_learning_are_named(tmp_path):
    with pytest.raises(ValueError, match="checkpoint is empty"):
        rundir.encoder_file("")
    with pytest.raises(ValueError, match="directory without encoder.keras or model.keras"):
        rundir.encoder_file(str(tmp_path))
    (tmp_path / "model.keras").write_bytes(b"")
    assert rundir.encoder_file(str(tmp_path)) == str(tmp_path / "model.keras")
    (tmp_path / "encoder.keras").write_bytes(b"")
    assert rundir.encoder_file(str(tmp_path)) == str(tmp_path / "encoder.keras")


def _python(code, cwd, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


def test_import_cmp_tf_is_enough_to_load_its_keras_files(tmp_path):
    model = os.path.join(rundir.PRETRAINED, rundir.MODEL_FILE)
    code = (f"import cmp_tf, keras; m = keras.models.load_model({model!r}); "
            "print(sorted(m.output))")
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "['flow', 'logits']" in result.stdout


def _installed_wheel(tmp_path):
    """The wheel built from the repository's package files alone, unpacked: (its folder, for
    PYTHONPATH, and its file names)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source)
    for name in ("cmp_tf", "export"):
        shutil.copytree(os.path.join(ROOT, name), source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", str(source), "-w", str(tmp_path)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("cmp_tf-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
        names = archive.namelist()
    assert not any(n.startswith(("configs/", "tests/", "benchmarks/")) for n in names)
    return site, names


@pytest.mark.slow
def test_an_installed_wheel_serves_from_any_folder(tmp_path):
    """The wheel holds the library alone (no configs/): from a folder outside the repository it
    runs Propagator on a run directory, `python -m export` and the animate command."""
    site, names = _installed_wheel(tmp_path)
    assert "cmp_tf/pretrained/default/model.keras" in names
    work = tmp_path / "work"
    run = work / "my_run"
    shutil.copytree(site / "cmp_tf" / "pretrained" / "default", run)
    env = dict(PYTHONPATH=str(site))  # ahead of the repository's editable install
    image = np.full((128, 160, 3), 90, np.uint8)
    cv2.rectangle(image, (40, 30), (90, 80), (200, 60, 60), -1)
    cv2.imwrite(str(work / "photo.png"), image)
    code = ("import cmp_tf, numpy as np, importlib.util; "
            "from cmp_tf.runtime import Propagator; "
            "assert importlib.util.find_spec('configs') is None; "
            "f = Propagator('my_run').propagate(np.zeros((128, 160, 3), np.uint8), "
            "np.array([[64., 64.]], np.float32), np.array([[3., -2.]], np.float32)); "
            "print(cmp_tf.__file__, f.shape, f[64, 64].round(1).tolist())")
    served = _python(code, work, **env)
    assert served.returncode == 0, served.stderr[-2000:]
    assert str(site) in served.stdout and "(128, 160, 2)" in served.stdout
    exported = subprocess.run(
        [sys.executable, "-m", "export", "--checkpoint=my_run", "--formats=tflite", "--size=128",
         "--calibration=1", "--parity_samples=1", "--noencoder", "--out=exported"],
        cwd=work, capture_output=True, text=True, timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (work / "exported" / "model.tflite").is_file()
    animated = subprocess.run(
        [sys.executable, "-m", "cmp_tf.apps.animate", "--model=exported/model.tflite",
         "--image=photo.png", "--arrows=64,55,6,0", "--frames=3", "--out=moved.gif"],
        cwd=work, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
    assert animated.returncode == 0, animated.stderr[-3000:]
    assert (work / "moved.gif").stat().st_size > 0


@pytest.mark.slow
def test_an_installed_wheel_ingests_without_configs_and_says_where_recipes_are(tmp_path):
    """From an installed package (no configs/ beside it) `python -m cmp_tf.data.ingest` with no
    --config ingests with the default recipe's fields, the shipped model's, not refusing its
    own default configs/default.py; a command naming a recipe says where recipes come from."""
    from cmp_tf.data import shards
    from cmp_tf.data.synthetic import write_video
    from tests.helpers import panning_frames

    # the fallback is what configs/default.py gives
    shipped = rundir.read_config(rundir.PRETRAINED)[0].ingest.to_dict()
    assert json.loads(json.dumps(load_config("default").ingest.to_dict())) == shipped
    site, _ = _installed_wheel(tmp_path)
    work = tmp_path / "work"
    (work / "clips").mkdir(parents=True)
    write_video(work / "clips" / "pan.avi", panning_frames(4))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(site)}
    ingested = subprocess.run([sys.executable, "-m", "cmp_tf.data.ingest", "--videos=clips",
                               "--out=shards", "--workers=1"], cwd=work, capture_output=True,
                              text=True, timeout=600, env=env)
    assert ingested.returncode == 0, ingested.stderr[-2000:]
    with open(work / "shards" / shards.MANIFEST) as f:
        assert json.load(f)["totals"]["pairs"] > 0
    converted = subprocess.run([sys.executable, "-m", "cmp_tf.convert", "--checkpoint=a.pth",
                                "--config=configs/resnet50_semiauto.py", "--out=a.keras"],
                               cwd=work, capture_output=True, text=True, timeout=600, env=env)
    assert converted.returncode == 1 and "Traceback" not in converted.stderr
    assert "the recipes (configs/) come with the cmp_tf repository" in converted.stderr


@pytest.mark.slow
def test_the_sdist_holds_what_the_readme_runs_and_its_wheel_the_library_alone(tmp_path):
    """The sdist carries requirements.txt, the recipes, train.py, evaluate.py and the tests (the
    README's set-up and commands); the wheel built from it still holds cmp_tf and export alone."""
    import tarfile

    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    for name in tracked.stdout.splitlines():
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(source / os.path.dirname(name), exist_ok=True)
            shutil.copy(os.path.join(ROOT, name), source / name)
    code = ("import sys; from setuptools import build_meta as b; "
            "print(b.build_sdist(sys.argv[1]))")
    built = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=source,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("cmp_tf-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for name in ("requirements.txt", "train.py", "evaluate.py", "configs/default.py",
                 "configs/common.py", "tests/conftest.py", "cmp_tf/pretrained/default/model.keras",
                 "cmp_tf/data/samples/carphone.mp4", "cmp_tf/apps/web/static/app.js"):
        assert name in names, name
    assert not any("__pycache__" in name or "/vendor/" in name for name in names)
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", str(sdist), "-w", str(tmp_path)],
                           capture_output=True, text=True, timeout=600)
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    (built_wheel,) = tmp_path.glob("cmp_tf-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(built_wheel).namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"cmp_tf", "export"}, tops


def test_the_lite_extra_declares_what_the_lite_runtime_imports():
    """Every third-party module the TensorFlow-free runtime and commands import (at any level;
    TensorFlow, Keras and ml_collections only on the paths that load a Keras model) is a
    distribution `[lite]` names itself, not one it happens to get from another's dependencies."""
    import ast
    import re
    from importlib import metadata

    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        lite = tomllib.load(f)["project"]["optional-dependencies"]["lite"]
    declared = {re.split(r"[<>=;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in lite}
    modules = ["runtime.py", "runners.py", "flow.py", "cli.py", "progress.py", "rundir.py",
               "data/formats.py", "data/sampling.py", "apps/animate.py", "apps/annotate.py",
               "apps/inputs.py", "apps/web/server.py", "apps/web/__main__.py",
               "apps/browser/server.py", "apps/browser/__main__.py", "apps/browser/install.py"]
    imported = set()
    for module in modules:
        with open(os.path.join(ROOT, "cmp_tf", module)) as f:
            for node in ast.walk(ast.parse(f.read())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    imported -= set(sys.stdlib_module_names) | {"cmp_tf", "tensorflow", "keras",
                                                 "ml_collections"}
    owners = metadata.packages_distributions()
    missing = {name: owners.get(name) for name in imported
               if not {d.lower().replace("_", "-") for d in owners.get(name, [])} & declared}
    assert not missing, f"[lite] lacks the distributions of {missing}"


def test_the_suite_never_reads_the_users_data_cache():
    """A recipe's relative cache folder resolves under the session's temporary folder, so a
    corrupt or foreign data/cache in the working tree changes no test."""
    from cmp_tf import data

    resolved = data.cache_dir(load_config("cpu_bins").data.cache_dir)
    assert resolved.startswith(os.environ[data.CACHE_HOME_ENV])
    assert not os.path.abspath(resolved).startswith(os.path.join(ROOT, "data"))
    assert data.cache_dir("/abs/cache") == "/abs/cache"


def _unfinished_run(tmp_path):
    """A run folder holding the default recipe's config.json and the checkpoints of steps 2
    and 10 (other weights each), no model.keras; the newest weights saved beside it too."""
    import tensorflow as tf

    from cmp_tf import models

    config = load_config("cpu_bins")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(json.loads(config.to_json_best_effort())))
    model = models.build_cmp(config)
    checkpoint = tf.train.Checkpoint(model=model)
    noise = np.random.default_rng(1)
    for step in (2, 10):  # by number, not by name: ckpt-10 is the newer
        for weight in model.trainable_weights:
            weight.assign(weight + noise.normal(0, 0.1, weight.shape).astype(np.float32))
        checkpoint.write(str(run / "checkpoints" / f"ckpt-{step}"))
    model.save(tmp_path / "model.keras")
    return run


def test_an_unfinished_run_resumes_only_with_the_config_it_started_with(tmp_path):
    """Resumed with other flags, a run went on from its checkpoints under a recipe they were
    not trained with, and overwrote config.json: no one could tell what the weights had seen."""
    config = load_config("cpu_bins", "runlocal")
    run = str(tmp_path / "run")
    rundir.prepare_workdir(run, config)
    saved = (tmp_path / "run" / "config.json").read_text()
    assert rundir.prepare_workdir(run, config) == []  # the same flags: resumed
    seed = config.seed
    config.seed = seed + 5
    with pytest.raises(ValueError, match=rf"holds an unfinished run with another config "
                                         rf"\(\['config.seed: {seed} -> {seed + 5}'\]\)"):
        rundir.prepare_workdir(run, config)
    assert (tmp_path / "run" / "config.json").read_text() == saved
    # when it stops and how it logs may change: what it learns does not
    config.seed, steps = seed, config.train.steps
    config.train.steps, config.train.log_every = steps + 5, 7
    assert rundir.prepare_workdir(run, config) == [
        f"config.train.log_every: {load_config('cpu_bins', 'runlocal').train.log_every} -> 7",
        f"config.train.steps: {steps} -> {steps + 5}"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["steps"] == \
        steps + 5


def test_a_run_that_has_not_finished_is_read_from_its_newest_checkpoint(tmp_path):
    """Evaluation and the apps read a run still training (or stopped) from its newest
    checkpoint, built from its recipe; export asks for the finished model, naming why."""
    from cmp_tf import runtime

    run = _unfinished_run(tmp_path)
    newest = str(run / "checkpoints" / "ckpt-10")
    assert rundir.resolve_model_path(run, checkpoints=True) == newest
    assert rundir.model_format(newest) == "checkpoint" and rundir.checkpoint_step(newest) == 10
    assert rundir.results_dir(newest, "eval") == str(run / "eval" / "ckpt-10")
    assert rundir.read_config(newest)[1]
    with pytest.raises(ValueError, match=r"is a run that has not finished .*export needs "
                                         r"model\.keras"):
        rundir.resolve_model_path(run)
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)
    guides = ([(40, 30), (70, 10)], [(3.0, -2.0), (-1.0, 0.5)])
    from_run = runtime.Propagator(run).propagate(image, *guides)
    from_file = runtime.Propagator(tmp_path / "model.keras").propagate(image, *guides)
    np.testing.assert_allclose(from_run, from_file, atol=1e-5)
    older = runtime.Propagator(run / "checkpoints" / "ckpt-2").propagate(image, *guides)
    assert np.abs(older - from_file).max() > 1e-4
    # the forms a user types: one of its files, the checkpoints folder, a step not kept
    assert rundir.resolve_model_path(f"{newest}.index", checkpoints=True) == newest
    assert rundir.resolve_model_path(run / "checkpoints", checkpoints=True) == newest
    with pytest.raises(ValueError, match=r"ckpt-99 does not exist; its folder holds the "
                                         r"training checkpoints of steps 2, 10\."):
        rundir.resolve_model_path(run / "checkpoints" / "ckpt-99", checkpoints=True)
    with pytest.raises(ValueError, match=r"is a run that has not finished: a finished run's "
                                         r"encoder\.keras is what transfer learning reads"):
        rundir.encoder_file(run)
    (run / "config.json").unlink()
    with pytest.raises(ValueError, match=r"ckpt-10: its run folder holds no config\.json"):
        runtime.Propagator(run)


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_passed_over_for_the_one_before(tmp_path):
    """A run killed while saving holds a corrupt newest checkpoint: evaluation and the apps
    read the newest one that reads back, saying so, and change nothing on disk; a checkpoint
    the user names is read or refused as it is."""
    from cmp_tf import runtime

    run = _unfinished_run(tmp_path)
    folder = run / "checkpoints"
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)
    guides = ([(40, 30), (70, 10)], [(3.0, -2.0), (-1.0, 0.5)])
    older = runtime.Propagator(folder / "ckpt-2").propagate(image, *guides)
    data = folder / "ckpt-10.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:200])  # killed half-way through writing it
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match=r"Checkpoint .*ckpt-10 could not be restored"):
        runtime.Propagator(folder / "ckpt-10")
    for named in (run, folder):
        propagator = runtime.Propagator(named)
        assert propagator.path == str(folder / "ckpt-2")
        np.testing.assert_allclose(propagator.propagate(image, *guides), older, atol=1e-5)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    evaluated = subprocess.run(
        [sys.executable, "evaluate.py", f"--checkpoint={run}", "--data=generated", "--pairs=1",
         "--ks=5", "--strategies=uniform", "--baselines=nearest", "--panels=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (f"{folder}/ckpt-10 could not be restored" in evaluated.stderr and
            f"Reading the newest one that reads back instead, {folder}/ckpt-2." in
            evaluated.stderr)
    assert f"Evaluating {folder}/ckpt-2, the step-2 training checkpoint of a run that has " \
        "not finished" in evaluated.stdout
    assert (run / "eval" / "ckpt-2" / "propagation" / "results.json").is_file()
    assert not (run / "eval" / "ckpt-10").exists()
    older_data = folder / "ckpt-2.data-00000-of-00001"
    older_data.write_bytes(older_data.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"ckpt-10 could not be restored .* Nor could the 1 "
                                         r"before it: ckpt-2\."):
        runtime.Propagator(run)


@pytest.mark.parametrize("path", [5, b"model.keras", "", "  "])
def test_a_model_path_that_names_nothing_is_refused(path):
    """Propagator(5) was a TypeError from os.fspath; Propagator("") said " does not exist"."""
    from cmp_tf import runtime

    with pytest.raises(ValueError, match=r"path must name a model \(a run directory, .* or be "
                                         r"None for the shipped one; got "):
        runtime.Propagator(path)


def test_a_model_is_saved_whole_or_not_at_all(tmp_path):
    """train.py wrote model.keras in place: Ctrl-C or a kill while saving left an empty file
    that evaluate, export and the apps refused, preferring it to the run's checkpoints."""

    class CutShort:
        def save(self, path):
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt

    target = tmp_path / "model.keras"
    target.write_bytes(b"the earlier model")
    with pytest.raises(KeyboardInterrupt):
        rundir.save_model(CutShort(), target)
    assert target.read_bytes() == b"the earlier model"
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]
    assert rundir.is_run_entry(".model.123.partial.keras")  # a leftover --overwrite removes


def test_a_resume_names_what_changed_in_its_training_input(tmp_path):
    """The same config over a data folder that gained a video, or a job with another worker,
    resumed silently with another sample sequence than an uninterrupted run's."""
    first, second = tmp_path / "a-0000.tfrecord", tmp_path / "b-0000.tfrecord"
    first.write_bytes(b"x" * 10)
    second.write_bytes(b"y" * 20)
    run = tmp_path / "run"
    run.mkdir()
    assert rundir.note_input(str(run), [str(first)], [], 1) == []  # a new run: nothing to say
    assert rundir.note_input(str(run), [str(first)], [], 1) == []  # the same input
    assert rundir.note_input(str(run), [str(first), str(second)], ["e1", "e2"], 2) == [
        "1 training shards then, 2 now (1 new or changed, 0 gone)",
        "list entries: 0 then, 2 now", "workers: 1 then, 2 now"]
    first.write_bytes(b"x" * 11)  # a shard written again since
    assert rundir.note_input(str(run), [str(first), str(second)], ["e1", "e2"], 2) == [
        "2 training shards then, 2 now (1 new or changed, 1 gone)"]
    assert rundir.is_run_entry(rundir.INPUT_FILE)


def test_a_partial_file_a_killed_writer_left_is_removed_by_the_next_write(tmp_path):
    """A converter killed while it saved left a hidden partial model for good."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dead = tmp_path / f".model.{gone}{rundir.PARTIAL}.keras"
    alive = tmp_path / f".model.{os.getppid()}{rundir.PARTIAL}.keras"  # a writer still at it
    other = tmp_path / f".encoder.{gone}{rundir.PARTIAL}.keras"  # another file's: not ours
    for path in (dead, alive, other):
        path.write_bytes(b"half a model")
    with rundir.whole_file(tmp_path / "model.keras") as partial, open(partial, "wb") as f:
        f.write(b"model")
    assert not dead.exists() and alive.exists() and other.exists()
    assert (tmp_path / "model.keras").read_bytes() == b"model"
