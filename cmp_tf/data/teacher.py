"""Teacher flow for raw videos and the checks that keep its failures out of training.

CMP learns from flow computed on unlabelled video: OpenCV's DIS by default, or any estimator a
user plugs in. A pair is kept only if the teacher's flow is finite, shows motion, is mostly
forward-backward consistent, and explains frame t+gap (a scene cut leaves a large photometric
error whatever the flow).
"""
import importlib

import cv2
import numpy as np

DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
               "fine": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}  # + the settings of _DIS_FINE
# "fine": medium down to the finest scale, 8 px patches every 2 px; on generated scenes
# (benchmarks/teacher.py) half medium's error away from motion boundaries, at 5x its time.
_DIS_FINE = dict(FinestScale=0, PatchSize=8, PatchStride=2)


def _gray(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _on_gray(algorithm):
    return lambda rgb1, rgb2: algorithm.calc(_gray(rgb1), _gray(rgb2), None)


# OpenCV's DIS refuses (cv2.error) frames with a side under 8 px or both under 12 px (every
# preset); refused here in words that name the setting to change.
DIS_MIN_SIDE, DIS_MIN_LONG_SIDE = 8, 12


def _dis(preset):
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    for name, value in (_DIS_FINE.items() if preset == "fine" else ()):
        getattr(dis, f"set{name}")(value)
    on_gray = _on_gray(dis)

    def estimate(first, second):
        h, w = first.shape[:2]
        if min(h, w) < DIS_MIN_SIDE or max(h, w) < DIS_MIN_LONG_SIDE:
            raise ValueError(f"config.ingest.estimator='dis' needs frames of at least "
                             f"{DIS_MIN_SIDE} px a side and {DIS_MIN_LONG_SIDE} px on the longer; "
                             f"got {h} x {w}: use larger frames or max_side, or another "
                             "estimator ('farneback').")
        return on_gray(first, second)

    return estimate


RLOF_GRID, RLOF_NEIGHBOURS = 6, 128  # OpenCV's defaults: its seeds' spacing, EPIC's neighbours


def _rlof(first, second):
    """OpenCV's dense RLOF, refused on frames too small for its interpolation: it reads the
    RLOF_NEIGHBOURS nearest of its matches, seeded one per RLOF_GRID px square, and on frames
    with fewer it reads past their end (a segmentation fault on 48 x 64 frames, killing the
    process, not one file)."""
    h, w = first.shape[:2]
    if (h // RLOF_GRID) * (w // RLOF_GRID) < RLOF_NEIGHBOURS:
        raise ValueError(f"config.ingest.estimator='rlof' needs frames with at least "
                         f"{RLOF_NEIGHBOURS} cells of {RLOF_GRID} x {RLOF_GRID} px (64 x 96 px "
                         f"has 160); got {h} x {w}: use 'dis', or a larger max_side.")
    return cv2.optflow.calcOpticalFlowDenseRLOF(first, second, None,
                                                gridStep=(RLOF_GRID, RLOF_GRID),
                                                epicK=RLOF_NEIGHBOURS)


# Estimators by name besides DIS: OpenCV's (contrib `optflow`), each a maker of
# fn(rgb1 uint8, rgb2 uint8) -> flow [H, W, 2] float32 px. Not offered:
# calcOpticalFlowSparseToDense (opencv-contrib 5.0.0.93). Its interpolation reads the K = 128
# nearest of its matches, one per 8 px of the frame, past their end when there are fewer (as
# the EpicFlow baseline's would, cmp_tf.evaluation.baselines): on 64 x 96 frames NaN flow in
# about half of the pairs, and at times a crash, changing from run to run.
OPENCV_ESTIMATORS = {
    "farneback": lambda: lambda a, b: cv2.calcOpticalFlowFarneback(
        _gray(a), _gray(b), None, 0.5, 4, 9, 5, 5, 1.1, 0),
    "tvl1": lambda: _on_gray(cv2.optflow.DualTVL1OpticalFlow_create()),
    "deepflow": lambda: _on_gray(cv2.optflow.createOptFlow_DeepFlow()),
    "pcaflow": lambda: _on_gray(cv2.optflow.createOptFlow_PCAFlow()),
    "rlof": lambda: _rlof,
}


def make_estimator(name, dis_preset="medium"):
    """Teacher flow estimator: fn(rgb1 uint8, rgb2 uint8) -> flow [H, W, 2] float32 px.

    `name` is "dis" (with `dis_preset`), one of `OPENCV_ESTIMATORS`, or "package.module:function".
    """
    if name == "dis":
        if dis_preset not in DIS_PRESETS:
            raise ValueError(f"config.ingest.dis_preset={dis_preset!r}; known: "
                             f"{', '.join(DIS_PRESETS)}.")
        return _dis(dis_preset)
    if name in OPENCV_ESTIMATORS:
        return OPENCV_ESTIMATORS[name]()
    module, _, function = name.partition(":")
    if not function:
        raise ValueError(f"config.ingest.estimator={name!r}: use 'dis', one of "
                         f"{', '.join(OPENCV_ESTIMATORS)}, or 'module:function'.")
    try:
        estimate = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"config.ingest.estimator={name!r} could not be loaded: {e}") from e
    if not callable(estimate):
        raise ValueError(f"config.ingest.estimator={name!r} is a {type(estimate).__name__}, "
                         "not a function of two frames.")

    def checked(first, second):
        """The user's flow as ingestion needs it: [H, W, 2] of the frames' size, float32
        (a wrong shape or dtype otherwise fails deep in OpenCV or numpy, or drops every pair
        as inconsistent)."""
        flow = np.asarray(estimate(first, second))
        expected = first.shape[:2] + (2,)
        if flow.shape != expected or not np.issubdtype(flow.dtype, np.floating):
            raise ValueError(f"config.ingest.estimator={name!r} returned {flow.dtype} flow of "
                             f"shape {flow.shape} for {first.shape[1]}x{first.shape[0]} px "
                             f"frames; expected float [H, W, 2] = {expected} (u, v last).")
        return flow.astype(np.float32)

    return checked


def named_estimators():
    """{name: maker of an estimator}: "dis_<preset>" for each DIS preset, and
    `OPENCV_ESTIMATORS`; the names `benchmarks/teacher.py` and `evaluate.py --reference` take."""
    named = {f"dis_{preset}": (lambda p: lambda: make_estimator("dis", p))(preset)
             for preset in DIS_PRESETS}
    return {**named, **OPENCV_ESTIMATORS}


def checked_flow(flow, shape, what):
    """`flow` if it is finite and of `shape`, else a ValueError naming `what` (an estimator and
    the pair it ran on): a teacher's failure must not become a score."""
    flow = np.asarray(flow)
    if flow.shape != tuple(shape) or not np.isfinite(flow).all():
        raise ValueError(f"{what} gave flow of shape {flow.shape} with "
                         f"{int(np.size(flow) - np.isfinite(flow).sum())} non-finite values; "
                         f"expected finite {tuple(shape)}.")
    return flow


def _sample_at_flow(image, forward):
    """image sampled at x + forward(x) (OpenCV remap: fast in worker processes, no TF), and
    the mask of pixels whose source lies inside the frame."""
    h, w = forward.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = grid_x + forward[..., 0], grid_y + forward[..., 1]
    sampled = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return sampled, inside


def forward_backward_valid(forward, backward, alpha, beta):
    """1 where the backward flow, sampled at x + forward(x), undoes the forward flow.

    |f + b(x + f)|^2 < alpha (|f|^2 + |b(x + f)|^2) + beta (Sundaram et al., 2010); pixels
    whose target leaves the frame are invalid.
    """
    back, inside = _sample_at_flow(backward, forward)
    residual = np.sum(np.square(forward + back), -1)
    bound = alpha * (np.sum(np.square(forward), -1) + np.sum(np.square(back), -1)) + beta
    return ((residual < bound) & inside).astype(np.uint8)


def photometric_error(frame1, frame2, forward, valid):
    """Mean absolute RGB difference (0..255) between frame t and frame t+gap warped back,
    over valid pixels: a scene cut leaves it high whatever the flow."""
    warped, inside = _sample_at_flow(frame2, forward)
    weight = valid * inside
    diff = np.abs(warped.astype(np.float32) - frame1.astype(np.float32)).mean(-1)
    return float((diff * weight).sum() / max(weight.sum(), 1.0))


def check_pair(frame1, frame2, forward, backward, cfg):
    """Whether a pair is worth training on, with the `config.ingest` thresholds.

    Returns:
        (valid [H, W] uint8, None) for a kept pair, or (None, reason) with reason one of
        "bad_flow", "static", "inconsistent", "scene_cut" (the manifest's drop counts).
    """
    if not (np.isfinite(forward).all() and np.isfinite(backward).all()):
        return None, "bad_flow"
    valid = forward_backward_valid(forward, backward, cfg["fb_alpha"], cfg["fb_beta"])
    if np.linalg.norm(forward, axis=-1).mean() < cfg["min_motion"]:
        return None, "static"
    if valid.mean() < cfg["min_consistent"]:
        return None, "inconsistent"
    if photometric_error(frame1, frame2, forward, valid) > cfg["max_photometric"]:
        return None, "scene_cut"
    return valid, None
