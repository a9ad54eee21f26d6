r"""Semi-automatic annotation (cmp_tf.apps.annotate): mask IoU against the number of clicks,
on generated layered scenes whose object masks are exact, next to click-free and motion-free
grabCut.

  python benchmarks/annotation.py [--model=PATH ...] [--scenes=24] [--size=256] [--clicks=1,2,4,8]

Prints a markdown table and writes annotation.json and a plot of it, annotation.png, to --out.
--model may be given several times (`--model=shipped --model=runs/edges`): every model is
scored on the same scenes and clicks, its rows named after it. A simulated user clicks P times
on the object and P times around it: positives by farthest-point sampling over the object's
interior, starting at its most interior pixel; negatives the same way over a band around the
object, continuing from the positives (so they spread around it). Methods:
  - CMP, CMP + grabCut, CMP + guided filter: annotate.motion_score, refined by each method;
  - nearest fill (+ grabCut): the same with the nearest-guidance fill as the "propagator",
    what CMP must beat to be worth its network;
  - edge-aware fill: the same with the edge-aware fill alone (colour-weighted pull-push, no
    network; evaluation.baselines.edge_aware), what reading the image brings without learning;
  - grabCut, clicks' box: grabCut from the bounding box of the same clicks, click-free
    otherwise (what the motion adds over the clicks' positions alone);
  - grabCut, exact box: from the object's own bounding box with a margin (a user dragging a
    tight box: a stronger input than clicks, listed for scale).
The target is the largest layer showing 3-40% of the image in one piece. --textures=frame
(default) cuts every layer and the background from frames of the carphone clip (never trained
on), so object and background share their colours, as in photos; --textures=noise gives each
layer its own procedural texture, which colour alone separates.
"""
import os
import sys
import time

import cv2
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reference as reference_lib  # noqa: E402
from cmp_tf import cli  # noqa: E402
from cmp_tf import progress  # noqa: E402
from cmp_tf.apps import annotate  # noqa: E402
from cmp_tf.apps import inputs  # noqa: E402
from cmp_tf.data import layered  # noqa: E402
from cmp_tf.evaluation import baselines  # noqa: E402

_MODEL = flags.DEFINE_multi_string("model", [inputs.SHIPPED], "Model for the CMP rows (any "
                                   "format Propagator loads; 'shipped': the model that ships "
                                   "with cmp_tf); repeat the flag to compare several.")
_SCENES = flags.DEFINE_integer("scenes", 24, "Generated scenes (one target object each).")
_SIZE = flags.DEFINE_integer("size", 256, "Scene side in pixels.", lower_bound=64)
_CLICKS = flags.DEFINE_list("clicks", ["1", "2", "4", "8"], "Positive clicks per column; as "
                            "many negatives (times --negatives_per_positive).")
_NEGATIVES = flags.DEFINE_float("negatives_per_positive", 1.0, "Negative clicks per positive.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the scene stream.")
_TEXTURES = flags.DEFINE_enum("textures", "frame", ["frame", "noise"], "Layer textures: cut "
                              "from real frames, or procedural noise.")
_ZOOM_SIZE = flags.DEFINE_integer("zoom_size", annotate.ZOOM_SIZE, "annotate's zoom_size.",
                                  lower_bound=annotate.MIN_ZOOM_SIZE)
_OUT = cli.define_output("out", "runs/benchmarks", "Folder for annotation.json and .png.")

AREA = (0.03, 0.40)  # the target's share of the image
ONE_PIECE = 0.95  # share of the target in its largest connected part
INTERIOR = 3  # px: positive clicks at least this far inside the object when it can
BAND = (3, 0.25)  # negatives between 3 px and 3 px + 0.25 * sqrt(object area) outside it
BOX_MARGIN = 0.05  # the box baseline's margin, a fraction of the box side


SOURCE_CLIP = os.path.join(os.path.dirname(layered.__file__), "samples", "carphone.mp4")
SOURCE_FRAMES = 8  # frames of SOURCE_CLIP the textures are cut from, spread over the clip


def source_frames(path=SOURCE_CLIP, count=SOURCE_FRAMES):
    """RGB frames spread over a clip: real material for the layers' textures."""
    capture = cv2.VideoCapture(path)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for index in np.linspace(0, max(total - 1, 0), count).astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        if ok:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise ValueError(f"no frame could be read from {path}.")
    return frames


def scenes(count, size, seed, textures="frame"):
    """[(image uint8 H x W x 3, object mask bool H x W)]: layered scenes, one target each."""
    rng = np.random.default_rng(seed)
    frames = source_frames() if textures == "frame" else None
    found = []
    while len(found) < count:
        if frames is None:
            image, _, _, masks = layered.render_scene(rng, size, size, return_masks=True)
        else:
            source = frames[int(rng.integers(len(frames)))]
            image, _, _, masks = layered.render_scene(rng, size, size, source=source,
                                                      noise_textures=0.0, return_masks=True)
        best = None
        for mask in masks:
            share = mask.mean()
            if not AREA[0] <= share <= AREA[1]:
                continue
            _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
            if stats[1:, cv2.CC_STAT_AREA].max() < ONE_PIECE * mask.sum():
                continue
            if best is None or mask.sum() > best.sum():
                best = mask
        if best is not None:
            found.append((np.clip(np.rint(image), 0, 255).astype(np.uint8), best))
    return found


def farthest_points(allowed, count, chosen=()):
    """`count` pixels (x, y) of `allowed`, each the farthest from every point chosen before
    (those in `chosen` included); without `chosen` the first is the most interior pixel."""
    ys, xs = np.nonzero(allowed)
    candidates = np.stack([xs, ys], 1).astype(np.float32)
    picked = []
    if len(chosen):
        nearest = np.min(np.linalg.norm(candidates[:, None] - np.asarray(chosen)[None], axis=-1),
                         axis=1)
    else:
        inside = cv2.distanceTransform(allowed.astype(np.uint8), cv2.DIST_L2, 5)
        first = candidates[np.argmax(inside[ys, xs])]
        picked.append(first)
        nearest = np.linalg.norm(candidates - first, axis=1)
    while len(picked) < count:
        point = candidates[np.argmax(nearest)]
        picked.append(point)
        nearest = np.minimum(nearest, np.linalg.norm(candidates - point, axis=1))
    return np.array(picked[:count], np.float32).reshape(-1, 2)


def simulate_clicks(mask, positives, negatives):
    """A simulated user's (positive [P, 2], negative [N, 2]) clicks for the object `mask`."""
    interior = cv2.erode(mask.astype(np.uint8), np.ones((2 * INTERIOR + 1,) * 2, np.uint8)) > 0
    positive = farthest_points(interior if interior.any() else mask, positives)
    reach = BAND[0] + int(BAND[1] * np.sqrt(mask.sum()))
    near = cv2.dilate(mask.astype(np.uint8), np.ones((2 * BAND[0] + 1,) * 2, np.uint8)) > 0
    far = cv2.dilate(mask.astype(np.uint8), np.ones((2 * reach + 1,) * 2, np.uint8)) > 0
    band = far & ~near
    negative = farthest_points(band, negatives, positive) if negatives and band.any() else \
        np.zeros((0, 2), np.float32)
    return positive, negative


def box_grabcut(image, x0, y0, x1, y1):
    """grabCut from a box (inclusive pixel corners): everything outside is background."""
    seeds = np.zeros(image.shape[:2], np.uint8)
    if x1 <= x0 or y1 <= y0:  # a degenerate box: grabCut has no foreground to learn
        return seeds > 0
    return annotate.run_grabcut(image, seeds, box=(x0, y0, x1 - x0 + 1, y1 - y0 + 1))


def exact_box_grabcut(image, mask):
    """grabCut from the object's bounding box with a margin: no clicks at all."""
    ys, xs = np.nonzero(mask)
    margin = BOX_MARGIN * max(np.ptp(xs), np.ptp(ys))
    height, width = mask.shape
    return box_grabcut(image, int(max(0, xs.min() - margin)), int(max(0, ys.min() - margin)),
                       int(min(width - 1, xs.max() + margin)),
                       int(min(height - 1, ys.max() + margin)))


def clicks_box_grabcut(image, positive, negative):
    """grabCut from the bounding box of every click: their positions, no motion."""
    points = np.rint(np.concatenate([positive, negative])).astype(int)
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    return box_grabcut(image, int(x0), int(y0), int(x1), int(y1))


class ClassicalFill:
    """A classical fill of evaluation.baselines behind the Propagator's propagate_batch."""

    def __init__(self, name):
        self.fill = baselines.get(name)

    def propagate_batch(self, image, guidance):
        return np.stack([self.fill(image, p, v) for p, v in guidance])


def iou(pred, target):
    union = np.logical_or(pred, target).sum()
    return float(np.logical_and(pred, target).sum() / union) if union else 1.0


REFINEMENTS = {"none": "", "grabcut": " + grabCut", "guided": " + guided filter"}  # row suffix
CMP_REFINEMENTS = ("none", "grabcut", "guided")
# row name -> (evaluation.baselines fill, its refinements)
FILLS = {"nearest fill": ("nearest", ("none", "grabcut")),
         "edge-aware fill": ("edge_aware", ("none",))}
BOXES = ("grabCut, clicks' box", "grabCut, exact box")


def cmp_row(label, labels):
    """The bare CMP row's name of the model `label` among `labels`: "CMP" for a single model."""
    return "CMP" if len(labels) == 1 else f"CMP ({label})"


def methods(labels):
    """Row names: each model's CMP rows, the fills', the boxes'."""
    names = []
    for label in labels:
        names += [cmp_row(label, labels) + REFINEMENTS[r] for r in CMP_REFINEMENTS]
    for fill, (_, refinements) in FILLS.items():
        names += [fill + REFINEMENTS[r] for r in refinements]
    return names + list(BOXES)


def evaluate(propagators, scene_list, clicks, negatives_per_positive, zoom_size):
    """{method: {P: [IoU per scene]}} for {label: propagator}, the classical fills and the
    boxes on the same clicks, and {label: mean seconds per CMP annotation}."""
    labels = list(propagators)
    scores = {m: {p: [] for p in clicks} for m in methods(labels)}
    seconds = {label: [] for label in labels}
    fills = {name: ClassicalFill(fill) for name, (fill, _) in FILLS.items()}
    blank = np.zeros((zoom_size, zoom_size, 3), np.uint8)
    for propagator in propagators.values():  # a Keras model traces at its first view size:
        # timed, that one call set the mean of a short run (1.3 s for 0.15 s)
        annotate.motion_score(propagator, blank, [[0, 0], [zoom_size - 1] * 2], [],
                              zoom_size=zoom_size)
    for image, mask in progress.bar(scene_list, desc="annotation", unit="scene"):
        box = iou(exact_box_grabcut(image, mask), mask)
        for p in clicks:
            positive, negative = simulate_clicks(mask, p, int(round(p * negatives_per_positive)))
            masks = {}
            for label, propagator in propagators.items():
                start = time.perf_counter()
                score = annotate.motion_score(propagator, image, positive, negative,
                                              zoom_size=zoom_size)
                seconds[label].append(time.perf_counter() - start)
                for refinement in CMP_REFINEMENTS:
                    masks[cmp_row(label, labels) + REFINEMENTS[refinement]] = annotate.refine(
                        image, score, positive, negative, method=refinement)
            for name, (_, refinements) in FILLS.items():
                score = annotate.motion_score(fills[name], image, positive, negative,
                                              zoom_size=zoom_size)
                for refinement in refinements:
                    masks[name + REFINEMENTS[refinement]] = annotate.refine(
                        image, score, positive, negative, method=refinement)
            masks[BOXES[0]] = clicks_box_grabcut(image, positive, negative)
            for method, pred in masks.items():
                scores[method][p].append(iou(pred, mask))
            scores[BOXES[1]][p].append(box)
    return scores, {label: float(np.mean(s)) for label, s in seconds.items()}


def markdown(scores, clicks, negatives_per_positive):
    heads = [f"{p}+{int(round(p * negatives_per_positive))}" for p in clicks]
    lines = ["| method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(clicks)]
    best = {p: max(np.mean(scores[m][p]) for m in scores) for p in clicks}
    for method in scores:
        cells = []
        for p in clicks:
            value = np.mean(scores[method][p])
            cells.append(f"**{value:.3f}**" if value == best[p] else f"{value:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    try:
        clicks = inputs.counts(_CLICKS.value, "--clicks")
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    if _SCENES.value < 1:
        raise app.UsageError(f"--scenes={_SCENES.value} must be >= 1.")
    if not _NEGATIVES.value >= 0:  # NaN too
        raise app.UsageError(f"--negatives_per_positive={_NEGATIVES.value} must be >= 0.")
    try:
        propagators = inputs.load_propagators(_MODEL.value)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    scene_list = scenes(_SCENES.value, _SIZE.value, _SEED.value, _TEXTURES.value)
    scores, seconds = evaluate(propagators, scene_list, clicks, _NEGATIVES.value,
                               _ZOOM_SIZE.value)
    table = markdown(scores, clicks, _NEGATIVES.value)
    print(f"Mask IoU, {len(scene_list)} generated scenes ({_TEXTURES.value} textures) at "
          f"{_SIZE.value}²; columns: positive + negative clicks. Models:")
    for label, propagator in propagators.items():
        print(f"  {label}: {propagator.path} ({propagator.format}), {seconds[label]:.2f} s per "
              "CMP annotation (4 guidance sets)")
    print()
    print(table)
    models = {label: {"path": propagator.path, "format": propagator.format,
                      "seconds_per_annotation": seconds[label]}
              for label, propagator in propagators.items()}
    path = reference_lib.write_json(os.path.join(_OUT.value, "annotation.json"), {
        "models": models, "scenes": len(scene_list), "textures": _TEXTURES.value,
        "size": _SIZE.value, "seed": _SEED.value, "clicks": clicks,
        "negatives_per_positive": _NEGATIVES.value, "zoom_size": _ZOOM_SIZE.value,
        "settings": {"velocity": annotate.VELOCITY, "threshold": annotate.THRESHOLD,
                     "zoom_factor": annotate.ZOOM_FACTOR},
        "mean_iou": {m: {str(p): float(np.mean(v)) for p, v in s.items()}
                     for m, s in scores.items()},
        "iou": scores})
    heads = {f"{p}+{int(round(p * _NEGATIVES.value))} clicks": p for p in clicks}
    plot = reference_lib.write_plot(path, [reference_lib.Panel(
        f"Mask IoU, {len(scene_list)} scenes ({_TEXTURES.value}), {_SIZE.value}²", list(scores),
        {head: [np.mean(scores[m][p]) for m in scores] for head, p in heads.items()},
        "mean mask IoU (higher is better)")])
    print(f"\nWrote {path} and {plot}")


if __name__ == "__main__":
    cli.run(main)
