"""Guidance: sparse motion vectors placed on the image as the model's `sparse` input.

At evaluation and in the apps they are given; in training they are drawn from the target flow
(`sample_guidance`), on every sample, so that sampler is written for speed.
"""
import math

import cv2
import numpy as np

from cmp_tf.flow import check_flow


# Largest guide vector component `check_guidance` takes, px: far beyond any image, and small
# enough that the fills' moments (squares and products of vectors) stay finite in float32.
MAX_VECTOR_PX = 1e6
# Widest watershed NMS window, px: wider than the frames ingestion keeps (max_side 640); its
# dilation kernel grows with the square of the side (10^6 px asked for a terabyte).
MAX_NMS_KS = 1001


def is_int(value):
    """An int (NumPy's too), not a bool: what a count or a size in pixels takes."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def sparse_from_points(points, vectors, height, width):
    """Guidance points -> [H, W, 3] sparse input (u, v, mask).

    Args:
        points: [K, 2] (x, y) pixel coordinates, rounded to the nearest pixel; points on one
            pixel give it their mean vector.
        vectors: [K, 2] (u, v) motion in pixels at those points.
        height, width: the image's size, whole numbers >= 1.
    Raises:
        ValueError: on shapes other than [K, 2], K = 0, values that are not finite numbers
            (as float32), points off the image or a bad size.
    """
    for name, side in (("height", height), ("width", width)):
        if not is_int(side) or side < 1:
            raise ValueError(f"{name} must be a whole number of pixels >= 1; got {side!r}.")
    points, vectors = _check_pairs(points, "points"), _check_pairs(vectors, "vectors")
    if vectors.shape != points.shape:
        raise ValueError(f"points and vectors must both be [K, 2]; got {points.shape} and "
                         f"{vectors.shape}.")
    xy = nearest_pixel(points).astype(np.int64)
    off = (xy[:, 0] < 0) | (xy[:, 0] >= width) | (xy[:, 1] < 0) | (xy[:, 1] >= height)
    if off.any():
        raise ValueError(f"points must lie on the {width}x{height} image; "
                         f"{points[off][:3].tolist()} do not.")
    # Guides that round to one pixel (close arrows once an image is shrunk) give it their mean
    # motion, whatever their order, rather than the last one's.
    pixel = xy[:, 1] * width + xy[:, 0]
    count = np.bincount(pixel, minlength=height * width)
    sparse = np.zeros((height, width, 3), np.float32)
    for channel in range(2):
        total = np.bincount(pixel, weights=vectors[:, channel], minlength=height * width)
        sparse[..., channel] = (total / np.maximum(count, 1)).reshape(height, width)
    sparse[..., 2] = (count > 0).reshape(height, width)
    return sparse


def nearest_pixel(xy):
    """The pixel a point (x, y) falls on: halves round up, as the browser page's Math.round, so
    a point on the border of two pixels takes the later one whatever the image's width (NumPy's
    round takes the even one: x = W - 0.5 was refused at an even width W, kept at an odd one)."""
    return np.floor(np.asarray(xy, np.float64) + 0.5)


def _check_pairs(value, name, largest=None):
    """One [K, 2] float32 guidance array (`points` or `vectors`), K >= 1, finite, each value at
    most `largest` in magnitude when given."""
    try:
        array = np.asarray(value)
    except ValueError as error:  # rows of different lengths: NumPy's words name no argument
        raise ValueError(f"{name} must be a [K, 2] array: every row (x, y) or (u, v); got rows "
                         f"of different lengths ({error}).") from None
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer)
                                   or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must be a real-valued [K, 2] array; got dtype {array.dtype}.")
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must have shape [K, 2]; got shape {array.shape}.")
    if not len(array):
        raise ValueError(f"{name} is empty (K = 0): at least one guidance point is needed.")
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, reported just below
        array = array.astype(np.float32)
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(f"{name} must be finite; got {bad} NaN or infinite values "
                         "(as float32).")
    if largest is not None and float(np.abs(array).max()) > largest:
        raise ValueError(f"{name} must be at most {largest:g} px in u and v; got "
                         f"{float(np.abs(array).max()):.7g}.")
    return array


def check_guidance(image, points, vectors):
    """Validates user guidance once, where it enters, so every propagator can trust it.

    Args:
        image: [H, W, 3] uint8 RGB.
        points: [K, 2] (x, y) pixel coordinates, K >= 1; rounded to the nearest pixel, which
            must lie on the image.
        vectors: [K, 2] (u, v) motion in pixels at those points, each at most MAX_VECTOR_PX.
    Returns:
        (image, points, vectors): contiguous uint8 [H, W, 3], float32 [K, 2], float32 [K, 2].
    Raises:
        ValueError: naming the argument, what was expected and what came.
    """
    image = check_image(image)
    return (image, *check_points(points, vectors, *image.shape[:2]))


def check_image(image):
    """`image` as a contiguous uint8 [H, W, 3] RGB array; ValueError for anything else."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape [H, W, 3] (RGB); got shape {image.shape}.")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0..255); got dtype {image.dtype}.")
    if not image.shape[0] or not image.shape[1]:
        raise ValueError(f"image must have at least one pixel; got shape {image.shape}.")
    return np.ascontiguousarray(image)


def check_points(points, vectors, height, width):
    """(points, vectors) float32 [K, 2] of one guidance set on an H x W image, checked as
    `check_guidance` says."""
    # vectors beyond MAX_VECTOR_PX: no image holds them, and the fills' moments overflow
    points = _check_pairs(points, "points")
    vectors = _check_pairs(vectors, "vectors", largest=MAX_VECTOR_PX)
    if len(points) != len(vectors):
        raise ValueError(f"points and vectors must hold the same number K of guides; got "
                         f"{len(points)} points and {len(vectors)} vectors.")
    xy = nearest_pixel(points)
    off = (xy[:, 0] < 0) | (xy[:, 0] > width - 1) | (xy[:, 1] < 0) | (xy[:, 1] > height - 1)
    if off.any():
        raise ValueError(f"points must round to pixels of the {width}x{height} image (x in "
                         f"[0, {width - 1}], y in [0, {height - 1}]); {int(off.sum())} do not, "
                         f"e.g. {points[off][:3].tolist()}.")
    return points, vectors


def uniform_points(height, width, count, rng):
    """`count` distinct pixels drawn uniformly, as [K, 2] (x, y); at most every pixel."""
    for name, value, least in (("height", height, 1), ("width", width, 1), ("count", count, 0)):
        if not is_int(value) or value < least:
            raise ValueError(f"{name} must be a whole number >= {least}; got {value!r}.")
    flat = rng.choice(height * width, size=min(count, height * width), replace=False)
    return np.stack([flat % width, flat // width], -1).astype(np.float32)


# --- Training guidance: the reference's flow_sampler (docs/design.md §3, docs/reference.md §5)

# Strategies in the order their points are drawn and pooled, whatever order a config lists them.
STRATEGIES = ("grid", "uniform", "watershed", "single", "full")
# A motion edge is a pixel whose Sobel magnitude exceeds this fraction of the largest one ...
_EDGE_FRACTION = 0.1
# ... where the largest one counts as at least this, so faint noise alone makes no edges.
_EDGE_FLOOR = 0.01
# The reference runs the watershed on flow subsampled by max(1, max(H, W) // this).
_WATERSHED_SIDE = 400


def check_guidance_args(strategies=("grid", "watershed"), bg_ratio=5.74e-5, nms_ks=41,
                        max_num_guide=-1, num_points=(0, 0)):
    """Validates the `config.guidance` fields once; returns the strategies as a tuple."""
    if (not isinstance(strategies, (list, tuple)) or not strategies
            or any(s not in STRATEGIES for s in strategies)):
        raise ValueError(f"strategies must be a non-empty sequence of names from {STRATEGIES}; "
                         f"got {strategies!r}.")
    if isinstance(bg_ratio, bool) or not isinstance(bg_ratio, (int, float, np.floating)) \
            or not 0 < bg_ratio <= 1 or not math.isfinite(1 / bg_ratio):  # the grid's stride
        raise ValueError(f"bg_ratio must be a fraction of pixels in (0, 1] whose inverse is "
                         f"finite; got {bg_ratio!r}.")
    if not is_int(nms_ks) or not 3 <= nms_ks <= MAX_NMS_KS or nms_ks % 2 == 0:
        raise ValueError(f"nms_ks must be an odd integer in [3, {MAX_NMS_KS}] (the NMS window "
                         f"side in pixels); got {nms_ks!r}.")
    if not is_int(max_num_guide) or max_num_guide < -1:
        raise ValueError(f"max_num_guide must be -1 (no cap) or a count >= 0; "
                         f"got {max_num_guide!r}.")
    if (not isinstance(num_points, (list, tuple)) or len(num_points) != 2
            or not all(is_int(n) for n in num_points)
            or tuple(num_points) != (0, 0) and not 1 <= num_points[0] <= num_points[1]):
        raise ValueError(f"num_points must be (0, 0) (the points as pooled) or (min, max) with "
                         f"1 <= min <= max; got {num_points!r}.")
    if max_num_guide == 0 and tuple(num_points) == (0, 0):
        raise ValueError("max_num_guide=0 keeps none of the pooled points and num_points=(0, 0) "
                         "draws none: every sample would have no guidance. Give num_points "
                         "(min, max) to draw K uniformly, or a cap >= 1.")
    return tuple(strategies)


def grid_points(height, width, bg_ratio):
    """A centred grid of stride int(sqrt(1 / bg_ratio)): zero-motion background guidance too.

    Returns:
        (rows, cols) int64 arrays, row-major.
    """
    check_guidance_args(bg_ratio=bg_ratio)
    stride = int(np.sqrt(1.0 / bg_ratio))
    rows = np.arange((height - height // stride * stride) // 2, height, stride)
    cols = np.arange((width - width // stride * stride) // 2, width, stride)
    rows, cols = np.meshgrid(rows, cols, indexing="ij")
    return rows.ravel(), cols.ravel()


def motion_edges(flow):
    """[H, W] bool: where the flow changes sharply (object borders in motion).

    Sobel magnitude per channel (reflected border), summed over u and v, over its maximum
    (at least 0.01); edges are > 0.1 of it — the reference's watershed edge map.
    """
    flow = np.ascontiguousarray(check_flow(flow), np.float32)
    if flow.ndim != 3:  # a 2-D array passed as flow gave an edge map of half its width
        raise ValueError(f"flow must have shape [H, W, 2] (u, v); got shape {flow.shape}.")
    height = flow.shape[0]
    # OpenCV correlates where scipy's convolve2d flips the kernel: the same magnitude.
    gx = cv2.Sobel(flow, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(flow, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    magnitude = cv2.magnitude(gx.reshape(height, -1), gy.reshape(height, -1))
    edge = magnitude[:, 0::2] + magnitude[:, 1::2]  # [H, W]: summed over u and v
    edge /= max(float(edge.max()), _EDGE_FLOOR)
    return edge > _EDGE_FRACTION


def distance_to_motion_edges(flow):
    """[H, W] float32 distance in px from each pixel to the nearest motion edge; max(H, W)
    everywhere when the flow has no edge (all of it is far from any boundary)."""
    inside = ~motion_edges(flow)
    if inside.all():
        return np.full(inside.shape, float(max(inside.shape)), np.float32)
    return cv2.distanceTransform(inside.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def watershed_candidates(flow, nms_ks):
    """Pixels farthest from every motion edge within their nms_ks window: region middles.

    The distance to the nearest `motion_edges` pixel is kept where it equals its window's
    maximum (plateaus keep every tie), off the 1-pixel border.

    Args:
        flow: [H, W, 2] float32 flow, at the resolution the points are wanted at.
    Returns:
        (rows, cols) int64 arrays in raster order; empty when the flow has no edge.
    """
    inside = ~motion_edges(flow)
    if inside.all():
        # No edge: the reference's distance map is a ramp peaking on the border, so no point.
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dist = cv2.distanceTransform(inside.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # OpenCV's exact transform leaves equal distances a few float32 ulps apart, which would
    # split plateaus; squared distances are whole numbers, so rounding them restores the ties
    # (errors stay below 0.2 up to the 800 px that `watershed_points` passes). Squaring keeps
    # the order, so the window maxima are the same pixels.
    dist = np.rint(dist * dist)
    # Reflecting the border never brings a larger value into a max window, so this equals
    # scipy's maximum_filter(mode='reflect').
    window = cv2.getStructuringElement(cv2.MORPH_RECT, (nms_ks, nms_ks))
    peak = (dist == cv2.dilate(dist, window, borderType=cv2.BORDER_REFLECT)) & (dist > 0)
    peak[0, :] = peak[-1, :] = peak[:, 0] = peak[:, -1] = False
    rows, cols = np.nonzero(peak)
    return rows.astype(np.int64), cols.astype(np.int64)


def close_pairs(rows, cols, distance):
    """Ordered pairs (i, j), i != j, with |drow| < distance and |dcol| < distance, row-major.

    `rows` must be sorted (raster order), so each point's partners by row are one slice.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    lo = np.searchsorted(rows, rows - distance, side="right")
    hi = np.searchsorted(rows, rows + distance, side="left")
    counts = hi - lo
    first = np.repeat(np.arange(len(rows)), counts)
    second = lo[first] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = (first != second) & (np.abs(cols[first] - cols[second]) < distance)
    return first[keep], second[keep]


def eliminate_neighbors(rows, cols, distance, rng):
    """Of every two points closer than `distance` in both axes, drops one at random.

    Points come in raster order (as `watershed_candidates` gives them). Pairs (i, j) are
    visited row-major, as the reference does; one uniform draw u is taken
    for every close ordered pair up front, in that order, and when both points are still
    kept, u > 0.5 drops i, otherwise j. A pair whose point is gone spends its draw unused,
    so the stream does not depend on how the loop is written.

    Returns:
        [N] bool, True for the points kept.
    """
    first, second = close_pairs(rows, cols, distance)
    drop_first = rng.random(len(first)) > 0.5
    keep = np.ones(len(rows), bool)
    if not len(first):
        return keep
    # Within point i's pairs no partner repeats, so walking them in order is: partners kept
    # so far are dropped until the first kept one whose draw drops i instead, then i is gone.
    bounds = np.flatnonzero(np.diff(first)) + 1
    for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(first)]):
        i = first[start]
        if not keep[i]:
            continue
        partners = second[start:end]
        live = keep[partners]
        hits = np.flatnonzero(live & drop_first[start:end])
        stop = hits[0] if hits.size else len(partners)
        keep[partners[:stop][live[:stop]]] = False
        if hits.size:
            keep[i] = False
    return keep


def watershed_points(flow, nms_ks, rng):
    """Watershed guidance: one point per coherently moving region, as the reference samples it.

    Large flows are subsampled by max(1, max(H, W) // 400) first (1 for crops up to 799 px);
    points come back at full resolution.

    Returns:
        (rows, cols) int64 arrays.
    """
    ds = max(1, max(flow.shape[:2]) // _WATERSHED_SIDE)
    rows, cols = watershed_candidates(flow[::ds, ::ds], nms_ks)
    keep = eliminate_neighbors(rows, cols, (nms_ks - 1) / 2, rng)
    return rows[keep] * ds, cols[keep] * ds


def sample_guidance(flow, strategies=("grid", "watershed"), bg_ratio=5.74e-5, nms_ks=41,
                    max_num_guide=-1, num_points=(0, 0), seed=0):
    """Draws the training guidance from a target flow, as the reference's flow_sampler.

    Strategies (pooled in the order of STRATEGIES, whatever order they are listed in):
    `grid` a centred grid of stride int(sqrt(1 / bg_ratio)), moving or not; `uniform`
    int(bg_ratio * H * W) pixels drawn with replacement; `watershed` the middles of coherently
    moving regions (`watershed_points`); `single` one pixel drawn among those with non-zero
    flow (none if nothing moves; the reference crashes there); `full` every pixel, returned
    at once whatever else is listed. The pooled points are shuffled and the first
    max_num_guide kept (-1: all). `num_points` = (min, max) then draws a count K
    log-uniformly in [min, max] (beyond the reference: one model for every K from a click to
    hundreds of points) and keeps the first K, topping up with uniformly drawn pixels. The
    random stream is numpy.random.default_rng(seed), spent
    in that order: uniform rows then columns, watershed pair draws, the single pick, the shuffle.

    Args:
        flow: [H, W, 2] float flow (u, v) in pixels.
        bg_ratio: fraction of pixels for `grid` and `uniform`.
        nms_ks: odd side of the watershed NMS window; points closer than (nms_ks - 1) / 2 in
            both axes are thinned out.
        seed: int >= 0; the same seed gives the same guidance.
    Returns:
        [H, W, 3] float32 (u, v, mask): the flow and 1 at guided pixels, 0 elsewhere.
    Raises:
        ValueError: on a flow not [H, W, 2] float and finite, or on bad arguments.
    """
    strategies = check_guidance_args(strategies, bg_ratio, nms_ks, max_num_guide, num_points)
    flow = check_flow(flow)
    if flow.ndim != 3:
        raise ValueError(f"flow must have shape [H, W, 2] (u, v); got shape {flow.shape}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}.")
    height, width = flow.shape[:2]
    if "full" in strategies:
        return np.concatenate([flow, np.ones((height, width, 1), np.float32)], -1)
    rng = np.random.default_rng(seed)
    points = []  # (rows, cols) per strategy
    if "grid" in strategies:
        points.append(grid_points(height, width, bg_ratio))
    if "uniform" in strategies:
        count = int(bg_ratio * height * width)
        points.append((rng.integers(0, height, count), rng.integers(0, width, count)))
    if "watershed" in strategies:
        points.append(watershed_points(flow, nms_ks, rng))
    if "single" in strategies:
        moving = np.flatnonzero((flow[..., 0] != 0) | (flow[..., 1] != 0))
        if moving.size:
            pick = moving[rng.integers(moving.size)]
            points.append((np.array([pick // width]), np.array([pick % width])))
    rows = np.concatenate([p[0] for p in points] + [np.zeros(0, np.int64)]).astype(np.int64)
    cols = np.concatenate([p[1] for p in points] + [np.zeros(0, np.int64)]).astype(np.int64)
    order = rng.permutation(len(rows))
    if max_num_guide != -1:
        order = order[:max_num_guide]
    rows, cols = rows[order], cols[order]
    if tuple(num_points) != (0, 0):
        low, high = num_points
        count = min(high, int(np.exp(rng.uniform(np.log(low), np.log(high + 1)))),
                    height * width)  # more would only overwrite: a pixel holds one guide
        extra = max(0, count - len(rows))
        rows = np.concatenate([rows[:count], rng.integers(0, height, extra)])
        cols = np.concatenate([cols[:count], rng.integers(0, width, extra)])
    sparse = np.zeros((height, width, 3), np.float32)
    sparse[rows, cols, :2] = flow[rows, cols]  # duplicates just overwrite
    sparse[rows, cols, 2] = 1.0
    return sparse


def sample_guidance_tf(flow, seed, **kwargs):
    """`sample_guidance` as a tf.data op: NumPy/OpenCV inside tf.numpy_function, seeded per sample.

    Args:
        flow: [H, W, 2] float32 tensor.
        seed: int64 scalar tensor, taken modulo 2**64 (seeds >= 0 match `sample_guidance`).
        **kwargs: strategies, bg_ratio, nms_ks, max_num_guide, num_points, checked now, at
            trace time.
    Returns:
        [H, W, 3] float32 tensor (u, v, mask) with the static shape of `flow` where known.
    """
    import tensorflow as tf  # here only: the NumPy sampling serves a runtime without it

    check_guidance_args(**kwargs)
    flow = tf.convert_to_tensor(flow, tf.float32)
    seed = tf.convert_to_tensor(seed, tf.int64)
    if flow.shape.rank is not None and (flow.shape.rank != 3 or flow.shape[-1] not in (None, 2)):
        raise ValueError(f"flow must have shape [H, W, 2] (u, v); got shape {flow.shape}.")
    if seed.shape.rank not in (None, 0):
        raise ValueError(f"seed must be a scalar; got shape {seed.shape}.")

    def sample(flow, seed):
        return sample_guidance(flow, seed=int(seed) % 2**64, **kwargs)

    sparse = tf.numpy_function(sample, [flow, seed], tf.float32, stateful=False,
                               name="sample_guidance")
    sparse.set_shape(flow.shape[:-1].concatenate([3]) if flow.shape.rank else [None, None, 3])
    return sparse
