r"""Ablation of the beyond-the-paper options at an equal CPU budget.

Each variant is the CPU-scale CMP (`configs/cpu_bins.py`) with a few overrides, trained for the
same number of steps with the same seed, then scored by `evaluate.py`'s propagation protocol
on unseen real frames (the carphone clip, never trained on) and on held-out generated scenes
with exact flow. Prints a table of relative EPE (EPE / zero-flow EPE, lower is better) per K,
next to the nearest and linear fills, and writes it as markdown, JSON and a PNG plot.

  python benchmarks/ablation.py                          # every variant, 1000 steps each
  python benchmarks/ablation.py --variants=paper,regression --steps=2000
  python benchmarks/ablation.py --report_only            # table from the runs already there
  python benchmarks/ablation.py --check_only             # every variant's recipe builds
  python benchmarks/ablation.py --variants=geodesic --data_sets=stereo=runs/stereo/pairs.txt

Resumable: a variant whose run and evaluations exist is not redone; an interrupted training
resumes from its checkpoint (train.py does).
"""
import json
import os
import subprocess
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/ and cmp_tf/ from the repository, wherever this is run from
from benchmarks import reference as reference_lib  # noqa: E402
from cmp_tf import cli  # noqa: E402

BASE_RECIPE = os.path.join(ROOT, "configs", "cpu_bins.py")  # the paper's bins head, CPU scale

# name -> (what it changes, train.py overrides). The base is the CPU-scale CMP: the paper's
# bins head with the nearest-guidance prior. Variants of options that were measured and removed
# (two-hot targets, a read-out L1 term, the fill fed to the skips, the pull-push fill alone,
# an exponential gain, a fixed blend weight, guidance honoured at the guides, a still
# background) run at commit 83284d6: `git checkout 83284d6 && python benchmarks/ablation.py
# --variants=NAME`; the loss weighed near motion boundaries (boundary_weight) at commit
# 1921051; the watershed points drawn first (watershed_first*) at commit da92e2f; the
# geodesic fill of the smooth fill's residuals (geodesic_residual) at commit 210457f; the
# geodesic fill's soft pick and learned colour scale (geodesic_soft, geodesic_learned) and the
# smooth fill's starting share (geodesic_smooth_half) at commit 52f208f; their figures are in
# docs/ablation.md.
PAPER = ["--config.model.options.bins.nearest_prior=False"]
POINTS = ["--config.guidance.num_points=(1, 400)"]
LAYERED = ["--config.data.layered.ratio=0.5"]
REGRESSION = ["--config.flow.loss=l1", "--config.model.head=regression",
              "--config.model.options.regression.nearest_prior=True"]
# The fill-correction head as first measured: no gain, the box pull-push fill.
BLEND = ["--config.flow.loss=l1", "--config.model.head=fill_correction",
         "--config.model.options.fill_correction.gain=False",
         "--config.model.options.fill_correction.pull=box",
         "--config.model.options.fill_correction.relax=0"]
GAIN = ["--config.model.options.fill_correction.gain=True"]
ADAM = ["--config.optim.name=adam", "--config.schedule.lr=0.001"]
SMOOTH = ["--config.model.options.fill_correction.pull=tent",
          "--config.model.options.fill_correction.relax=4"]
PLAIN = ["--config.model.decoder=plain"]  # no skips: logits at the encoder's stride (32)
GAUSS_ADAM = BLEND + GAIN + ADAM + POINTS + LAYERED  # the Gaussian gain, box fill
# The nearest fill at the output's stride on 3 levels: what the shipped recipe computes (the
# figures in docs/ablation.md before it came were measured with the one-level fill, within
# 0.3% of it).
LEVELS = ["--config.model.options.fill_correction.nearest_levels=2"]
# blend_gauss_adam_smooth, the recipe every variant below builds on (the shipped one before
# `fast`).
SHIPPED = GAUSS_ADAM + SMOOTH + LEVELS
SEPARABLE = ["--config.model.options.skip_layer.separable=True"]
REFINE_ONCE = ["--config.model.options.fill_correction.nearest_refine=1"]
# fast: a separable decoder and one refining pass of the nearest fill per finer level.
FAST = SHIPPED + SEPARABLE + REFINE_ONCE
# five_levels: fast with the nearest fill on 5 levels, the coarsest (stride 32) shared with
# the decoder's input fill (the shipped recipe before local_affine).
FIVE_LEVELS = FAST + ["--config.model.options.fill_correction.nearest_levels=4"]
# local_affine: five_levels with the local affine smooth fill (the shipped recipe before
# stride4_fills2).
LOCAL_AFFINE = FIVE_LEVELS + ["--config.model.options.fill_correction.smooth=local_affine"]
NO_CORRECTION = ["--config.model.options.fill_correction.correction=False"]
# The decoder ends at stride 4: fills and read-out on 4 px cells, the nearest fill's coarsest
# level still at the features' stride 32.
STRIDE4 = LOCAL_AFFINE + ["--config.model.options.skip_layer.out_stride=4",
                          "--config.model.options.fill_correction.nearest_levels=3"]
# stride4_fills2: the decoder at stride 4, the fills and blend on 2 px cells, no free
# correction; the shipped recipe then, later with its nearest fill's finest
# refining pass left out (stride4_fills2_unrefined, the same weights within 0.001).
STRIDE4_FILLS2 = STRIDE4 + NO_CORRECTION + [
    "--config.model.options.fill_correction.fill_stride=2",
    "--config.model.options.fill_correction.nearest_levels=4"]
STRIDE4_FILLS2_RESIZED = STRIDE4_FILLS2 + [
    "--config.model.options.fill_correction.nearest_refine_finest=False",
    "--config.model.options.fill_correction.nearest_resize_finest=True"]
# stride4_fills2_residual: configs/propagation.py with a plain L1 loss (the shipped recipe
# before relative_floor2).
STRIDE4_FILLS2_RESIDUAL = STRIDE4_FILLS2_RESIZED + [
    "--config.model.options.fill_correction.local_affine_residual_finest=True"]
# geodesic: stride4_fills2_residual whose blend reads the vectors of the guide nearest along the
# image (fills.GeodesicNearestFill) instead of the nearest in pixels.
GEODESIC = STRIDE4_FILLS2_RESIDUAL + ["--config.model.options.fill_correction.geodesic=True"]
# relative: the loss per sample divided by its zero-flow loss (cmp_tf.losses.relative_to_zero_flow).
RELATIVE = ["--config.flow.relative=True"]
# The edge-aware variants keep the exact one-level nearest fill (configs/propagation_edges.py):
# trained on three levels, two runs of them failed on the generated scenes (docs/ablation.md).
# (nearest_refine is inherited from the shipped recipe: no pass to refine on one level)
ONE_LEVEL = REFINE_ONCE + ["--config.model.options.fill_correction.nearest_levels=0"]
EDGE_AWARE = SHIPPED + ONE_LEVEL + ["--config.model.options.fill_correction.smooth=edge_aware"]
EDGE_BOTH = SHIPPED + ONE_LEVEL + ["--config.model.options.fill_correction.smooth=both"]
# The shipped recipe with the affinity head (its options default to the pull-push fill):
# affinity = configs/propagation_affinity.py.
AFFINITY = ["--config.flow.loss=l1", "--config.model.head=affinity"] + ADAM + POINTS + LAYERED
# local_affine with the affinity head: the same fills seed the propagation.
LOCAL_AFFINE_AFFINITY = AFFINITY + SEPARABLE + [
    "--config.model.options.affinity.smooth=local_affine",
    "--config.model.options.affinity.nearest_levels=4",
    "--config.model.options.affinity.nearest_refine=1"]
VARIANTS = {
    "paper": ("the paper: bins, no prior", PAPER),
    "prior": ("+ dense nearest-guidance prior (correction to the fill)", []),
    "regression": ("+ prior, direct L1 regression instead of bins", REGRESSION),
    "regression_mixed": ("+ prior, L1 regression, K in [1, 400], half layered scenes",
                         REGRESSION + POINTS + LAYERED),
    "blend": ("+ prior, L1 regression, output = learned per-pixel mix of the nearest and "
              "pull-push fills + correction", BLEND),
    "blend_mixed": ("+ prior, L1 regression, blend of fills, K in [1, 400], half layered scenes",
                    BLEND + POINTS + LAYERED),
    "blend_adam_mixed": ("+ prior, L1 regression, blend of fills, K in [1, 400], half layered "
                         "scenes, Adam (lr 1e-3)", BLEND + ADAM + POINTS + LAYERED),
    "blend_gauss_adam": ("blend_adam_mixed scaled by a learned Gaussian gain of the distance "
                         "to the guides, the box pull-push fill", GAUSS_ADAM),
    "blend_gauss_adam_smooth": ("blend_gauss_adam with the smoother pull-push fill (tent pull, "
                                "4 relaxation passes per level)", SHIPPED),
    "blend_gauss_adam_smooth_seed1": ("blend_gauss_adam_smooth with seed 1 (initialization, "
                                      "data order, guidance): the run-to-run spread",
                                      SHIPPED + ["--config.seed=1"]),
    "blend_gauss_adam_smooth_seed2": ("blend_gauss_adam_smooth with seed 2",
                                      SHIPPED + ["--config.seed=2"]),
    "paper_plain": ("the paper at its output stride: bins, no prior, the plain decoder "
                    "(logits at the encoder's stride 32, no skips from early layers)",
                    PAPER + PLAIN),
    "blend_gauss_adam_smooth_plain": ("blend_gauss_adam_smooth with the plain decoder: fills "
                                      "and read-out at stride 32, no skips from early layers",
                                      SHIPPED + PLAIN),
    "edge_aware": ("blend_gauss_adam_smooth with the edge-aware pull-push fill as its smooth "
                   "fill: push and relaxation weighed by colour, so motion stops at image edges "
                   "(configs/propagation_edges.py)", EDGE_AWARE),
    "edge_aware_finest4": ("edge_aware with 4 relaxation passes at the fill's finest level too",
                           EDGE_AWARE + ["--config.model.options.fill_correction.finest_relax=4"]),
    "edge_aware_layers": ("edge_aware trained on layered scenes whose edges and motion "
                          "boundaries part: 30% of layers wear the texture below them, 30% hold "
                          "an edge",
                          EDGE_AWARE + ["--config.data.layered.shared_texture=0.3",
                                        "--config.data.layered.inner_edges=0.3"]),
    "edge_learned": ("edge_aware whose fill weights are learned too: 5 more decoder channels "
                     "scale its colour term per cell and add an embedding's distances",
                     EDGE_AWARE + ["--config.model.options.fill_correction.edge_features=5"]),
    "edge_both": ("blend_gauss_adam_smooth blending three fills: nearest, pull-push and "
                  "edge-aware (a softmax of two decoder logits and 0 weighs them per pixel)",
                  EDGE_BOTH),
    "edge_both_learned": ("edge_both with the edge-aware fill's weights learned (5 decoder "
                          "channels, as edge_learned)",
                          EDGE_BOTH + ["--config.model.options.fill_correction.edge_features=5"]),
    "separable_decoder": ("blend_gauss_adam_smooth with its decoder's convs at strides 4 and 2 "
                          "depthwise-separable: a fifth of the network's multiply-adds",
                          SHIPPED + SEPARABLE),
    "fast": ("separable_decoder with one refining pass of the nearest fill per finer level "
             "instead of two", FAST),
    "five_levels": ("fast with the nearest fill on 5 levels instead of 3, the coarsest at the "
                    "features' stride, where the decoder's input fill is (the shipped recipe "
                    "before local_affine)", FIVE_LEVELS),
    "five_levels_seed1": ("five_levels with seed 1: its run-to-run spread",
                          FIVE_LEVELS + ["--config.seed=1"]),
    "local_affine": ("five_levels with the local affine fill as its smooth fill: moving least "
                     "squares on a pyramid of guide moments instead of pull-push "
                     "(the shipped model before stride4_fills2)", LOCAL_AFFINE),
    "local_affine_seed1": ("local_affine with seed 1", LOCAL_AFFINE + ["--config.seed=1"]),
    "no_correction": ("local_affine without the free correction: the flow is the gain times "
                      "the blend of the fills", LOCAL_AFFINE + NO_CORRECTION),
    "stride4_no_correction": ("stride4 without the free correction",
                              STRIDE4 + NO_CORRECTION),
    "stride4_fills2": ("stride4_no_correction with its fills and blend at stride 2: the "
                       "decoder's weight and reach resized to the fills' 2 px cells "
                       "(the shipped model, trained with the finest pass)",
                       STRIDE4_FILLS2),
    "stride4_fills2_unrefined": ("stride4_fills2 without the nearest fill's refining pass "
                                 "at its finest level (the shipped model before "
                                 "stride4_fills2_resized)",
                                 STRIDE4_FILLS2 + [
                                     "--config.model.options.fill_correction."
                                     "nearest_refine_finest=False"]),
    "stride4_fills2_resized": ("stride4_fills2_unrefined with the nearest fill's finest level "
                               "the next level's resized (the shipped model before "
                               "stride4_fills2_residual)", STRIDE4_FILLS2_RESIZED),
    "stride4_fills2_residual": ("stride4_fills2_resized with the local affine fill's fits "
                                "stopping at 4 px, its 2 px cells a Gaussian mean of their "
                                "guides' residuals (the shipped model before relative_floor2)",
                                STRIDE4_FILLS2_RESIDUAL),
    "stride4_fills2_residual_seed1": ("stride4_fills2_residual with seed 1: its run-to-run "
                                      "spread", STRIDE4_FILLS2_RESIDUAL + ["--config.seed=1"]),
    "geodesic": ("stride4_fills2_residual whose blend follows the guide nearest along the "
                 "image, a colour edge on the way a long way round", GEODESIC),
    "geodesic_seed1": ("geodesic with seed 1: its run-to-run spread",
                       GEODESIC + ["--config.seed=1"]),
    "geodesic_30": ("geodesic with a colour difference weighing 30 steps, not 100",
                    GEODESIC + ["--config.model.options.fill_correction.geodesic_colour_weight"
                                "=30.0"]),
    "geodesic_layered25": ("geodesic with a quarter of the samples layered scenes, not half",
                           GEODESIC + ["--config.data.layered.ratio=0.25"]),
    "relative": ("stride4_fills2_residual with the loss relative to each sample's zero-flow "
                 "loss", STRIDE4_FILLS2_RESIDUAL + RELATIVE),
    "geodesic_relative": ("geodesic with the loss relative to each sample's zero-flow loss",
                          GEODESIC + RELATIVE),
    "relative_seed1": ("relative with seed 1: its run-to-run spread",
                       STRIDE4_FILLS2_RESIDUAL + RELATIVE + ["--config.seed=1"]),
    "relative_floor2": ("relative with a floor of 2 px, not 0.5: samples with less motion "
                        "weigh as if they had 2 px (configs/propagation.py, the shipped "
                        "model)", STRIDE4_FILLS2_RESIDUAL + RELATIVE
                        + ["--config.flow.relative_floor=2.0"]),
    "geodesic_relative_floor2": ("geodesic_relative with a floor of 2 px, not 0.5",
                                 GEODESIC + RELATIVE + ["--config.flow.relative_floor=2.0"]),
    "fine_teacher": ("stride4_fills2_residual trained on DIS's fine preset's flow, not "
                     "medium's (and validated against it)",
                     STRIDE4_FILLS2_RESIDUAL + ["--config.ingest.dis_preset=fine"]),
    "geodesic_fine_teacher": ("geodesic trained on DIS's fine preset's flow, not medium's",
                              GEODESIC + ["--config.ingest.dis_preset=fine"]),
    "geodesic_edges": ("geodesic trained on layered scenes whose edges and motion boundaries "
                       "part: 30% of layers wear the texture below them, 30% hold an edge",
                       GEODESIC + ["--config.data.layered.shared_texture=0.3",
                                   "--config.data.layered.inner_edges=0.3"]),
    "stride4_fills2_seed1": ("stride4_fills2 with seed 1: its run-to-run spread",
                             STRIDE4_FILLS2 + ["--config.seed=1"]),
    "stride4": ("local_affine with the decoder ending at stride 4 (no stride-2 skip): its fills "
                "and read-out on 4 px cells, the nearest fill on 4 levels up to stride 32",
                STRIDE4),
    "affinity": ("blend_gauss_adam_smooth refined by learned spatial propagation: 8 steps of "
                 "a softmax-weighted 3x3 neighbourhood predicted from the image, the guidance "
                 "put back at the guided cells after each (configs/propagation_affinity.py)",
                 AFFINITY),
    "affinity_identity": ("affinity starting near the seed: the cell's own logit 4 against "
                          "its neighbours' (0: a 3x3 mean per step untrained)",
                          AFFINITY + ["--config.model.options.affinity.self_logit=4.0"]),
    "affinity_16": ("affinity with 16 propagation steps",
                    AFFINITY + ["--config.model.options.affinity.iterations=16"]),
    "affinity_fast": ("affinity with its neighbour logits scaled by 10, so that under Adam "
                      "they learn 10 times faster than the rest of the decoder's output",
                      AFFINITY + ["--config.model.options.affinity.logit_scale=10.0"]),
    "local_affine_affinity": ("local_affine refined by learned spatial propagation, as "
                              "affinity: the shipped recipe's fills as its seed",
                              LOCAL_AFFINE_AFFINITY),
    "local_affine_affinity_fast": ("local_affine_affinity with its neighbour logits scaled by "
                                   "10, as affinity_fast",
                                   LOCAL_AFFINE_AFFINITY
                                   + ["--config.model.options.affinity.logit_scale=10.0"]),
    "affinity_edges": ("affinity trained on layered scenes whose edges and motion boundaries "
                       "part: 30% of layers wear the texture below them, 30% hold an edge",
                       AFFINITY + ["--config.data.layered.shared_texture=0.3",
                                   "--config.data.layered.inner_edges=0.3"]),
}
DATASETS = {"carphone": [], "generated": ["--data=generated"]}  # [] = the run's validation clip
REFERENCE_FILLS = ("nearest", "linear")

_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"Any of {', '.join(VARIANTS)}.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Training steps per variant (equal budget); the "
                              "learning-rate boundaries scale with it.")
_PAIRS = flags.DEFINE_integer("pairs", 32, "Pairs per evaluation.")
_ROOT = flags.DEFINE_string("root", "runs/ablation", "Where the variants' runs go.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only tabulate the runs already there.")
# A path stem checked as a file as the flags are parsed: a folder on the way that is a file was
# met only when the report was written, after every variant had trained.
_OUT = cli.define_output("out", "runs/benchmarks/ablation", "Report path stem (.md, .json, .png).",
                         kind="file")
_DATA_SETS = flags.DEFINE_list(
    "data_sets", [], "More sets every variant is scored on, NAME=DATA (evaluate.py --data, every "
    "pair): a stereo pair's tiles (python -m cmp_tf.data.stereo), clips of your own.")
_CHECK_ONLY = flags.DEFINE_bool("check_only", False, "Only check that every listed variant's "
                                "overrides make a valid recipe and model; train nothing.")


def _run(command):
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _results(run, dataset):
    path = os.path.join(run, "eval", dataset, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def schedule_overrides(steps):
    """The base recipe's learning-rate schedule stretched to `steps` (its boundaries are at
    fixed steps): the same shape of training at any budget."""
    base = variant_config("prior")  # the base recipe, no overrides
    scale = steps / base.train.steps
    boundaries = tuple(int(round(b * scale)) for b in base.schedule.boundaries)
    return [f"--config.schedule.boundaries={boundaries}"]


def _trained_steps(run):
    """The steps a finished variant's run was trained for (its config.json), or None."""
    try:
        with open(os.path.join(run, "config.json")) as f:
            return json.load(f)["train"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _train_and_evaluate(name):
    run = os.path.join(_ROOT.value, name)
    if os.path.isfile(os.path.join(run, "model.keras")):
        steps = _trained_steps(run)
        if steps != _STEPS.value:  # reused, the report would give it the budget asked for
            raise app.UsageError(f"{run} was trained for {steps} steps, not --steps="
                                 f"{_STEPS.value}: give another --root, or --steps={steps}.")
    else:
        _run([sys.executable, "train.py", f"--config={BASE_RECIPE}", f"--workdir={run}",
              f"--config.train.steps={_STEPS.value}", *schedule_overrides(_STEPS.value),
              *VARIANTS[name][1]])
    for dataset, args in datasets().items():
        if _results(run, dataset) is None:
            _run([sys.executable, "evaluate.py", f"--checkpoint={run}", f"--pairs={_PAIRS.value}",
                  f"--baselines={','.join(REFERENCE_FILLS)}", "--panels=2",
                  f"--out={os.path.join(run, 'eval', dataset)}", *args])  # a later --pairs wins


def datasets():
    """{name: evaluate.py arguments} of the sets each variant is scored on: DATASETS and
    --data_sets (all of their pairs)."""
    sets = dict(DATASETS)
    for item in _DATA_SETS.value:
        name, _, data = item.partition("=")
        if not name or not data or name in sets or "/" in name:
            raise app.UsageError(f"--data_sets: {item!r} must be NAME=DATA, NAME new and without "
                                 f"'/' (taken: {', '.join(sets)}).")
        sets[name] = [f"--data={data}", "--pairs=-1"]
    return sets


def variant_config(name):
    """The recipe train.py builds for a variant: the base recipe with its overrides."""
    argv = ["train.py", *VARIANTS[name][1]]
    values = flags.FlagValues()  # the override flags are made from the argv given here
    config_flags.DEFINE_config_file("config", BASE_RECIPE, flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config


def check_variants(names):
    """Builds every variant's recipe and model first, so a typo in an override fails in
    seconds, naming the variant, not after the variants before it have trained."""
    from cmp_tf import models

    for name in names:
        try:
            models.build_cmp(variant_config(name))
        except (ValueError, KeyError, AttributeError, flags.Error) as error:
            raise app.UsageError(f"--variants: {name} ({' '.join(VARIANTS[name][1])}): "
                                 f"{error}") from error


def _relative(result, method):
    return {(r["strategy"], r["k"]): r["relative"] for r in result["rows"]
            if r["method"] == method}


def report(names):
    """Markdown table (one per dataset): rows = variants and fills, columns = strategy x K;
    the same as {dataset: {row: {column: relative EPE}}}, and {variant: {dataset: the pairs
    its results were scored on, None where it has none}}."""
    text, table = [], {}
    pairs = {name: dict.fromkeys(datasets()) for name in names}
    for dataset in datasets():
        results = {n: _results(os.path.join(_ROOT.value, n), dataset) for n in names}
        results = {n: r for n, r in results.items() if r is not None}
        for name, result in results.items():
            pairs[name][dataset] = result.get("pairs")
        if not results:
            continue
        first = next(iter(results.values()))
        keys = [(s, k) for s in first["strategies"] for k in first["ks"]]
        rows = {n: _relative(r, "cmp") for n, r in results.items()}
        rows.update({f"({fill} fill)": _relative(first, fill) for fill in REFERENCE_FILLS})
        table[dataset] = {n: {f"{s}/{k}": v for (s, k), v in row.items()}
                          for n, row in rows.items()}
        text.append(f"\n{dataset} ({first['data']}, {first['pairs']} pairs): relative EPE\n")
        text.append("| variant | " + " | ".join(f"{s[0]}{k}" for s, k in keys) + " |")
        text.append("|---|" + "---:|" * len(keys))
        for name, row in rows.items():
            best = [min(rows[n][key] for n in rows) for key in keys]
            cells = [f"**{row[key]:.2f}**" if row[key] == b else f"{row[key]:.2f}"
                     for key, b in zip(keys, best)]
            text.append(f"| {name} | " + " | ".join(cells) + " |")
    text.append("\nColumns: w = watershed, u = uniform guidance, then K. Variants:")
    text += [f"- {n}: {VARIANTS[n][0]}" for n in names]
    return "\n".join(text), table, pairs


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_VARIANTS.value) - set(VARIANTS))
    if unknown:
        raise app.UsageError(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}.")
    datasets()  # a malformed --data_sets fails before anything trains
    if not _REPORT_ONLY.value:
        check_variants(_VARIANTS.value)
        if _CHECK_ONLY.value:
            print(f"{len(_VARIANTS.value)} variants: every recipe and model builds.")
            return
        for name in _VARIANTS.value:
            _train_and_evaluate(name)
    text, table, pairs = report(_VARIANTS.value)
    print(text)
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value + ".md", "w") as f:
        f.write(text + "\n")
    runs = {name: dict(steps=_trained_steps(os.path.join(_ROOT.value, name)),
                       pairs=pairs[name])
            for name in _VARIANTS.value}  # as the runs were made, not as the flags say now
    reference_lib.write_json(_OUT.value + ".json", dict(runs=runs, table=table))
    reference_lib.write_plot(_OUT.value + ".json", [
        reference_lib.table_panel(f"{dataset}: relative EPE per guidance/K", rows,
                                  "EPE / zero-flow EPE (lower is better)")
        for dataset, rows in table.items()])
    print(f"\nWrote {_OUT.value}.md, .json and .png")


if __name__ == "__main__":
    cli.run(main)
