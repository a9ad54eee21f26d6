"""Flow bins and readout, error, colour coding and warping."""
import numpy as np
import pytest
import tensorflow as tf

from cmp_tf import flow as F

NBINS, FMAX = 99, 50.0


def test_zero_motion_is_the_middle_bin_and_extremes_stay_inside():
    bins = F.quantize(np.array([0.0, FMAX, -FMAX, 1e4, -1e4, 0.5, -0.5]), NBINS, FMAX).numpy()
    assert bins[0] == NBINS // 2
    assert bins[1] == NBINS - 1 and bins[3] == NBINS - 1  # fmax and beyond: last bin, not past
    assert bins[2] == 0 and bins[4] == 0
    assert bins[5] == bins[6] == NBINS // 2  # bin 49 spans [-0.505, 0.505)


def test_quantize_then_centres_is_within_half_a_bin(rng):
    flow = rng.uniform(-FMAX + 0.01, FMAX - 0.01, size=(1000,)).astype(np.float32)
    centres = F.bin_centers(NBINS, FMAX)[F.quantize(flow, NBINS, FMAX).numpy()]
    assert np.abs(centres - flow).max() <= F.bin_step(NBINS, FMAX) / 2 + 1e-5


def test_expectation_readout_of_peaked_logits_recovers_the_centre():
    centres = F.bin_centers(NBINS, FMAX)
    logits = np.full((2, 2 * NBINS), -1e4, np.float32)
    logits[0, 10], logits[0, NBINS + 70] = 0, 0
    logits[1, NBINS // 2], logits[1, NBINS + NBINS // 2] = 0, 0
    flow = F.expected_flow(logits, NBINS, FMAX).numpy()
    np.testing.assert_allclose(flow[0], [centres[10], centres[70]], atol=1e-4)
    np.testing.assert_allclose(flow[1], [0, 0], atol=1e-4)
    # Two equal peaks read out as their mean: the expectation, not argmax.
    logits = np.full((1, 2 * NBINS), -1e4, np.float32)
    logits[0, [40, 60]] = 0
    logits[0, NBINS + NBINS // 2] = 0
    assert F.expected_flow(logits, NBINS, FMAX).numpy()[0, 0] == pytest.approx(
        (centres[40] + centres[60]) / 2, abs=1e-4)


def test_expectation_readout_refuses_logits_that_are_not_two_sets_of_bins():
    """Without the check, 2 * nbins + 1 channels gave the y bins one channel too many: a
    TensorFlow shape error from deep inside the readout, naming neither logits nor nbins."""
    with pytest.raises(ValueError, match=r"2 \* nbins = 6 channels .* got shape \(2, 7\)"):
        F.expected_flow(np.zeros((2, 7), np.float32), 3, 3.0)


@pytest.mark.parametrize("nbins", [98, 0, 2.5, True])
def test_bad_nbins_is_refused(nbins):
    with pytest.raises(ValueError, match="nbins"):
        F.bin_centers(nbins, FMAX)


@pytest.mark.parametrize("fmax", ["10", None, True, 0.0, float("inf")])  # "10": a TypeError
def test_bad_fmax_is_refused(fmax):
    with pytest.raises(ValueError, match=r"config.flow.fmax must be a positive number"):
        F.bin_centers(99, fmax)


def test_endpoint_error_by_hand():
    pred = np.zeros((2, 2, 2), np.float32)
    target = np.array([[[3, 4], [0, 0]], [[0, 1], [0, 0]]], np.float32)
    assert F.endpoint_error(pred, target) == pytest.approx((5 + 1) / 4)
    valid = np.array([[1, 0], [0, 0]], np.float32)
    assert F.endpoint_error(pred, target, valid) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="NaN"):
        F.endpoint_error(pred, np.full_like(target, np.nan))


def test_flow_colours_follow_middlebury():
    flow = np.zeros((1, 5, 2), np.float32)
    flow[0, 1] = (10, 0)  # right
    flow[0, 2] = (-10, 0)  # left
    flow[0, 3] = (0, -10)  # up
    flow[0, 4] = (0, 10)  # down
    rgb = F.flow_to_color(flow, max_flow=10)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    rgb = rgb.astype(int)
    np.testing.assert_array_equal(rgb[0, 0], [255, 255, 255])  # no motion: white
    r, g, b = rgb[0, 1]
    assert r > 200 and g < 60 and b < 60  # right: red
    r, g, b = rgb[0, 2]
    assert r < 60 and g > 150 and b > 150  # left: cyan
    r, g, b = rgb[0, 3]
    assert b > 200 and g < 60  # up: blue / violet
    r, g, b = rgb[0, 4]
    assert r > 150 and g > 150 and b < 60  # down: yellow
    half = F.flow_to_color(flow / 2, max_flow=10).astype(int)
    assert (half[0, 1] > rgb[0, 1]).any()  # smaller motion: paler


def test_automatic_max_flow_is_at_least_a_pixel_so_tiny_motion_stays_pale():
    """Scaled to its own largest magnitude, 0.1 px of noise on a still scene was painted
    fully saturated, as if it moved as fast as anything could."""
    flow = np.zeros((2, 2, 2), np.float32)
    flow[0, 0] = (0.1, 0.0)
    rgb = F.flow_to_color(flow).astype(int)
    assert rgb[0, 0].min() >= 220  # a tenth of the way from white to red
    np.testing.assert_array_equal(rgb, F.flow_to_color(flow, max_flow=1.0))
    np.testing.assert_array_equal(F.flow_to_color(10 * flow), F.flow_to_color(10 * flow, 1.0))
    big = F.flow_to_color(50 * flow).astype(int)  # 5 px: its own magnitude saturates
    np.testing.assert_array_equal(big, F.flow_to_color(50 * flow, max_flow=5.0))


def test_backward_warp_by_a_whole_pixel_shift(rng):
    image = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
    flow = np.zeros((6, 8, 2), np.float32)
    flow[..., 0] = 2  # sample 2 px to the right
    warped, inside = F.warp_backward(image, flow)
    np.testing.assert_allclose(warped[:, :6], image[:, 2:], atol=1e-4)
    np.testing.assert_array_equal(inside[:, :6], 1)
    np.testing.assert_array_equal(inside[:, 6:], 0)
    # Half a pixel: the mean of neighbours (bilinear); batched input gives the same.
    flow[..., 0] = 0.5
    warped, _ = F.warp_backward(image[None], flow[None])
    np.testing.assert_allclose(warped[0, :, 0], (image[:, 0] + image[:, 1]) / 2, atol=1e-4)


def test_backward_warp_equals_bilinear_sampling_with_zeros_outside(rng):
    """As Keras' map_coordinates samples (order 1, constant 0 outside), which it used at the
    cost of seconds and gigabytes per video frame."""
    import keras

    image = rng.uniform(0, 255, (2, 30, 40, 3)).astype(np.float32)
    flow = rng.normal(0, 6, (2, 30, 40, 2)).astype(np.float32)
    warped, inside = F.warp_backward(image, flow)
    rows, cols = np.mgrid[:30, :40].astype(np.float32)
    for b in range(2):
        coords = [np.broadcast_to(c[..., None], (30, 40, 3)) for c in
                  (rows + flow[b, ..., 1], cols + flow[b, ..., 0])]  # y, x, then the channel
        coords.append(np.broadcast_to(np.arange(3, dtype=np.float32), (30, 40, 3)))
        want = keras.ops.convert_to_numpy(keras.ops.image.map_coordinates(
            image[b], coords, order=1, fill_mode="constant"))
        np.testing.assert_allclose(warped[b], want, atol=1e-3)
        x, y = cols + flow[b, ..., 0], rows + flow[b, ..., 1]
        np.testing.assert_array_equal(inside[b], (x >= 0) & (x <= 39) & (y >= 0) & (y <= 29))


def test_quantize_runs_inside_tf_function():
    fn = tf.function(lambda f: F.quantize(f, NBINS, FMAX))
    assert fn(tf.zeros((2, 4, 4, 2))).numpy().max() == NBINS // 2


def test_endpoint_error_and_warping_refuse_weights_and_flow_that_mean_nothing():
    ones, zeros = np.ones((4, 4, 2), np.float32), np.zeros((4, 4, 2), np.float32)
    for valid in (-np.ones((4, 4)), np.full((4, 4), np.nan)):
        with pytest.raises(ValueError, match="valid must be weights >= 0"):
            F.endpoint_error(ones, zeros, valid)
    flow = zeros.copy()
    flow[0, 0] = np.nan
    with pytest.raises(ValueError, match="flow has 2 NaN or infinite values"):
        F.warp_backward(np.zeros((4, 4, 3), np.float32), flow)


def test_flow_beyond_a_large_fmax_stays_in_the_last_bin():
    """From fmax ~8192 px the 1e-3 px clip margin is below float32's spacing, so fmax and
    beyond quantized to bin nbins, one past the last: a traceback from the cross-entropy on
    CPU, a NaN loss on GPU."""
    for fmax in (1e4, 1e5):
        bins = F.quantize(np.array([fmax, 1e9, -fmax, -1e9, 0.0]), NBINS, fmax).numpy()
        np.testing.assert_array_equal(bins, [NBINS - 1, NBINS - 1, 0, 0, NBINS // 2])


def test_endpoint_error_is_the_weighted_mean_whatever_the_weights_sum_to():
    """Divided by max(sum of weights, 1), weights summing to less than 1 shrank the error."""
    pred, target = np.zeros((1, 2, 2), np.float32), np.full((1, 2, 2), 3.0, np.float32)
    for valid in ([[0.25, 0.0]], [[0.5, 0.5]], [[2.0, 1.0]]):
        assert F.endpoint_error(pred, target, valid) == pytest.approx(np.hypot(3, 3))
    assert F.endpoint_error(pred, target, [[0.0, 0.0]]) == 0.0


def test_color_scale_is_at_least_one_pixel_whatever_the_flow_holds():
    """A NaN length won Python's max(nan, 1.0): a NaN scale, which flow_to_color then refused
    as a bad max_flow rather than drawing the finite vectors."""
    flow = np.array([[[np.nan, 0.0], [3.0, 4.0]]], np.float32)
    assert F.color_scale(flow) == 5.0
    assert F.color_scale(np.full((2, 2, 2), np.nan, np.float32)) == 1.0
    assert F.color_scale(flow, np.array([[1, 0]])) == 1.0
