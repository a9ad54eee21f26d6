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
