"""Benchmark scripts whose arithmetic the README's figures rest on."""
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from cmp_tf import models
from tests.helpers import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_plot(json_path, stdout=None):
    """The PNG a benchmark draws beside its JSON (same stem) is there, a readable image of a
    chart's size, and its path printed with the JSON's: results are looked at as pictures."""
    import cv2

    png = os.path.splitext(str(json_path))[0] + ".png"
    image = cv2.imread(png)
    assert image is not None, f"no readable plot {png}"
    assert 150 <= image.shape[0] <= 8000 and 300 <= image.shape[1] <= 3000, image.shape
    assert image.std() > 0  # not a blank canvas
    if stdout is not None:
        assert png in stdout, stdout[-500:]


@pytest.mark.parametrize("correction", [True, False])
def test_blend_parts_read_out_is_the_model_with_every_part_and_the_fills_without(rng, correction):
    from benchmarks import blend_parts

    config = load_config("propagation")
    config.model.options.fill_correction.correction = correction
    model = models.build_cmp(config)
    head_layer = model.get_layer("decoder").get_layer("head")
    kernel, bias = head_layer.get_weights()  # a head far from its near-zero start
    head_layer.set_weights([rng.normal(0, 0.3, kernel.shape).astype(np.float32),
                            rng.normal(0, 1.0, bias.shape).astype(np.float32)])
    image = rng.uniform(0, 255, (1, 128, 128, 3)).astype(np.float32)
    sparse = np.zeros((1, 128, 128, 3), np.float32)
    sparse[0, [20, 90, 60], [30, 100, 10]] = [[3, -1, 1], [-2, 4, 1], [1, 1, 1]]
    inputs = {"image": image, "sparse": sparse}
    blend = model.get_layer("add_prior")
    head, nearest, smooth = keras.Model(model.inputs, blend.input)(inputs)
    full = blend_parts._read_out(head, nearest, smooth, blend_parts.PARTS["full model"], blend)
    np.testing.assert_allclose(full, model(inputs)["logits"], atol=1e-5)
    fills = blend_parts._read_out(head, nearest, smooth,
                                  blend_parts.PARTS["fills only (weight 1/2)"], blend)
    np.testing.assert_allclose(fills, 0.5 * (nearest.numpy()[..., :2] + smooth.numpy()),
                               atol=1e-5)
    untrained = blend_parts._read_out(head, nearest, smooth,
                                      blend_parts.PARTS["fills x untrained gain (weight 1/2)"],
                                      blend)
    assert 0 < np.abs(untrained).sum() < np.abs(fills).sum()  # the untrained gain is < 1
    # The smooth fill alone under the learned gain: the read-out whose nearest fill's vectors
    # are the smooth fill's (its distance kept), without the correction.
    smooth_only = blend_parts._read_out(head, nearest, smooth,
                                        blend_parts.PARTS["smooth fill x learned gain"], blend)
    as_nearest = np.concatenate([smooth.numpy(), nearest.numpy()[..., 2:]], -1)
    np.testing.assert_allclose(
        smooth_only, blend_parts._read_out(head, as_nearest, smooth,
                                           blend_parts.PARTS["no correction"], blend), atol=1e-5)
    assert not np.allclose(smooth_only, full, atol=1e-3)
    parts = blend_parts.parts_of(blend)
    assert len(set(parts.values())) == len(parts)  # no two rows the same read-out
    assert ("no correction" in parts) == correction


def _blend_parts(tmp_path, recipe, *args):
    """benchmarks/blend_parts.py run on an untrained model of `recipe` with `args`, writing
    to tmp_path: the finished process, its output captured."""
    path = tmp_path / f"{recipe}.keras"
    models.build_cmp(load_config(recipe)).save(path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "benchmarks/blend_parts.py", f"--checkpoint={path}",
                           f"--out={tmp_path}", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_blend_parts_refuses_a_model_without_a_blend(tmp_path):
    result = _blend_parts(tmp_path, "cpu_bins")
    assert result.returncode != 0 and "not a fill-correction model" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_blend_parts_scores_the_pairs_given_by_data(tmp_path):
    result = _blend_parts(tmp_path, "propagation", "--data=generated", "--pairs=2")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "blend_parts.json") as f:
        scored = json.load(f)
    assert scored["pairs"] == 2
    assert set(scored["table"]) >= {"full model", "smooth fill x learned gain", "linear"}
    _assert_plot(tmp_path / "blend_parts.json", result.stdout)


def _run_python(code, timeout=120, cwd=ROOT):
    """`python -c code` in a fresh process, from the repository root by default (a benchmark's
    flags would clash with another's in this one): the finished process, its output captured."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _ablation_check(*variants):
    """benchmarks/ablation.py's check of the given (name, overrides) variants, in a fresh
    process (its flags would clash with blend_parts' in this one)."""
    code = ("from benchmarks import ablation as a; "
            f"a.VARIANTS.update({dict(variants)!r}); "
            f"a.check_variants({[name for name, _ in variants]!r})")
    return _run_python(code, timeout=300)


def test_ablation_reports_the_sets_named_by_data_sets_and_refuses_a_malformed_one(tmp_path):
    """--data_sets adds sets every variant is scored on (a stereo pair's tiles, say): the
    report reads their results as it reads the built-in sets'."""
    import json

    rows = [{"strategy": "uniform", "k": 5, "method": method, "relative": value}
            for method, value in (("cmp", 0.2), ("nearest", 0.3), ("linear", 0.25))]
    folder = tmp_path / "root" / "stride4_fills2_residual" / "eval" / "stereo"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(
        {"strategies": ["uniform"], "ks": [5], "rows": rows, "data": "pairs.txt", "pairs": 29}))
    args = ["--report_only", "--variants=stride4_fills2_residual", f"--root={tmp_path / 'root'}",
            f"--out={tmp_path / 'report'}"]
    done = subprocess.run([sys.executable, "benchmarks/ablation.py", *args,
                           "--data_sets=stereo=tiles/pairs.txt"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stereo (pairs.txt, 29 pairs): relative EPE" in done.stdout
    assert "| stride4_fills2_residual | **0.20** |" in done.stdout
    table = json.loads((tmp_path / "report.json").read_text())["table"]
    assert table["stereo"]["(linear fill)"] == {"uniform/5": 0.25}
    _assert_plot(tmp_path / "report.json")
    assert "Wrote " + str(tmp_path / "report") + ".md, .json and .png" in done.stdout
    refused = subprocess.run([sys.executable, "benchmarks/ablation.py", *args,
                              "--data_sets=generated=x"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0
    assert "--data_sets: 'generated=x' must be NAME=DATA, NAME new" in refused.stderr


def test_ablation_does_not_report_a_run_of_another_budget_as_this_one(tmp_path):
    """A variant's finished run was reused whatever --steps said, and the report's JSON gave the
    flags' steps and pairs, not the runs'."""
    run = tmp_path / "root" / "prior"
    run.mkdir(parents=True)
    (run / "model.keras").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"train": {"steps": 2}}))
    done = subprocess.run([sys.executable, "benchmarks/ablation.py", "--variants=prior",
                           "--steps=5", f"--root={tmp_path / 'root'}",
                           f"--out={tmp_path / 'report'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"{run} was trained for 2 steps, not --steps=5" in done.stderr


@pytest.mark.slow
def test_ablation_variants_build_and_a_typo_is_refused_before_training():
    ok = _ablation_check(("shipped", ("", ["--config.flow.loss=l1",
                                           "--config.model.head=fill_correction"])))
    assert ok.returncode == 0, ok.stderr
    for bad, expected in ((["--config.model.options.fill_correction.relx=2"], "relx"),
                          (["--config.flow.loss=l1", "--config.model.head=fill_correction",
                            "--config.model.options.fill_correction.pull=gauss"], "pull")):
        result = _ablation_check(("typo", ("", bad)))
        assert result.returncode != 0
        assert "typo" in result.stderr and expected in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("variant, recipe", [("relative_floor2", "propagation"),
                                             ("edge_aware", "propagation_edges")])
def test_ablation_shipped_variant_is_the_shipped_recipe(variant, recipe):
    """The ablation's `relative_floor2` must train exactly configs/propagation.py, or
    the README's ablation row is not the shipped model's (and `edge_aware` its recipe)."""
    code = ("from benchmarks import ablation as a; import json; "
            f"print(json.dumps(a.variant_config({variant!r}).to_dict()))")
    result = _run_python(code, timeout=120)
    assert result.returncode == 0, result.stderr
    variant = json.loads(result.stdout.strip().splitlines()[-1])
    shipped = json.loads(json.dumps(load_config(recipe).to_dict()))
    assert variant == shipped


def test_ablation_stretches_the_schedule_with_the_budget():
    code = ("from benchmarks import ablation as a; "
            "print(a.schedule_overrides(3000), a.schedule_overrides(1000))")
    result = _run_python(code, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == (
        "['--config.schedule.boundaries=(1800, 2550)'] "
        "['--config.schedule.boundaries=(600, 850)']")


def test_recipes_take_the_propagation_recipes_alone(tmp_path):
    """configs/ holds modules that are no propagation recipe (common.py, segmentation.py): the
    benchmarks' --recipes refuses them by name, listing the ones it takes, before timing."""
    from benchmarks import recipes

    taken = recipes.available()
    assert {"cpu_bins", "default", "propagation", "resnet50_semiauto"} <= set(taken)
    assert not {"common", "segmentation", "__init__"} & set(taken)
    listed = f"The recipes under configs/: {', '.join(taken)}."
    with pytest.raises(ValueError) as refused:
        recipes.check(["cpu_bins", "common"])
    assert str(refused.value) == ("--recipes: configs/common.py is not a propagation recipe "
                                  "(no get_config() giving a config with model and flow). "
                                  + listed)
    with pytest.raises(ValueError) as refused:
        recipes.check(["segmentation", "bogus"], runs=str(tmp_path))
    assert str(refused.value) == (
        f"--recipes: no recipe bogus under configs/ and no run {tmp_path}/<name>/model.keras; "
        "configs/segmentation.py is not a propagation recipe (no get_config() giving a config "
        "with model and flow). " + listed)
    (tmp_path / "common").mkdir()  # a finished run's name counts, whatever configs/ holds
    (tmp_path / "common" / "model.keras").write_text("")
    recipes.check(["common", "default"], runs=str(tmp_path))


def test_inference_times_the_fills_of_every_kind_alone():
    """benchmarks/inference.py's fills columns run every fill layer of a model, the edge-aware
    one with its learned features too, and a nearest fill that returns two levels, in
    TensorFlow and as a .tflite (in a fresh process: its flags are its own)."""
    code = ("from benchmarks import inference as i; from cmp_tf import models; "
            "from tests.helpers import load_config; "
            "c = load_config('propagation_edges'); c.model.decoder_combo = (1, 2); "
            "c.model.options.fill_correction.update(smooth='both', edge_features=2, "
            "nearest_levels=4); "
            "m = models.build_cmp(c); f = i.fill_model(m, 64); "
            "print(sorted(f.output), i.time_fills(m, 64, 1), i.time_tflite_fills(m, 64, 1, 1))")
    result = _run_python(code, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    outputs, keras_s, tflite_s = result.stdout.strip().splitlines()[-1].rsplit(" ", 2)
    assert outputs == ("['dense_prior_0', 'dense_prior_1', 'edge_aware_out_0', "
                       "'pull_push_out_0']")
    assert float(keras_s) > 0 and float(tflite_s) > 0


def test_annotation_scores_several_models_on_the_same_clicks():
    """benchmarks/annotation.py: every model gets its rows on the same scenes and clicks, so a
    model that is the nearest fill scores exactly as the nearest-fill rows (in a fresh
    process: its flags are its own)."""
    code = ("from benchmarks import annotation as a; import json; "
            "scenes = a.scenes(2, 64, 0, textures='noise'); "
            "models = {n: a.ClassicalFill(n) for n in ('nearest', 'linear')}; "
            "scores, seconds = a.evaluate(models, scenes, [1, 2], 1.0, zoom_size=64); "
            "print(json.dumps({'scores': scores, 'seconds': seconds, "
            "'rows': a.methods(['nearest', 'linear']), 'single': a.methods(['shipped']), "
            "'table': a.markdown(scores, [1, 2], 1.0)}))")
    result = _run_python(code, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    scores = out["scores"]
    assert list(scores) == out["rows"]
    assert set(out["seconds"]) == {"nearest", "linear"} and min(out["seconds"].values()) > 0
    assert scores["CMP (nearest)"] == scores["nearest fill"]
    assert scores["CMP (nearest) + grabCut"] == scores["nearest fill + grabCut"]
    for method, per_clicks in scores.items():
        for p, values in per_clicks.items():
            assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values), (method, p)
    assert out["single"][:3] == ["CMP", "CMP + grabCut", "CMP + guided filter"]
    assert "| CMP (linear) + guided filter |" in out["table"]
    assert "| edge-aware fill |" in out["table"]


def test_teacher_benchmark_scores_flow_against_the_exact_flow(tmp_path):
    # In a fresh process: the benchmark's flags would clash with blend_parts' in this one.
    code = ("from benchmarks import teacher as t; import numpy as np; import json; "
            "pairs = t.scene_pairs(2, 48); exact = iter([f for _, _, f in pairs]); "
            "perfect = t.score(lambda a, b: next(exact), pairs); "
            "still = t.score(lambda a, b: np.zeros((48, 48, 2), np.float32), pairs)\n"
            "try:\n    t.score(lambda a, b: np.zeros((48, 2), np.float32), pairs)\n"
            "except ValueError as e:\n    refused = str(e)\n"
            "print(json.dumps(dict(perfect=perfect, still=still, refused=refused)))")
    result = _run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["perfect"]["epe_near"] == 0.0 and out["perfect"]["epe_far"] == 0.0
    assert out["still"]["epe_near"] > 0.1 and out["still"]["epe_far"] > 0.1
    assert "shape (48, 2) with 0 non-finite values; expected finite (48, 48, 2)" in out["refused"]
    out = subprocess.run([sys.executable, "benchmarks/teacher.py", "--scenes=2", "--size=48",
                          "--teachers=dis_medium,farneback", f"--out={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "| dis_medium |" in out and "| farneback |" in out
    table = json.loads((tmp_path / "teacher.json").read_text())["table"]
    assert set(table) == {"dis_medium", "farneback"} and 0 < table["dis_medium"]["epe_far"]
    _assert_plot(tmp_path / "teacher.json", out)
    # A scene of pixels all near a motion edge has no "farther" score: null in the JSON (a
    # bare NaN was written, which strict parsers refuse) and '-' in the table.
    out = subprocess.run([sys.executable, "benchmarks/teacher.py", "--scenes=1", "--size=19",
                          "--teachers=dis_medium", f"--out={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "| dis_medium |" in out and " | - | " in out, out
    text = (tmp_path / "teacher.json").read_text()
    assert "NaN" not in text and json.loads(text)["table"]["dis_medium"]["epe_far"] is None
    _assert_plot(tmp_path / "teacher.json", out)  # drawn without the missing score


def test_benchmark_json_is_strict_whole_and_says_what_it_was_measured_with(tmp_path):
    from benchmarks import reference

    path = reference.write_json(str(tmp_path / "sub" / "r.json"),
                                {"epe": float("nan"), "rows": [np.float32(np.inf), 1.5]})
    text = open(path).read()
    assert "NaN" not in text and "Infinity" not in text
    value = json.loads(text)
    assert value["epe"] is None and value["rows"] == [None, 1.5]
    environment = value["environment"]
    assert environment["cpu_count"] == os.cpu_count() and environment["cpu"]
    assert environment["packages"]["numpy"] == np.__version__
    assert os.listdir(tmp_path / "sub") == ["r.json"]  # no partial file left


def test_benchmark_plot_skips_missing_values_and_draws_one_row(tmp_path):
    """write_plot draws what a table has: a format not measured (None, NaN, a refusal's text)
    gets no bar, not a crash; a single row, a table whose rows lack columns, are fine."""
    import cv2

    from benchmarks import reference

    panels = [reference.Panel("one row", ["only"], {"s": [0.5]}, "seconds"),
              reference.Panel("missing", ["keras", "tflite", "onnx"],
                              {"latency s": [0.1, None, float("nan")],
                               "fills s": [None, "refused", np.float32(np.inf)]}, "seconds"),
              reference.table_panel("relative EPE", {"cmp": {"uniform/5": 0.2},
                                                     "linear": {"watershed/5": 0.3}}, "EPE")]
    png = reference.write_plot(str(tmp_path / "sub" / "r.json"), panels)
    assert png == str(tmp_path / "sub" / "r.png")
    assert cv2.imread(png) is not None and os.listdir(tmp_path / "sub") == ["r.png"]
    assert panels[2].series == {"uniform/5": [0.2, None], "watershed/5": [None, 0.3]}
    with pytest.raises(ValueError, match="each series needs a value per label"):
        reference.write_plot(png, [reference.Panel("t", ["a", "b"], {"s": [1.0]}, "s")])


def test_the_pair_counts_the_commands_take_are_checked_alike():
    from cmp_tf.evaluation import pairs

    assert pairs.check_pair_count(5) == 5 and pairs.check_pair_count(-1) == -1
    for bad in (0, -2, 2.5, True, "3"):
        with pytest.raises(ValueError, match="--pairs=.* must be a positive count, or -1"):
            pairs.check_pair_count(bad)
    with pytest.raises(ValueError, match=r"--pairs=-1 must be a positive count\.$"):
        pairs.check_pair_count(-1, allow_all=False)


def test_propagator_times_the_runtime_and_the_eager_keras_call_per_size(tmp_path,
                                                                         saved_default):
    """benchmarks/propagator.py on an untrained model: a row per size for the runtime's path
    and for the Keras network called eagerly, a bad size named."""
    code = ("import sys; from absl import app; from benchmarks import propagator as p; "
            f"sys.argv = ['propagator', '--models={saved_default}', '--sizes=128x128,140x200', "
            f"'--repeats=2', '--guides=3', '--out={tmp_path}']; app.run(p.main)")
    result = _run_python(code, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "propagator.json") as f:
        rows = json.load(f)["rows"]
    assert [(r["mode"], r["size"], r["working_size"]) for r in rows] == [
        ("runtime", [128, 128], [128, 128]), ("runtime", [140, 200], [128, 192]),
        ("eager", [128, 128], [128, 128]), ("eager", [140, 200], [128, 192])]
    assert all(r["format"] == "keras" and r["seconds"] > 0 for r in rows)
    _assert_plot(tmp_path / "propagator.json", result.stdout)
    bad = _run_python(code.replace("128x128,140x200", "128by128"), timeout=300)
    assert bad.returncode != 0 and "--sizes: expected HxW in px" in bad.stderr


def test_fill_cells_scores_the_trained_and_the_files_cells_at_a_larger_size(tmp_path,
                                                                            saved_default):
    """benchmarks/fill_cells.py at 256^2 on two generated scenes: the shipped model on its 2 px
    cells and on the 4 px cells export gives files of that size, both scored. The shipped
    model by default, as its help says, though runs/ holds a newer run (of another head)."""
    (tmp_path / "runs" / "bins").mkdir(parents=True)
    shutil.copyfile(saved_default, tmp_path / "runs" / "bins" / "model.keras")
    code = ("import sys; from absl import app; from benchmarks import fill_cells as f; "
            f"sys.argv = ['fill_cells', '--size=256', '--pairs=2', '--ks=1,25', "
            f"'--out={tmp_path}']; app.run(f.main)")
    result = _run_python(code, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "fill_cells.json") as f:
        scored = json.load(f)
    assert scored["pairs"] == 2 and scored["size"] == 256
    assert set(scored["table"]) == {"nearest", "linear", "2 px cells (trained)", "4 px cells"}
    assert set(scored["table"]["4 px cells"]) == {"watershed/1", "watershed/25", "uniform/1",
                                                  "uniform/25"}
    _assert_plot(tmp_path / "fill_cells.json", result.stdout)


def test_inference_times_runs_named_by_their_folder(tmp_path, saved_default):
    """`--recipes=before --runs=DIR` (docs/speed.md) times DIR/before/model.keras: a run's
    name is a recipe name there, though configs/ has no before.py."""
    (tmp_path / "runs" / "before").mkdir(parents=True)
    os.symlink(saved_default, tmp_path / "runs" / "before" / "model.keras")
    result = subprocess.run(
        [sys.executable, "benchmarks/inference.py", "--recipes=before",
         f"--runs={tmp_path / 'runs'}", "--size=128", "--repeats=1", f"--out={tmp_path}"],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "inference.json").read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["before"]
    _assert_plot(tmp_path / "inference.json", result.stdout)


def test_browser_benchmark_takes_the_shipped_model_and_refuses_a_side_first(tmp_path,
                                                                            saved_default):
    """benchmarks/browser.py times the shipped model, not the newest run under ./runs, and a
    side the model does not take (not a multiple of its stride) is named before the export
    and the browser, not by ONNX Runtime after them."""
    from cmp_tf import rundir

    (tmp_path / "runs" / "newer").mkdir(parents=True)
    os.symlink(saved_default, tmp_path / "runs" / "newer" / "model.keras")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "browser.py"), "--sides=128,100",
         f"--out={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    shipped = os.path.join(rundir.PRETRAINED, rundir.MODEL_FILE)
    assert (f"--sides=128,100: {shipped} takes sides that are multiples of 32 (its encoders' "
            "stride), at least 128 and at most") in result.stderr
    assert not (tmp_path / "out").exists()


def test_web_load_names_a_model_its_server_cannot_load_in_one_line(tmp_path):
    """A text file named .tflite: the server's reason, naming --model, on one line and no
    load run (there were two tracebacks, the server's and the load side's)."""
    fake = tmp_path / "model.tflite"
    fake.write_text("not a model")
    result = subprocess.run(
        [sys.executable, "benchmarks/web_load.py", f"--model={fake}", "--duration=1",
         f"--out={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-2].startswith(f"--model={fake}: {fake} could not be loaded as a TFLite model")
    assert not (tmp_path / "out").exists()
