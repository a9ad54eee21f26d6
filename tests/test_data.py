"""Generated scenes and guidance placement."""
import numpy as np
import pytest

from cmp_tf import flow as flow_lib
from cmp_tf.data import sampling
from cmp_tf.data import synthetic


def test_moving_square_flow_is_exact_where_nothing_is_occluded():
    frame1, frame2, flow = synthetic.moving_square(64, 24, (-2, 1), (5, -3), seed=3)
    assert frame1.dtype == np.uint8 and flow.shape == (64, 64, 2)
    np.testing.assert_array_equal(flow[0, 0], [-2, 1])
    np.testing.assert_array_equal(flow[32, 32], [5, -3])
    warped, inside = flow_lib.warp_backward(frame2, flow)
    exact = np.abs(warped - frame1).max(-1) < 1e-3
    # Only pixels uncovered or covered by the square (and the frame border) may differ.
    assert exact[inside > 0].mean() > 0.8


def test_moving_square_refuses_what_it_cannot_render():
    with pytest.raises(ValueError, match="whole pixels"):
        synthetic.moving_square(square_motion=(0.5, 0))
    with pytest.raises(ValueError, match="does not fit"):
        synthetic.moving_square(size=32, square=30)


def test_sparse_from_points_rounds_and_validates():
    sparse = sampling.sparse_from_points([[1.4, 2.6]], [[3.0, -1.0]], 4, 5)
    assert sparse.shape == (4, 5, 3)
    np.testing.assert_array_equal(sparse[3, 1], [3, -1, 1])
    assert sparse[..., 2].sum() == 1
    with pytest.raises(ValueError, match=r"must lie on the 5x4 image"):
        sampling.sparse_from_points([[5.0, 0.0]], [[0.0, 0.0]], 4, 5)
    with pytest.raises(ValueError, match="finite"):
        sampling.sparse_from_points([[1.0, 1.0]], [[np.nan, 0.0]], 4, 5)
    with pytest.raises(ValueError, match=r"\[K, 2\]"):
        sampling.sparse_from_points([[1.0, 1.0, 1.0]], [[0.0, 0.0]], 4, 5)
    with pytest.raises(ValueError, match=r"vectors must be finite; got 1 NaN or infinite "
                                         r"values \(as float32\)"):
        sampling.sparse_from_points([[1, 0]], [[1e39, 1]], 4, 5)  # finite as float64 alone
    with pytest.raises(ValueError, match=r"points is empty \(K = 0\)"):
        sampling.sparse_from_points(np.zeros((0, 2)), np.zeros((0, 2)), 4, 5)


def test_uniform_points_are_distinct_pixels(rng):
    xy = sampling.uniform_points(6, 7, 42, rng)
    assert len({(x, y) for x, y in xy.tolist()}) == 42
    assert xy[:, 0].max() < 7 and xy[:, 1].max() < 6
