r"""Semi-automatic annotation: a few clicks on an object -> its mask, from the motion CMP
propagates when the clicked points are pushed (the paper's demo, docs/reference.md §6).

  python -m cmp_tf.apps.annotate --image=photo.jpg --positive="120,80;130,95" \
      --negative="40,60" --out=mask.png [--model=exported/model.tflite] [--refine=grabcut]

Positive clicks move by a set velocity in four directions, a batch of four guidance sets;
negative clicks stay still in all four. What moves with the clicked points is the object: the
mean propagated motion magnitude over the four, normalised by its maximum and thresholded, is
the mask. With two clicks or more the network looks at a square zoomed around them first, as
the demo does; the mask is then refined along image edges (grabCut seeded by it, or a guided
filter of the score).
"""
import os
import sys

import cv2
import numpy as np
from absl import app
from absl import flags

from cmp_tf import cli
from cmp_tf import rundir
from cmp_tf.apps import inputs
from cmp_tf.data import sampling

# The reference demo's settings (demo_annot.ipynb: velocity 30, th 0.5, zoom_factor 4, 384 px).
VELOCITY = 30.0  # px a positive click is pushed, in the network's (zoomed) pixels
THRESHOLD = 0.5  # fraction of the largest motion that counts as the object
ZOOM_FACTOR = 4.0  # the zoom square's side over the clicks' extent; -1: no zoom
ZOOM_SIZE = 384  # side the zoom square is resized to before the network sees it
SMALLEST_ZOOM_SQUARE = 32  # px of the image: a smaller one (clicks a few px apart) is no zoom
MIN_ZOOM_SIZE = 32  # the smallest zoom side the networks take (their encoders' stride)
MAX_ZOOM_SIZE = 2048  # the largest: the web service's largest image side
MAX_PIXELS = 2**24  # largest image the command annotates (--max_pixels), width x height: a
#   16 Mpx photo; the refinement works at full size, ~100 B a pixel (1.7 GB here)
REFINE = "guided"  # never worse than "none" on benchmarks/annotation.py; grabCut: see README
REFINEMENTS = ("none", "grabcut", "guided")
GRABCUT_ITERATIONS = 3
GRABCUT_SEED = 0  # grabCut's k-means starts from OpenCV's RNG: seeded, a mask is reproducible
CLICK_RADIUS = 0.01  # sure foreground / background disc at a click, fraction of the shorter side
GUIDED_RADIUS = 0.02  # guided filter window radius, fraction of the shorter side
GUIDED_EPS = 0.01 * 255**2  # guided filter regularisation: edges weaker than ~0.1 of the range
OVERLAY_WEIGHT, OVERLAY_COLOUR = 0.5, (255, 64, 64)  # how overlay() tints the mask (RGB)
# The command's overlay picture: object clicks green, background clicks blue, ringed in black.
CLICK_COLOURS, CLICK_DOT_PX = ((0, 200, 0), (0, 96, 255)), 3
_DIRECTIONS = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], np.float32)  # right, left, down, up


def check_clicks(image, positive, negative):
    """(positive [P, 2], negative [N, 2]) float32 after checking them against the image: at
    least one positive click, every click on a pixel of the image."""
    height, width = image.shape[:2]
    positive, negative = _clicks(positive, "positive"), _clicks(negative, "negative")
    if not len(positive):
        raise ValueError("positive needs at least one click on the object; got none.")
    inputs.check_inside(positive, height, width, "positive")
    inputs.check_inside(negative, height, width, "negative")
    check_apart(positive, negative)
    return positive, negative


def check_apart(positive, negative, positive_name="positive", negative_name="negative"):
    """Refuses a negative click on a positive click's pixel: the guides on one pixel are
    averaged, so the object's push was halved there and the still click did nothing."""
    taken = {tuple(p) for p in sampling.nearest_pixel(positive).astype(np.int64).reshape(-1, 2)}
    for index, click in enumerate(sampling.nearest_pixel(negative).astype(np.int64)
                                  .reshape(-1, 2)):
        if tuple(click) in taken:
            raise ValueError(f"{negative_name} item {index + 1} ({click[0]},{click[1]}) is on "
                             f"the pixel of a {positive_name} click: a pixel is on the object "
                             "or not; move one of them.")


def _clicks(value, name):
    """[N, 2] float32 (x, y) clicks from an [N, 2] array, one (x, y) pair or nothing."""
    array = np.asarray(value)
    if array.size and (array.dtype == bool or not np.issubdtype(array.dtype, np.number)
                       or not (array.ndim == 2 and array.shape[1] == 2 or array.shape == (2,))):
        raise ValueError(f"{name} must be [N, 2] (x, y) clicks; got {array.dtype} "
                         f"{array.shape}.")
    return array.astype(np.float32).reshape(-1, 2)


def check_zoom_size(zoom_size, name="zoom_size"):
    """The side the zoom square is resized to: a whole number of pixels in [MIN_ZOOM_SIZE,
    MAX_ZOOM_SIZE]."""
    if not sampling.is_int(zoom_size) or not MIN_ZOOM_SIZE <= zoom_size <= MAX_ZOOM_SIZE:
        raise ValueError(f"{name}={zoom_size!r} must be a whole number of pixels in "
                         f"[{MIN_ZOOM_SIZE}, {MAX_ZOOM_SIZE}].")
    return int(zoom_size)


def direction_guidance(positive, negative, velocity):
    """Four guidance sets [(points, vectors), ...]: the positive clicks move right, left, down,
    up by `velocity`, the negative ones stay still in all four."""
    points = np.concatenate([positive, negative]).astype(np.float32)
    sets = []
    for direction in _DIRECTIONS:
        vectors = np.zeros_like(points)
        vectors[:len(positive)] = direction * velocity
        sets.append((points, vectors))
    return sets


def zoom_box(points, height, width, zoom_factor=ZOOM_FACTOR):
    """(x0, y0, side) of the square the network looks at, or None for the whole image.

    As the demo: centred on the clicks' bounding box, side = zoom_factor x its longer extent
    (at most the image's shorter side, even), shifted to lie inside the image. None with fewer
    than two distinct clicks, a square under SMALLEST_ZOOM_SQUARE (clicks a few px apart: one
    point of the object, not its extent), a square that cannot hold every click (clicks spread
    wider than the image's shorter side: the network would not see them) or zoom_factor -1.
    """
    if zoom_factor == -1 or len(points) < 2:
        return None
    low, high = points.min(0), points.max(0)
    extent = float((high - low).max())
    side = int(min(extent * zoom_factor, min(height, width))) // 2 * 2
    if side < SMALLEST_ZOOM_SQUARE:  # clicks a few px apart mark one point, not the object's extent
        return None
    centre = (low + high) / 2
    x0 = int(np.clip(np.rint(centre[0] - side / 2), 0, width - side))
    y0 = int(np.clip(np.rint(centre[1] - side / 2), 0, height - side))
    inside = (low >= np.array([x0, y0]) - 0.5) & (high < np.array([x0, y0]) + side - 0.5)
    return (x0, y0, side) if inside.all() else None


def motion_score(propagator, image, positive, negative, velocity=VELOCITY,
                 zoom_factor=ZOOM_FACTOR, zoom_size=ZOOM_SIZE):
    """How much each pixel moves with the positive clicks: H x W float32 in [0, 1].

    The mean |flow| over the four pushes and both channels, over its maximum
    (docs/reference.md §6); outside the zoom square it is 0. Without a zoom square the network
    sees the whole image resized to a longer side of `zoom_size`, as it sees a zoom square:
    the same clicks on the same picture give the same score at any resolution, and
    `velocity` is in the pixels of that view either way. (A fixed-size model file pads a
    non-square view to its square, so its score differs there.)
    """
    positive, negative = check_clicks(image, positive, negative)
    inputs.positive(velocity, "velocity")
    check_zoom_size(zoom_size)
    if zoom_factor != -1:
        inputs.positive(zoom_factor, "zoom_factor")
    height, width = image.shape[:2]
    box = zoom_box(np.concatenate([positive, negative]), height, width, zoom_factor)
    if box is None:
        x0, y0, crop = 0, 0, image
        longer = max(height, width)
        view_size = (max(1, round(width * zoom_size / longer)),
                     max(1, round(height * zoom_size / longer)))
    else:
        x0, y0, side = box
        crop, view_size = image[y0:y0 + side, x0:x0 + side], (zoom_size, zoom_size)
    view = _resized(crop, view_size)
    scale = np.array(view_size, np.float32) / crop.shape[1::-1]
    limit = np.array(view.shape[1::-1], np.float32) - 1

    def to_view(points):
        return np.clip((points - [x0, y0] + 0.5) * scale - 0.5, 0, limit)

    flows = propagator.propagate_batch(
        view, direction_guidance(to_view(positive), to_view(negative), velocity))
    score = np.abs(flows).mean(axis=(0, 3))
    score = score / score.max() if score.max() > 0 else score
    score = cv2.resize(score.astype(np.float32), crop.shape[1::-1],
                       interpolation=cv2.INTER_LINEAR)  # as the demo, shrinking too
    if box is None:
        return score
    full = np.zeros((height, width), np.float32)
    full[y0:y0 + side, x0:x0 + side] = score
    return full


def _resized(image, size):
    """The network's view of `image` at `size` (width, height): the demo's bicubic, area means
    when shrinking (bicubic would alias a large photo)."""
    if tuple(size) == image.shape[1::-1]:
        return image
    shrinking = size[0] < image.shape[1] and size[1] < image.shape[0]
    return cv2.resize(image, tuple(int(v) for v in size),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def _disc_radius(image, fraction):
    return max(1, int(round(fraction * min(image.shape[:2]))))


def grabcut(image, probable, positive=(), negative=(), iterations=GRABCUT_ITERATIONS):
    """grabCut seeded by a mask: probable foreground where `probable`, probable background
    elsewhere, sure foreground / background discs at the positive / negative clicks.
    Returns the mask unchanged when one side has no pixel (grabCut has nothing to learn)."""
    seeds = np.where(probable, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    radius = _disc_radius(image, CLICK_RADIUS)
    for points, label in ((negative, cv2.GC_BGD), (positive, cv2.GC_FGD)):
        for x, y in sampling.nearest_pixel(points).reshape(-1, 2).astype(int):
            cv2.circle(seeds, (int(x), int(y)), radius, int(label), -1)
    foreground = np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if foreground.all() or not foreground.any():
        return foreground
    return run_grabcut(image, seeds, iterations=iterations)


def run_grabcut(image, seeds, box=None, iterations=GRABCUT_ITERATIONS):
    """cv2.grabCut on an RGB image from its `seeds` labels (updated in place), or from a box
    (x, y, width, height) when given, its k-means seeded by GRABCUT_SEED so that the same
    input gives the same mask; returns the foreground mask."""
    models = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(GRABCUT_SEED)
    cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), seeds, box, *models, int(iterations),
                cv2.GC_INIT_WITH_MASK if box is None else cv2.GC_INIT_WITH_RECT)
    return np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD))


def check_refinement(threshold, method, threshold_name="threshold"):
    """Refuses a threshold outside (0, 1) or an unknown refinement, naming it
    (`threshold_name`: the command's flag, where a command checks)."""
    if method not in REFINEMENTS:
        raise ValueError(f"refine must be one of {', '.join(REFINEMENTS)}; got {method!r}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or \
            not 0 < threshold < 1:
        raise ValueError(f"{threshold_name}={threshold!r} must lie in (0, 1) (a fraction of the "
                         "largest motion).")


def overlay(image, mask, weight=OVERLAY_WEIGHT, colour=OVERLAY_COLOUR):
    """The image with the mask tinted: what a person checks a mask on."""
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim != 3 or image.shape[-1] != 3 or mask.dtype != bool or \
            mask.shape != image.shape[:2]:  # a float mask indexed rows; another shape, NumPy
        raise ValueError(f"overlay takes an [H, W, 3] image and a bool [H, W] mask of its size; "
                         f"got {image.shape} and {mask.dtype} {mask.shape}.")
    shown = image.astype(np.float32)
    shown[mask] = (1 - weight) * shown[mask] + weight * np.array(colour, np.float32)
    return np.rint(shown).astype(np.uint8)


def overlay_path(out):
    """`<out stem>_overlay.png` beside the mask."""
    return os.path.splitext(out)[0] + "_overlay.png"


def with_clicks(image, positive, negative):
    """The image with each click drawn on the pixel it falls on: what the mask came from."""
    image = np.ascontiguousarray(image).copy()
    radius = max(CLICK_DOT_PX, round(max(image.shape[:2]) / 200))  # seen on a large photo
    for clicks, colour in zip((positive, negative), CLICK_COLOURS):
        for x, y in sampling.nearest_pixel(np.reshape(clicks, (-1, 2))).astype(int):
            cv2.circle(image, (int(x), int(y)), radius + 1, (0, 0, 0), -1)
            cv2.circle(image, (int(x), int(y)), radius, colour, -1)
    return image


def refine(image, score, positive, negative, threshold=THRESHOLD, method=REFINE):
    """The mask from the score: thresholded as it is ('none'), grabCut seeded by it
    ('grabcut'), or the score guided-filtered by the image, then thresholded ('guided')."""
    check_refinement(threshold, method)
    score = np.asarray(score)
    if score.shape != np.shape(image)[:2]:
        raise ValueError(f"score must be [H, W], the image's {np.shape(image)[:2]}; got "
                         f"{score.shape}.")
    if method == "guided":
        score = cv2.ximgproc.guidedFilter(image, score.astype(np.float32),
                                          _disc_radius(image, GUIDED_RADIUS), GUIDED_EPS)
    mask = score > threshold
    if method == "grabcut":
        mask = grabcut(image, mask, positive, negative)
    return mask


def annotate(propagator, image, positive, negative=(), velocity=VELOCITY, threshold=THRESHOLD,
             zoom_factor=ZOOM_FACTOR, zoom_size=ZOOM_SIZE, refine_method=REFINE):
    """The object under the positive clicks, as an H x W bool mask.

    Args:
        propagator: anything with the runtime.Propagator's propagate_batch.
        image: uint8 H x W x 3 RGB.
        positive: [P, 2] (x, y) clicks on the object, P >= 1.
        negative: [N, 2] (x, y) clicks off it (still points), N >= 0.
        velocity, threshold, zoom_factor, zoom_size: as the module constants say.
        refine_method: one of REFINEMENTS.
    """
    check_refinement(threshold, refine_method)
    score = motion_score(propagator, image, positive, negative, velocity, zoom_factor,
                         zoom_size)
    return refine(image, score, positive, negative, threshold, refine_method)


# --- command line (flags are defined only when run as a program: the page imports this) -----

MAX_SIDE = 512


def define_flags():
    flags.DEFINE_string("model", None, "A run directory, .keras, .tflite, .onnx or SavedModel "
                        "folder; default the model that ships with cmp_tf.")
    flags.DEFINE_string("image", None, "The image (PNG, JPEG, ...).")
    flags.DEFINE_string("positive", None, "'x,y;...': clicks on the object (at least one).")
    flags.DEFINE_string("negative", "", "'x,y;...': clicks off the object (still points).")
    flags.DEFINE_string("out", "mask.png", "The mask, a PNG: 255 object, 0 elsewhere.")
    flags.DEFINE_float("velocity", VELOCITY, "px a positive click is pushed in each of the four "
                       "directions (in the zoomed view).")
    flags.DEFINE_float("threshold", THRESHOLD, "The mask is where the motion exceeds this "
                       "fraction of its maximum.")
    flags.DEFINE_float("zoom_factor", ZOOM_FACTOR, "Side of the square the network looks at, "
                       "over the clicks' extent (two clicks or more); -1: the whole image.")
    flags.DEFINE_integer("zoom_size", ZOOM_SIZE, "The zoom square is resized to this side.")
    flags.DEFINE_enum("refine", REFINE, REFINEMENTS, "Edge refinement of the motion mask.")
    flags.DEFINE_integer("max_side", MAX_SIDE, "The network sees the image shrunk to this longer "
                         "side at most (the flow is scaled back); -1: full size.")
    flags.DEFINE_integer("max_pixels", MAX_PIXELS, "Largest image annotated, width x height: the "
                         "mask is refined at the image's size, so a larger one is refused (its "
                         "size is read from the file's header, before decoding).")


def run(model, image, positive, negative="", out="mask.png", velocity=VELOCITY,
        threshold=THRESHOLD, zoom_factor=ZOOM_FACTOR, zoom_size=ZOOM_SIZE, refine_method=REFINE,
        max_side=MAX_SIDE, max_pixels=MAX_PIXELS):
    """The command's work, every input checked before the model loads and the image's size
    before it is decoded; writes the mask and, beside it, `overlay_path(out)` (the image with
    the mask tinted and the clicks); returns the mask path and the share of the image it
    covers."""
    positive = inputs.parse_rows(positive, inputs.CLICK_FIELDS, "--positive")
    negative = inputs.parse_rows(negative, inputs.CLICK_FIELDS, "--negative", allow_empty=True)
    if not sampling.is_int(max_pixels) or max_pixels < 1:
        raise ValueError(f"--max_pixels={max_pixels!r} must be a positive integer.")
    if os.path.splitext(out)[1].lower() != ".png":
        raise ValueError(f"--out={out} must be a .png file.")
    for path in (out, overlay_path(out)):
        rundir.check_file_path(path, "--out")
        inputs.check_not_input(path, image)
    image = inputs.read_image(image, "--image", max_pixels=max_pixels, limit_name="--max_pixels")
    inputs.check_inside(positive, *image.shape[:2], name="--positive")
    inputs.check_inside(negative, *image.shape[:2], name="--negative")
    check_apart(positive, negative, "--positive", "--negative")
    inputs.positive(velocity, "--velocity", largest=sampling.MAX_VECTOR_PX)
    check_refinement(threshold, refine_method, threshold_name="--threshold")
    if zoom_factor != -1:
        inputs.positive(zoom_factor, "--zoom_factor")
    check_zoom_size(zoom_size, "--zoom_size")
    propagator = inputs.load_propagator(model, "--model", max_side=max_side)
    mask = annotate(propagator, image, positive, negative, velocity, threshold, zoom_factor,
                    zoom_size, refine_method)
    inputs.write_image(out, mask.astype(np.uint8) * 255)
    inputs.write_image(overlay_path(out), with_clicks(overlay(image, mask), positive, negative))
    return out, float(mask.mean())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    f = flags.FLAGS
    out, share = run(f.model, f.image, f.positive, f.negative, f.out, f.velocity, f.threshold,
                     f.zoom_factor, f.zoom_size, f.refine, f.max_side, f.max_pixels)
    print(f"Wrote {out} (the mask covers {share:.1%} of the image) and {overlay_path(out)} "
          "(the image with the mask and the clicks)")
    if share == 0:
        print(f"Warning: the mask is empty: lower --threshold (now {f.threshold}).",
              file=sys.stderr)
    elif share == 1:
        print(f"Warning: the mask is the whole image: raise --threshold (now {f.threshold}) or "
              "click off the object too (--negative).", file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
