"""The affinity head: learned spatial propagation that keeps the guides, stops at barriers,
starts from the fill-correction flow, validates its options and saves."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from cmp_tf import models
from cmp_tf.models import fills, heads
from tests.helpers import load_config

SIZE = 128
OFFSET = 4  # the fill-correction channels (du, dv, weight, reach) come first


def _sparse(points, size=SIZE):
    """[1, size, size, 3] with the (y, x, u, v) points guided."""
    sparse = np.zeros((1, size, size, 3), np.float32)
    for y, x, u, v in points:
        sparse[0, y, x] = (u, v, 1)
    return sparse


def _propagate(logits, seed, sparse, iterations, self_logit=0.0, stride=1):
    """AffinityPropagation on hand-made neighbour logits [1, h, w, 8]."""
    out = np.concatenate([np.zeros((*logits.shape[:3], OFFSET), np.float32), logits], -1)
    layer = heads.AffinityPropagation(OFFSET, iterations, self_logit, stride)
    return layer([out, seed, sparse]).numpy()[0]


@pytest.fixture(scope="module")
def affinity_model():
    return models.build_cmp(load_config("propagation_affinity"))


def test_model_shapes_and_guided_cells_keep_their_vectors(affinity_model):
    points = [(10, 20, 3.0, -2.0), (101, 91, -5.0, 1.5), (64, 64, 0.5, 7.0)]
    image = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    out = affinity_model({"image": image, "sparse": _sparse(points)})
    assert tuple(out["logits"].shape) == (1, SIZE // 2, SIZE // 2, 2)
    assert tuple(out["flow"].shape) == (1, SIZE, SIZE, 2)
    for y, x, u, v in points:  # the decoder's stride is 2: the guide's cell holds its vector
        np.testing.assert_allclose(out["logits"][0, y // 2, x // 2], (u, v), atol=1e-5)


def test_a_strong_affinity_barrier_stops_motion_crossing_it():
    cells, wall = 16, 8  # no neighbour weight across the line between columns 7 and 8
    logits = np.zeros((1, cells, cells, 8), np.float32)
    for n, (_, dx) in enumerate(heads.AffinityPropagation.OFFSETS):
        if dx == 1:
            logits[0, :, wall - 1, n] = -1e4
        if dx == -1:
            logits[0, :, wall, n] = -1e4
    sparse = _sparse([(8, 5, 4.0, 0.0)], cells)
    seed = np.zeros((1, cells, cells, 2), np.float32)
    walled = _propagate(logits, seed, sparse, iterations=16)
    open_ = _propagate(np.zeros_like(logits), seed, sparse, iterations=16)
    assert walled[8, wall - 1, 0] > 0.1 and open_[8, wall, 0] > 0.1
    np.testing.assert_array_equal(walled[:, wall:], 0.0)
    np.testing.assert_array_equal(walled[8, 5], (4.0, 0.0))


def test_a_step_is_the_3x3_mean_untrained_and_the_seed_with_a_large_self_logit():
    rng = np.random.default_rng(0)
    seed = rng.normal(size=(1, 12, 12, 2)).astype(np.float32)
    sparse = np.zeros((1, 12, 12, 3), np.float32)  # no guidance: nothing is put back
    logits = np.zeros((1, 12, 12, 8), np.float32)
    padded = np.pad(seed[0], ((1, 1), (1, 1), (0, 0)), mode="edge")
    mean = sum(padded[dy:dy + 12, dx:dx + 12] for dy in range(3) for dx in range(3)) / 9
    np.testing.assert_allclose(_propagate(logits, seed, sparse, 1), mean, atol=1e-6)
    np.testing.assert_allclose(_propagate(logits, seed, sparse, 8, self_logit=30.0), seed[0],
                               atol=1e-5)


def test_the_untrained_head_starts_from_the_fill_correction_flow(rng):
    config = load_config("propagation_affinity")
    config.model.options.affinity.self_logit = 30.0  # propagation = identity
    keras.utils.set_random_seed(0)
    affinity = models.build_cmp(config)
    config.model.head = "fill_correction"
    config.model.options.fill_correction.smooth = config.model.options.affinity.smooth
    config.model.options.fill_correction.update(  # as the affinity head
        nearest_refine_finest=True, nearest_resize_finest=False,
        local_affine_residual_finest=False)
    keras.utils.set_random_seed(0)
    fill = models.build_cmp(config)
    image = rng.uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    sparse = _sparse([(30, 40, 6.0, -1.0), (90, 100, -3.0, 2.0)])
    got = affinity({"image": image, "sparse": sparse})["logits"].numpy()
    want = fill({"image": image, "sparse": sparse})["logits"].numpy()
    guided = np.zeros(got.shape[:3], bool)
    guided[0, 15, 20] = guided[0, 45, 50] = True
    np.testing.assert_allclose(got[~guided], want[~guided], atol=1e-4)


def test_the_affinity_logits_get_gradients():
    logits = tf.Variable(np.zeros((1, 8, 8, 8), np.float32))
    seed = tf.constant(np.random.default_rng(1).normal(size=(1, 8, 8, 2)).astype(np.float32))
    sparse = tf.constant(_sparse([(2, 2, 1.0, 1.0)], 8))
    layer = heads.AffinityPropagation(0, 4)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer([logits, seed, sparse])))
    assert np.abs(tape.gradient(loss, logits).numpy()).sum() > 0


def test_the_propagation_is_pads_slices_and_builtin_ops():
    layer = heads.AffinityPropagation(OFFSET, 2, stride=2)
    spec = [tf.TensorSpec((1, None, None, OFFSET + 8)), tf.TensorSpec((1, None, None, 2)),
            tf.TensorSpec((1, None, None, 3))]
    graph = tf.function(lambda a, b, c: layer([a, b, c])).get_concrete_function(*spec).graph
    kinds = {op.type for op in graph.get_operations()}
    assert not {k for k in kinds if "Gather" in k or "Scatter" in k}, kinds
    assert "StridedSlice" in kinds and "Softmax" in kinds


@pytest.mark.parametrize("options, message", [
    ({"iterations": 0}, r"options.affinity.iterations must be an integer in \[1, 64\]; got 0"),
    ({"iterations": 8.5}, r"options.affinity.iterations must be an integer .*got 8.5"),
    ({"iterations": 65}, r"options.affinity.iterations .*got 65"),
    ({"self_logit": "high"}, r"options.affinity.self_logit must be a number; got 'high'"),
    ({"logit_scale": 0.0}, r"options.affinity.logit_scale must be a positive number; got 0.0"),
    ({"gain": "yes"}, r"options.affinity.gain must be True or False; got 'yes'"),
    ({"pull": "tnet"}, r"config.model.options.affinity: pull must be one of"),
    ({"relax": -1}, r"config.model.options.affinity: relax must be an integer >= 0"),
    ({"nearest_levels": 7}, r"options.affinity.nearest_levels must be an integer in \[0, 6\]; "
                            "got 7"),
    ({"nearest_levels": True}, r"options.affinity.nearest_levels must be an integer"),
    ({"nearest_refine": -1}, r"options.affinity.nearest_refine must be an integer >= 0; got -1"),
])
def test_bad_options_name_the_field(options, message):
    config = load_config("propagation_affinity")
    for key, value in options.items():
        del config.model.options.affinity[key]  # as a config.json with any type holds
        config.model.options.affinity[key] = value
    with pytest.raises(ValueError, match=message):
        models.build_cmp(config)


def test_the_head_trains_with_l1_or_l2_only():
    config = load_config("propagation_affinity")
    config.flow.loss = "discrete"
    with pytest.raises(ValueError, match=r"head='affinity' trains with config.flow.loss in"):
        models.build_cmp(config)


def test_keras_file_round_trip_gives_identical_outputs(affinity_model, tmp_path, rng):
    path = tmp_path / "affinity.keras"
    affinity_model.save(path)
    loaded = keras.models.load_model(path)
    inputs = {"image": rng.uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32),
              "sparse": _sparse([(5, 7, 1.0, 2.0), (70, 80, -4.0, 0.0)])}
    want, got = affinity_model(inputs), loaded(inputs)
    for key in ("logits", "flow"):
        np.testing.assert_array_equal(want[key].numpy(), got[key].numpy())
    layer = loaded.get_layer("propagate")
    assert (layer.iterations, layer.self_logit, layer.stride) == (8, 0.0, 2)
    again = heads.AffinityPropagation.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


def test_guided_vectors_from_the_nearest_fill_equal_the_pooled_guidance(rng):
    from cmp_tf.models import fills

    sparse = np.zeros((1, 32, 32, 3), np.float32)
    ys, xs = rng.integers(0, 32, 12), rng.integers(0, 32, 12)
    sparse[0, ys, xs] = np.concatenate([rng.uniform(-9, 9, (12, 2)), np.ones((12, 1))], 1)
    layer = heads.AffinityPropagation(OFFSET, 3, stride=2)
    out = rng.normal(size=(1, 16, 16, OFFSET + 8)).astype(np.float32)
    seed = rng.normal(size=(1, 16, 16, 2)).astype(np.float32)
    nearest = fills.DensePrior(2)(sparse)
    np.testing.assert_allclose(layer([out, seed, nearest, sparse]).numpy(),
                               layer([out, seed, sparse]).numpy(), atol=1e-5)


@pytest.mark.parametrize("levels", [0, 2, 4])
def test_nearest_levels_set_the_output_fills_coarse_level(levels):
    """The output's nearest fill (stride 2) runs on 1 + nearest_levels levels. The decoder's
    input fill at the features' stride (32) is a one-level fill, or, when the output's fill
    has its coarsest level there, that level's output (the grid flooded once)."""
    config = load_config("propagation")
    config.model.options.fill_correction.nearest_levels = levels
    config.model.options.fill_correction.nearest_resize_finest = levels > 0
    model = models.build_cmp(config)
    priors = sorted((layer.stride, layer.coarse_stride, layer.coarse_output)
                    for layer in model.layers if isinstance(layer, fills.DensePrior))
    if levels == 4:
        assert priors == [(2, 32, True)]
        # the shipped recipe leaves the finest level's pass out; the option reaches the layer
        assert not model.get_layer("dense_prior").refine_finest
        config.model.options.fill_correction.update(nearest_refine_finest=True,
                                                    nearest_resize_finest=False)
        assert models.build_cmp(config).get_layer("dense_prior").refine_finest
        assert model.get_layer("dense_prior_scale").input is model.get_layer(
            "dense_prior").output[1]
    else:
        assert priors == [(2, 2 * 2**levels if levels else 0, False), (32, 0, False)]


def test_nearest_resize_finest_reaches_the_layer_and_needs_a_next_level():
    config = load_config("propagation")
    options = config.model.options.fill_correction
    options.nearest_resize_finest = not options.nearest_resize_finest
    layer = models.build_cmp(config).get_layer("dense_prior")
    assert layer.resize_finest == options.nearest_resize_finest
    options.nearest_resize_finest = True
    for field, value in (("nearest_refine_finest", True), ("nearest_levels", 0)):
        bad = config.copy_and_resolve_references()
        bad.model.options.fill_correction[field] = value
        with pytest.raises(ValueError, match=r"fill_correction.nearest_resize_finest=True "
                                             r"resizes the next level's fill"):
            models.build_cmp(bad)
