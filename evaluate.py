r"""Evaluates a trained CMP: how well it propagates sparse motion against the methods a user
would otherwise use, and what its encoder transfers to segmentation.

  python evaluate.py                                  # newest run under runs/, its val clips
  python evaluate.py --checkpoint=runs/default --data=clips/ --pairs=64
  python evaluate.py --checkpoint=model.keras --data=generated
  python evaluate.py --data=generated --reference=dis_medium   # scored as real clips are
  python evaluate.py --method=my_method.py            # score an outside propagate() too
  python evaluate.py --task=segmentation              # random init vs CMP encoder, side by side
  python evaluate.py --task=segmentation --seeds=0,1,2 --encoder_modes=fine_tuned,frozen
  python evaluate.py --task=segmentation --data=VOC2012/ \
      --segmentation=configs/segmentation.py:recipe=resnet50_yfcc,voc=VOC2012/

Propagation: K guidance points in --ks, drawn by watershed and uniformly with a fixed seed;
every method gets the same points (cmp_tf.evaluation.benchmark). Writes results.md,
results.json, relative_epe.png and panels.png to --out (default <run>/eval/propagation).
Segmentation: the same head trained from a random and from the CMP encoder at an equal budget
(cmp_tf.transfer), on a VOC-format folder (--data; default a generated set, see
configs/segmentation.py); per-class IoU and mIoU side by side, comparison.json and .png.
With --seeds or --encoder_modes, one such comparison per seed and mode (<out>/<mode>_seed<N>/,
reused if it exists), then mIoU mean +- standard deviation and the paired gain: seeds.json,
seeds.png.
"""
import os

from absl import app
from absl import flags
from absl import logging

from cmp_tf import cli

_TASK = flags.DEFINE_enum("task", "propagation", ["propagation", "segmentation"],
                          "What to evaluate.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Run directory (one still training: its newest checkpoint), training "
    "checkpoint (<run>/checkpoints/ckpt-N) or model file; default: newest finished run under "
    "runs/, else the pretrained model that ships with cmp_tf.")
_DATA = flags.DEFINE_list(
    "data", [], "Propagation: TFRecord shard folders, list files, videos or folders of videos, "
    "scored as the recipe's validation pipeline sees them (resized to data.short_size, centre "
    "crops of data.crop; EPE in those pixels); 'generated' for scenes with exact flow. "
    "Default: the run's validation data, else the embedded validation clip. Segmentation: one "
    "VOC-format folder.")
_REFERENCE = flags.DEFINE_string(
    "reference", "exact", "Propagation on --data=generated: the flow scored against, 'exact' or "
    "a teacher's on the scene's two frames (dis_medium, deepflow, ...: "
    "cmp_tf.data.teacher.named_estimators), as real clips are scored against their teacher's.")
_PAIRS = flags.DEFINE_integer("pairs", 32, "Pairs scored, drawn evenly at random (fixed seed) "
                              "from the data; -1 for all.")
_KS = flags.DEFINE_list("ks", ["1", "5", "10", "25", "100", "400"], "Guidance counts K. The "
                        "guides of each K are the first K of one draw of the largest K per "
                        "pair and strategy, so other --ks or --strategies draw other points: "
                        "the defaults reproduce the docs' tables.")
_STRATEGIES = flags.DEFINE_list("strategies", ["watershed", "uniform"], "Guidance sampling.")
_BASELINES = flags.DEFINE_list("baselines", ["zero", "nearest", "linear", "gaussian", "epicflow"],
                               "Methods from cmp_tf.evaluation.baselines to compare with.")
_METHOD = flags.DEFINE_multi_string("method", [], "Outside method: a Python file defining "
                                    "propagate(image, points, vectors) -> flow.")
_FADE = flags.DEFINE_bool("fade", True, "The model's learned fade of a guide's motion with "
                          "distance; --nofade switches it off (footage from a moving camera).")
_SEED = flags.DEFINE_integer("seed", 0, "Propagation: guidance and pair sampling seed "
                             "(segmentation: --seeds, or --segmentation.seed).")
_PANELS = flags.DEFINE_integer("panels", 4, "Example pairs drawn in panels.png (watershed "
                               "guidance if scored, K=10 or the scored K nearest to it).")
_SEEDS = flags.DEFINE_list("seeds", [], "Segmentation: compare at each of these seeds (default: "
                           "the recipe's seed, one comparison).")
_ENCODER_MODES = flags.DEFINE_list("encoder_modes", [], "Segmentation: fine_tuned and/or "
                                   "frozen (default: the recipe's transfer.freeze_encoder).")
_OUT = cli.define_output("out", None, "Output folder; default <run>/eval/<task>.")
_SEGMENTATION = cli.define_config(
    "segmentation", "configs/segmentation.py", "Transfer recipe for --task=segmentation "
    "(override fields as --segmentation.train.steps=100).", lock_config=True)

# Flags only one task reads: given with the other task they are refused, not ignored.
_TASK_FLAGS = {"propagation": ("reference", "pairs", "ks", "strategies", "baselines", "method",
                               "fade", "seed", "panels"),
               "segmentation": ("seeds", "encoder_modes", "segmentation")}


def _pairs(config, from_run):
    from cmp_tf.evaluation import pairs as pairs_lib

    return pairs_lib.scored_pairs(config, from_run, _DATA.value, _PAIRS.value, _SEED.value,
                                  _REFERENCE.value)


def _propagation(propagator, out):
    from cmp_tf import rundir
    from cmp_tf.evaluation import baselines
    from cmp_tf.evaluation import benchmark
    from cmp_tf.evaluation import report as report_lib

    config, from_run = rundir.read_config(propagator.path)
    methods = {"cmp": propagator}
    for name in _builtin_methods():
        methods[name] = baselines.get(name)
    for name, file in _method_files().items():
        methods[name] = benchmark.load_method(file)
    pairs, described = _pairs(config, from_run)
    result = benchmark.evaluate(methods, pairs, ks=[int(k) for k in _KS.value],
                                strategies=_STRATEGIES.value, seed=_SEED.value,
                                keep_examples=_PANELS.value)
    result["checkpoint"], result["data"] = methods["cmp"].path, described
    result["fade"] = _FADE.value
    unfaded = "" if _FADE.value else " (its fade off: --nofade)"
    text = report_lib.write_report(result, out, title=f"Propagation: {methods['cmp'].path}"
                                                    f"{unfaded} on {described}")
    print(text)
    written = [n for n in report_lib.REPORT_FILES if os.path.exists(os.path.join(out, n))]
    print(f"\nWrote {out}/: {', '.join(written)}")


def _builtin_methods():
    return list(dict.fromkeys(["cmp", "zero", *_BASELINES.value]))[1:]


def _method_files():
    """--method files by the column each is scored in (its file name): a name already taken,
    by the model, a baseline or another file, is refused, as it would replace that column
    (the zero column, which every relative EPE divides by, included)."""
    files, taken = {}, ["cmp", *_builtin_methods()]
    for file in _METHOD.value:
        name = os.path.splitext(os.path.basename(file))[0]
        if name in taken:
            raise app.UsageError(f"--method={file} would be scored as {name!r}, a column "
                                 f"already taken ({', '.join(taken)}): rename the file.")
        files[name] = file
        taken.append(name)
    return files


def _segmentation_data(config):
    """The VOC-format folder --data names (None: the recipe's data.dir). It must exist: a
    generated set is only ever written into the recipe's own folder, never into a mistyped
    one; and a folder of your own goes with a recipe that reads it as such."""
    from cmp_tf.data import synthetic

    if not _DATA.value:
        return None
    if len(_DATA.value) > 1:
        raise app.UsageError(f"--data takes one VOC-format folder for segmentation; got "
                             f"{_DATA.value}.")
    folder = _DATA.value[0]
    if not os.path.isdir(folder):
        raise app.UsageError(f"--data={folder} is not a folder: expected a VOC-format folder "
                             "(JPEGImages/, SegmentationClass/, ImageSets/Segmentation/).")
    made = [os.path.join(folder, name) for name in (synthetic.SYNTHETIC_MANIFEST,
                                                    synthetic.SYNTHETIC_UNFINISHED)]
    if config.data.synthetic and not any(map(os.path.isfile, made)):  # unfinished: rewritten
        raise app.UsageError(
            f"--data={folder} holds no {synthetic.SYNTHETIC_MANIFEST}, so it is not a generated "
            "set, which the recipe expects (data.synthetic). For PASCAL VOC 2012 use "
            f"--segmentation=configs/segmentation.py:voc={folder}; for another VOC-format set "
            "add --segmentation.data.synthetic=False --segmentation.data.num_classes=N.")
    return folder


def _segmentation(path, out):
    from cmp_tf import transfer

    config = cli.config_of(_SEGMENTATION)
    try:
        transfer.check_config(config)
    except ValueError as error:
        raise app.UsageError(f"--segmentation: {error}") from error
    data_dir = _segmentation_data(config)
    if _SEEDS.value or _ENCODER_MODES.value:
        try:
            seeds = [int(s) for s in _SEEDS.value] or [config.seed]
        except ValueError as error:
            raise app.UsageError(f"--seeds={','.join(_SEEDS.value)} must be integers.") from error
        modes = _ENCODER_MODES.value or [
            next(m for m, frozen in transfer.ENCODER_MODES.items()
                 if frozen == config.transfer.freeze_encoder)]
        summary = transfer.compare_over_seeds(config, path, seeds, modes, data_dir, workdir=out)
        print(transfer.seeds_table(summary))
        print(f"\nWrote {out}/: seeds.json, seeds.png and one folder per mode and seed")
        return
    result = transfer.compare_initializations(config, path, data_dir=data_dir, workdir=out)
    print(transfer.comparison_table(result))
    print(f"\nWrote {out}/: comparison.json, comparison.png")


def _check_flags():
    """Refuses flag values that would otherwise be read as something else (--pairs=0 as all
    pairs), before any model is loaded."""
    from cmp_tf.evaluation import benchmark
    from cmp_tf.evaluation import pairs as pairs_lib

    try:
        pairs_lib.check_pair_count(_PAIRS.value)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    if _PANELS.value < 0:
        raise app.UsageError(f"--panels={_PANELS.value} must be >= 0.")
    if _SEED.value < 0:
        raise app.UsageError(f"--seed={_SEED.value} must be >= 0.")
    other = next(task for task in _TASK_FLAGS if task != _TASK.value)
    given = [f"--{name}" for name in flags.FLAGS
             if name.split(".")[0] in _TASK_FLAGS[other] and flags.FLAGS[name].present]
    if given:
        raise app.UsageError(f"{', '.join(sorted(set(given)))}: for --task={other}, not "
                             f"--task={_TASK.value}.")
    if _TASK.value != "propagation":
        return
    try:
        benchmark.check_ks([int(k) for k in _KS.value])
    except ValueError as error:
        raise app.UsageError(f"--ks={','.join(_KS.value)} must be distinct increasing positive "
                             "counts.") from error
    try:
        benchmark.check_strategies(_STRATEGIES.value)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    if _REFERENCE.value != "exact":
        from cmp_tf.data import teacher

        known = ["exact", *teacher.named_estimators()]
        if _REFERENCE.value not in known:
            raise app.UsageError(f"--reference={_REFERENCE.value} is unknown; known: "
                                 f"{', '.join(known)}.")
        if _DATA.value != ["generated"]:
            raise app.UsageError(f"--reference={_REFERENCE.value} scores generated scenes "
                                 "against a teacher's flow: use it with --data=generated.")
    from cmp_tf.evaluation import baselines

    unknown = [name for name in _BASELINES.value if name not in baselines.BASELINES]
    if unknown:
        raise app.UsageError(f"--baselines: {', '.join(unknown)} unknown; known: "
                             f"{', '.join(baselines.BASELINES)}.")
    _method_files()
    for file in _METHOD.value:
        if not os.path.isfile(file) or not file.endswith(".py"):
            what = "a file" if not os.path.isfile(file) else "a .py file"
            raise app.UsageError(f"--method={file} is not {what}: name a Python file defining "
                                 "propagate(image, points, vectors).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    _check_flags()
    if not flags.FLAGS["verbosity"].present:  # INFO lines would cut the bars, as in train.py
        logging.set_verbosity(logging.WARNING)
    from cmp_tf import rundir

    path = _CHECKPOINT.value or rundir.default_checkpoint()
    unfinished = propagator = None  # a run still training (or stopped): its newest checkpoint
    if _TASK.value == "propagation":  # refuses a missing path; reads a checkpoint's forms,
        from cmp_tf import runtime  # and a run's newest checkpoint that reads back

        propagator = runtime.Propagator(path, fade=None if _FADE.value else False)
        unfinished = propagator.path if propagator.format == "checkpoint" else None
    elif not os.path.exists(path):
        raise app.UsageError(f"--checkpoint={path} does not exist: expected a run directory "
                             "or a .keras file.")
    # Results of the shipped model go under runs/, never into the installed package.
    out = _OUT.value or os.path.join(rundir.results_dir(unfinished or path, "eval"),
                                     _TASK.value)
    try:  # before the pairs are scored, not when the report is written
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise app.UsageError(f"--out={out} could not be made: {error.strerror or error}"
                             f"{'' if _OUT.value else ' (the default; name another with --out)'}"
                             ".") from error
    if unfinished:
        step = rundir.checkpoint_step(unfinished)
        finished = os.path.isfile(os.path.join(rundir.run_folder(unfinished), rundir.MODEL_FILE))
        print(f"Evaluating {unfinished}, the {f'step-{step} ' if step else ''}training "
              f"checkpoint of a run that {'has finished' if finished else 'has not finished'} "
              f"({_TASK.value})")
        path = unfinished
    else:
        print(f"Evaluating {path} ({_TASK.value})")
    if _TASK.value == "propagation":  # a ValueError (bad checkpoint, data or flags) is one line
        _propagation(propagator, out)
    else:
        _segmentation(path, out)


if __name__ == "__main__":
    cli.run(main)
