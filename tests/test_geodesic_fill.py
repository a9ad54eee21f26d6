"""The geodesic nearest fill: each cell follows the guide nearest along the image, a colour edge
on the way counting as a long way round; the exact shortest paths on one level, the choice at
an edge on several; inside the propagation head and its exported files."""
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from cmp_tf import models
from cmp_tf.models import fills
from tests.helpers import fills_spanning
from tests.helpers import load_config
from tests.helpers import tflite_ops

HEIGHT, WIDTH = 64, 96
EDGE = 56  # columns left of it are one colour, the rest another


def _image(left=(200, 40, 40), right=(40, 60, 200), height=HEIGHT, width=WIDTH):
    image = np.empty((1, height, width, 3), np.float32)
    image[:, :, :EDGE] = left
    image[:, :, EDGE:] = right
    return image


def _sparse(points, height=HEIGHT, width=WIDTH):
    sparse = np.zeros((1, height, width, 3), np.float32)
    for y, x, u, v in points:
        sparse[0, y, x] = (u, v, 1)
    return sparse


GUIDES = [(32, 30, 4.0, 0.0), (32, 70, -3.0, 1.0)]  # halfway between them: column 50


def test_cells_follow_the_guide_on_their_side_of_an_image_edge():
    sparse = _sparse(GUIDES)
    fill = fills.GeodesicNearestFill(2, coarse_stride=16)([sparse, _image()]).numpy()[0]
    nearest = fills.DensePrior(2)(sparse).numpy()[0, ..., :2]
    between = (slice(None), slice(26, EDGE // 2))  # left of the edge, past halfway: cells 26, 27
    np.testing.assert_array_equal(nearest[between], np.broadcast_to((-3.0, 1.0),
                                                                    nearest[between].shape))
    np.testing.assert_array_equal(fill[between], np.broadcast_to((4.0, 0.0),
                                                                 fill[between].shape))
    np.testing.assert_array_equal(fill[:, EDGE // 2:], np.broadcast_to(
        (-3.0, 1.0), fill[:, EDGE // 2:].shape))
    # One colour everywhere: the nearest guide in pixels, the border halfway between them.
    flat = fills.GeodesicNearestFill(2, coarse_stride=16)(
        [sparse, _image(right=(200, 40, 40))]).numpy()[0]
    np.testing.assert_array_equal(flat[:, 20:24], nearest[:, 20:24])
    np.testing.assert_array_equal(flat[:, 26:30], nearest[:, 26:30])


def _shortest_paths(image, sparse, cell, colour_weight):
    """The guide (u, v) with the least path cost to each cell of `cell` px, by Dijkstra on the
    8-connected grid of the cells' mean colours: the fill's definition, computed exactly."""
    h, w = image.shape[1] // cell, image.shape[2] // cell
    colour = image[0].reshape(h, cell, w, cell, 3).mean((1, 3)) / 255.0
    guides = sparse[0].reshape(h, cell, w, cell, 3)
    count = guides[..., 2].sum((1, 3))
    vectors = (guides[..., :2] * guides[..., 2:]).sum((1, 3)) / np.maximum(count, 1)[..., None]
    index = np.arange(h * w).reshape(h, w)
    rows, cols, costs = [], [], []
    for dy, dx in fills.NEIGHBOUR_OFFSETS:
        ys, xs = np.mgrid[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        step = np.hypot(dy, dx) * cell * (1 + colour_weight * np.linalg.norm(
            colour[ys + dy, xs + dx] - colour[ys, xs], axis=-1))
        # The path from a guide reaches (ys, xs) from its neighbour: the edge points there.
        rows.append(index[ys + dy, xs + dx].ravel())
        cols.append(index[ys, xs].ravel())
        costs.append(step.ravel())
    graph = coo_matrix((np.concatenate(costs), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(h * w, h * w)).tocsr()
    sources = np.flatnonzero(count.ravel() > 0)
    dist, _, nearest = dijkstra(graph, indices=sources, min_only=True, return_predecessors=True)
    return vectors.reshape(-1, 2)[nearest].reshape(h, w, 2), dist.reshape(h, w)


def test_one_level_gives_the_exact_shortest_paths(rng):
    """On one level every cell's choice is the Dijkstra one, where no second guide's path is
    within a rounding error of it."""
    image = np.repeat(np.repeat(rng.uniform(0, 255, (1, 12, 16, 3)), 4, 1), 4, 2)
    image = image.astype(np.float32)
    points = [(rng.integers(48), rng.integers(64), *rng.normal(size=2)) for _ in range(6)]
    sparse = _sparse(points, 48, 64)
    layer = fills.GeodesicNearestFill(4, coarse_stride=4, resize_finest=False,
                                      colour_weight=3.0)
    fill = layer([sparse, image]).numpy()[0]
    want, _ = _shortest_paths(image, sparse, 4, 3.0)
    np.testing.assert_allclose(fill, want, atol=1e-5)


def test_no_guide_is_zero_flow_and_odd_sizes_work(rng):
    image = rng.uniform(0, 255, (2, 50, 70, 3)).astype(np.float32)
    layer = fills.GeodesicNearestFill(2, coarse_stride=16)
    empty = layer([np.zeros((2, 50, 70, 3), np.float32), image]).numpy()
    assert empty.shape == (2, 25, 35, 2) and not empty.any()
    sparse = _sparse([(49, 69, 2.0, -1.0)], 50, 70)
    one = layer([sparse, image[:1]]).numpy()
    np.testing.assert_array_equal(one, np.broadcast_to((2.0, -1.0), one.shape))


def test_options_are_checked_and_survive_a_spec():
    for kwargs, message in ((dict(colour_weight=0.0), "colour_weight must be a positive"),
                            (dict(passes=-1), "passes must be an integer >= 0"),
                            (dict(coarse_stride=24), "coarse_stride must be a power-of-two"),
                            (dict(coarse_stride=2), "coarse_stride must be a power-of-two"),
                            (dict(resize_finest=1), "resize_finest must be True or False")):
        with pytest.raises(ValueError, match=message):
            fills.GeodesicNearestFill(2, **kwargs)
    layer = fills.GeodesicNearestFill(2, coarse_stride=64, passes=3, colour_weight=20.0,
                                      resize_finest=False)
    again = fills.fill_from_spec(fills.fill_spec(layer))
    assert type(again) is fills.GeodesicNearestFill
    assert fills.fill_spec(again) == fills.fill_spec(layer)


EXPORTED = (128, 160)  # the smallest crops of the recipe's encoders


def _geodesic_config():
    config = load_config("propagation_geodesic")
    config.data.crop = EXPORTED
    return config


def test_the_head_blends_the_geodesic_fill_as_a_third_by_its_own_logit():
    from cmp_tf.models import heads

    config = _geodesic_config()
    model = models.build_cmp(config)
    blend = model.get_layer("add_prior")
    assert blend.geodesic and model.get_layer("geodesic_out").coarse_stride == 32
    assert model.get_layer("decoder").output.shape[-1] == 3  # a, the reach, g
    assert heads.BlendFills.from_config(blend.get_config()).geodesic
    # Untrained, the mean of the three fills; the gain reads the nearest fill's distance.
    out = np.zeros((1, 2, 2, 3), np.float32)  # a, reach, g
    nearest = np.concatenate([np.full((1, 2, 2, 2), 9.0), np.zeros((1, 2, 2, 1))], -1)
    smooth, followed = np.full((1, 2, 2, 2), 1.0), np.full((1, 2, 2, 2), 2.0)
    layer = heads.BlendFills(gain=True, correction=False, geodesic=True)
    fills_in = [x.astype(np.float32) for x in (nearest, smooth, followed)]
    np.testing.assert_allclose(layer([out, *fills_in]), 4.0, rtol=1e-6)
    out[..., 2] = 60.0  # g large: the geodesic fill alone
    np.testing.assert_allclose(layer([out, *fills_in]), 2.0, rtol=1e-6)
    nearest[..., 2] = 1e4  # far from every guide: the gain takes the flow to 0
    np.testing.assert_allclose(layer([out, nearest.astype(np.float32), *fills_in[1:]]), 0.0,
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"blends 3 fills; got 2"):
        layer([out, *fills_in[:2]])
    config.model.options.fill_correction.geodesic_passes = -2
    with pytest.raises(ValueError, match=r"options.fill_correction.geodesic_passes must be"):
        models.build_cmp(config)


@pytest.mark.slow
def test_exported_files_compute_the_geodesic_fill_with_builtin_ops(tmp_path):
    import onnx

    from export import export_lib

    config = _geodesic_config()
    model = models.build_cmp(config)
    with fills_spanning(model, 2 * max(EXPORTED)):
        report = export_lib.export(model, config, str(tmp_path), formats=("tflite", "onnx"),
                                   size=EXPORTED, calibration=2, parity_samples=2,
                                   repeats=1, encoder=False, log=lambda _: None)
    builtins, custom = tflite_ops(tmp_path / "model.tflite")
    assert not custom and "DEPTHWISE_CONV_2D" in builtins
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert sorted(i.name for i in graph.input) == ["image", "sparse"]
    parity = {row["artifact"]: row for row in report["rows"]}
    for name in ("model.tflite", "model.onnx"):
        assert parity[name]["max_abs_px"] < 1e-3, parity[name]
