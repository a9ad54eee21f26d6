"""train.py / evaluate.py as a user runs them."""
import os
import subprocess
import sys

import pytest

from tests.helpers import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return run_python(args, cwd=ROOT, env=env, timeout=300)


def _one_line_error(result, message):
    """A refused command: exit status 1, stderr ending in `message` and the pointer to --help,
    no traceback and none of the usage text absl prints above a usage error."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[-1] == "Run with --help for the flags." and message in lines[-2], lines[-3:]
    assert not any(line.startswith("USAGE") or "python -m" in line for line in lines), lines


def test_ctrl_c_ends_a_command_in_one_line():
    """Every command but train.py and ingestion printed Python's traceback at Ctrl-C (evaluate,
    export, the apps: 10 to 40 frames deep in Keras or TensorFlow)."""
    code = ("import time\nfrom cmp_tf import cli\n\ndef main(argv):\n"
            "    raise KeyboardInterrupt\n\ncli.run(main)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1] == "Interrupted."


def test_a_config_typo_is_refused_with_a_suggestion(tmp_path):
    result = _run("train.py", "--config.data.batch_sise=4", f"--workdir={tmp_path / 'run'}")
    _one_line_error(result, "--config: no field 'batch_sise' in the config; "
                            'Did you mean "batch_size" instead of "batch_sise"?')
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, message", [
    ("--config.data.batch_size=-4", "config.data.batch_size=-4 must be a whole number >= 1."),
    ("--config=configs/nope.py", f"--config=configs/nope.py: no such recipe file (relative to "
                                 f"{ROOT})."),
    ("--config.data.train=('nothere.mp4',)", "config.data.train: nothere.mp4 does not exist."),
    ("--config.guidance.num_points=(5,1)", "config.guidance.num_points must be (0, 0)"),
    ("--config.data.on_error=foo", "config.data.on_error must be 'skip' or 'raise'"),
    ("--config.ingest.gaps=(-1,)", "config.ingest.gaps=(-1,) must be frame gaps"),
    ("--cpu_devices=-1", "flag --cpu_devices=-1: -1 is not a non-negative integer"),
    ("--config=configs/default.py:runlokal",  # a recipe that raises: its error, no traceback
     "Error whilst parsing config file: ValueError: Unknown recipe argument 'runlokal'"),
    ("--devices=/gpu:7", "--devices=/gpu:7 is for --strategy=mirrored; got --strategy=auto."),
    ("--strategy=tpu", "--strategy=tpu found no TPU (Please provide a TPU Name to connect "
                       "to.): run on a TPU machine, or set TPU_NAME"),
    ("--config=configs/common.py", "--config=configs/common.py: not a recipe (it has no "
                                   "get_config()); the recipes are the other files under "
                                   "configs/."),  # was "module 'config_config' has no ..."
    (f"--config.data.cache_dir={ROOT}/README.md",  # was named out_dir, ingestion's argument
     f"config.data.cache_dir={ROOT}/README.md is a file"),
])
def test_train_py_refuses_a_run_in_one_line_before_writing(tmp_path, flag, message):
    result = _run("train.py", flag, f"--workdir={tmp_path / 'run'}")
    _one_line_error(result, message)
    assert not (tmp_path / "run").exists()


def test_an_output_folder_that_is_a_file_or_lies_in_one_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    _one_line_error(_run("-m", "cmp_tf.data.ingest", "--videos=cmp_tf/data/samples/carphone.mp4",
                         f"--out={tmp_path / 'notes.txt'}"),
                    f"--out={tmp_path / 'notes.txt'} is a file, not a folder.")
    (tmp_path / "made.gif").mkdir()
    for app, out, message in (
            ("animate", tmp_path / "notes.txt" / "a.gif", "lies in "),
            ("animate", tmp_path / "made.gif", "is a folder; name a file."),
            ("annotate", tmp_path / "notes.txt" / "m.png", "lies in ")):
        flags = ["--arrows=5,5,1,1"] if app == "animate" else ["--positive=5,5"]
        _one_line_error(_run("-m", f"cmp_tf.apps.{app}", "--image=docs/results.png", *flags,
                             f"--out={out}"), f"--out={out} {message}")
    _one_line_error(_run("train.py", f"--workdir={tmp_path / 'notes.txt'}"),
                    f"--workdir={tmp_path / 'notes.txt'} is a file, not a folder.")
    _one_line_error(_run("train.py", f"--workdir={tmp_path / 'notes.txt' / 'run'}"),
                    f"--workdir={tmp_path / 'notes.txt' / 'run'} lies in "
                    f"{tmp_path / 'notes.txt'}, a file, not a folder.")
    assert (tmp_path / "notes.txt").read_text() == "mine"


# benchmarks/train_throughput.py timing one small step: a refusal it misses costs seconds.
_TINY_STEP = ["--recipes=cpu_bins", "--precisions=float32", "--size=128", "--batch=1",
              "--out={tmp}/out"]


@pytest.mark.parametrize("args, message", [
    (["-m", "cmp_tf.convert", "--checkpoint={tmp}/missing.pth",
      "--config=configs/alexnet_yfcc.py", "--out={tmp}/o/model.keras"],
     "{tmp}/missing.pth does not exist (expected a PyTorch checkpoint)."),
    (["-m", "cmp_tf.convert", "--checkpoint={tmp}/notes.txt", "--config=configs/alexnet_yfcc.py",
      "--out={tmp}/notes.txt/model.keras"], "--out={tmp}/notes.txt/model.keras lies in "),
    (["-m", "cmp_tf.data.synthetic", "--out={tmp}/notes.txt"],
     "--out={tmp}/notes.txt is a file, not a folder."),
    (["-m", "cmp_tf.data.stereo", "--left=docs/results.png", "--right=docs/results.png",
      "--disparity={tmp}/notes.txt", "--out={tmp}/notes.txt"],
     "--out={tmp}/notes.txt is a file, not a folder."),
    (["-m", "cmp_tf.apps.web", "--port=70000"], "70000 is not an integer in the range [0, 65535]"),
    (["benchmarks/inference.py", "--recipes=bogus"], "--recipes: no recipe bogus under configs/"),
    (["benchmarks/inference.py", "--recipes=propagation,bogus", "--runs={tmp}"],
     "--recipes: no recipe bogus under configs/ and no run {tmp}/<name>/model.keras."),
    # a mistyped setting ran without XLA, 0 steps failed after warm-up, a typo was a traceback
    (["benchmarks/train_throughput.py", *_TINY_STEP, "--jit=false,ture"],
     "--jit=false,ture: each setting must be true or false; got 'ture'."),
    (["benchmarks/train_throughput.py", *_TINY_STEP, "--fused_loss=yes"],
     "--fused_loss=yes: each setting must be true or false; got 'yes'."),
    (["benchmarks/train_throughput.py", *_TINY_STEP, "--steps=0"],
     "flag --steps=0: 0 is not a positive"),
    (["benchmarks/train_throughput.py", "--recipes=propgation"],
     "--recipes: no recipe propgation under configs/."),
    # a side a model cannot take failed as config.data.crop, after the recipes before it ran
    (["benchmarks/train_throughput.py", *_TINY_STEP, "--recipes=resnet50_semiauto,cpu_bins",
      "--size=64"], "--size=64: cpu_bins takes sides that are multiples of 32 (its encoders' "
                    "stride), at least 128; got 64."),
    (["benchmarks/train_throughput.py", *_TINY_STEP, "--size=144"],
     "--size=144: cpu_bins takes sides that are multiples of 32 (its encoders' stride), at "
     "least 128; got 144."),
    # a helper module and the transfer's recipe are under configs/ but build no CMP
    (["benchmarks/inference.py", "--recipes=common"],
     "--recipes: configs/common.py is not a propagation recipe (no get_config() giving a config "
     "with model and flow). The recipes under configs/: alexnet_yfcc, cpu_bins, default,"),
    (["benchmarks/train_throughput.py", *_TINY_STEP, "--recipes=cpu_bins,segmentation"],
     "--recipes: configs/segmentation.py is not a propagation recipe (no get_config() giving a "
     "config with model and flow). The recipes under configs/: alexnet_yfcc, cpu_bins,"),
    # its own good requests failed (a pin off the image), the whole usage text, a traceback
    (["benchmarks/web_load.py", "--duration=1", "--side=1"],
     "--side=1 must lie in [3, 2048] px: the good requests pin the point (2, 2) on the image"),
    (["benchmarks/web_load.py", "--duration=1", "--clients=0"],
     "flag --clients=0: 0 is not a positive integer"),
    (["benchmarks/web_load.py", "--duration=1", "--model={tmp}/notes.txt"],
     "--model={tmp}/notes.txt: {tmp}/notes.txt: expected a .keras, .tflite or .onnx file"),
    (["benchmarks/inference.py", "--recipes=propagation", "--size=100", "--repeats=1",
      "--out={tmp}/out"], "--size=100: propagation takes sides that are multiples of 32 (its "
                          "encoders' stride), at least 128; got 100."),
    (["benchmarks/propagator.py", "--models=cmp_tf/pretrained/default,{tmp}/nope.onnx",
      "--sizes=128x128", "--repeats=1", "--out={tmp}/out"],
     "--models: {tmp}/nope.onnx does not exist"),
    (["benchmarks/train_throughput.py", *_TINY_STEP, "--out={tmp}/notes.txt"],
     "--out={tmp}/notes.txt is a file, not a folder."),
    # the report's folder was made when the report was written, after every variant trained
    (["benchmarks/ablation.py", "--report_only", "--variants=paper", "--root={tmp}/runs",
      "--out={tmp}/notes.txt/ablation"],
     "--out={tmp}/notes.txt/ablation lies in {tmp}/notes.txt, a file, not a folder."),
    (["benchmarks/teacher.py", "--scenes=1", "--size=48", "--out={tmp}/notes.txt"],
     "--out={tmp}/notes.txt is a file, not a folder."),
    (["benchmarks/input_pipeline.py", "--out={tmp}/notes.txt/x.json"],
     "--out={tmp}/notes.txt/x.json lies in {tmp}/notes.txt, a file, not a folder."),
    (["benchmarks/propagator.py", "--out={tmp}/notes.txt"],
     "--out={tmp}/notes.txt is a file, not a folder."),
    (["evaluate.py", "--out={tmp}/notes.txt"], "--out={tmp}/notes.txt is a file, not a folder."),
    (["train.py", "--config=configs/default.py:runlocal=ture", "--workdir={tmp}/run"],
     "Recipe argument runlocal='ture' must be one of true, yes, 1, false, no, 0."),
    (["-m", "export", "--checkpoint=cmp_tf/pretrained/default", "--out={tmp}/export",
      "--threads=-1"], "--threads=-1 must be a positive count of CPU threads"),
    (["evaluate.py", "--method={tmp}/zero.py"],
     "--method={tmp}/zero.py would be scored as 'zero', a column already taken"),
    (["evaluate.py", "--method={tmp}/mine.py"],
     "--method={tmp}/mine.py is not a file: name a Python file defining propagate"),
    (["evaluate.py", "--method=README.md"],  # refused after the model had loaded
     "--method=README.md is not a .py file: name a Python file defining propagate"),
    (["evaluate.py", "--baselines=nearst,linear"],
     "--baselines: nearst unknown; known: zero, nearest, linear"),
    (["evaluate.py", "--seed=-1"], "--seed=-1 must be >= 0."),
    (["evaluate.py", "--checkpoint=cmp_tf/pretrained/default", "--pairs=1", "--ks=1",
      "--out=/proc/cmp_tf_test"], "--out=/proc/cmp_tf_test"),  # as root: when it is made
    (["evaluate.py", "--method=a/mine.py", "--method=b/mine.py"],
     "--method=b/mine.py would be scored as 'mine', a column already taken"),
    (["evaluate.py", "--task=segmentation", "--seed=7", "--ks=5"],
     "--ks, --seed: for --task=propagation, not --task=segmentation."),
    (["evaluate.py", "--seeds=1", "--segmentation.train.steps=0"],
     "--seeds, --segmentation.train.steps: for --task=segmentation, not --task=propagation."),
    (["evaluate.py", "--task=segmentation", "--checkpoint=cmp_tf/pretrained/default",
      "--data={tmp}/VOC_typo"], "--data={tmp}/VOC_typo is not a folder: expected a VOC-format"),
    (["evaluate.py", "--task=segmentation", "--checkpoint=cmp_tf/pretrained/default",
      "--data={tmp}"], "--data={tmp} holds no synthetic.json, so it is not a generated set"),
    (["evaluate.py", "--checkpoint=cmp_tf/pretrained/default", "--data=generated,{tmp}/x.txt"],
     "'generated' (held-out layered scenes, their flow exact) is scored on its own"),
    # A recipe of one kind given to the command of the other was an AttributeError's traceback,
    # and a segmentation transfer trained on with a negative learning rate.
    (["train.py", "--config=configs/segmentation.py", "--workdir={tmp}/run"],
     "The config is not a CMP training recipe (it has no flow, guidance fields): a "
     "segmentation recipe (configs/segmentation.py) trains in evaluate.py"),
    (["evaluate.py", "--task=segmentation", "--checkpoint=cmp_tf/pretrained/default",
      "--segmentation=configs/default.py"],
     "--segmentation: The segmentation config has no transfer and head fields: it is a CMP"),
    (["evaluate.py", "--task=segmentation", "--checkpoint=cmp_tf/pretrained/default",
      "--segmentation.schedule.lr=-1", "--out={tmp}/seg"],
     "--segmentation: config.schedule.lr=-1.0 must be a finite number > 0."),
    (["evaluate.py", "--task=segmentation", "--segmentation=configs/segmentation.py:recipe=nope"],
     "recipe='nope': no such CMP recipe in"),
    (["evaluate.py", "--task=segmentation", "--checkpoint=cmp_tf/pretrained/default",
      "--segmentation.data.eval_batch_size=0", "--out={tmp}/seg"],
     "--segmentation: config.data.eval_batch_size=0 must be a whole number >= 1."),
])
def test_the_tools_name_a_bad_file_or_flag_in_one_line(tmp_path, args, message):
    """The converter, the data tools, the servers and the benchmarks: their own ValueErrors and
    output paths they cannot write, before any work (a benchmark's results are not lost)."""
    (tmp_path / "notes.txt").write_text("mine")
    _one_line_error(_run(*(a.format(tmp=tmp_path) for a in args)), message.format(tmp=tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_folder_the_system_will_not_let_it_write_is_one_line():
    """A read-only output folder or a full disk was a traceback from deep in the command."""
    result = _run("-m", "cmp_tf.data.synthetic", "--out=/sys/cmp_tf_test")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "/sys/cmp_tf_test" in lines[-1], lines[-3:]  # refused up front, or by the system
    assert lines[-1].startswith("[Errno") or lines[-1].endswith("not writable by this user."), \
        lines[-3:]


def test_recipes_load_under_python_m_from_outside_the_checkout(tmp_path):
    """The README's editable install: `python -m cmp_tf.<command>` from another folder loads
    the checkout's recipes, whose `from configs import common` needed the checkout on
    PYTHONPATH (every command from elsewhere ended in "No module named 'configs'")."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"))

    result = run("cmp_tf.convert", "--checkpoint=x.pth",
                 f"--config={ROOT}/configs/alexnet_yfcc.py")
    if "No module named 'cmp_tf'" in result.stderr:  # the README's install makes it importable
        pytest.skip("cmp_tf is not installed: it runs from the checkout only")
    _one_line_error(result, "x.pth does not exist")
    _one_line_error(run("cmp_tf.data.ingest", "--videos=nope.mp4", f"--out={tmp_path / 'out'}"),
                    "--videos/--lists: nope.mp4 does not exist.")  # its default recipe loaded


def test_train_py_run_from_another_folder_finds_its_default_recipe(tmp_path):
    """`python path/to/train.py` from elsewhere failed on its own default, configs/default.py,
    in ml_collections' words; a recipe named relative to the checkout is pointed to."""
    def run(*flags):
        return subprocess.run([sys.executable, f"{ROOT}/train.py", *flags,
                               f"--workdir={tmp_path / 'run'}"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))

    _one_line_error(run("--config.data.batch_size=-4"),  # the default recipe loaded
                    "config.data.batch_size=-4 must be a whole number >= 1.")
    for flags in (["--config=configs/cpu_bins.py"],  # with an override, as the flags parse
                  ["--config=configs/cpu_bins.py:runlocal", "--config.train.steps=2"]):
        _one_line_error(run(*flags), f"--config=configs/cpu_bins.py: no such recipe file "
                                     f"(relative to {tmp_path}); it is at "
                                     f"{ROOT}/configs/cpu_bins.py.")
    assert not (tmp_path / "run").exists()


def test_data_that_does_not_read_is_named_in_one_line(tmp_path):
    """Sources that exist but hold nothing usable: refused before the run folder is made;
    shards that do not read: evaluate names its --data."""
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00 not a list")
    (tmp_path / "empty").mkdir()
    for source, message in ((tmp_path / "binary.txt", "is not UTF-8 text (byte 0)"),
                            (tmp_path / "empty",
                             "holds no .tfrecord shards, videos or folders of frames")):
        _one_line_error(_run("train.py", f"--config.data.train=({str(source)!r},)",
                             f"--workdir={tmp_path / 'run'}"),
                        f"config.data.train: {'List file ' if 'txt' in str(source) else ''}"
                        f"{'' if 'txt' in str(source) else 'folder '}{source}")
        assert not (tmp_path / "run").exists()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "x.tfrecord").write_bytes(os.urandom(5000))
    _one_line_error(_run("evaluate.py", "--checkpoint=cmp_tf/pretrained/default",
                         f"--data={tmp_path / 'shards'}", f"--out={tmp_path / 'eval'}"),
                    f"--data: none of its 1 samples could be read; the last: Shard "
                    f"{tmp_path / 'shards' / 'x.tfrecord'}: record 1 (at byte 0) is corrupt")


@pytest.mark.parametrize("args, message", [
    (["--videos=nothere.mp4"], "--videos/--lists: nothere.mp4 does not exist."),
    (["--workers=-1"], "--workers=-1: must be at least 1."),
    (["--config.ingest.dis_preset=medum"], "config.ingest.dis_preset='medum'; known: "),
    (["--config.ingest.gapz=1"], "--config: no field 'gapz' in the config;"),
    (["--runner=locl"], "Unexpected pipeline runner: locl."),
    (["--config.ingest.gaps=(0,)"], "config.ingest.gaps=(0,) must be frame gaps"),
    (["--config.ingest.pairs_per_shard=0"], "config.ingest.pairs_per_shard=0 must be a whole"),
    # a list or a video is told by its name: given under the other flag, it was read as the
    # other (a photo under --lists failed as a video, its manifest written)
    (["--videos=cmp_tf/data/samples/carphone.mp4", "--lists=docs/results.png"],
     "--lists=docs/results.png: list files are .txt files"),
    (["--videos=tests/list.txt"], "--videos=tests/list.txt: a .txt file is a list file; name it "
                                  "with --lists."),
])
def test_ingest_refuses_bad_flags_and_config_before_any_file(tmp_path, args, message):
    """A config mistake is not recorded as every video failing (in a manifest a corrected
    rerun into the same folder would report again): nothing is written."""
    if not any(a.startswith("--videos") for a in args):
        args = ["--videos=cmp_tf/data/samples/carphone.mp4", *args]
    result = _run("-m", "cmp_tf.data.ingest", *args, f"--out={tmp_path / 'out'}")
    _one_line_error(result, message)
    assert not (tmp_path / "out").exists()


def test_the_apps_and_export_print_a_bad_flag_alone_and_name_it(tmp_path):
    import cv2
    import numpy as np

    image = str(tmp_path / "frame.png")
    cv2.imwrite(image, np.full((144, 176, 3), 100, np.uint8))
    animate = ["-m", "cmp_tf.apps.animate", "--arrows=88,50,-10,4", f"--out={tmp_path}/a.gif"]
    _one_line_error(_run(*animate, f"--image={tmp_path / 'none.png'}"),
                    f"--image={tmp_path / 'none.png'} does not exist or is not a file.")
    _one_line_error(_run(*animate, f"--image={image}", "--max_side=-5"),
                    "--max_side must be -1 (full size) or a positive whole number of pixels; "
                    "got -5.")
    _one_line_error(_run("-m", "export", f"--checkpoint={tmp_path / 'none'}",
                         f"--out={tmp_path / 'out'}"),
                    f"--checkpoint={tmp_path / 'none'}: {tmp_path / 'none'} does not exist")
    assert not (tmp_path / "out").exists()


def test_an_unknown_part_is_refused_with_the_known_names(tmp_path):
    result = _run("train.py", "--config.model.image_encoder=vgg16", f"--workdir={tmp_path / 'r'}")
    assert result.returncode != 0
    assert "image_encoder='vgg16' is unknown; known: alexnet_fcn_32x" in result.stderr
    assert not (tmp_path / "r").exists()  # nothing written before the config is valid


def test_train_with_no_flags_trains_the_shipped_models_recipe():
    """`python train.py` must train what made cmp_tf/pretrained/default (configs/propagation.py):
    the best CPU recipe, whose printed validation beats the nearest fill, not the bins one."""
    import json

    code = ("import json, train; from absl import flags; flags.FLAGS(['train.py']); "
            "print(json.dumps(train._CONFIG.value.to_dict()))")
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    default = json.loads(result.stdout.strip().splitlines()[-1])
    with open(os.path.join(ROOT, "cmp_tf", "pretrained", "default", "config.json")) as f:
        shipped = json.load(f)

    # The clips' paths are this checkout's (the embedded samples wherever the package lies).
    checkout_paths = {"config.data.train", "config.data.val"}

    def same(recipe, made_by, where="config"):  # fields added since the model was made default
        if where in checkout_paths:
            assert [os.path.basename(p) for p in recipe] == \
                [os.path.basename(p) for p in made_by], where
        elif isinstance(made_by, dict):
            for key, value in made_by.items():
                assert key in recipe, f"{where}.{key}"
                same(recipe[key], value, f"{where}.{key}")
        else:
            assert recipe == made_by, where

    same(default, shipped)
    assert default["model"]["head"] == "fill_correction"


@pytest.mark.slow
def test_evaluate_scores_a_saved_model_against_every_baseline(tmp_path, saved_default):
    import json

    path = saved_default
    method = tmp_path / "mine.py"
    method.write_text("import numpy as np\n\ndef propagate(image, points, vectors):\n"
                      "    return np.zeros(image.shape[:2] + (2,), np.float32) + 1\n")
    out = tmp_path / "eval"
    result = _run("evaluate.py", f"--checkpoint={path}", "--data=generated", "--pairs=3",
                  "--ks=1,10,100", f"--method={method}", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| watershed | 10" in result.stdout
    for name in ("results.md", "results.json", "relative_epe.png", "panels.png"):
        assert (out / name).stat().st_size > 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    epe = {(r["strategy"], r["k"], r["method"]): r["epe"] for r in rows}
    assert {m for _, _, m in epe} == {"cmp", "zero", "nearest", "linear", "gaussian",
                                      "epicflow", "mine"}
    # An untrained dense-prior model reads out the nearest fill (docs/design.md §2: start from
    # the fill).
    for k in (10, 100):
        assert epe[("uniform", k, "nearest")] < epe[("uniform", k, "zero")]
        assert abs(epe[("uniform", k, "cmp")] - epe[("uniform", k, "nearest")]) < 0.25 * epe[
            ("uniform", k, "nearest")]
    (tmp_path / "empty").mkdir()
    result = _run("evaluate.py", f"--checkpoint={path}", f"--data={tmp_path / 'empty'}")
    assert result.returncode != 0 and f"{tmp_path / 'empty'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_names_a_missing_or_corrupt_checkpoint(tmp_path):
    result = _run("evaluate.py", f"--checkpoint={tmp_path / 'nope.keras'}")
    assert result.returncode != 0 and "nope.keras does not exist" in result.stderr
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"junk")
    result = _run("evaluate.py", f"--checkpoint={bad}")
    assert result.returncode != 0 and "model.keras is not a .keras file" in result.stderr


@pytest.mark.slow
def test_evaluate_segmentation_prints_random_and_cmp_side_by_side(tmp_path, saved_default):
    import json

    path = saved_default
    out = tmp_path / "seg"
    result = _run("evaluate.py", "--task=segmentation", f"--checkpoint={path}",
                  "--segmentation=configs/segmentation.py:runlocal",
                  f"--segmentation.data.dir={tmp_path / 'voc'}", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mIoU" in result.stdout and "random   CMP" in result.stdout
    saved = json.loads((out / "comparison.json").read_text())
    assert set(saved["random"]) >= {"miou", "per_class_iou"} and "miou" in saved["cmp"]
    assert (out / "comparison.png").stat().st_size > 0

    # Over seeds: one comparison per seed, then the mean +- spread table.
    over = tmp_path / "seeds"
    args = ["evaluate.py", "--task=segmentation", f"--checkpoint={path}",
            "--segmentation=configs/segmentation.py:runlocal",
            f"--segmentation.data.dir={tmp_path / 'voc'}", f"--out={over}"]
    result = _run(*args, "--seeds=0,1", "--encoder_modes=frozen")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "over seeds 0, 1" in result.stdout and "frozen" in result.stdout
    assert (over / "frozen_seed1" / "comparison.json").is_file()
    assert json.loads((over / "seeds.json").read_text())["seeds"] == [0, 1]
    for bad, message in (("--seeds=one", "--seeds=one must be integers"),
                         ("--encoder_modes=thawed", "modes must be distinct names")):
        result = _run(*args, bad)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("args, flag", [
    (["benchmarks/propagator.py"], "--out"),  # cli.define_output
    (["evaluate.py"], "--out"),
    (["train.py"], "--config"),  # cli.define_config
])
def test_helpshort_lists_the_flags_the_cli_helpers_define(args, flag):
    """absl lists a module's own flags under --helpshort; those cmp_tf.cli defines for a
    command are the command's, not cmp_tf.cli's (they were missing from it)."""
    result = _run(*args, "--helpshort")
    assert f"\n  {flag}: " in result.stdout + result.stderr, result.stdout[-2000:]


def test_a_recipe_argument_gets_its_own_default_run_folder():
    """The smoke run (configs/default.py:runlocal) shared runs/default with `python train.py`,
    so whichever ran second was refused as a finished run."""
    code = ("import train; print([train.run_name(r) for r in ('configs/default.py', "
            "'configs/default.py:runlocal', '/x/configs/cpu_bins.py:runlocal=true,a=b/c')])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ("['default', 'default_runlocal', "
                                   "'cpu_bins_runlocal_true_a_b_c']")
