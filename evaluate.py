r"""Evaluates a trained CMP: propagation accuracy against classical fills, and transfer.

  python evaluate.py --checkpoint=RUN_DIR_OR_MODEL.keras

The evaluation protocol is issue #6; until it lands this loads a `.keras` model and reports
its end-point error on generated scenes with exact flow, next to zero flow and the nearest fill.
"""
from absl import app
from absl import flags

from cmp_tf.evaluation import synthetic_propagation

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A .keras model file.", required=True)
_SCENES = flags.DEFINE_integer("scenes", 8, "Generated scenes to score.")
_POINTS = flags.DEFINE_integer("points", 10, "Guidance points per scene (uniform).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    report = synthetic_propagation(_CHECKPOINT.value, _SCENES.value, _POINTS.value)
    for method, epe in report.items():
        print(f"{method:>8}: EPE {epe:.3f} px")


if __name__ == "__main__":
    app.run(main)
