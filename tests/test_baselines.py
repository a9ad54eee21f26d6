"""Propagation baselines: every method behind propagate(image, points, vectors) -> flow."""
import cv2
import numpy as np
import pytest

from cmp_tf.data import sampling
from cmp_tf.data import synthetic
from cmp_tf.evaluation import baselines

NAMES = sorted(baselines.BASELINES)
# nearest follows OpenCV's 5x5 chamfer distance: measured on random guides, a pixel takes a
# guide at most 3.4 % and 0.63 px farther than the nearest one, on about 1 % of the pixels.
CHAMFER_RTOL, CHAMFER_ATOL, CHAMFER_MISSES = 0.04, 1.0, 0.02
TRANSLATION = np.array([2.5, -1.25], np.float32)


def _image(height=48, width=64, seed=0):
    """A smooth random texture: edges everywhere, as EpicFlow's edge costs expect."""
    noise = np.random.default_rng(seed).uniform(0, 255, (height, width, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 2.0)
    return ((noise - noise.min()) / (noise.max() - noise.min()) * 255).astype(np.uint8)


def _jittered_grid(height, width, stride, rng):
    """Grid points moved by up to 2 px each: real guidance is never a perfect grid."""
    rows, cols = np.mgrid[stride // 2:height:stride, stride // 2:width:stride]
    xy = np.stack([cols.ravel(), rows.ravel()], -1) + rng.uniform(-2, 2, (rows.size, 2))
    return np.clip(xy, 0, [width - 1, height - 1]).astype(np.float32)


def _brute_force_distances(points, height, width):
    """[H, W, K] Euclidean distance of every pixel to every (rounded) guide."""
    xy = np.round(points)
    rows, cols = np.mgrid[:height, :width]
    return np.hypot(cols[..., None] - xy[:, 0], rows[..., None] - xy[:, 1])


@pytest.mark.parametrize("name", NAMES)
def test_every_baseline_runs_at_one_point(name):
    image, vector = _image(12, 16), np.array([[1.5, -2.0]], np.float32)
    flow = baselines.get(name)(image, np.array([[3.2, 5.7]], np.float32), vector)
    assert flow.shape == (12, 16, 2) and flow.dtype == np.float32
    assert np.isfinite(flow).all()
    if name == "zero":
        assert not flow.any()
    elif name == "gaussian":
        np.testing.assert_allclose(flow[6, 3], vector[0], rtol=2e-3)  # on the guide
        assert np.linalg.norm(flow, axis=-1).max() <= np.linalg.norm(vector) * (1 + 1e-6)
    else:  # one guide: its motion everywhere (linear and epicflow fall back to nearest)
        atol = 1e-5 if name == "edge_aware" else 1e-6  # weighted means in float32
        np.testing.assert_allclose(flow, np.broadcast_to(vector, flow.shape), atol=atol)


@pytest.mark.parametrize("name", ["linear", "epicflow"])
def test_too_few_or_collinear_guides(name):
    image = _image(20, 24)
    cases = [(np.array([[3, 4], [18, 15]]), np.array([[1, 0], [-2, 3]])),  # two guides
             (np.array([[2, 2], [7, 7], [12, 12], [19, 19]]), np.arange(8).reshape(4, 2))]
    for points, vectors in cases:
        points, vectors = points.astype(np.float32), vectors.astype(np.float32)
        flow = baselines.get(name)(image, points, vectors)
        if name == "epicflow" and len(points) > 2:  # its regularized fits: the mean vector
            np.testing.assert_allclose(flow, np.broadcast_to(vectors.mean(0), flow.shape),
                                       atol=1e-2)
        else:
            np.testing.assert_array_equal(flow, baselines.nearest(image, points, vectors))


@pytest.mark.parametrize("name", ["nearest", "linear", "epicflow", "gaussian", "local_affine"])
def test_constant_translation_at_jittered_points_is_reproduced(name):
    height, width = 48, 64
    points = _jittered_grid(height, width, 12, np.random.default_rng(1))
    vectors = np.tile(TRANSLATION, (len(points), 1))
    flow = baselines.get(name)(_image(height, width), points, vectors)
    error = np.linalg.norm(flow - TRANSLATION, axis=-1)
    if name == "gaussian":  # only near the guides: far from them motion fades to zero
        sigma = baselines.GAUSSIAN_SIGMA_FRACTION * np.sqrt(height * width)
        near = _brute_force_distances(points, height, width).min(-1) <= sigma
        assert error[near].max() < 5e-3 * np.linalg.norm(TRANSLATION)
    else:
        assert error.max() < 1e-3


def test_epicflow_follows_affine_motion(rng):
    height, width = 64, 80
    points = _jittered_grid(height, width, 5, rng)
    rows, cols = np.mgrid[:height, :width]
    motion = np.stack([0.03 * cols - 0.02 * rows + 1.5, 0.01 * cols + 0.04 * rows - 2.0], -1)
    xy = np.round(points).astype(int)
    flow = baselines.epicflow(_image(height, width), points,
                              motion[xy[:, 1], xy[:, 0]].astype(np.float32))
    assert np.linalg.norm(flow - motion, axis=-1).mean() < 0.03  # 0.012; the nearest fill 0.08


def test_local_affine_reproduces_affine_motion_and_needs_three_guides(rng, monkeypatch):
    """A Gaussian-weighted affine fit at every pixel: without its ridge, affine motion comes
    back everywhere the weights reach; with it, far closer than the nearest fill. With two
    guides there is no fit, and the nearest fill answers."""
    height, width = 64, 80
    points = rng.uniform(0, [width - 1, height - 1], (40, 2)).astype(np.float32)
    rows, cols = np.mgrid[:height, :width]
    motion = np.stack([0.03 * cols - 0.02 * rows + 1.5, 0.01 * cols + 0.04 * rows - 2.0], -1)
    xy = np.round(points).astype(int)
    vectors = motion[xy[:, 1], xy[:, 0]].astype(np.float32)
    image = _image(height, width)

    def error(name):
        return np.linalg.norm(baselines.get(name)(image, points, vectors) - motion,
                              axis=-1).mean()

    assert error("local_affine") < 0.25 * error("nearest")  # 0.038 against 0.23 px
    monkeypatch.setattr(baselines, "LOCAL_AFFINE_RIDGE", 0.0)
    assert error("local_affine") < 1e-3
    np.testing.assert_array_equal(baselines.local_affine(image, points[:2], vectors[:2]),
                                  baselines.nearest(image, points[:2], vectors[:2]))
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="sigma must be a positive number"):
            baselines.local_affine(image, points, vectors, sigma=bad)


def test_epicflow_does_not_collapse_on_dense_guides_in_rigid_regions():
    """More than K = 128 guides with one exact vector each in a region: OpenCV's inlier
    threshold falls to float rounding there; without the zoom guard EPE was 0.45 px here."""
    image, _, motion = synthetic.moving_square(256, 128, (-2, 1), (5, -3), seed=0)
    points = sampling.uniform_points(256, 256, 10_000, np.random.default_rng(0))
    vectors = motion[points[:, 1].astype(int), points[:, 0].astype(int)]
    epe = {name: np.linalg.norm(baselines.get(name)(image, points, vectors) - motion,
                                axis=-1).mean() for name in ("epicflow", "nearest")}
    assert epe["epicflow"] < 1.5 * epe["nearest"], epe


@pytest.mark.parametrize("name", NAMES)
def test_zero_motion_gives_exactly_zero_flow(name, rng):
    points = rng.uniform(0, 31, (12, 2)).astype(np.float32)
    flow = baselines.get(name)(_image(32, 32), points, np.zeros_like(points))
    assert not flow.any()


def test_gaussian_invents_no_guidance_beyond_the_border():
    """A guide near the border spreads as it would inside a larger, unguided image."""
    wide = _image(24, 60)
    vectors = np.array([[2.0, -1.0], [0.5, 1.0]], np.float32)
    points = np.array([[1.0, 3.0], [6.0, 20.0]], np.float32)
    inside = baselines.gaussian(wide, points + [20, 0], vectors, sigma=3.0)
    np.testing.assert_allclose(baselines.gaussian(wide[:, 20:], points, vectors, sigma=3.0),
                               inside[:, 20:], atol=1e-6)


def test_gaussian_fades_to_zero_far_from_every_guide():
    image = _image(32, 96)
    points, vectors = np.array([[5, 10], [8, 20]], np.float32), np.array([[3, 1], [3, 1]],
                                                                         np.float32)
    sigma = 2.0
    flow = baselines.gaussian(image, points, vectors, sigma=sigma)
    radius = np.ceil(baselines.GAUSSIAN_RADIUS * sigma)
    rows, cols = np.mgrid[:32, :96]
    reach = np.maximum(np.abs(cols[..., None] - points[:, 0]),
                       np.abs(rows[..., None] - points[:, 1]))
    beyond = reach.min(-1) > radius  # outside every guide's (square, separable) kernel
    assert beyond.any() and not flow[beyond].any()
    far = _brute_force_distances(points, 32, 96).min(-1) > radius
    assert np.linalg.norm(flow[far], axis=-1).max() < 0.01 * np.hypot(3, 1)
    np.testing.assert_allclose(flow[10, 5], [3, 1], rtol=2e-3)
    # The default sigma follows the image size.
    np.testing.assert_array_equal(
            baselines.gaussian(image, points, vectors),
            baselines.gaussian(image, points, vectors,
                               sigma=baselines.GAUSSIAN_SIGMA_FRACTION * np.sqrt(32 * 96)))
    for sigma in (0.0, -1.0, np.nan, "2"):
        with pytest.raises(ValueError, match="sigma must be a positive number"):
            baselines.gaussian(image, points, vectors, sigma=sigma)


def test_nearest_matches_brute_force_nearest_guide(rng):
    height, width, count = 40, 56, 25
    points = rng.uniform([0, 0], [width - 1, height - 1], (count, 2)).astype(np.float32)
    vectors = rng.normal(0, 3, (count, 2)).astype(np.float32)
    flow = baselines.nearest(_image(height, width), points, vectors)
    distances = _brute_force_distances(points, height, width)  # [H, W, K]
    nearest = distances.min(-1)
    expected = vectors[np.argmin(distances, -1)]
    # The brute-force nearest guide's vector almost everywhere ...
    assert (flow == expected).all(-1).mean() > 1 - CHAMFER_MISSES
    # ... and elsewhere that of a guide almost as near (OpenCV's chamfer distance).
    taken = np.argmin(np.linalg.norm(flow[..., None, :] - vectors, axis=-1), -1)
    chosen = np.take_along_axis(distances, taken[..., None], -1)[..., 0]
    assert (chosen <= nearest * (1 + CHAMFER_RTOL)).all()
    assert (chosen <= nearest + CHAMFER_ATOL).all()


def test_guides_on_one_pixel_the_later_wins():
    image = _image(10, 12)
    points = np.array([[4.0, 5.0], [8.0, 2.0], [4.2, 4.9]], np.float32)  # 1st, 3rd: pixel (4, 5)
    vectors = np.array([[1, 0], [0, 0], [0, 1]], np.float32)
    for name in NAMES:
        flow = baselines.get(name)(image, points, vectors)
        if name != "zero":
            np.testing.assert_allclose(flow[5, 4], [0, 1], atol=2e-3, err_msg=name)


def test_linear_is_exact_on_affine_motion_inside_the_hull(rng):
    height, width, count = 40, 50, 30
    points = rng.integers([0, 0], [width, height], (count, 2)).astype(np.float32)
    affine = np.array([[0.05, -0.02, 1.5], [0.03, 0.04, -2.0]], np.float32)  # u, v = A (x, y, 1)

    def motion(xy):
        return xy @ affine[:, :2].T + affine[:, 2]

    flow = baselines.linear(_image(height, width), points, motion(points))
    hull = cv2.convexHull(points)
    rows, cols = np.mgrid[:height, :width]
    pixels = np.stack([cols.ravel(), rows.ravel()], -1).astype(np.float32)
    side = np.array([cv2.pointPolygonTest(hull, (float(x), float(y)), True) for x, y in pixels])
    inside, outside = side.reshape(height, width) >= 0, side.reshape(height, width) < -1
    assert inside.mean() > 0.5 and outside.any()
    np.testing.assert_allclose(flow[inside], motion(pixels.reshape(height, width, 2)[inside]),
                               atol=1e-4)
    nearest = baselines.nearest(_image(height, width), points, motion(points))
    np.testing.assert_array_equal(flow[outside], nearest[outside])


# (argument, bad value, the error names the argument with): one row per check.
_GOOD = {"image": np.zeros((8, 10, 3), np.uint8), "points": np.array([[1.0, 2.0], [9.4, 7.4]]),
         "vectors": np.array([[0.5, 0.5], [1.0, -1.0]])}
_BAD = [
    ("image", np.zeros((8, 10), np.uint8), r"image must have shape \[H, W, 3\]"),
    ("image", np.zeros((8, 10, 4), np.uint8), r"image must have shape \[H, W, 3\]"),
    ("image", np.zeros((8, 10, 3), np.float32), r"image must be uint8"),
    ("image", np.zeros((0, 10, 3), np.uint8), r"image must have at least one pixel"),
    ("points", np.array([1.0, 2.0]), r"points must have shape \[K, 2\]"),
    ("points", np.zeros((2, 3)), r"points must have shape \[K, 2\]"),
    ("points", np.array([["a", "b"], ["c", "d"]]), r"points must be a real-valued"),
    ("points", np.zeros((0, 2)), r"points is empty"),
    ("points", [[1, 2], [3]], r"points must be a \[K, 2\] array: every row \(x, y\)"),  # ragged
    ("vectors", np.zeros((2, 2, 1)), r"vectors must have shape \[K, 2\]"),
    ("vectors", np.zeros((3, 2)), r"points and vectors must hold the same number K"),
    ("points", np.array([[1.0, np.nan], [2.0, 2.0]]), r"points must be finite"),
    ("vectors", np.array([[1.0, 1.0], [np.inf, 0.0]]), r"vectors must be finite"),
    ("vectors", np.array([[1.0, 1.0], [1e39, 0.0]]), r"vectors must be finite"),  # > float32
    ("points", np.array([[1.0, 2.0], [9.6, 3.0]]), r"points must round to pixels"),  # x -> 10
    ("points", np.array([[1.0, 2.0], [3.0, -0.6]]), r"points must round to pixels"),  # y -> -1
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("argument,value,message", _BAD)
def test_bad_guidance_raises_naming_the_argument(name, argument, value, message):
    with pytest.raises(ValueError, match=message):
        baselines.get(name)(**{**_GOOD, argument: value})


def test_check_guidance_converts_and_keeps_pixels_on_the_border():
    image, points, vectors = sampling.check_guidance(
        np.zeros((8, 20, 3), np.uint8)[:, ::2],  # a strided view
        [[-0.4, 0], [9.4, 7.4]], np.array([[1, 2], [3, 4]], np.int64))
    assert image.flags.c_contiguous and image.shape == (8, 10, 3)
    assert points.dtype == vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, [[1, 2], [3, 4]])


def test_get_names_the_known_baselines():
    assert baselines.get("epicflow") is baselines.epicflow
    with pytest.raises(ValueError, match="Unknown baseline 'raft'.*nearest.*epicflow"):
        baselines.get("raft")


@pytest.mark.parametrize("count", [1, 5, 80])
def test_the_nearest_fill_in_numpy_and_in_the_model_agree(count, rng):
    """`baselines.nearest` (OpenCV, what the benchmark scores) and `fills.DensePrior` at stride
    1 (jump flooding in the graph, what the models start from) are one fill in two forms: they
    pick the same guide except where two guides are nearly equidistant, which OpenCV's 5x5
    chamfer distance can order differently from the exact Euclidean distance."""
    from cmp_tf.models import fills

    pixels = rng.choice(63 * 63, count, replace=False)  # one guide a pixel: shared, they average
    points = (np.stack([pixels % 63, pixels // 63], -1) + rng.uniform(-0.4, 0.4, (count, 2)))
    points = np.clip(points, 0, 63).astype(np.float32)
    vectors = rng.normal(0, 5, (count, 2)).astype(np.float32)
    numpy_fill = baselines.nearest(np.zeros((64, 64, 3), np.uint8), points, vectors)
    sparse = sampling.sparse_from_points(points, vectors, 64, 64)
    graph_fill = fills.DensePrior(1)(sparse[None]).numpy()[0, ..., :2]
    same = np.all(np.abs(numpy_fill - graph_fill) < 1e-5, axis=-1)
    assert same.mean() >= 0.97
