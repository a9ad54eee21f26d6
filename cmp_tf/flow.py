"""Optical flow maths: bins and readout, errors, colour coding and warping.

Flow is NHWC / HWC with channels (u, v) = (dx, dy) in pixels at the resolution it is stored at.
Flow files (.flo, 8-bit image pairs, 16-bit PNG) are read and written in `cmp_tf.data.formats`.
TensorFlow and Keras are imported by the functions that run on tensors only, so the NumPy ones
serve a runtime without them (`cmp_tf.runtime` on a .tflite or .onnx file).
"""
import numpy as np

# The reference clamps targets just inside [-fmax, fmax] so fmax lands in the last bin.
_CLIP_MARGIN = 1e-3
# Middlebury colour wheel: hue segments red-yellow, yellow-green, green-cyan, cyan-blue,
# blue-magenta, magenta-red, with the number of colours in each (Baker et al., IJCV 2011).
_WHEEL_SEGMENTS = (15, 6, 4, 11, 13, 6)


def check_bins(nbins, fmax):
    """Validates the quantization; an even `nbins` would put zero motion on a bin edge."""
    if isinstance(nbins, bool) or not isinstance(nbins, (int, np.integer)) or nbins < 3:
        raise ValueError(f"config.flow.nbins must be an odd integer >= 3; got {nbins!r}.")
    if nbins % 2 == 0:
        raise ValueError(
            f"config.flow.nbins must be odd so zero motion is a bin centre; got {nbins}.")
    if isinstance(fmax, bool) or not isinstance(fmax, (int, float, np.number)) or \
            not np.isfinite(fmax) or fmax <= 0:
        raise ValueError(f"config.flow.fmax must be a positive number of pixels; got {fmax!r}.")


def bin_step(nbins, fmax):
    """Width of one flow bin in pixels (2 * fmax / nbins)."""
    check_bins(nbins, fmax)
    return 2.0 * fmax / nbins


def bin_centers(nbins, fmax):
    """Centres of the flow bins in pixels: -fmax + step * (k + 1/2), k = 0 .. nbins - 1."""
    step = bin_step(nbins, fmax)
    return (-fmax + step * (np.arange(nbins) + 0.5)).astype(np.float32)


def quantize(flow, nbins, fmax):
    """Bin index per flow component (int32, same shape), as the reference's DiscreteLoss."""
    import tensorflow as tf

    step = bin_step(nbins, fmax)
    flow = tf.cast(flow, tf.float32)
    clipped = tf.clip_by_value(flow, -fmax + _CLIP_MARGIN, fmax - _CLIP_MARGIN)
    # From fmax ~8192 px the margin is below float32's spacing and fmax would land in bin
    # nbins, one past the last. (Not clamped below: a NaN stays an invalid label, not bin 0.)
    return tf.minimum(tf.cast(tf.floor((clipped + fmax) / step), tf.int32), nbins - 1)


def expected_flow(logits, nbins, fmax):
    """Softmax expectation over bin centres: [..., 2 * nbins] logits -> [..., 2] flow (u, v).

    Not argmax: the expectation is continuous, so it is sub-bin accurate and differentiable.
    """
    import tensorflow as tf

    if logits.shape[-1] is not None and logits.shape[-1] != 2 * nbins:
        raise ValueError(
            f"logits must end in 2 * nbins = {2 * nbins} channels (x bins, then y bins); "
            f"got shape {tuple(logits.shape)}.")
    centers = tf.constant(bin_centers(nbins, fmax))
    logits = tf.cast(logits, tf.float32)
    u = tf.reduce_sum(tf.nn.softmax(logits[..., :nbins]) * centers, axis=-1)
    v = tf.reduce_sum(tf.nn.softmax(logits[..., nbins:]) * centers, axis=-1)
    return tf.stack([u, v], axis=-1)


def check_flow(flow, name="flow"):
    """Validates a flow array: float, [..., H, W, 2] with at least one pixel, finite as float32.
    Returns it as a float32 numpy array."""
    flow = np.asarray(flow)
    if flow.ndim < 3 or flow.shape[-1] != 2:
        raise ValueError(f"{name} must have shape [..., H, W, 2] (u, v); got shape {flow.shape}.")
    if not np.issubdtype(flow.dtype, np.floating):
        raise ValueError(f"{name} must be a float array of pixels; got dtype {flow.dtype}.")
    if not flow.size:
        raise ValueError(f"{name} must have at least one pixel; got shape {flow.shape}.")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused below
        flow = flow.astype(np.float32, copy=False)
    bad = int(np.size(flow) - np.count_nonzero(np.isfinite(flow)))
    if bad:
        raise ValueError(f"{name} has {bad} NaN or infinite values (as float32).")
    return flow


def endpoint_error(pred, target, valid=None):
    """Mean end-point error (Euclidean distance of flow vectors, px) over valid pixels.

    Args:
        pred, target: [..., H, W, 2] flows at the same resolution.
        valid: optional [..., H, W] weights (1 = counted); None counts every pixel.
    Returns:
        A float. 0 when no pixel is valid.
    """
    pred, target = check_flow(pred, "pred"), check_flow(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} differs from target shape {target.shape}.")
    epe = np.linalg.norm(pred - target, axis=-1)
    if valid is None:
        return float(epe.mean())
    valid = np.asarray(valid, np.float32)
    if valid.shape != epe.shape:
        raise ValueError(f"valid must have shape {epe.shape}; got {valid.shape}.")
    if not np.isfinite(valid).all() or (valid < 0).any():
        raise ValueError("valid must be weights >= 0 (1 = counted); got NaN, infinite or "
                         "negative values.")
    total = float(valid.sum())
    return float((epe * valid).sum() / total) if total > 0 else 0.0


def _color_wheel():
    """[55, 3] float RGB colours in [0, 1] around the hue circle (Middlebury convention)."""
    # Each segment holds one channel at 1, ramps one up or down and keeps one at 0.
    # (channel held at 1, channel ramped, rising?) for red-yellow ... magenta-red.
    segments = ((0, 1, True), (1, 0, False), (1, 2, True), (2, 1, False), (2, 0, True),
                (0, 2, False))
    parts = []
    for n, (full, ramp, rising) in zip(_WHEEL_SEGMENTS, segments):
        t = np.arange(n) / n
        part = np.zeros((n, 3))
        part[:, full] = 1.0
        part[:, ramp] = t if rising else 1.0 - t
        parts.append(part)
    return np.concatenate(parts, 0)


def color_scale(flow, valid=None):
    """The motion `flow_to_color` shows fully saturated for `flow`: its longest vector (over
    `valid` pixels, where given), at least 1 px so that noise on a still scene stays near
    white. The length, not the largest component: a diagonal motion longer than that would be
    drawn as out of range."""
    lengths = np.hypot(*np.moveaxis(np.asarray(flow, np.float64), -1, 0))
    if valid is not None:
        lengths = lengths[np.asarray(valid) > 0]
    lengths = lengths[np.isfinite(lengths)]  # NaN would win Python's max: a NaN scale
    return max(float(lengths.max()) if lengths.size else 0.0, 1.0)


def flow_to_color(flow, max_flow=None):
    """Middlebury colour coding: hue = direction, saturation = magnitude / max_flow.

    Args:
        flow: [H, W, 2] flow in pixels.
        max_flow: magnitude shown fully saturated; None: `color_scale(flow)`.
    Returns:
        [H, W, 3] uint8 RGB.
    """
    flow = check_flow(flow)
    if flow.ndim != 3:
        raise ValueError(f"flow must have shape [H, W, 2]; got {flow.shape}.")
    u, v = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)  # no overflow
    rad = np.hypot(u, v)
    if max_flow is None:
        max_flow = color_scale(flow)
    elif isinstance(max_flow, bool) or not isinstance(max_flow, (int, float, np.number)) \
            or not (np.isfinite(max_flow) and max_flow > 0):
        raise ValueError(f"max_flow must be a positive number of pixels or None; got "
                         f"{max_flow!r}.")
    rad = rad / max_flow
    wheel = _color_wheel()
    n = len(wheel)
    pos = (np.arctan2(-v, -u) / np.pi + 1.0) / 2.0 * (n - 1)  # [0, n - 1] around the circle
    k0 = np.floor(pos).astype(np.int64)
    k1 = (k0 + 1) % n
    frac = (pos - k0)[..., None]
    color = (1 - frac) * wheel[k0] + frac * wheel[k1]
    inside = (rad <= 1)[..., None]
    color = np.where(inside, 1 - rad[..., None] * (1 - color), color * 0.75)  # dim out of range
    return np.round(color * 255).astype(np.uint8)


def warp_backward(image, flow):
    """Samples `image` at x + flow(x): frame t+1 warped back onto frame t by the t -> t+1 flow.

    Bilinear in NumPy, one frame and one neighbour at a time: a 1080p frame takes a fraction
    of a second and a few frames' worth of memory.

    Args:
        image: [H, W, C] or [B, H, W, C].
        flow: [H, W, 2] or [B, H, W, 2] (u, v) pixels, same H and W.
    Returns:
        (warped, inside): warped float32 like `image` (bilinear, 0 outside the frame) and a
        [..., H, W] float mask of the pixels whose source lies inside the frame.
    Raises:
        ValueError: shapes that differ, or NaN / infinite flow.
    """
    image = np.asarray(image, np.float32)
    flow = check_flow(np.asarray(flow, np.float32))  # NaN flow would give NaN pixels
    single = image.ndim == 3
    if single:
        image, flow = image[None], flow[None]
    if image.ndim != 4 or flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"image must be [B, H, W, C] and flow [B, H, W, 2]; got "
                         f"{tuple(image.shape)} and {tuple(flow.shape)}.")
    if tuple(image.shape[:3]) != tuple(flow.shape[:3]):
        raise ValueError(f"image {tuple(image.shape)} and flow {tuple(flow.shape)} differ in "
                         "batch or size.")
    height, width = image.shape[1:3]
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    warped = np.zeros(image.shape, np.float32)
    inside = np.zeros(image.shape[:3], np.float32)
    for frame, motion, out, seen in zip(image, flow, warped, inside):
        src_x, src_y = cols + motion[..., 0], rows + motion[..., 1]
        seen[...] = (src_x >= 0) & (src_x <= width - 1) & (src_y >= 0) & (src_y <= height - 1)
        left, top = np.floor(src_x), np.floor(src_y)
        right_w, down_w = src_x - left, src_y - top
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):  # each neighbour, 0 outside the frame
            x, y = left + dx, top + dy
            weight = (right_w if dx else 1 - right_w) * (down_w if dy else 1 - down_w)
            weight *= (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
            taken = frame[np.clip(y, 0, height - 1).astype(np.intp),
                          np.clip(x, 0, width - 1).astype(np.intp)]
            out += weight[..., None] * taken
    return (warped[0], inside[0]) if single else (warped, inside)
