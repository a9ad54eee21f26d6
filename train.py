r"""Trains CMP from a recipe; resumes from the run directory's last checkpoint.

  python train.py                                        # CPU default on the sample clips
  python train.py --config=configs/resnet50_yfcc.py --config.data.train="('data/shards/',)"
  python train.py --strategy=mirrored --cpu_devices=2    # MirroredStrategy on 2 logical CPUs

Everything after flag parsing lives in cmp_tf.training.
"""
import os
import re

from absl import app
from absl import flags
from absl import logging

from cmp_tf import cli


_CONFIG = cli.define_config(
    "config", "configs/default.py", "Recipe file under configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default runs/<recipe name>[_<recipe argument>].")
_STRATEGY = flags.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "multiworker", "tpu"],
                              "tf.distribute strategy.")
_DEVICES = flags.DEFINE_list("devices", [], "Devices for --strategy=mirrored (default: all GPUs).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N logical devices "
                                    "(0: do not split).", lower_bound=0)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace the run in --workdir, finished or not: deletes only what a run "
    "writes (config.json, log.txt, checkpoints/, tb/, model.keras, encoder.keras, eval/, "
    "export/, summary.json), once the config is valid. A folder holding anything else, or no "
    "run's config.json, is refused with the files named.")
_DETERMINISTIC = flags.DEFINE_bool("deterministic", False,
                                   "Deterministic TF ops: bit-identical reruns, slower.")


def run_name(recipe):
    """The default run folder's name for a --config value: the recipe file's stem, then its
    argument if any (configs/default.py:runlocal -> default_runlocal), so a smoke run never
    lands in the full run's folder."""
    path, argument = cli.recipe_parts(recipe)
    name = os.path.splitext(os.path.basename(path))[0]
    argument = re.sub(r"[^A-Za-z0-9.-]+", "_", argument).strip("_")
    return f"{name}_{argument}" if argument else name


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # TensorFlow's INFO lines would cut the bar
        logging.set_verbosity(logging.WARNING)
    from cmp_tf import training  # imports TensorFlow: after the CPU split is decided

    if _CPU_DEVICES.value:
        training.configure_cpu_devices(_CPU_DEVICES.value)
    config = cli.config_of(_CONFIG)
    if _DETERMINISTIC.value:
        if "train" in config and config.train.get("jit_compile", False):  # failed in XLA
            raise app.UsageError("--deterministic cannot run with config.train.jit_compile=True"
                                 ": XLA has no deterministic MaxPool gradient. Drop one of them.")
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    workdir = _WORKDIR.value or os.path.join("runs", run_name(
        flags.FLAGS["config"].config_filename))
    from cmp_tf.data import pipeline

    try:
        summary = training.train(config, workdir, _STRATEGY.value, _DEVICES.value,
                                 _OVERWRITE.value)
    except training.SetupError as error:  # refused before the first step: one line, no trace
        raise app.UsageError(str(error)) from error
    except (pipeline.DataError, FloatingPointError) as error:  # stopped by unreadable data
        # (saved), or a loss or flow that diverged (the message names the last checkpoint)
        cli.fail(str(error), hint=False)
    except training.Interrupted as stop:  # Ctrl-C in the loop, saved (any other Ctrl-C,
        # with nothing to save, is cli.run's one line)
        cli.fail(str(stop), cli.INTERRUPTED_EXIT_CODE, hint=False)
    if not summary:
        return  # a non-chief worker
    if summary.get("ingestion"):
        print(f"\n{summary['ingestion']}")
    report = summary["validation"]
    print(f"\nRun directory {workdir}: checkpoints/, tb/ (tensorboard --logdir {workdir}/tb), "
          f"log.txt, model.keras, encoder.keras" + (", eval/validation.json and "
                                                    "eval/preview.png (image and guides | "
                                                    "predicted | target flow)" if report else ""))
    if report:
        epe = report["epe"]
        shared = [os.path.basename(p) for p in summary.get("validation_also_trained_on", [])]
        clips = (f"clips the training data also holds ({', '.join(shared)}), not held out"
                 if shared else "clips not trained on")
        print(f"Validation ({report['samples']} pairs of {clips}, "
              f"{report['guidance_points_per_sample']:.1f} guidance points each): EPE "
              f"CMP {epe['cmp']:.3f} px, zero flow {epe['zero']:.3f} px, nearest guidance "
              f"{epe['nearest']:.3f} px.")
        verdict = "better than" if epe["cmp"] < epe["nearest"] else "not yet better than"
        print(f"CMP is {100 * (1 - report['relative']['to_zero']):.1f}% below zero flow and "
              f"{verdict} the nearest fill ({report['relative']['to_nearest']:.3f}x its EPE).")


if __name__ == "__main__":
    cli.run(main)
