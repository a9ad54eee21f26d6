"""Training guidance: the reference's flow_sampler, fast, and equal to its plain statement."""
import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from cmp_tf.data import sampling
from cmp_tf.data import synthetic

_BENCHMARK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks", "input_pipeline.py")


@pytest.fixture(scope="module")
def plain():
    """benchmarks/input_pipeline.py: the plain NumPy/SciPy statement of the sampler."""
    spec = importlib.util.spec_from_file_location("input_pipeline_benchmark", _BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _points(sparse):
    return {tuple(p) for p in np.argwhere(sparse[..., 2] > 0).tolist()}


def _square_flow(size=64, square=24, motion=(3, -2)):
    """One square moving on a static frame."""
    return synthetic.moving_square(size, square, (0, 0), motion, seed=1)[2]


def test_grid_is_centred_with_stride_from_bg_ratio(rng):
    flow = rng.normal(size=(10, 13, 2)).astype(np.float32)
    sparse = sampling.sample_guidance(flow, ("grid",), bg_ratio=1 / 16)  # stride 4
    # start_h = int((10 - 8) / 2) = 1, start_w = int((13 - 12) / 2) = 0.
    assert _points(sparse) == {(r, c) for r in (1, 5, 9) for c in (0, 4, 8, 12)}
    mask = sparse[..., 2] > 0
    np.testing.assert_array_equal(sparse[mask][:, :2], flow[mask])
    np.testing.assert_array_equal(sparse[~mask], 0)
    # A stride wider than the frame still leaves its middle pixel, moving or not.
    sparse = sampling.sample_guidance(np.zeros((8, 9, 2), np.float32), ("grid",), bg_ratio=1e-4)
    assert _points(sparse) == {(4, 4)}


def test_watershed_points_sit_inside_coherent_motion_away_from_edges():
    flow = _square_flow()
    sparse = sampling.sample_guidance(flow, ("watershed",), nms_ks=15)
    points = _points(sparse)
    assert points
    for r, c in points:
        window = flow[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3].reshape(-1, 2)
        assert (window == flow[r, c]).all(), f"({r}, {c}) lies within 2 px of a motion edge"
    # The square (rows and columns 20..43 after its half-step shift) gets its middle guided.
    moving = [(r, c) for r, c in points if (flow[r, c] == (3, -2)).all()]
    assert moving and all(abs(r - 31.5) < 4 and abs(c - 31.5) < 4 for r, c in moving)


@pytest.mark.parametrize("value", [(0.0, 0.0), (2.5, -1.0)])
def test_still_or_uniformly_moving_flow_gives_no_watershed_point(value):
    flow = np.broadcast_to(np.float32(value), (32, 40, 2))
    assert sampling.watershed_candidates(flow, 15)[0].size == 0
    sparse = sampling.sample_guidance(flow, ("watershed",), nms_ks=15)
    np.testing.assert_array_equal(sparse, 0)  # no point at all: no guidance


def test_max_num_guide_caps_the_pooled_points(rng):
    flow = rng.normal(size=(32, 32, 2)).astype(np.float32)
    everything = _points(sampling.sample_guidance(flow, ("grid",), bg_ratio=1 / 16))
    assert len(everything) == 64
    for cap, expected in ((10, 10), (64, 64), (500, 64), (-1, 64)):
        points = _points(sampling.sample_guidance(flow, ("grid",), bg_ratio=1 / 16,
                                                  max_num_guide=cap, seed=3))
        assert len(points) == expected and points <= everything


def test_the_samplers_helpers_name_what_they_cannot_take():
    """grid_points(h, w, 0) was a ZeroDivisionError, uniform_points(-1) NumPy's "negative
    dimensions", and a 2-D array as flow gave an edge map of half its width."""
    with pytest.raises(ValueError, match=r"bg_ratio must be a fraction of pixels"):
        sampling.grid_points(8, 8, 0)
    with pytest.raises(ValueError, match=r"count must be a whole number >= 0; got -1"):
        sampling.uniform_points(4, 4, -1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"flow must have shape \[\.\.\., H, W, 2\]"):
        sampling.motion_edges(np.zeros((8, 8), np.float32))
    assert len(sampling.uniform_points(2, 2, 9, np.random.default_rng(0))) == 4


def test_a_count_beyond_the_pixels_is_capped_at_them(rng):
    """num_points=(10**13, 10**13) asked NumPy for 73 TiB of indices; a pixel holds one guide."""
    flow = rng.normal(size=(8, 8, 2)).astype(np.float32)
    sparse = sampling.sample_guidance(flow, ("grid",), bg_ratio=1 / 16, max_num_guide=0,
                                      num_points=(10**13, 10**13))
    assert 0 < sparse[..., 2].sum() <= 64


def test_num_points_draws_every_count_in_its_range_topping_up_uniformly(rng):
    flow = rng.normal(size=(32, 32, 2)).astype(np.float32)
    pooled = _points(sampling.sample_guidance(flow, ("grid",), bg_ratio=1 / 64))  # 16 points
    counts = []
    for seed in range(300):
        sparse = sampling.sample_guidance(flow, ("grid",), bg_ratio=1 / 64, num_points=(1, 100),
                                          seed=seed)
        points = _points(sparse)
        counts.append(sparse[..., 2].sum())
        if len(points) <= 10:  # a prefix of the shuffled pooled points
            assert points <= pooled
        np.testing.assert_array_equal(sparse[..., :2][sparse[..., 2] > 0],
                                      flow[sparse[..., 2] > 0])
    counts = np.array(counts)  # duplicates of drawn pixels may merge: at most the count drawn
    assert counts.min() == 1 and 60 < counts.max() <= 100
    # Log-uniform: about as many draws in [1, 10) as in [10, 100].
    assert 0.35 < np.mean(counts < 10) < 0.65


def test_num_points_reaches_its_maximum_as_often_as_log_uniform_says(rng):
    """K = floor(exp(U[log min, log(max + 1)))): drawn up to log(max) instead, K = max never
    came, so num_points=(1, 3) trained on one and two clicks only."""
    flow = rng.normal(size=(32, 32, 2)).astype(np.float32)
    counts = np.array([sampling.sample_guidance(flow, ("grid",), bg_ratio=1 / 64,
                                                num_points=(1, 3), seed=seed)[..., 2].sum()
                       for seed in range(400)])  # 16 distinct pooled points: K exactly
    assert set(counts) == {1, 2, 3}
    # P(K = k) = log((k + 1) / k) / log(4): 0.50, 0.29, 0.21
    for k, p in ((1, 0.5), (2, np.log(1.5) / np.log(4)), (3, np.log(4 / 3) / np.log(4))):
        assert abs(np.mean(counts == k) - p) < 0.07, k


def test_max_num_guide_zero_keeps_no_pooled_point_and_num_points_draws_them_all(rng):
    """max_num_guide=0 keeps none of the pooled points (-1 is "no cap"): read as no cap, the
    K guides were the pooled grid's, not K pixels drawn uniformly."""
    flow = rng.normal(size=(32, 32, 2)).astype(np.float32)
    grid = _points(sampling.sample_guidance(flow, ("grid",), bg_ratio=1 / 64))  # 16 points
    on_grid = 0
    for seed in range(30):
        sparse = sampling.sample_guidance(flow, ("grid",), bg_ratio=1 / 64, max_num_guide=0,
                                          num_points=(2, 2), seed=seed)
        points = _points(sparse)
        assert len(points) == 2 and sparse[..., 2].sum() == 2
        on_grid += len(points & grid)
    assert on_grid <= 5  # uniform over 1024 pixels: about 60 * 16 / 1024 = 1 on the grid


def test_same_seed_same_guidance_other_seed_other_guidance(rng):
    flow = rng.normal(size=(24, 24, 2)).astype(np.float32)
    kwargs = dict(strategies=("grid", "uniform"), bg_ratio=1 / 25, max_num_guide=7)
    first = sampling.sample_guidance(flow, seed=5, **kwargs)
    np.testing.assert_array_equal(first, sampling.sample_guidance(flow, seed=5, **kwargs))
    others = [sampling.sample_guidance(flow, seed=s, **kwargs) for s in (6, 7, 8)]
    assert any(not np.array_equal(first, other) for other in others)


def test_listed_order_of_strategies_does_not_matter(rng):
    flow = _square_flow()
    kwargs = dict(bg_ratio=1 / 100, nms_ks=15, max_num_guide=5, seed=2)
    np.testing.assert_array_equal(
        sampling.sample_guidance(flow, ("grid", "uniform", "watershed"), **kwargs),
        sampling.sample_guidance(flow, ("watershed", "uniform", "grid"), **kwargs))


def test_uniform_draws_int_bg_ratio_h_w_pixels(rng):
    flow = rng.normal(size=(20, 30, 2)).astype(np.float32)
    points = _points(sampling.sample_guidance(flow, ("uniform",), bg_ratio=0.05, seed=1))
    assert 0 < len(points) <= int(0.05 * 20 * 30)  # drawn with replacement, as the reference


def test_single_picks_one_moving_pixel_or_none():
    flow = _square_flow()
    picks = set()
    for seed in range(5):
        points = _points(sampling.sample_guidance(flow, ("single",), seed=seed))
        assert len(points) == 1
        (r, c), = points
        assert (flow[r, c] != 0).any()
        picks |= points
    assert len(picks) > 1
    still = sampling.sample_guidance(np.zeros((8, 8, 2), np.float32), ("single",))
    np.testing.assert_array_equal(still, 0)


def test_full_returns_the_flow_everywhere(rng):
    flow = rng.normal(size=(6, 7, 2)).astype(np.float32)
    for strategies in (("full",), ("grid", "full")):
        sparse = sampling.sample_guidance(flow, strategies)
        np.testing.assert_array_equal(sparse[..., :2], flow)
        np.testing.assert_array_equal(sparse[..., 2], 1)


def test_large_flows_are_watershed_sampled_at_a_coarser_stride(plain):
    flow = np.zeros((800, 820, 2), np.float32)  # max(H, W) // 400 = 2
    flow[200:500, 300:700] = (4.0, 1.0)
    sparse = sampling.sample_guidance(flow, ("watershed",), seed=4)
    points = np.array(sorted(_points(sparse)))
    assert len(points) and (points % 2 == 0).all()
    # The watershed spends the stream first, so the plain statement with the same seed agrees.
    rows, cols = plain.plain_watershed_points(flow, 41, np.random.default_rng(4))
    assert _points(sparse) == set(zip(rows.tolist(), cols.tolist()))


def test_eager_and_dataset_map_agree():
    flows = np.stack([_square_flow(), _square_flow(motion=(-4, 1))])
    seeds = np.array([0, 11], np.int64)
    kwargs = dict(strategies=("grid", "watershed"), bg_ratio=1 / 256, nms_ks=15,
                  max_num_guide=6)
    dataset = tf.data.Dataset.from_tensor_slices((flows, seeds)).map(
        lambda flow, seed: sampling.sample_guidance_tf(flow, seed, **kwargs))
    assert dataset.element_spec.shape == (64, 64, 3)
    for (flow, seed), mapped in zip(zip(flows, seeds), dataset):
        eager = sampling.sample_guidance_tf(tf.constant(flow), tf.constant(seed), **kwargs)
        numpy = sampling.sample_guidance(flow, seed=int(seed), **kwargs)
        np.testing.assert_array_equal(mapped.numpy(), eager.numpy())
        np.testing.assert_array_equal(eager.numpy(), numpy)
        assert 0 < numpy[..., 2].sum() <= 6


@pytest.mark.parametrize("kwargs, match", [
    (dict(strategies=()), "non-empty sequence of names from"),
    (dict(strategies=("grid", "gradnms")), r"\('grid', 'uniform', 'watershed', 'single'"),
    (dict(strategies="grid"), "non-empty sequence of names"),
    (dict(bg_ratio=0.0), "bg_ratio"),
    (dict(bg_ratio=1.5), "bg_ratio"),
    (dict(bg_ratio=float("nan")), "bg_ratio"),
    (dict(nms_ks=40), "nms_ks"),
    (dict(nms_ks=1), "nms_ks"),
    (dict(nms_ks=15.0), "nms_ks"),
    (dict(max_num_guide=-2), "max_num_guide"),
    (dict(max_num_guide=0), r"max_num_guide=0 keeps none .* every sample would have no "),
    (dict(bg_ratio=5e-324), r"bg_ratio must be .* whose inverse is finite"),  # was overflow
    (dict(nms_ks=10**6 + 1), r"nms_ks must be an odd integer in \[3, 1001\]"),  # a terabyte
    (dict(num_points=(0, 5)), "num_points"),
    (dict(num_points=(9, 5)), "num_points"),
    (dict(num_points=5), "num_points"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampling.sample_guidance(np.zeros((8, 8, 2), np.float32), **kwargs)
    kwargs.pop("seed", None)
    if kwargs:  # the tf.data op refuses them when traced, not when first run
        with pytest.raises(ValueError, match=match):
            sampling.sample_guidance_tf(tf.zeros((8, 8, 2)), tf.constant(0, tf.int64), **kwargs)


@pytest.mark.parametrize("flow, match", [
    (np.zeros((8, 8, 3), np.float32), r"\[\.\.\., H, W, 2\]"),
    (np.zeros((2, 8, 8, 2), np.float32), r"\[H, W, 2\]"),
    (np.zeros((8, 8, 2), np.int32), "float"),
    (np.full((8, 8, 2), np.nan, np.float32), "NaN or infinite"),
])
def test_bad_flows_are_refused(flow, match):
    with pytest.raises(ValueError, match=match):
        sampling.sample_guidance(flow)


def test_tf_op_refuses_a_flow_of_the_wrong_static_shape():
    with pytest.raises(ValueError, match=r"\[H, W, 2\]"):
        sampling.sample_guidance_tf(tf.zeros((8, 8, 3)), tf.constant(0, tf.int64))


# --- The fast sampler equals the plain statement in benchmarks/input_pipeline.py ---------------

def _flows(plain):
    yield "square", _square_flow()
    yield "still", np.zeros((16, 16, 2), np.float32)
    rng = np.random.default_rng(0)
    yield "tiny", rng.normal(size=(3, 5, 2)).astype(np.float32)
    # Isolated moving pixels, some on the frame border: its reflection decides their edges.
    impulses = np.zeros((40, 48, 2), np.float32)
    impulses[rng.integers(0, 40, 12), rng.integers(0, 48, 12)] = rng.normal(0, 3, (12, 2))
    impulses[0, 20] = impulses[39, 7] = impulses[15, 0] = impulses[30, 47] = (3.0, -2.0)
    yield "impulses", impulses
    # The strongest edge on the border: the Sobel's border mode sets the edge threshold.
    border = np.zeros((24, 24, 2), np.float32)
    border[0, 10], border[12, 12] = (10.0, 0.0), (2.0, 0.0)
    yield "border", border
    for seed in range(3):
        yield f"shapes{seed}", plain.moving_shapes_flow(96, shapes=4, seed=seed)
    # A symmetric box: its distance map has plateaus, so close candidates must be thinned.
    box = np.zeros((40, 40, 2), np.float32)
    box[8:32, 8:32] = (2.0, 0.0)
    yield "box", box


@pytest.mark.parametrize("nms_ks", [3, 15, 41])
def test_candidates_and_points_equal_the_plain_statement(plain, nms_ks):
    thinned = 0
    for name, flow in _flows(plain):
        fast = sampling.watershed_candidates(flow, nms_ks)
        slow = plain.plain_watershed_candidates(flow, nms_ks)
        np.testing.assert_array_equal(fast[0], slow[0], err_msg=name)
        np.testing.assert_array_equal(fast[1], slow[1], err_msg=name)
        for seed in (0, 1):
            fast = sampling.watershed_points(flow, nms_ks, np.random.default_rng(seed))
            slow = plain.plain_watershed_points(flow, nms_ks, np.random.default_rng(seed))
            np.testing.assert_array_equal(np.stack(fast), np.stack(slow), err_msg=name)
            thinned += len(fast[0]) < len(sampling.watershed_candidates(flow, nms_ks)[0])
            np.testing.assert_array_equal(
                sampling.sample_guidance(flow, bg_ratio=1 / 64, nms_ks=nms_ks, seed=seed),
                plain.plain_sample_guidance(flow, bg_ratio=1 / 64, nms_ks=nms_ks, seed=seed),
                err_msg=name)
    # The elimination was exercised, not only the candidates (for nms_ks=3, d = 1 pairs a
    # pixel only with itself, so nothing is thinned).
    assert thinned or nms_ks == 3


def test_neighbor_elimination_equals_the_plain_pairwise_loop(plain):
    rng = np.random.default_rng(0)
    for seed in range(5):
        flat = np.sort(rng.choice(30 * 30, size=80, replace=False))  # raster order
        rows, cols = flat // 30, flat % 30
        fast = sampling.eliminate_neighbors(rows, cols, 4.0, np.random.default_rng(seed))
        slow = plain.plain_neighbor_elimination(rows, cols, 4.0, np.random.default_rng(seed))
        np.testing.assert_array_equal(fast, slow)
        assert 0 < fast.sum() < len(rows)
        kept = np.flatnonzero(fast)
        assert sampling.close_pairs(rows[kept], cols[kept], 4.0)[0].size == 0


def test_guides_on_one_pixel_give_it_their_mean_whatever_their_order():
    """Close arrows round to one pixel once an image is shrunk: the last one listed won."""
    points = np.array([[1.2, 2.0], [0.9, 2.2], [3, 0]])
    vectors = np.array([[10.0, 0], [0, 4], [1, 1]])
    for order in ([0, 1, 2], [1, 0, 2]):
        sparse = sampling.sparse_from_points(points[order], vectors[order], 4, 5)
        np.testing.assert_array_equal(sparse[2, 1], [5, 2, 1])
        np.testing.assert_array_equal(sparse[0, 3], [1, 1, 1])
        assert sparse[..., 2].sum() == 2 and not sparse[sparse[..., 2] == 0].any()
