"""Flow losses against values computed by hand."""
import math

import ml_collections
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


@pytest.mark.parametrize("targets,readout_weight", [("one_hot", 0.0), ("two_hot", 0.3)])
def test_jit_compiled_loss_equals_the_plain_one(targets, readout_weight):
    config = ml_collections.ConfigDict(dict(loss="discrete", nbins=9, fmax=4.0, targets=targets,
                                            readout_weight=readout_weight))
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 4, 18)).astype(np.float32)
    target = rng.uniform(-4, 4, (2, 16, 16, 2)).astype(np.float32)
    weight = (rng.uniform(size=(2, 16, 16)) > 0.3).astype(np.float32)
    fused = losses.make_loss(config)(logits, target, weight)
    plain = losses.make_loss(config, jit_compile=False)(logits, target, weight)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(plain), rtol=1e-5)


def test_two_hot_targets_split_between_the_neighbouring_centres():
    # nbins 3 over fmax 3: centres -2, 0, 2. Flow 0.5 is 3/4 of centre 0 and 1/4 of centre 2;
    # -2.7 lies beyond the outermost centre and goes to it whole.
    x_logits, y_logits = [0.3, 1.0, 2.0], [2.0, 0.0, -1.0]
    logits = np.array(x_logits + y_logits, np.float32).reshape(1, 1, 1, 6)
    target = np.array([0.5, -2.7], np.float32).reshape(1, 1, 1, 2)
    loss = losses.discrete_flow_loss(logits, target, 3, 3.0, targets="two_hot").numpy()[0]
    expected = 0.75 * _ce(x_logits, 1) + 0.25 * _ce(x_logits, 2) + _ce(y_logits, 0)
    assert loss == pytest.approx(expected, rel=1e-6)


def test_two_hot_optimum_reads_out_the_flow_below_one_bin():
    """Trained on a sub-bin flow, the one-hot loss reads out the bin centre (the paper's bias);
    the two-hot loss reads out the flow itself."""
    import tensorflow as tf

    from cmp_tf import flow as flow_lib

    target = np.full((1, 1, 1, 2), 0.6, np.float32)  # 0.3 bins off the zero centre
    readouts = {}
    for targets in losses.TARGETS:
        logits = tf.Variable(np.zeros((1, 1, 1, 18), np.float32))
        optimizer = tf.keras.optimizers.SGD(1.0)
        for _ in range(300):
            with tf.GradientTape() as tape:
                loss = losses.discrete_flow_loss(logits, target, 9, 9.0, targets=targets)
            optimizer.apply_gradients([(tape.gradient(loss, logits), logits)])
        readouts[targets] = flow_lib.expected_flow(logits, 9, 9.0).numpy().ravel()
    np.testing.assert_allclose(readouts["two_hot"], 0.6, atol=0.02)
    assert np.all(np.abs(readouts["one_hot"]) < 0.2)


def test_readout_weight_adds_the_l1_error_of_the_read_out_flow():
    from cmp_tf import flow as flow_lib

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 2, 2, 6)).astype(np.float32)
    target = rng.uniform(-3, 3, (1, 2, 2, 2)).astype(np.float32)
    plain = losses.discrete_flow_loss(logits, target, 3, 3.0, targets="two_hot").numpy()[0]
    both = losses.discrete_flow_loss(logits, target, 3, 3.0, targets="two_hot",
                                     readout_weight=0.5).numpy()[0]
    l1 = np.abs(flow_lib.expected_flow(logits, 3, 3.0).numpy() - target).sum(-1).mean()
    assert both == pytest.approx(plain + 0.5 * l1, rel=1e-5)


def test_flow_fields_are_checked_by_name():
    cfg = ml_collections.ConfigDict(dict(loss="discrete", nbins=3, fmax=3.0, targets="soft",
                                         readout_weight=0.0))
    with pytest.raises(ValueError, match="config.flow.targets='soft' is unknown"):
        losses.make_loss(cfg)
    cfg.targets, cfg.readout_weight = "two_hot", -1.0
    with pytest.raises(ValueError, match="config.flow.readout_weight must be >= 0"):
        losses.make_loss(cfg)
