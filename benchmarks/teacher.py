r"""How close a teacher flow is to the truth, near motion boundaries and away from them.

CMP learns from a teacher's flow on real video (OpenCV's DIS by default) and, on real clips,
is scored against it. This renders layered scenes with their second frame
(`cmp_tf.data.layered.render_scene(second_frame=True)`), runs each estimator on the pair and
compares its flow with the scene's exact flow: EPE within 5 px of a motion boundary (as
`evaluate.py` counts "near") and farther, and seconds per pair. Pixels near a boundary include
the ones the second frame hides, where no two-frame estimator can be right.

  python benchmarks/teacher.py [--scenes=32] [--size=128] [--teachers=dis_medium,deepflow]

Prints a markdown table and writes teacher.json and a plot of it, teacher.png. The scenes are
the held-out ones of `evaluate.py --data=generated` (the same first frames and flows).
"""
import os
import sys
import time

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reference as reference_lib  # noqa: E402
from cmp_tf import cli  # noqa: E402
from cmp_tf.data import sampling  # noqa: E402
from cmp_tf.data import teacher  # noqa: E402
from cmp_tf.evaluation import pairs as pairs_lib  # noqa: E402

NEAR_PX = 5  # "near a motion boundary", as evaluate.py's epe_near


TEACHERS = teacher.named_estimators()  # the ingestion's estimators, by name

_SCENES = flags.DEFINE_integer("scenes", 32, "Generated scenes (evaluate.py's held-out ones).")
_SIZE = flags.DEFINE_integer("size", 128, "Scene side, px.")
_TEACHERS = flags.DEFINE_list("teachers", list(TEACHERS), f"Any of {', '.join(TEACHERS)}.")
_OUT = cli.define_output("out", "runs/benchmarks", "Folder for teacher.json and .png.")


def scene_pairs(count, size, seed=0):
    """(frame t uint8, frame t + 1 uint8, exact flow) of `evaluate.py --data=generated`'s
    scenes."""
    return [(first, second, flow) for first, flow, _, second
            in pairs_lib.generated_pairs(count, size, seed, second_frame=True)]


def score(estimate, pairs):
    """{epe_near, epe_far, seconds}: means over the pairs of the EPE within `NEAR_PX` of a
    motion boundary and farther, and of the seconds per pair."""
    near_errors, far_errors, seconds = [], [], []
    for index, (first, second, exact) in enumerate(pairs):
        start = time.perf_counter()
        flow = estimate(first, second)
        seconds.append(time.perf_counter() - start)
        flow = teacher.checked_flow(flow, exact.shape, f"The estimator on scene {index}")
        near = sampling.distance_to_motion_edges(exact) <= NEAR_PX
        error = np.linalg.norm(flow - exact, axis=-1)
        near_errors.append(error[near].mean() if near.any() else np.nan)
        far_errors.append(error[~near].mean() if (~near).any() else np.nan)
    return dict(epe_near=_mean(near_errors), epe_far=_mean(far_errors),
                seconds=float(np.mean(seconds)))


def _mean(values):
    """The mean of the pairs that have such pixels (NaN if none has)."""
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _cell(value):
    """A table cell: '-' where no scene has such pixels (JSON's null)."""
    return "-" if np.isnan(value) else f"{value:.3f}"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_TEACHERS.value) - set(TEACHERS))
    if unknown:
        raise app.UsageError(f"--teachers: unknown {unknown}; known: {', '.join(TEACHERS)}.")
    if _SCENES.value < 1 or _SIZE.value < 16:
        raise app.UsageError(f"--scenes must be >= 1 and --size >= 16; got {_SCENES.value} "
                             f"and {_SIZE.value}.")
    pairs = scene_pairs(_SCENES.value, _SIZE.value)
    lines = [f"Teacher flow against the exact flow, {_SCENES.value} generated scenes of "
             f"{_SIZE.value}² px:", "",
             f"| teacher | EPE near (≤ {NEAR_PX} px), px | EPE farther, px | s / pair |",
             "|---|---:|---:|---:|"]
    table = {}
    for name in _TEACHERS.value:
        try:
            table[name] = score(TEACHERS[name](), pairs)
        except ValueError as error:  # a teacher that refuses this size (rlof below 64 x 96)
            table[name] = dict(refused=str(error))
            lines.append(f"| {name} | refused: {error} | | |")
        else:
            row = table[name]
            lines.append(f"| {name} | {_cell(row['epe_near'])} | {_cell(row['epe_far'])} | "
                         f"{row['seconds']:.4f} |")
        print(lines[-1] if len(table) > 1 else "\n".join(lines), flush=True)
    path = reference_lib.write_json(os.path.join(_OUT.value, "teacher.json"), dict(
        scenes=_SCENES.value, size=_SIZE.value, table=table))
    plot = reference_lib.write_plot(path, [reference_lib.Panel(
        f"Teacher flow against the exact flow, {_SCENES.value} scenes of {_SIZE.value}²",
        list(table), {f"EPE near (≤ {NEAR_PX} px)": [r.get("epe_near") for r in table.values()],
                      "EPE farther": [r.get("epe_far") for r in table.values()]},
        "EPE, px (lower is better)")])
    print(f"\nWrote {path} and {plot}")


if __name__ == "__main__":
    cli.run(main)
