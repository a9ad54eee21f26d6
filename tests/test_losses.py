"""Flow losses against values computed by hand."""
import math

import ml_collections
import tensorflow as tf
import numpy as np
import pytest

from cmp_tf import losses


def _ce(logits, label):
    return math.log(sum(math.exp(z) for z in logits)) - logits[label]


def test_discrete_loss_equals_hand_computed_cross_entropies():
    # nbins 3 over fmax 3: step 2 px, bins [-3, -1), [-1, 1), [1, 3].
    x_logits, y_logits = [0.0, 1.0, 2.0], [2.0, 0.0, 0.0]
    logits = np.array(x_logits + y_logits, np.float32).reshape(1, 1, 1, 6)
    target = np.array([1.5, -0.2], np.float32).reshape(1, 1, 1, 2)  # bins x = 2, y = 1
    loss = losses.discrete_flow_loss(logits, target, nbins=3, fmax=3.0).numpy()
    assert loss.shape == (1,)
    assert loss[0] == pytest.approx(_ce(x_logits, 2) + _ce(y_logits, 1), rel=1e-6)


def test_discrete_loss_upsamples_logits_and_honours_the_validity_weight():
    # Logits 1x2 upsampled (align corners) to 1x3: the middle column is the mean of the ends.
    left, right = [0.0, 2.0, 0.0, 0.0, 0.0, 4.0], [2.0, 0.0, 0.0, 0.0, 4.0, 0.0]
    logits = np.array([left, right], np.float32).reshape(1, 1, 2, 6)
    target = np.zeros((1, 1, 3, 2), np.float32)  # every pixel in bin 1 on both axes
    middle = [(a + b) / 2 for a, b in zip(left, right)]
    per_pixel = [_ce(col[:3], 1) + _ce(col[3:], 1) for col in (left, middle, right)]
    loss = losses.discrete_flow_loss(logits, target, nbins=3, fmax=3.0).numpy()[0]
    assert loss == pytest.approx(np.mean(per_pixel), rel=1e-5)
    weight = np.array([[[1.0, 0.0, 1.0]]], np.float32)
    loss = losses.discrete_flow_loss(logits, target, nbins=3, fmax=3.0, weight=weight).numpy()[0]
    assert loss == pytest.approx((per_pixel[0] + per_pixel[2]) / 2, rel=1e-5)
    nothing = losses.discrete_flow_loss(logits, target, 3, 3.0, weight=0 * weight).numpy()[0]
    assert nothing == 0.0


def test_discrete_loss_is_per_example():
    logits = np.zeros((2, 2, 2, 6), np.float32)
    logits[1, ..., 1] = 5.0  # the second example is confident about x bin 1
    target = np.zeros((2, 2, 2, 2), np.float32)
    loss = losses.discrete_flow_loss(logits, target, nbins=3, fmax=3.0).numpy()
    assert loss[0] == pytest.approx(2 * math.log(3), rel=1e-6)
    assert loss[1] == pytest.approx(_ce([0, 5, 0], 1) + math.log(3), rel=1e-6)


def test_a_weighted_loss_is_each_examples_own_weighted_mean():
    """Divided by the whole batch's weight, an example's loss shrank with its neighbours'
    valid pixels, so a sparsely valid sample weighed less than its own pixels say."""
    pred = np.zeros((2, 1, 2, 2), np.float32)
    target = np.array([[[[2.0, 0.0], [10.0, 0.0]]],
                       [[[4.0, 0.0], [6.0, 0.0]]]], np.float32)
    weight = np.array([[[1.0, 0.0]], [[1.0, 1.0]]], np.float32)  # example 0: pixel 0 only
    l1 = losses.regression_flow_loss(pred, target, "l1", weight).numpy()
    np.testing.assert_allclose(l1, [2.0, (4.0 + 6.0) / 2], rtol=1e-6)
    logits = np.zeros((2, 1, 2, 6), np.float32)
    logits[0, 0, 1, 0] = 9.0  # confident and wrong at example 0's invalid pixel only
    discrete = losses.discrete_flow_loss(logits, np.zeros((2, 1, 2, 2), np.float32), nbins=3,
                                         fmax=3.0, weight=weight).numpy()
    np.testing.assert_allclose(discrete, [2 * math.log(3)] * 2, rtol=1e-6)


def test_regression_losses_by_hand():
    pred = np.zeros((1, 1, 2, 2), np.float32)
    target = np.array([[[[3.0, -4.0], [1.0, 0.0]]]], np.float32)
    l1 = losses.regression_flow_loss(pred, target, "l1").numpy()[0]
    l2 = losses.regression_flow_loss(pred, target, "l2").numpy()[0]
    assert l1 == pytest.approx((7 + 1) / 2)
    assert l2 == pytest.approx((25 / 2 + 1 / 2) / 2)


def test_make_loss_picks_by_name_and_refuses_unknown():
    cfg = ml_collections.ConfigDict(dict(loss="discrete", nbins=3, fmax=3.0))
    fn = losses.make_loss(cfg)
    assert fn(np.zeros((1, 1, 1, 6), np.float32), np.zeros((1, 1, 1, 2), np.float32)).numpy()[
        0] == pytest.approx(2 * math.log(3))
    cfg.loss = "huber"
    with pytest.raises(ValueError, match="config.flow.loss='huber' is unknown; known: discrete"):
        losses.make_loss(cfg)
    with pytest.raises(ValueError, match="2 \\* nbins = 6"):
        losses.discrete_flow_loss(np.zeros((1, 1, 1, 4)), np.zeros((1, 1, 1, 2)), 3, 3.0)


@pytest.mark.parametrize("size_in,size_out", [((3, 5), (9, 17)), ((12, 12), (384, 384)),
                                              ((70, 66), (139, 131)), ((1, 4), (5, 7))])
def test_separable_upsampling_equals_the_resize_op_in_values_and_gradients(size_in, size_out):
    import tensorflow as tf

    from cmp_tf import ops

    x = tf.Variable(np.random.default_rng(0).normal(size=(2, *size_in, 3)).astype(np.float32))
    weights = tf.constant(np.random.default_rng(1).normal(size=(2, *size_out, 3)), tf.float32)
    results = []
    for upsample in (ops.resize_align_corners, ops.upsample_align_corners):
        with tf.GradientTape() as tape:
            y = upsample(x, size_out)
            total = tf.reduce_sum(y * weights)
        results.append((y.numpy(), tape.gradient(total, x).numpy()))
    np.testing.assert_allclose(results[1][0], results[0][0], atol=1e-5)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-4, atol=1e-4)


def test_jit_compiled_loss_equals_the_plain_one():
    config = ml_collections.ConfigDict(dict(loss="discrete", nbins=9, fmax=4.0))
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 4, 18)).astype(np.float32)
    target = rng.uniform(-4, 4, (2, 16, 16, 2)).astype(np.float32)
    weight = (rng.uniform(size=(2, 16, 16)) > 0.3).astype(np.float32)
    fused = losses.make_loss(config)(logits, target, weight)
    plain = losses.make_loss(config, jit_compile=False)(logits, target, weight)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(plain), rtol=1e-5)


def test_relative_loss_divides_by_each_examples_zero_flow_loss_with_a_floor():
    pred = np.zeros((2, 1, 2, 2), np.float32)
    pred[0, 0, 0] = [1.0, 0.0]
    target = np.array([[[[4.0, 0.0], [0.0, 4.0]]],  # zero-flow L1: 4 px
                       [[[0.1, 0.0], [0.0, 0.1]]]], np.float32)  # 0.1 px, below the floor
    cfg = ml_collections.ConfigDict(dict(loss="l1", nbins=3, fmax=3.0, relative=True,
                                         relative_floor=0.5))
    plain = losses.regression_flow_loss(pred, target, "l1").numpy()
    relative = losses.make_loss(cfg, jit_compile=False)(pred, target).numpy()
    np.testing.assert_allclose(relative, [plain[0] / 4.0, plain[1] / 0.5], rtol=1e-6)
    weight = np.array([[[1.0, 0.0]], [[1.0, 1.0]]], np.float32)  # example 0: only pixel 0
    weighted = losses.make_loss(cfg, jit_compile=False)(pred, target, weight).numpy()
    assert weighted[0] == pytest.approx(3.0 / 4.0)
    cfg.relative_floor = 0.0
    with pytest.raises(ValueError, match="config.flow.relative_floor must be > 0; got 0.0"):
        losses.make_loss(cfg)
    cfg.update(loss="discrete", relative_floor=0.5)
    with pytest.raises(ValueError, match="relative=True needs a regression loss"):
        losses.make_loss(cfg)


def test_losses_name_shapes_and_fields_that_do_not_fit():
    target = tf.zeros((2, 8, 8, 2))
    with pytest.raises(ValueError, match=r"weight must be \[B, H, W\] .* as the target "
                                         r"\(2, 8, 8\); got \(2, 5, 5\)"):
        losses.regression_flow_loss(tf.zeros((2, 4, 4, 2)), target, "l1", tf.ones((2, 5, 5)))
    with pytest.raises(ValueError, match="differ in batch"):
        losses.regression_flow_loss(tf.zeros((1, 4, 4, 2)), target, "l1")
    with pytest.raises(ValueError, match="pred must be flow with 2 channels"):
        losses.regression_flow_loss(tf.zeros((2, 4, 4, 198)), target, "l1")
    with pytest.raises(ValueError, match="config.flow lacks nbins, fmax"):
        losses.make_loss(ml_collections.ConfigDict({"loss": "discrete"}))
    with pytest.raises(ValueError, match="relative_floor must be > 0; got None"):
        losses.make_loss(ml_collections.ConfigDict({"loss": "l1", "relative": True}))


def test_weighted_losses_are_weighted_means_and_ignore_what_the_mask_leaves_out():
    """A pixel with weight 0 is left out even where its target is NaN (NaN x 0 made the L1
    loss NaN, and the discrete loss a label out of range: a traceback on CPU, NaN on GPU); and
    weights summing to under 1 gave the loss times their sum, not their weighted mean."""
    target = np.array([[[[3.0, 3.0], [np.nan, 0.0]]]], np.float32)
    pred = np.zeros((1, 1, 2, 2), np.float32)
    for w in (1.0, 0.25):
        weight = np.array([[[w, 0.0]]], np.float32)
        l1 = losses.regression_flow_loss(pred, target, "l1", weight).numpy()
        np.testing.assert_allclose(l1, [6.0], rtol=1e-6)
        relative = losses.relative_to_zero_flow(l1, target, "l1", 0.5, weight).numpy()
        np.testing.assert_allclose(relative, [1.0], rtol=1e-6)
        logits = np.zeros((1, 1, 2, 6), np.float32)
        discrete = losses.discrete_flow_loss(logits, target, 3, 3.0, weight).numpy()
        np.testing.assert_allclose(discrete, [2 * math.log(3)], rtol=1e-6)


def test_an_infinite_relative_floor_is_refused():
    """An infinite floor divided every loss to 0: no error, no gradient, nothing learned."""
    cfg = ml_collections.ConfigDict(dict(loss="l1", relative=True, relative_floor=float("inf")))
    with pytest.raises(ValueError, match=r"relative_floor must be > 0; got inf \(a finite number"):
        losses.make_loss(cfg)
