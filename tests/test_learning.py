"""End to end: the CMP network learns a scene's exact flow from sparse guidance."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from cmp_tf import flow as flow_lib
from cmp_tf import losses
from cmp_tf import models
from cmp_tf.data import sampling
from cmp_tf.data import synthetic
from tests.helpers import load_config

SIZE, POINTS, BATCH, STEPS, LR = 128, 10, 2, 300, 2e-3


def _guidance(flow, rng):
    xy = sampling.uniform_points(SIZE, SIZE, POINTS, rng)
    vectors = flow[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    return sampling.sparse_from_points(xy, vectors, SIZE, SIZE)


@pytest.mark.slow
def test_cmp_learns_a_moving_square_to_under_a_pixel():
    # Without the dense prior: the network itself must learn to propagate the guidance.
    config = load_config("cpu_bins")
    config.model.options.bins.nearest_prior = False
    keras.utils.set_random_seed(0)
    model = models.build_cmp(config)
    loss_fn = losses.make_loss(config.flow)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(LR, STEPS))
    frame, _, flow = synthetic.moving_square(SIZE, SIZE // 2, background_motion=(-3, 2),
                                             square_motion=(6, -4))
    images = tf.constant(np.repeat(frame[None].astype(np.float32), BATCH, 0))
    targets = tf.constant(np.repeat(flow[None], BATCH, 0))

    @tf.function
    def step(sparse):
        with tf.GradientTape() as tape:
            logits = model({"image": images, "sparse": sparse}, training=True)["logits"]
            loss = tf.reduce_mean(loss_fn(logits, targets))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    rng = np.random.default_rng(0)
    first = float(step(np.stack([_guidance(flow, rng) for _ in range(BATCH)])))
    for _ in range(STEPS - 1):
        last = float(step(np.stack([_guidance(flow, rng) for _ in range(BATCH)])))
    assert last < 0.1 * first

    # Scored in inference mode (moving BatchNorm statistics) on guidance it has not seen.
    errors = []
    for _ in range(4):
        sparse = _guidance(flow, rng)
        pred = model({"image": images[:1], "sparse": tf.constant(sparse[None])})["flow"]
        pred = pred.numpy()[0]
        errors.append(flow_lib.endpoint_error(pred, flow))
    zero = flow_lib.endpoint_error(np.zeros_like(flow), flow)
    assert zero > 4.0  # the scene is not nearly static
    print(f"EPE {np.mean(errors):.3f} px (zero flow: {zero:.2f} px)")
    assert np.mean(errors) < 1.0, f"EPE {np.mean(errors):.2f} px (zero flow: {zero:.2f} px)"
