r"""Evaluates a trained CMP: how well it propagates sparse motion, against the fills a user
would otherwise use on the same guidance.

  python evaluate.py                          # the newest run under runs/
  python evaluate.py --checkpoint=runs/default
  python evaluate.py --checkpoint=model.keras --scenes=16

A run directory is scored on its recipe's validation clips (pairs of videos it never trained
on) and on generated scenes with exact flow; a bare .keras file on generated scenes. The full
benchmark protocol (K guidance points, methods, plots) is issue #6.
"""
import glob
import json
import os

from absl import app
from absl import flags

_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "Run directory or .keras file; default: newest under runs/.")
_SCENES = flags.DEFINE_integer("scenes", 8, "Generated scenes to score.")
_POINTS = flags.DEFINE_integer("points", 10, "Guidance points per generated scene (uniform).")


def _newest_run():
    runs = sorted(glob.glob(os.path.join("runs", "*", "model.keras")), key=os.path.getmtime)
    if not runs:
        raise app.UsageError("No run under runs/ has a model.keras yet: run `python train.py` "
                             "or pass --checkpoint.")
    return os.path.dirname(runs[-1])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    import keras
    import ml_collections

    from cmp_tf.data import pipeline
    from cmp_tf.evaluation import propagation

    path = _CHECKPOINT.value or _newest_run()
    run_dir = path if os.path.isdir(path) else None
    model_path = os.path.join(path, "model.keras") if run_dir else path
    if not os.path.isfile(model_path):
        raise app.UsageError(f"--checkpoint={path}: no model at {model_path}.")
    print(f"Evaluating {model_path}")
    model = keras.models.load_model(model_path)
    rows = []
    if run_dir and os.path.isfile(os.path.join(run_dir, "config.json")):
        with open(os.path.join(run_dir, "config.json")) as f:
            config = ml_collections.ConfigDict(json.load(f))
        if config.data.val:
            report = propagation.evaluate_dataset(model, pipeline.make_dataset(config, "val"))
            rows.append((f"validation clips ({report['samples']} pairs)", report["epe"]))
            os.makedirs(os.path.join(run_dir, "eval"), exist_ok=True)
            with open(os.path.join(run_dir, "eval", "validation.json"), "w") as f:
                json.dump(report, f, indent=1)
    scenes = propagation.synthetic_propagation(model, _SCENES.value, _POINTS.value)
    rows.append((f"generated scenes ({_SCENES.value}, {_POINTS.value} points)", scenes))
    print(f"{'data':<34}{'CMP':>9}{'zero':>9}{'nearest':>9}   (mean end-point error, px)")
    for name, epe in rows:
        print(f"{name:<34}{epe['cmp']:>9.3f}{epe['zero']:>9.3f}{epe['nearest']:>9.3f}")


if __name__ == "__main__":
    app.run(main)
