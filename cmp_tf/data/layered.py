"""Layered scenes with exact flow, rendered on the fly: training data beyond the sample clips.

A scene is a background and a few textured layers stacked over it, each moving with its own
affine motion (translation, rotation and zoom about its centre); upper layers occlude lower
ones. The flow of every pixel is the motion of the top-most layer there, so it is exact, with
sharp motion boundaries where layers overlap: what a teacher flow blurs. Textures are cut from
a real frame (warped so no layer repeats the background) or procedural noise. So that edges
and motion boundaries do not always coincide, `shared_texture` gives some layers the texture
of the layer drawn before them (the background's for the first), shifted: one material on
both sides of a motion boundary, though not one colour (the colour step across motion
boundaries was about half the default scenes' in a check), and `inner_edges` splits some
layers into two textures (both off by default: the scenes are then those of earlier versions,
draw for draw).

    rng = np.random.default_rng(0)
    image, flow, valid = render_scene(rng, 128, 128, source=frame)   # float32, 0..255 / px

`make_dataset` mixes these with the video samples at `config.data.layered.ratio`, texturing
each from the real frame it replaces; `evaluation.pairs.generated_pairs` draws held-out
scenes from another seed stream with procedural textures only.
"""
import math

import cv2
import numpy as np

# config.data.layered: what a recipe may set (see `check_layered_config`).
DEFAULTS = dict(
    ratio=0.0,  # fraction of training samples replaced by a layered scene
    layers=(2, 6),  # (min, max) moving layers over the background
    translation=12.0,  # max layer translation, px at a 128 px side (scaled with the image)
    rotation_degrees=6.0,  # max layer rotation
    zoom=0.06,  # max layer zoom, a fraction
    background=0.4,  # background motion as a fraction of the layers' maxima
    noise_textures=0.5,  # chance that a layer is procedural noise instead of a cut of the frame
    shared_texture=0.0,  # chance that a layer wears the texture of the layer drawn before it,
    # shifted: a motion boundary with no change of material
    inner_edges=0.0,  # chance that a layer is two textures split by a line: an edge inside
    # one moving layer, with no motion boundary
)
_REFERENCE_SIDE = 128.0  # `translation` is in px at this side
_RADIUS = (0.08, 0.35)  # layer radius, fraction of the shorter side
_VERTICES = (3, 12)  # star-convex polygon corners
_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point vertices: 1/16 px
_GRAIN = 6.0  # +- grey levels of per-pixel noise, so flat colours still have texture


def check_layered_config(layered):
    """Validates `config.data.layered`; returns it as a dict with every field."""
    layered = dict(layered.to_dict() if hasattr(layered, "to_dict") else layered or {})
    unknown = sorted(set(layered) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown config.data.layered fields {unknown}; known: "
                         f"{sorted(DEFAULTS)}.")
    fields = {**DEFAULTS, **layered}
    if not 0.0 <= float(fields["ratio"]) <= 1.0:
        raise ValueError(f"config.data.layered.ratio must be in [0, 1]; got {fields['ratio']!r}.")
    low, high = fields["layers"]
    if not 0 <= int(low) <= int(high):
        raise ValueError(f"config.data.layered.layers must be (min, max) with 0 <= min <= max; "
                         f"got {fields['layers']!r}.")
    # An infinite translation gave NaN flow (and hung OpenCV's warp), a zoom of 1 or more a
    # layer shrunk to nothing or turned inside out.
    for name, largest in (("translation", _REFERENCE_SIDE), ("rotation_degrees", 180.0),
                          ("background", None)):
        value = float(fields[name])
        if not (math.isfinite(value) and value >= 0 and (largest is None or value <= largest)):
            most = "" if largest is None else f" and at most {largest:g}"
            raise ValueError(f"config.data.layered.{name} must be a finite number >= 0{most}; "
                             f"got {fields[name]!r}.")
    if not 0 <= float(fields["zoom"]) < 1:
        raise ValueError(f"config.data.layered.zoom must be >= 0 and below 1; got "
                         f"{fields['zoom']!r}.")
    for name in ("noise_textures", "shared_texture", "inner_edges"):
        if not 0.0 <= float(fields[name]) <= 1.0:
            raise ValueError(f"config.data.layered.{name} must be in [0, 1]; got "
                             f"{fields[name]!r}.")
    return fields


def noise_texture(rng, height, width):
    """Coloured multi-octave value noise, sometimes with stripes: edges at every scale."""
    texture = np.zeros((height, width, 3), np.float32)
    base = rng.uniform(0, 255, 3)
    amplitude = rng.uniform(40, 110)
    for octave in range(int(rng.integers(2, 6))):
        cells = int(2 ** (octave + rng.integers(1, 3)))
        grid = rng.uniform(-1, 1, (cells + 1, cells + 1, 3)).astype(np.float32)
        texture += amplitude * 0.6**octave * cv2.resize(grid, (width, height),
                                                        interpolation=cv2.INTER_CUBIC)
    if rng.uniform() < 0.3:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
        ys, xs = np.mgrid[:height, :width]
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period
        texture += rng.uniform(20, 60) * np.sign(np.sin(phase))[..., None] * rng.uniform(-1, 1, 3)
    texture += base + rng.uniform(-_GRAIN, _GRAIN, texture.shape)
    return np.clip(texture, 0, 255).astype(np.float32)


def cut_texture(rng, source, height, width):
    """A randomly rotated, zoomed and shifted view of `source` (H' x W' x 3), reflected at its
    borders: the frame's own material, in another place than the background shows it."""
    sh, sw = source.shape[:2]
    angle, zoom = rng.uniform(-180, 180), rng.uniform(0.6, 1.6)
    matrix = cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, zoom)
    matrix[:, 2] += rng.uniform(-0.5, 0.5, 2) * (sw, sh) + ((width - sw) / 2, (height - sh) / 2)
    return cv2.warpAffine(np.asarray(source, np.float32), matrix, (width, height),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _motion(rng, centre, translation, degrees, zoom):
    """A 2 x 3 affine p -> c + s R (p - c) + t, with each part drawn up to its maximum."""
    magnitude = translation * rng.uniform() ** 2  # small motions more often than large
    direction = rng.uniform(0, 2 * np.pi)
    t = magnitude * np.array([np.cos(direction), np.sin(direction)])
    theta = np.deg2rad(rng.uniform(-degrees, degrees))
    scale = 1.0 + rng.uniform(-zoom, zoom)
    linear = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centre = np.asarray(centre, np.float64)
    return np.concatenate([linear, (centre - linear @ centre + t)[:, None]], 1)


def _flow_of(affine, xs, ys):
    """Flow (u, v) of every pixel under a 2 x 3 affine: A [x y 1] - [x y]."""
    u = (affine[0, 0] - 1) * xs + affine[0, 1] * ys + affine[0, 2]
    v = affine[1, 0] * xs + (affine[1, 1] - 1) * ys + affine[1, 2]
    return np.stack([u, v], -1).astype(np.float32)


def _shape_mask(rng, height, width):
    """A filled star-convex polygon somewhere in (or partly outside) the frame."""
    side = min(height, width)
    radius = rng.uniform(*_RADIUS) * side
    centre = rng.uniform([-0.1 * width, -0.1 * height], [1.1 * width, 1.1 * height])
    corners = int(rng.integers(_VERTICES[0], _VERTICES[1] + 1))
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = radius * rng.uniform(0.5, 1.0, corners) * (rng.uniform(0.5, 1.5, 2)[:, None])
    points = centre[:, None] + radii * np.stack([np.cos(angles), np.sin(angles)])
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(points.T * 2**_SUBPIXEL_BITS).astype(np.int32)], 1,
                 lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return mask.astype(bool), centre


def _second_frame(background, layers, height, width):
    """Frame t + 1 of a scene: the background and each layer, bottom to top, moved by their
    affines (bilinear), a layer drawn where its moved shape covers at least half a pixel."""
    def moved(x, affine, border):
        return cv2.warpAffine(x, affine.astype(np.float32), (width, height),
                              flags=cv2.INTER_LINEAR, borderMode=border)

    frame = moved(background[0], background[1], cv2.BORDER_REFLECT)
    for appearance, affine, mask in layers:
        covered = moved(mask.astype(np.float32), affine, cv2.BORDER_CONSTANT) >= 0.5
        frame[covered] = moved(appearance, affine, cv2.BORDER_REFLECT)[covered]
    return frame


def render_scene(rng, height, width, source=None, return_masks=False, second_frame=False,
                 **params):
    """One layered scene: its first frame and that frame's exact forward flow.

    Args:
        rng: numpy Generator; the same state gives the same scene.
        source: optional real frame (any size, RGB 0..255) to cut textures from; without one
            every texture is procedural.
        return_masks: also return where each layer is visible (object masks for annotation
            benchmarks); the scene drawn is the same either way.
        second_frame: also return frame t + 1, every layer moved by its motion: a pair for
            optical flow estimators (teacher benchmarks), whose exact flow is `flow` wherever
            frame t's pixel stays visible. The scene drawn is the same either way.
        **params: fields of `DEFAULTS` (ratio is ignored here).
    Returns:
        (image [H, W, 3] float32 0..255, flow [H, W, 2] float32 px, valid [H, W] float32 ones),
        then with `return_masks` [L, H, W] bool, the visible part of each moving layer, bottom
        to top (an upper layer hides what it covers of the ones below), then with
        `second_frame` frame t + 1 [H, W, 3] float32 0..255.
    """
    p = check_layered_config(params)
    if source is not None:
        source = np.asarray(source, np.float32)
        if source.ndim != 3 or source.shape[-1] != 3 or min(source.shape[:2]) < 2:
            raise ValueError(f"source must be an RGB frame [H, W, 3]; got shape {source.shape}.")
    scale = min(height, width) / _REFERENCE_SIDE
    translation = float(p["translation"]) * scale
    ys, xs = np.mgrid[:height, :width].astype(np.float64)

    def texture():
        if source is None or rng.uniform() < float(p["noise_textures"]):
            return noise_texture(rng, height, width)
        return cut_texture(rng, source, height, width)

    image = texture() if source is None else cut_texture(rng, source, height, width)
    fraction = float(p["background"])
    background_motion = _motion(rng, (width / 2, height / 2), fraction * translation,
                                fraction * float(p["rotation_degrees"]),
                                fraction * float(p["zoom"]))
    flow = _flow_of(background_motion, xs, ys)
    # What frame t + 1 is drawn from: the background, and each layer's (appearance, motion, shape)
    background, layers = (image.copy(), background_motion), []
    # Chances of 0 draw no random numbers: the default scenes stay those of earlier versions.
    shared, inner = float(p["shared_texture"]), float(p["inner_edges"])
    below = image.copy() if shared else None  # the texture the next layer may share
    visible = []
    for _ in range(int(rng.integers(int(p["layers"][0]), int(p["layers"][1]) + 1))):
        mask, centre = _shape_mask(rng, height, width)
        motion = _motion(rng, centre, translation, float(p["rotation_degrees"]), float(p["zoom"]))
        layer_flow = _flow_of(motion, xs, ys)
        if shared and rng.uniform() < shared:
            shift = rng.integers(0, (height, width))
            layer_texture = np.roll(below, (int(shift[0]), int(shift[1])), axis=(0, 1))
        else:
            layer_texture = texture()
        appearance = layer_texture.copy()
        if inner and rng.uniform() < inner:  # a line through the shape's centre
            angle = rng.uniform(0, 2 * np.pi)
            side = mask & ((xs - centre[0]) * np.cos(angle) + (ys - centre[1]) * np.sin(angle) > 0)
            appearance[side] = texture()[side]
        image[mask] = appearance[mask]
        layers.append((appearance, motion, mask))
        if shared:
            below = layer_texture
        flow[mask] = layer_flow[mask]
        for lower in visible:
            lower &= ~mask
        visible.append(mask.copy())
    out = [image, flow, np.ones((height, width), np.float32)]
    if return_masks:
        out.append(np.stack(visible) if visible else np.zeros((0, height, width), bool))
    if second_frame:
        out.append(_second_frame(background, layers, height, width))
    return tuple(out)
