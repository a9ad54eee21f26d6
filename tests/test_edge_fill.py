"""The edge-aware fill: guidance spread along regions of one colour, stopping at image edges;
exact where guided, plain where the image is; inside the shipped head and its exported files."""
import numpy as np
import pytest

from cmp_tf import models
from cmp_tf.models import fills
from tests.helpers import fills_spanning
from tests.helpers import load_config
from tests.helpers import tflite_ops

SIZE = 64
EDGE = 40  # columns left of it are one colour, the rest another


def _two_regions(left=(200, 40, 40), right=(40, 60, 200)):
    image = np.empty((1, SIZE, SIZE, 3), np.float32)
    image[:, :, :EDGE] = left
    image[:, :, EDGE:] = right
    return image


def _sparse(points, size=SIZE):
    sparse = np.zeros((1, size, size, 3), np.float32)
    for y, x, u, v in points:
        sparse[0, y, x] = (u, v, 1)
    return sparse


GUIDES = [(32, 4, 4.0, 0.0), (32, 60, -3.0, 1.0)]  # the nearest fill's border: column 32


def test_motion_stops_at_the_image_edge_not_halfway_between_the_guides():
    fill = fills.EdgeAwareFill(1)([_sparse(GUIDES), _two_regions()]).numpy()[0]
    nearest = fills.DensePrior(1)(_sparse(GUIDES)).numpy()[0, ..., :2]
    between = (slice(None), slice(34, EDGE))  # left of the edge, nearer the right guide
    # Coarse levels average colours across the edge, so a little motion leaks through: within
    # 0.5 px of vectors 7 px apart.
    np.testing.assert_allclose(nearest[between], np.broadcast_to((-3.0, 1.0), nearest[between].shape))
    np.testing.assert_allclose(fill[between], np.broadcast_to((4.0, 0.0), fill[between].shape),
                               atol=0.5)
    np.testing.assert_allclose(fill[:, EDGE + 1:], np.broadcast_to(
        (-3.0, 1.0), fill[:, EDGE + 1:].shape), atol=0.5)
    # One colour everywhere: the boundary is the plain pull-push's, between the guides.
    plain = fills.EdgeAwareFill(1)([_sparse(GUIDES), _two_regions(right=(200, 40, 40))])
    assert abs(plain.numpy()[0, 32, 37, 0] - 4.0) > 1.0


def test_the_edge_aware_baseline_follows_the_image_edge_at_any_size():
    from cmp_tf.evaluation import baselines

    image = _two_regions()[0].astype(np.uint8)[:61, :63]  # odd sizes: padded, then cropped
    points = np.array([[x, y] for y, x, _, _ in GUIDES], np.float32)
    points[1, 0] = 60
    vectors = np.array([[u, v] for _, _, u, v in GUIDES], np.float32)
    flow = baselines.edge_aware(image, points, vectors)
    assert flow.shape == (61, 63, 2)
    np.testing.assert_allclose(flow[32, 4], (4.0, 0.0))  # the guided pixels keep their vectors
    np.testing.assert_allclose(flow[32, 60], (-3.0, 1.0))
    assert np.abs(flow[:, 34:EDGE - 1] - (4.0, 0.0)).max() < 0.5
    assert np.abs(flow[:, EDGE + 1:] - (-3.0, 1.0)).max() < 0.5


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_guided_cells_keep_their_mean_vector_one_guide_moves_everything(stride, rng):
    image = rng.uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    points = [(10, 20, 3.0, -2.0), (50, 41, -5.0, 1.5), (33, 60, 0.5, 7.0)]
    fill = fills.EdgeAwareFill(stride)([_sparse(points), image]).numpy()[0]
    assert fill.shape == (SIZE // stride, SIZE // stride, 2)
    for y, x, u, v in points:
        np.testing.assert_allclose(fill[y // stride, x // stride], (u, v), atol=1e-5)
    one = fills.EdgeAwareFill(stride)([_sparse(points[:1]), image]).numpy()[0]
    np.testing.assert_allclose(one, np.broadcast_to((3.0, -2.0), one.shape), atol=1e-5)
    none = fills.EdgeAwareFill(stride)([np.zeros((1, SIZE, 48, 3), np.float32),
                                        image[:, :, :48]]).numpy()
    assert none.shape == (1, SIZE // stride, 48 // stride, 2) and not none.any()


def test_odd_sizes_and_options_are_checked(rng):
    image = rng.uniform(0, 255, (1, 45, 70, 3)).astype(np.float32)
    fill = fills.EdgeAwareFill(2)([_sparse([(7, 9, 1.0, 2.0)], 45)[:, :, :45], image[:, :, :45]])
    assert fill.shape == (1, 22, 22, 2) and np.isfinite(fill.numpy()).all()
    with pytest.raises(ValueError, match="sigma must be a positive number; got 0"):
        fills.EdgeAwareFill(2, sigma=0)
    with pytest.raises(ValueError, match="relax must be an integer >= 0; got -1"):
        fills.EdgeAwareFill(2, relax=-1)
    with pytest.raises(ValueError, match="finest_relax must be an integer >= 0; got 1.5"):
        fills.EdgeAwareFill(2, finest_relax=1.5)
    spec = fills.fill_spec(fills.EdgeAwareFill(2, sigma=0.2, relax=3))
    assert spec == {"layer": "EdgeAwareFill", "stride": 2, "max_size": 2048, "sigma": 0.2,
                    "relax": 3, "finest_relax": 3}
    again = fills.fill_from_spec(spec)
    assert isinstance(again, fills.EdgeAwareFill) and fills.fill_spec(again) == spec


def test_edge_features_reshape_the_weights(rng):
    sparse, cells = _sparse(GUIDES), SIZE // 2
    two, one = _two_regions(), _two_regions(right=(200, 40, 40))
    layer = fills.EdgeAwareFill(2)
    plain = layer([sparse, two]).numpy()
    zero = np.zeros((1, cells, cells, 3), np.float32)  # scale 1, no embedding distance
    np.testing.assert_allclose(layer([sparse, two, zero]).numpy(), plain, atol=1e-5)
    # A colour scale near zero lets motion cross the colour edge as if it were not there.
    blind = np.full((1, cells, cells, 1), -30.0, np.float32)
    np.testing.assert_allclose(layer([sparse, two, blind]).numpy(), layer([sparse, one]).numpy(),
                               atol=1e-3)
    # An embedding edge where the colour is one stops motion there.
    wall = np.zeros((1, cells, cells, 2), np.float32)
    wall[:, :, EDGE // 2:, 1] = 10.0
    walled = layer([sparse, one, wall]).numpy()[0]
    np.testing.assert_allclose(walled[:, 17:EDGE // 2], np.broadcast_to(
        (4.0, 0.0), walled[:, 17:EDGE // 2].shape), atol=0.5)
    # Features far apart everywhere underflow every weight: the fill stays finite, one guide's.
    wild = rng.normal(0, 30, (1, cells, cells, 4)).astype(np.float32)
    lone = layer([_sparse(GUIDES[:1]), two, wild]).numpy()
    np.testing.assert_allclose(lone, np.broadcast_to((4.0, 0.0), lone.shape), atol=1e-5)


def test_learned_edge_features_get_gradients_and_are_checked():
    import tensorflow as tf

    config = _edge_config()
    config.model.options.fill_correction.edge_features = 3
    model = models.build_cmp(config)
    assert model.get_layer("decoder").output.shape[-1] == 4 + 3
    features = tf.zeros((1, SIZE // 2, SIZE // 2, 3))
    with tf.GradientTape() as tape:
        tape.watch(features)
        fill = model.get_layer("edge_aware_out")([_sparse(GUIDES), _two_regions(), features])
        loss = tf.reduce_sum(fill[:, :, 15:20])  # cells the two guides' motions compete for
    grad = tape.gradient(loss, features).numpy()
    assert np.abs(grad[..., 0]).max() > 1e-3 and np.isfinite(grad).all()
    config.model.options.fill_correction.update(smooth="pull_push")
    with pytest.raises(ValueError, match=r"edge_features=3 shapes the edge-aware fill: set "
                                         r"smooth='edge_aware' or 'both'"):
        models.build_cmp(config)
    config.model.options.fill_correction.update(smooth="edge_aware", edge_features=-1)
    with pytest.raises(ValueError, match=r"options.fill_correction.edge_features must be an "
                                         r"integer >= 0; got -1"):
        models.build_cmp(config)


def _edge_config():
    config = load_config("propagation_edges")
    config.model.decoder_combo = (1, 2)  # minimum side 64: a faster export
    return config


def test_the_head_reads_the_image_and_starts_from_the_mean_of_its_fills(rng):
    from cmp_tf.models import layers as L

    config = _edge_config()
    config.model.options.fill_correction.gain = False
    model = models.build_cmp(config)
    assert model.get_layer("edge_aware_out") is not None
    inputs = {"image": _two_regions(), "sparse": _sparse(GUIDES)}
    nearest = fills.DensePrior(2)(inputs["sparse"])[..., :2]
    edge = fills.EdgeAwareFill(2, finest_relax=0)([inputs["sparse"], inputs["image"]])
    want = L.ResizeLike()([0.5 * (nearest + edge), inputs["image"]]).numpy()
    np.testing.assert_allclose(model(inputs)["flow"].numpy(), want, atol=0.05)
    config.model.options.fill_correction.smooth = "bilateral"
    with pytest.raises(ValueError, match=r"options.fill_correction.smooth must be one of "
                                         r"\('pull_push', 'local_affine', 'edge_aware', "
                                         r"'both'\); got 'bilateral'"):
        models.build_cmp(config)
    config.model.options.fill_correction.update(smooth="edge_aware", sigma=-1.0)
    with pytest.raises(ValueError, match=r"options.fill_correction: sigma must be a positive"):
        models.build_cmp(config)


def test_three_fills_blend_to_their_mean_untrained_and_each_alone_by_its_logit():
    from cmp_tf.models import heads

    nearest = np.full((1, 2, 2, 3), 4.0, np.float32)
    smooth, edge = np.full((1, 2, 2, 2), 1.0, np.float32), np.full((1, 2, 2, 2), -2.0, np.float32)
    blend = heads.BlendFills(edge=True)
    assert blend.channels == 4  # (du, dv, a, b)
    out = np.zeros((1, 2, 2, 4), np.float32)
    np.testing.assert_allclose(blend([out, nearest, smooth, edge]), 1.0, rtol=1e-6)
    out[..., 3] = 60.0  # b large: the edge-aware fill alone, plus the correction
    out[..., 0] = 0.5
    np.testing.assert_allclose(blend([out, nearest, smooth, edge])[..., 0], -1.5, rtol=1e-6)
    config = _edge_config()
    config.model.options.fill_correction.update(smooth="both", gain=True)
    model = models.build_cmp(config)
    assert model.get_layer("decoder").output.shape[-1] == 5  # du, dv, a, reach, b
    assert {"pull_push_out", "edge_aware_out"} <= {layer.name for layer in model.layers}
    again = heads.BlendFills.from_config(model.get_layer("add_prior").get_config())
    assert again.edge and again.gain


@pytest.mark.slow
def test_exported_files_compute_the_edge_aware_fill_with_builtin_ops(tmp_path):
    import onnx

    from export import export_lib

    config = _edge_config()
    model = models.build_cmp(config)
    with fills_spanning(model, 2 * SIZE):
        report = export_lib.export(model, config, str(tmp_path), formats=("tflite", "onnx"),
                                   size=(SIZE, SIZE), calibration=2, parity_samples=2,
                                   repeats=1, encoder=False, log=lambda _: None)
    builtins, custom = tflite_ops(tmp_path / "model.tflite")
    assert not custom and {"EXP", "RESIZE_NEAREST_NEIGHBOR"} <= builtins
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert sorted(i.name for i in graph.input) == ["image", "sparse"]
    assert {"Exp", "Resize"} <= {node.op_type for node in graph.node}
    parity = {row["artifact"]: row for row in report["rows"]}
    for name in ("model.tflite", "model.onnx"):
        assert parity[name]["max_abs_px"] < 1e-3, parity[name]
