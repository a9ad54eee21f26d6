"""train.py / evaluate.py as a user runs them."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_config_typo_is_refused_with_a_suggestion(tmp_path):
    result = _run("train.py", "--config.data.batch_sise=4", f"--workdir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "batch_size" in result.stderr and "batch_sise" in result.stderr


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
    assert result.returncode != 0 and "could not be loaded" in result.stderr


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
