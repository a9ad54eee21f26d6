"""The local affine fill: moving least squares on a pyramid of exact guide moments; affine
motion kept, defined with any number of guides; inside the head and its exported files."""
import numpy as np
import pytest
import tensorflow as tf

from cmp_tf import models
from cmp_tf.models import fills
from cmp_tf.models import heads
from cmp_tf.models import layers as L
from tests.helpers import load_config
from tests.helpers import tflite_ops

SIZE = 96


def _guides(rng, count, size=SIZE, motion=None, noise=0.0):
    """sparse [1, size, size, 3] with `count` guides of `motion(x, y)` (+ Gaussian noise)."""
    flat = rng.choice(size * size, count, replace=False)
    ys, xs = flat // size, flat % size
    sparse = np.zeros((1, size, size, 3), np.float32)
    sparse[0, ys, xs, :2] = motion(xs, ys) + rng.normal(0, noise, (count, 2)) if noise \
        else motion(xs, ys)
    sparse[0, ys, xs, 2] = 1.0
    return sparse


def _affine(x, y):
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    return np.stack([0.06 * x - 0.03 * y + 2.0, 0.02 * x + 0.05 * y - 3.0], -1)


def _cell_centres(size, stride):
    centre = np.arange(size // stride) * stride + (stride - 1) / 2
    y, x = np.meshgrid(centre, centre, indexing="ij")
    return x, y


def test_pooled_and_blurred_moments_are_those_of_the_cells_they_gather(rng):
    import tensorflow as tf

    sparse = _guides(rng, 40, motion=_affine)
    guidance = fills.masked_guidance(tf.constant(sparse))
    fine = tf.nn.conv2d(guidance, fills._cell_moments_kernel(2), 2, "VALID")
    for _ in range(2):
        fine = tf.nn.conv2d(fine, fills._pool_moments_kernel(), 2, "SAME")
    direct = tf.nn.conv2d(guidance, fills._cell_moments_kernel(8), 8, "VALID")
    np.testing.assert_allclose(fine.numpy(), direct.numpy(), atol=1e-3)
    # The two blur passes: each cell's neighbours within the radius, weighed by a Gaussian of
    # the distance between centres, their moments carried to the cell's centre.
    radius, sigma = fills.LocalAffineFill.RADIUS, fills.LocalAffineFill.SIGMA
    along_x, along_y = fills._blur_moments_kernels(radius, sigma)
    cells = direct.numpy()
    blurred = tf.nn.conv2d(tf.nn.conv2d(cells, along_x, 1, "SAME"), along_y, 1, "SAME").numpy()
    h, w = cells.shape[1:3]
    for y, x in ((0, 0), (5, 7), (h - 1, w - 2)):
        want = sum(np.exp(-(oy * oy + ox * ox) / (2 * sigma**2))
                   * cells[0, y + oy, x + ox] @ fills._moment_shift(ox, oy)
                   for oy in range(-radius, radius + 1) for ox in range(-radius, radius + 1)
                   if 0 <= y + oy < h and 0 <= x + ox < w)
        np.testing.assert_allclose(blurred[0, y, x], want, rtol=1e-4, atol=1e-3)
    # Carried back and forth, the moments come back: the shift is exact to second order.
    there_and_back = fills._moment_shift(0.7, -1.3) @ fills._moment_shift(-0.7, 1.3)
    np.testing.assert_allclose(there_and_back, np.eye(12), atol=1e-12)


# Fits that span several guides (a support of 2) with a light ridge: the regime where the
# fill is a least-squares fit, not an interpolation.
SPANNING = {"support": 2.0, "ridge": 1e-3}


@pytest.mark.parametrize("stride", [1, 2])
def test_affine_motion_is_kept_where_pull_push_bends_it(stride, rng):
    sparse = _guides(rng, 150, motion=_affine)
    fill = fills.LocalAffineFill(stride, **SPANNING)(sparse).numpy()[0]
    assert fill.shape == (SIZE // stride, SIZE // stride, 2)
    truth = _affine(*_cell_centres(SIZE, stride))
    pull_push = fills.PullPushFill(stride, pull="tent", relax=4)(sparse).numpy()[0]
    inside = slice(8 // stride, -8 // stride)  # bilinear resizes hold the border cells
    error = np.abs(fill - truth)[inside, inside].mean()
    assert error < 0.02 and error < 0.25 * np.abs(pull_push - truth)[inside, inside].mean()


def test_one_guide_moves_everything_no_guide_nothing_and_any_size_works():
    sparse = np.zeros((1, 45, 70, 3), np.float32)
    none = fills.LocalAffineFill(2)(sparse).numpy()
    assert none.shape == (1, 22, 35, 2) and not none.any()
    sparse[0, 43, 69] = (4.0, -2.0, 1.0)  # in the last cell, by the border
    one = fills.LocalAffineFill(2)(sparse).numpy()
    np.testing.assert_allclose(one, np.broadcast_to((4.0, -2.0), one.shape), atol=1e-4)
    sparse[0, 3, 5] = (-4.0, 2.0, 1.0)
    two = fills.LocalAffineFill(2)(sparse).numpy()[0]
    assert np.isfinite(two).all() and np.abs(two).max() < 4.0 + 1e-3
    assert two[1, 2, 0] < -3.0 and two[20, 33, 0] > 3.0  # each guide's motion near it


@pytest.mark.parametrize("options", [{}, {"fit_stride": 4, "residual_finest": True}],
                         ids=["fits_at_stride", "residual_finest"])
def test_clamped_fill_never_leaves_the_guides_range(options):
    """A column of still guides and one of moving guides beside it, nothing beyond: the
    slope between them, extrapolated, overshoots the moving guides unclamped."""
    sparse = np.zeros((2, 64, 64, 3), np.float32)
    sparse[0, 8:60:8, 12] = (0.0, 0.0, 1.0)
    sparse[0, 8:60:8, 28] = (5.0, -2.0, 1.0)
    sparse[1, 10, 10] = (-3.0, 1.0, 1.0)  # the second image: its own range
    free = fills.LocalAffineFill(2, clamp=False, **options)(sparse).numpy()
    assert free[0, ..., 0].max() > 5.5 and free[0, ..., 1].min() < -2.2  # what the clamp is for
    fill = fills.LocalAffineFill(2, **options)(sparse).numpy()
    assert fill[0, ..., 0].min() >= 0 and fill[0, ..., 0].max() <= 5.0 + 1e-6
    assert fill[0, ..., 1].min() >= -2.0 - 1e-6 and fill[0, ..., 1].max() <= 0
    np.testing.assert_allclose(fill[1], np.broadcast_to((-3.0, 1.0), fill[1].shape), atol=1e-4)
    # Vectors off the guides are not guidance: neither fitted nor in the range.
    sparse[:, 40:, 40:, :2] = 50.0
    np.testing.assert_array_equal(fills.LocalAffineFill(2, **options)(sparse).numpy(), fill)


@pytest.mark.parametrize("options", [{}, {"fit_stride": 4, "residual_finest": True}],
                         ids=["fits_at_stride", "residual_finest"])
@pytest.mark.parametrize("mask", [0.5, 0.999])
def test_a_mask_below_one_keeps_the_clamp_within_the_guides_range(options, mask):
    """A cell whose summed mask is under 1 (a resized sparse map) was counted half guided: its
    vectors less half of the unguided offset, and the range's ends thousands of pixels below
    every guide (the shipped model read -4122 px at a guide of (6, -4) with mask 0.5)."""
    sparse = np.zeros((1, 64, 64, 3), np.float32)
    sparse[0, 8:60:8, 12] = (0.0, 0.0, mask)
    sparse[0, 8:60:8, 28] = (5.0, -2.0, mask)
    fill = fills.LocalAffineFill(2, **options)(sparse).numpy()
    assert fill[..., 0].min() >= 0 and fill[..., 0].max() <= 5.0 + 1e-5
    assert fill[..., 1].min() >= -2.0 - 1e-5 and fill[..., 1].max() <= 1e-5


def test_local_affine_fill_checks_its_options_and_round_trips_its_spec():
    for kwargs, message in (({"fit_stride": 6}, "fit_stride must be stride=2 times a power"),
                            ({"fit_stride": 1}, "fit_stride must be stride=2 times a power"),
                            ({"support": 0}, "support must be a positive number"),
                            ({"ridge": float("nan")}, "ridge must be a positive number"),
                            ({"clamp": 1}, "clamp must be True or False"),
                            ({"residual_finest": 1}, "residual_finest must be True or False"),
                            ({"residual_finest": True}, "set fit_stride > stride=2")):
        with pytest.raises(ValueError, match=message):
            fills.LocalAffineFill(2, **kwargs)
    assert fills.LocalAffineFill(2).fit_stride == fills.LocalAffineFill.FIT_STRIDE
    assert fills.LocalAffineFill(32).fit_stride == 32
    spec = fills.fill_spec(fills.LocalAffineFill(2, fit_stride=4, support=0.5, ridge=0.2,
                                                 residual_finest=True))
    assert spec == {"layer": "LocalAffineFill", "stride": 2, "max_size": 2048, "fit_stride": 4,
                    "support": 0.5, "ridge": 0.2, "clamp": True, "residual_finest": True}
    again = fills.fill_from_spec(spec)
    assert isinstance(again, fills.LocalAffineFill) and fills.fill_spec(again) == spec


def _at_guides(fill, sparse, stride):
    """The fill at each guide's cell [K, 2], and the guides' vectors [K, 2]."""
    ys, xs = np.nonzero(sparse[0, ..., 2])
    return fill[0, ys // stride, xs // stride], sparse[0, ys, xs, :2]


def test_residual_finest_keeps_the_fits_slope_and_meets_each_guide(rng):
    # Affine motion, fits that span several guides: the fits hold it, the residuals are
    # about 0, and so is the change (inside: bilinear resizes hold the border cells).
    sparse = _guides(rng, 150, motion=_affine)
    resized = fills.LocalAffineFill(2, fit_stride=4, **SPANNING)(sparse).numpy()[0]
    residual = fills.LocalAffineFill(2, fit_stride=4, residual_finest=True,
                                     **SPANNING)(sparse).numpy()[0]
    truth = _affine(*_cell_centres(SIZE, 2))
    inside = slice(4, -4)
    error = np.abs(residual - truth)[inside, inside].mean()
    assert error < 0.02 and error < np.abs(resized - truth)[inside, inside].mean() + 0.002
    # Guides that no affine motion fits: the guided cells come much nearer their guides'
    # vectors than the 4 px fit resized does.
    sparse = _guides(rng, 40, motion=lambda x, y: rng.normal(0, 4, (len(x), 2)))
    errors = {}
    for residual_finest in (False, True):
        fill = fills.LocalAffineFill(2, fit_stride=4, residual_finest=residual_finest)(sparse)
        at, want = _at_guides(fill.numpy(), sparse, 2)
        errors[residual_finest] = np.abs(at - want).mean()
    assert errors[True] < 0.5 * errors[False], errors


def test_residual_finest_with_no_one_and_two_guides_at_any_size():
    import keras

    layer = fills.LocalAffineFill(2, fit_stride=4, residual_finest=True)
    sparse = np.zeros((1, 45, 70, 3), np.float32)
    none = layer(sparse).numpy()
    assert none.shape == (1, 22, 35, 2) and not none.any()
    sparse[0, 43, 69] = (4.0, -2.0, 1.0)  # in the last cell, whose fit cell is half outside
    one = layer(sparse).numpy()
    np.testing.assert_allclose(one, np.broadcast_to((4.0, -2.0), one.shape), atol=1e-4)
    sparse[0, 3, 5] = (-4.0, 2.0, 1.0)
    two = layer(sparse).numpy()
    assert two[0, 1, 2, 0] < -3.0 and two[0, 21, 34, 0] > 3.0  # each guide's motion near it
    inputs = keras.Input((None, None, 3))
    free = keras.Model(inputs, fills.LocalAffineFill(2, fit_stride=4, residual_finest=True)(
        inputs))
    np.testing.assert_allclose(free(sparse).numpy(), two, atol=1e-5)


def _config():
    config = load_config("propagation")
    config.model.options.fill_correction.smooth = "local_affine"
    config.model.decoder_combo = (1, 2)  # minimum side 64: a faster export
    return config


def test_the_head_starts_from_the_mean_of_the_nearest_and_local_affine_fills(rng):
    config = _config()
    config.model.options.fill_correction.gain = False
    model = models.build_cmp(config)
    assert "pull_push_out" not in {layer.name for layer in model.layers}
    sparse = _guides(rng, 30, size=128, motion=_affine)
    inputs = {"image": rng.uniform(0, 255, (1, 128, 128, 3)).astype(np.float32),
              "sparse": sparse}
    recipe = next(layer for layer in model.layers
                  if isinstance(layer, fills.DensePrior) and layer.stride == 2)
    # the same fill on its own (its spec leaves out the second, coarse output)
    nearest = fills.fill_from_spec(fills.fill_spec(recipe))(sparse).numpy()[..., :2]
    smooth = fills.fill_from_spec(fills.fill_spec(model.get_layer("local_affine_out")))
    mean = 0.5 * (nearest + smooth(sparse).numpy())
    want = L.ResizeLike()([mean, inputs["image"]]).numpy()
    np.testing.assert_allclose(model(inputs)["flow"].numpy(), want, atol=0.05)
    config.model.options.fill_correction.edge_features = 2
    with pytest.raises(ValueError, match="edge_features=2 shapes the edge-aware fill"):
        models.build_cmp(config)


def test_the_head_option_for_residual_finest_reaches_the_fill():
    config = _config()
    config.model.options.fill_correction.local_affine_residual_finest = True
    layer = models.build_cmp(config).get_layer("local_affine_out")
    assert (layer.stride, layer.fit_stride, layer.residual_finest) == (2, 4, True)
    config.model.options.fill_correction.smooth = "pull_push"
    with pytest.raises(ValueError, match="local_affine_residual_finest=True changes the local "
                                         "affine fill: set smooth='local_affine'"):
        models.build_cmp(config)


@pytest.mark.slow
@pytest.mark.parametrize("residual_finest", [True, False])
def test_exported_files_compute_the_local_affine_fill_with_builtin_ops(residual_finest, tmp_path):
    import onnx

    from export import export_lib

    config = _config()
    config.model.options.fill_correction.local_affine_residual_finest = residual_finest
    model = models.build_cmp(config)
    report = export_lib.export(model, config, str(tmp_path),
                               formats=("tflite", "tflite_fp16", "onnx"),
                               size=(64, 64), calibration=2, parity_samples=2, repeats=1,
                               encoder=False, log=lambda _: None)
    builtins, custom = tflite_ops(tmp_path / "model.tflite")
    assert not custom and {"CONV_2D", "RESIZE_BILINEAR", "DIV"} <= builtins
    # No comparison and select: LiteRT's XNNPACK delegate runs neither, and each splits its graph.
    assert not {"GREATER", "SELECT_V2"} & builtins, builtins
    # The fills and their blend take channels by 1 x 1 convolutions, which LiteRT runs
    # faster than slices (fills.copy_channels): slices left keep the channel count or one
    # cell (the clamp's range).
    assert _channel_slices(tmp_path / "model.tflite") == []
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert sorted(i.name for i in graph.input) == ["image", "sparse"]
    parity = {row["artifact"]: row for row in report["rows"]}
    for name in ("model.tflite", "model.onnx"):
        assert parity[name]["max_abs_px"] < 1e-3, parity[name]
    # Float16 weights round small constants to 0: the fill must not divide by one.
    assert parity["model_fp16.tflite"]["max_abs_px"] < 0.05, parity["model_fp16.tflite"]


def _channel_slices(path):
    """(input shape, output shape) of each slice in a .tflite file that changes the channel
    count and keeps more than one cell."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    shapes = {t["index"]: t["shape"].tolist() for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("STRIDED_SLICE", "SLICE"):
            source, result = shapes[op["inputs"][0]], shapes[op["outputs"][0]]
            if source[-1] != result[-1] and result[1] * result[2] > 1:
                found.append((source, result))
    return found


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_the_litert_forms_of_the_fills_and_their_blend_equal_the_default_ones(size, rng):
    """What the LiteRT exporter traces (`litert_form`: channels taken by 1 x 1 convolutions)
    gives the default form's output to the bit: the shipped local affine fill, the shipped
    nearest fill's levels in their compact form, and the blend of fills, at whole and at odd
    sizes."""
    h, w = size
    sparse = np.zeros((2, h, w, 3), np.float32)
    ys, xs = rng.integers(0, h, 30), rng.integers(0, w, 30)
    sparse[0, ys, xs] = np.c_[rng.normal(0, 4, (30, 2)), np.ones(30)]
    sparse[1, ys[:2], xs[:2]] = (2.0, -1.0, 1.0)
    sparse = tf.constant(sparse)
    shipped = [(fills.LocalAffineFill, dict(fit_stride=4, residual_finest=True)),
               (fills.DensePrior, dict(coarse_stride=32, refine=1, refine_finest=False,
                                       resize_finest=True, compact=True))]
    made = {}
    for kind, options in shipped:
        default = kind(2, **options)(sparse).numpy()
        made[kind] = kind(2, litert_form=True, **options)(sparse).numpy()
        np.testing.assert_array_equal(made[kind], default)
        assert kind.from_config(kind(2, litert_form=True, **options).get_config()).litert_form
    with pytest.raises(ValueError, match="litert_form must be True or False"):
        fills.LocalAffineFill(2, litert_form=1)
    blend = heads.BlendFills(gain=True, stride=2, correction=False)
    out = tf.constant(rng.normal(0, 1, (*made[fills.DensePrior].shape[:3], 2)), tf.float32)
    inputs = [out, made[fills.DensePrior], made[fills.LocalAffineFill]]
    default = blend(inputs).numpy()
    blend.litert_form = True
    np.testing.assert_array_equal(blend(inputs).numpy(), default)


def test_copy_channels_copies_exactly_in_both_forms(rng):
    """`copy_channels` as one 1 x 1 convolution (the LiteRT form) and as slices and a
    concatenation: the same map, with channels repeated, reordered and zeros between; a
    channel count unknown when traced is refused."""
    x = tf.constant(rng.normal(0, 1e3, (2, 5, 7, 4)), tf.float32)
    columns = (2, 3, None, 0, 1, 2, 3, 0, None, None)
    want = np.concatenate([x.numpy()[..., c:c + 1] if c is not None
                           else np.zeros((2, 5, 7, 1), np.float32) for c in columns], -1)
    for conv in (True, False):
        np.testing.assert_array_equal(fills.copy_channels(x, columns, conv).numpy(), want)
        assert fills.take_channels(x, 0, 4, conv) is x
    with pytest.raises(ValueError, match=r"channels below it or None; got channels=4, "
                                         r"columns=\(4,\)"):
        fills.copy_channels(x, (4,), True)
    spec = tf.TensorSpec((1, None, None, None), tf.float32)
    with pytest.raises(ValueError, match="known channel count"):
        tf.function(lambda t: fills.take_channels(t, 0, 1, True),
                    input_signature=[spec]).get_concrete_function()
