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


@pytest.mark.slow
def test_evaluate_scores_a_saved_model_against_the_fills(tmp_path):
    sys.path.insert(0, ROOT)
    from cmp_tf import models
    from tests.conftest import load_config

    path = tmp_path / "default.keras"
    models.build_cmp(load_config("default")).save(path)
    result = _run("evaluate.py", f"--checkpoint={path}", "--scenes=3")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("generated"))
    cmp, zero, nearest = (float(v) for v in row.split()[-3:])
    epe = {"cmp": cmp, "zero": zero, "nearest": nearest}
    # An untrained dense-prior model reads out the nearest fill (DESIGN.md: start from the fill).
    assert epe["nearest"] < epe["zero"]
    assert abs(epe["cmp"] - epe["nearest"]) < 0.25 * epe["nearest"]
