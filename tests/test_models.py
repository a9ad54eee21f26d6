"""The CMP network: exact sizes of the paper's configs, strides, gradients, saving, errors."""
import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from cmp_tf import models
from cmp_tf.models import fills
from cmp_tf.models import heads
from cmp_tf.models import layers as L
from tests.helpers import load_config

# recipe: (trainable, BatchNorm statistics, logits stride). Paper counts are the reference's
# minus the 400 weights of its duplicated mask channel (docs/reference.md §2).
EXPECTED = {
    "alexnet_yfcc": (32_502_294, 20_736, 32),
    "resnet50_semiauto": (28_516_022, 57_472, 2),
    "resnet50_yfcc": (25_497_110, 54_720, 8),
    "mobile": (6_526_374, 27_984, 2),
    "cpu_bins": (1_855_174, 13_936, 2),
}
PAPER_ENCODERS = {"alexnet_yfcc": 31_037_760, "resnet50_semiauto": 24_032_576}
SLOW = {"alexnet_yfcc", "resnet50_semiauto", "resnet50_yfcc", "mobile"}


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def _inputs(rng, batch, size, points=5):
    image = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    sparse = np.zeros((batch, size, size, 3), np.float32)
    for b in range(batch):
        ys, xs = rng.integers(0, size, points), rng.integers(0, size, points)
        sparse[b, ys, xs, :2] = rng.uniform(-10, 10, (points, 2))
        sparse[b, ys, xs, 2] = 1
    return {"image": image, "sparse": sparse}


@pytest.fixture(scope="module")
def default_model():
    return models.build_cmp(load_config("cpu_bins"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in EXPECTED])
def test_counts_strides_and_shapes_are_pinned(name, rng):
    config = load_config(name)
    model = models.build_cmp(config)
    trainable, statistics, stride = EXPECTED[name]
    assert _count(model.trainable_weights) == trainable
    assert _count(model.non_trainable_weights) == statistics
    if name in PAPER_ENCODERS:
        assert _count(models.build_encoder(config).trainable_weights) == PAPER_ENCODERS[name]
    size = 128
    out = model(_inputs(rng, 2, size))
    nbins = config.flow.nbins
    assert tuple(out["logits"].shape) == (2, size // stride, size // stride, 2 * nbins)
    assert tuple(out["flow"].shape) == (2, size, size, 2)
    assert np.isfinite(out["flow"].numpy()).all()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in EXPECTED])
def test_every_trainable_variable_gets_a_gradient(name, rng):
    config = load_config(name)
    model = models.build_cmp(config)
    inputs = _inputs(rng, 2, 128)
    target = tf.constant(rng.uniform(-5, 5, (2, 128, 128, 2)).astype(np.float32))
    from cmp_tf import losses

    loss_fn = losses.make_loss(config.flow)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(loss_fn(model(inputs, training=True)["logits"], target))
    grads = tape.gradient(loss, model.trainable_variables)
    paths = {v.path for v in model.trainable_variables}
    # A conv bias right before BatchNorm (kept for parity with the reference) is shifted away by
    # the batch mean: its gradient is zero in exact arithmetic, so only its presence is checked.
    before_bn = {p for p in paths if p.endswith("/bias") and
                 p.replace("/bias", "_bn/gamma") in paths}
    assert before_bn, "expected conv biases before BatchNorm"
    dead = [v.path for v, g in zip(model.trainable_variables, grads)
            if g is None or not np.isfinite(g.numpy()).all()
            or (v.path not in before_bn and not np.any(g.numpy()))]
    assert not dead, f"no gradient for {dead}"


def test_encoders_return_skips_at_strides_2_and_4():
    for name, options in (("resnet50", {}), ("mobilenet_v3", {"variant": "small"}),
                          ("mobilenet_v3", {"variant": "large"})):
        config = ml_collections.ConfigDict({"model": {
            "image_encoder": name, "init_gain": 0.02, "options": {name: options}}})
        shapes = models.build_encoder(config).compute_output_shape((1, 256, 256, 3))
        assert shapes["skip2"][1:3] == (128, 128)
        assert shapes["skip4"][1:3] == (64, 64)
        assert shapes["features"][-1] == 256


def test_keras_file_round_trip_gives_identical_outputs(default_model, tmp_path, rng):
    path = tmp_path / "cmp.keras"
    default_model.save(path)
    loaded = keras.models.load_model(path)
    inputs = _inputs(rng, 1, 128)
    want, got = default_model(inputs), loaded(inputs)
    for key in ("logits", "flow"):
        np.testing.assert_array_equal(want[key].numpy(), got[key].numpy())


def test_dense_prior_model_starts_from_the_nearest_fill(default_model, rng):
    # Xavier gain 0.02 makes the decoder's logits tiny at init: the readout is the prior's.
    size = 128
    inputs = _inputs(rng, 1, size, points=1)
    vector = inputs["sparse"][0][inputs["sparse"][0, ..., 2] > 0][0, :2]
    flow = default_model(inputs)["flow"].numpy()[0]
    np.testing.assert_allclose(flow.reshape(-1, 2).mean(0), vector, atol=0.5)


def test_assemble_takes_built_parts():
    model = _tiny_cmp(decoder_scale=1)
    out = model({"image": np.zeros((1, 8, 8, 3)), "sparse": np.zeros((1, 8, 8, 3))})
    assert tuple(out["logits"].shape) == (1, 2, 2, 6) and tuple(out["flow"].shape) == (1, 8, 8, 2)


def test_sizes_the_encoders_cannot_take_are_refused(default_model):
    with pytest.raises(ValueError, match="multiples of 32.*got 150x128.*160x128"):
        default_model({"image": np.zeros((1, 150, 128, 3)), "sparse": np.zeros((1, 150, 128, 3))})
    with pytest.raises(ValueError, match="at least 128 for this model.*got 64x64"):
        default_model({"image": np.zeros((1, 64, 64, 3)), "sparse": np.zeros((1, 64, 64, 3))})
    with pytest.raises(ValueError, match="sparse must have the image's size 128x128; got 96x128"):
        default_model({"image": np.zeros((1, 128, 128, 3)), "sparse": np.zeros((1, 96, 128, 3))})
    with pytest.raises(ValueError, match="sparse"):
        default_model({"image": np.zeros((1, 128, 128, 3)), "sparse": np.zeros((1, 128, 128, 2))})


def _tiny_cmp(decoder_scale=2):
    """A CMP of two-layer parts, stride 4."""
    image = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same")(image)
    encoder = keras.Model(image, {"features": keras.layers.Conv2D(8, 1)(x)})
    sparse = keras.Input((None, None, 3))
    sparse_encoder = keras.Model(sparse, keras.layers.AveragePooling2D(4)(sparse))
    features = keras.Input((None, None, 11), name="features")
    decoder = keras.Model({"features": features}, keras.layers.Conv2D(6, 1)(features))
    return models.assemble(encoder, sparse_encoder, decoder,
                           heads.Bins(nbins=3, fmax=3.0, loss="discrete"),
                           decoder_scale=decoder_scale)


def test_a_graph_traced_for_free_sizes_refuses_sizes_the_encoders_cannot_take():
    # model.predict retraces with free sizes once it has seen a few: the Python check sees
    # None, and a wrong size ran on (the features misaligned) or failed inside a concat.
    model = _tiny_cmp()

    def inputs(h, w, sparse_h=None):
        return {"image": np.zeros((1, h, w, 3), np.float32),
                "sparse": np.zeros((1, sparse_h or h, w, 3), np.float32)}

    for size in ((16, 8), (24, 16), (32, 8)):
        model.predict(inputs(*size), verbose=0)
    for size, got in (((18, 16), r"\[18\] \[16\]"), ((16, 7), r"\[16\] \[7\]"),
                      ((4, 8), r"\[4\] \[8\]")):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"multiples of 4 .* at least 8 for this model.*" + got):
            model.predict(inputs(*size), verbose=0)
    forward = tf.function(model, input_signature=[{
        name: tf.TensorSpec([None, None, None, 3]) for name in ("image", "sparse")}])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"sparse must be as large as the image.*\[16\] \[8\] \[8\] \[8\]"):
        forward(inputs(16, 8, sparse_h=8))
    assert tuple(forward(inputs(16, 8))["flow"].shape) == (1, 16, 8, 2)


def test_exported_graphs_hold_no_size_assertion(tmp_path):
    from export import savedmodel

    model = _tiny_cmp()
    path = savedmodel.write(model, str(tmp_path / "saved"))
    graph = tf.saved_model.load(path).signatures["serving_default"].graph.as_graph_def()
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    assert "Assert" not in ops
    assert model.get_layer("input_guard").check_in_graph  # switched back on after the trace


@pytest.mark.parametrize("field,value,message", [
    ("model.image_encoder", "vgg16", r"image_encoder='vgg16' is unknown; known: alexnet_fcn_32x, "
                                     r"mobilenet_v3, resnet50"),
    ("model.decoder", "unet", r"decoder='unet' is unknown; known: plain, skip_layer"),
    ("flow.nbins", 98, r"nbins must be odd"),
    ("model.init_gain", float("nan"), r"config.model.init_gain=nan must be a finite number >= 0"),
    ("flow.loss", "huber", r"config.flow.loss='huber' is unknown"),
    ("model.sparse_encoder", "shallownet8x", r"stride 8 but the image encoder.*stride 32"),
    ("data.crop", (100, 128), r"config.data.crop=\(100, 128\) must be a multiple of 32"),
    ("data.crop", (64, 64), r"must be a multiple of 32 .* and at least 128"),
    ("model.options.mobilenet_v3", {"varaint": "small"},
     r"options.mobilenet_v3 has unknown options \['varaint'\]; it takes .*'variant'"),
    ("model.options.plain", {"in_channels": 3}, r"sets \['in_channels'\], which the model"),
    ("model.options.mobilenet", {}, r"unknown parts \['mobilenet'\]"),
    ("model.head", "cspn", r"config.model.head='cspn' is unknown; known: affinity, bins, "
                           r"fill_correction, regression"),
    ("flow.loss", "l1", r"head='bins' trains with config.flow.loss in \('discrete',\); got 'l1'"),
    ("model.options.bins", {"nearest_prior": "yes", "prior_sigma": 2.0},
     r"config.model.options.bins.nearest_prior must be True or False; got 'yes'"),
    ("model.options.bins", {"nearest_prior": True, "prior_sigma": 0.0},
     r"config.model.options.bins.prior_sigma must be positive pixels; got 0.0"),
    ("model.options.bins", {"prior_sigmaa": 1.0},
     r"options.bins has unknown options \['prior_sigmaa'\]"),
])
def test_bad_configs_name_the_field(field, value, message):
    config = load_config("cpu_bins")
    *parents, key = field.split(".")
    section = config
    for parent in parents:
        section = section[parent]
    with config.unlocked():
        section[key] = value
    if field == "model.options.plain":
        config.model.decoder = "plain"
    with pytest.raises(ValueError, match=message):
        models.build_cmp(config)


def test_switching_parts_from_the_command_line_keeps_other_parts_options():
    config = load_config("cpu_bins")  # sets options for mobilenet_v3 and skip_layer
    config.model.image_encoder, config.model.sparse_encoder = "resnet50", "shallownet8x"
    config.model.decoder = "plain"
    model = models.build_cmp(config)
    assert model.get_layer("input_guard").multiple == 8


def test_the_separable_skip_decoder_makes_its_fine_convs_depthwise_separable():
    """`separable` swaps the four convs at strides 4 and 2 (nearly all of the decoder's
    multiply-adds) for depthwise + pointwise pairs; the rest of the decoder stays."""
    config = load_config("cpu_bins")
    dense = models.build_cmp(config).get_layer("decoder")
    config.model.options.skip_layer.separable = True
    model = models.build_cmp(config)
    separable = model.get_layer("decoder")
    fine = ("skipconv4", "fusion4", "skipconv2", "fusion2")
    for name in fine:
        assert isinstance(separable.get_layer(name), keras.layers.SeparableConv2D), name
        assert isinstance(dense.get_layer(name), keras.layers.Conv2D), name
    assert type(separable.get_layer("fusion8")) is keras.layers.Conv2D
    assert separable.count_params() < 0.9 * dense.count_params()
    out = model({"image": tf.zeros((1, 128, 128, 3)), "sparse": tf.zeros((1, 128, 128, 3))})
    assert out["flow"].shape == (1, 128, 128, 2)
    from cmp_tf.models import decoders
    with pytest.raises(ValueError, match="options.skip_layer.separable must be True or False"):
        decoders.skip_layer(8, 4, skip_channels=(4, 4), separable="yes")


def test_the_skip_decoder_can_end_at_stride_4_with_its_head_there_or_finer(rng):
    """`out_stride=4` drops the stride-2 stage: the decoder takes no skip2, the head's fills
    and read-out work on 4 px cells (or on finer ones, `fill_stride`), and the flow still
    comes back at the image's size."""
    from cmp_tf.models import decoders
    config = load_config("propagation")
    config.model.options.skip_layer.out_stride = 4
    config.model.options.fill_correction.nearest_levels = 3  # its coarsest at stride 32
    config.model.options.fill_correction.fill_stride = 0  # the fills at the decoder's stride
    model = models.build_cmp(config)
    decoder = model.get_layer("decoder")
    assert set(decoder.input) == {"features", "skip4"}
    assert "fusion2" not in {layer.name for layer in decoder.layers}
    assert model.get_layer("add_prior").stride == 4
    out = model(_inputs(rng, 2, 128))
    assert out["logits"].shape == (2, 32, 32, 2) and out["flow"].shape == (2, 128, 128, 2)
    assert np.isfinite(out["flow"].numpy()).all()
    # One flooding: the decoder reads the output fill's coarsest level (stride 32).
    assert len([layer for layer in model.layers if isinstance(layer, fills.DensePrior)]) == 1
    for bad in (3, 1, True, "4"):
        with pytest.raises(ValueError, match="options.skip_layer.out_stride must be 2 or 4"):
            decoders.skip_layer(8, 4, skip_channels=(4, 4), out_stride=bad)
    # Its weight and reach resized to fills on 2 px cells (fill_stride): dense guidance kept
    # as at stride 2; the nearest fill's 5 levels still end at stride 32.
    config.model.options.fill_correction.update(fill_stride=2, nearest_levels=4,
                                                correction=False)
    model = models.build_cmp(config)
    assert model.get_layer("add_prior").stride == 2
    assert model.get_layer("decoder").output.shape[-1] == 2  # the weight and the reach
    assert model.get_layer("decoder_to_fills") is not None
    out = model(_inputs(rng, 2, 128))
    assert out["logits"].shape == (2, 64, 64, 2) and out["flow"].shape == (2, 128, 128, 2)
    config.model.options.fill_correction.fill_stride = 8
    with pytest.raises(ValueError, match="fill_stride=8 must divide the decoder's stride 4"):
        models.build_cmp(config)
    with pytest.raises(ValueError, match="fill_correction.fill_stride must be 0"):
        heads.FillCorrection(99, 50.0, "l1", fill_stride=3)


def test_the_fills_cells_follow_the_working_size_and_a_rebuild_keeps_weights_and_fade(rng):
    """Files of a fixed size well above the training crop get coarser fill cells
    (`fill_stride_for_size`: 2 px trained on 128^2 -> 4 px from 256^2, never coarser than the
    decoder's 4 px); `with_fill_stride` rebuilds the model on them with the same weights and
    fade, its nearest fill's coarsest level where it was, and back to the trained cells it
    gives the same flow to the bit."""
    from cmp_tf.models import cmp as cmp_models
    config = load_config("propagation")  # fills on 2 px cells, decoder at 4 px, crop 128^2
    model = models.build_cmp(config)
    assert cmp_models.decoder_stride(model) == 4 and models.fill_stride(model) == 2
    assert [cmp_models.fill_stride_for_size(model, config, (s, s))
            for s in (64, 128, 224, 256, 384, 1024)] == [2, 2, 2, 4, 4, 4]
    assert cmp_models.fill_stride_for_size(model, config, (128, 512)) == 2  # the short side
    heads.set_fade(model, False)
    coarse, coarse_config = cmp_models.with_fill_stride(model, config, 4)
    assert models.fill_stride(coarse) == 4 and heads.fade_of(coarse) is False
    assert coarse_config.model.options.fill_correction.nearest_levels == 3  # still 32 px
    assert config.model.options.fill_correction.fill_stride == 2  # the caller's config kept
    assert "decoder_to_fills" not in {layer.name for layer in coarse.layers}
    for a, b in zip(model.weights, coarse.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    inputs = _inputs(rng, 1, 128)
    again, _ = cmp_models.with_fill_stride(coarse, coarse_config, 2)
    np.testing.assert_array_equal(again(inputs)["flow"].numpy(), model(inputs)["flow"].numpy())
    assert cmp_models.with_fill_stride(model, config, 2)[0] is model
    for bad in (8, 3, True):
        with pytest.raises(ValueError, match="fill_stride must be a power of two dividing"):
            cmp_models.with_fill_stride(model, config, bad)
    bins = load_config("cpu_bins")
    with pytest.raises(ValueError, match="config.model.head='bins' has no fills"):
        cmp_models.with_fill_stride(models.build_cmp(bins), bins, 4)


def test_skip_decoder_needs_an_encoder_with_skips():
    config = load_config("alexnet_yfcc")
    config.model.decoder = "skip_layer"
    with pytest.raises(ValueError, match="needs skip features.*alexnet_fcn_32x"):
        models.build_cmp(config)


def test_strided_convs_pad_symmetrically_like_pytorch(rng):
    # Keras 'same' with stride 2 pads bottom/right only; the reference pads 2 on every side.
    x = rng.normal(size=(1, 8, 8, 1)).astype(np.float32)
    inp = keras.Input((8, 8, 1))
    out = L.conv(inp, 1, 5, strides=2, padding=2, name="c", gain=1.0, use_bias=False)
    model = keras.Model(inp, out)
    kernel = model.get_layer("c").kernel.numpy()[..., 0, 0]
    padded = np.pad(x[0, ..., 0], 2)
    want = np.array([[np.sum(padded[i:i + 5, j:j + 5] * kernel) for j in range(0, 8, 2)]
                     for i in range(0, 8, 2)])
    np.testing.assert_allclose(model(x).numpy()[0, ..., 0], want, rtol=1e-5, atol=1e-5)


def test_resize_aligns_corners():
    x = np.array([[0.0, 2.0], [4.0, 6.0]], np.float32).reshape(1, 2, 2, 1)
    y = L.ResizeLike()([x, np.zeros((1, 3, 3, 1))]).numpy()[0, ..., 0]
    np.testing.assert_allclose(y, [[0, 1, 2], [2, 3, 4], [4, 5, 6]])


def _nearest_fill_bruteforce(sparse, stride):
    """Per cell: mean vector of the nearest cell holding guides, and the distance to them."""
    h, w = sparse.shape[0] // stride, sparse.shape[1] // stride
    ys, xs = np.nonzero(sparse[..., 2])
    cells = {}
    for y, x in zip(ys, xs):
        cells.setdefault((y // stride, x // stride), []).append((y, x, *sparse[y, x, :2]))
    seeds = np.array([np.mean(v, 0) for v in cells.values()])
    out = np.zeros((h, w, 3), np.float32)
    for i in range(h):
        for j in range(w):
            c = np.array([i * stride + (stride - 1) / 2, j * stride + (stride - 1) / 2])
            d = np.hypot(seeds[:, 0] - c[0], seeds[:, 1] - c[1])
            out[i, j] = (*seeds[d.argmin(), 2:], d.min())
    return out


@pytest.mark.parametrize("stride", [1, 4])
def test_dense_prior_matches_a_brute_force_nearest_fill(stride, rng):
    size, points = 48, 7
    sparse = np.zeros((size, size, 3), np.float32)
    ys, xs = rng.choice(size, points, replace=False), rng.choice(size, points, replace=False)
    sparse[ys, xs, :2] = rng.uniform(-20, 20, (points, 2))
    sparse[ys, xs, 2] = 1
    got = fills.DensePrior(stride)(sparse[None]).numpy()[0]
    want = _nearest_fill_bruteforce(sparse, stride)
    # Jump flooding can pick a near-tie neighbour: compare distances everywhere, vectors where
    # the nearest guide is unambiguous.
    np.testing.assert_allclose(got[..., 2], want[..., 2], atol=1e-3)
    assert (np.abs(got[..., :2] - want[..., :2]).max(-1) < 1e-3).mean() > 0.97


@pytest.mark.parametrize("stride", [1, 2, 8, 32])
def test_the_nearest_fills_cell_sums_equal_the_direct_per_cell_means(stride, rng):
    """`DensePrior._pooled` sums cells with one strided convolution and adds the origins at
    cell resolution: the same means of (mask, mask y, mask x, mask u, mask v) as averaging the
    products pixel by pixel, vectors off the guides ignored, fractional masks weighed."""
    h, w = 2 * max(stride, 8), 3 * max(stride, 8)
    sparse = np.zeros((2, h, w, 3), np.float32)
    sparse[..., :2] = rng.normal(0, 5, (2, h, w, 2))  # junk where unguided: must not count
    ys, xs = rng.integers(0, h, 40), rng.integers(0, w, 40)
    sparse[0, ys, xs, 2] = 1.0
    sparse[1, ys, xs, 2] = rng.uniform(0.2, 1.0, 40)
    mask = sparse[..., 2:]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    products = np.concatenate([mask, mask * yy[..., None], mask * xx[..., None],
                               sparse[..., :2] * mask], -1)
    want = products.reshape(2, h // stride, stride, w // stride, stride, 5).mean((2, 4))
    got = fills.DensePrior(stride)._pooled(fills.masked_guidance(tf.constant(sparse)), stride)
    got = got.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_a_multi_level_nearest_fills_coarse_output_is_the_one_level_fill_there(size, rng):
    """`coarse_output` returns the coarsest level's fill beside the fine one: the fill a
    one-level DensePrior(coarse_stride) computes (up to the rounding of mean guide
    positions); the fine output is unchanged. A side that is no multiple of coarse_stride
    keeps whole coarse cells only, as the one-level fill does."""
    h, w = size
    sparse = np.zeros((3, h, w, 3), np.float32)
    for b, k in enumerate((1, 12, 300)):
        ys, xs = rng.integers(0, h, k), rng.integers(0, w, k)
        sparse[b, ys, xs] = np.c_[rng.normal(0, 5, (k, 2)), np.ones(k)]
    layer = fills.DensePrior(2, coarse_stride=16, refine=1, coarse_output=True)
    fine, coarse = (out.numpy() for out in layer(sparse))
    assert layer.compute_output_shape((3, h, w, 3)) == [(3, h // 2, w // 2, 3),
                                                         (3, h // 16, w // 16, 3)]
    np.testing.assert_array_equal(
        fine, fills.DensePrior(2, coarse_stride=16, refine=1)(sparse).numpy())
    np.testing.assert_allclose(coarse, fills.DensePrior(16)(sparse).numpy(), atol=1e-4)
    partial = layer(np.zeros((1, h + 8, w + 24, 3), np.float32))
    assert [tuple(out.shape) for out in partial] == [(1, h // 2 + 4, w // 2 + 12, 3),
                                                     (1, h // 16, w // 16 + 1, 3)]
    restored = fills.DensePrior.from_config(layer.get_config())
    assert restored.coarse_output and restored.coarse_stride == 16
    with pytest.raises(ValueError, match="coarse_output must be True or False, and True only "
                                         "with a coarse_stride"):
        fills.DensePrior(2, coarse_output=True)


@pytest.mark.parametrize("stride, levels", [(1, {}), (2, {}), (8, {}),
                                            (2, {"coarse_stride": 32, "refine": 1,
                                                 "refine_finest": False})])
@pytest.mark.parametrize("litert_form", [False, True])
def test_the_compact_nearest_fill_equals_the_sequential_one(stride, levels, litert_form, rng):
    """The gather-and-pick form of a jump-flooding pass (what every exported file runs; its
    LiteRT form reads zero-padded neighbours beyond the image as far) gives the sequential
    selects' output to the bit, ties included (a grid of guides has many), on one level and
    on the shipped model's levels."""
    sparse = np.zeros((2, 64, 96, 3), np.float32)
    sparse[0, 8::16, 8::16] = (3.0, -1.0, 1.0)  # equidistant guides: ties everywhere
    ys, xs = rng.integers(0, 64, 9), rng.integers(0, 96, 9)
    sparse[1, ys, xs] = np.c_[rng.normal(0, 5, (9, 2)), np.ones(9)]
    sequential = fills.DensePrior(stride, **levels)(sparse).numpy()
    compact = fills.DensePrior(stride, compact=True, litert_form=litert_form,
                               **levels)(sparse).numpy()
    np.testing.assert_array_equal(compact, sequential)
    assert fills.DensePrior.from_config(fills.DensePrior(4, compact=True).get_config()).compact
    with pytest.raises(ValueError, match="compact must be True or False"):
        fills.DensePrior(2, compact="yes")


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_the_multi_level_nearest_fill_keeps_the_exact_fill_near_the_guides(levels, rng):
    """The coarse-to-fine fill (any image size, padded to whole coarse cells) gives every
    guided cell its guides, one guide's vector and exact distance everywhere, and, with a few
    scattered guides and up to 2 extra levels, the one-level fill's vectors at most cells
    (coarse cells as large as the image's side merge guides: 4 levels on 70 x 90 px)."""
    stride, height, width = 2, 70, 90  # not multiples of the coarse cells
    fast = fills.DensePrior(stride, coarse_stride=stride * 2**levels)
    one = np.zeros((1, height, width, 3), np.float32)
    one[0, 33, 61] = (4.0, -2.0, 1.0)
    np.testing.assert_allclose(fast(one).numpy(), fills.DensePrior(stride)(one).numpy(),
                               atol=1e-4)
    sparse = np.zeros((2, height, width, 3), np.float32)
    for b in range(2):
        ys, xs = rng.choice(height, 6, replace=False), rng.choice(width, 6, replace=False)
        sparse[b, ys, xs] = np.c_[rng.normal(0, 5, (6, 2)), np.ones(6)]
    got, exact = fast(sparse).numpy(), fills.DensePrior(stride)(sparse).numpy()
    assert got.shape == exact.shape == (2, height // stride, width // stride, 3)
    guided = sparse[:, :height // stride * stride, :width // stride * stride, 2].reshape(
        2, height // stride, stride, width // stride, stride).max((2, 4)) > 0
    np.testing.assert_allclose(got[guided], exact[guided], atol=1e-4)
    if levels <= 2:
        assert (np.abs(got[..., :2] - exact[..., :2]).max(-1) < 1e-4).mean() > 0.9
    empty = fast(np.zeros((1, height, width, 3), np.float32)).numpy()
    np.testing.assert_array_equal(empty[..., :2], 0)
    assert fills.fill_spec(fills.fill_from_spec(fills.fill_spec(fast))) == fills.fill_spec(fast)
    assert fills.DensePrior.from_config(fast.get_config()).coarse_stride == fast.coarse_stride


@pytest.mark.parametrize("refine, refine_finest", [(0, True), (1, True), (1, False)])
def test_the_multi_level_nearest_fill_with_fewer_refining_passes(refine, refine_finest, rng):
    """Fewer unit passes at the fine levels (none: the coarse level's choice of guide taken
    as it is; or none at the finest level only) keep every guided cell's guides and the
    distance to the chosen guide measured from each cell's own centre, and the exact fill's
    vectors at most cells."""
    stride, height, width = 2, 96, 128
    sparse = np.zeros((1, height, width, 3), np.float32)
    ys, xs = rng.choice(height, 12, replace=False), rng.choice(width, 12, replace=False)
    sparse[0, ys, xs] = np.c_[rng.normal(0, 5, (12, 2)), np.ones(12)]
    fast = fills.DensePrior(stride, coarse_stride=8, refine=refine, refine_finest=refine_finest)
    got, exact = fast(sparse).numpy()[0], fills.DensePrior(stride)(sparse).numpy()[0]
    guided = sparse[0, ..., 2].reshape(height // stride, stride, width // stride, stride).max(
        (1, 3)) > 0
    np.testing.assert_allclose(got[guided], exact[guided], atol=1e-4)
    same = np.abs(got[..., :2] - exact[..., :2]).max(-1) < 1e-4
    assert 0.9 < same.mean() < 1.0 if refine == 0 else same.mean() > 0.95
    # Where the guide is another, it is farther than the nearest, by less than a coarse cell.
    assert (got[..., 2] >= exact[..., 2] - 1e-3).all()
    assert (got[..., 2] - exact[..., 2]).max() < 8 * np.sqrt(2)
    if not refine_finest:  # the next level's choice, refined there: off by about a cell
        assert (got[..., 2] - exact[..., 2]).max() < 2 * stride * np.sqrt(2)
        refined = fills.DensePrior(stride, coarse_stride=8, refine=refine)(sparse).numpy()[0]
        assert not np.allclose(got, refined)  # the finest pass did change cells there
    restored = fills.DensePrior.from_config(fast.get_config())
    assert (restored.refine, restored.refine_finest) == (refine, refine_finest)
    assert fills.fill_spec(fills.fill_from_spec(fills.fill_spec(fast))) == fills.fill_spec(fast)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="refine must be an integer >= 0"):
            fills.DensePrior(2, coarse_stride=8, refine=bad)
    with pytest.raises(ValueError, match="refine_finest must be True or False; got 0"):
        fills.DensePrior(2, coarse_stride=8, refine_finest=0)


@pytest.mark.parametrize("height, width", [(96, 128), (98, 134), (97, 131)])
def test_the_nearest_fill_resized_from_the_next_level(height, width, rng):
    """`resize_finest` is the next level's fill taken to the finest cells by copies: on even
    cell counts exactly the fill at twice the stride, doubled; on odd ones too, the last row
    and column of cells from parents that hold their guides; the same with free H and W."""
    stride = 2
    sparse = np.zeros((1, height, width, 3), np.float32)
    ys, xs = rng.choice(height, 40, replace=False), rng.choice(width, 40, replace=False)
    ys[0], xs[0] = (height // stride) * stride - 1, (width // stride) * stride - 1
    sparse[0, ys, xs] = np.c_[rng.normal(0, 5, (40, 2)), np.ones(40)]
    resized = fills.DensePrior(stride, coarse_stride=16, refine=1, refine_finest=False,
                               resize_finest=True)
    got = resized(sparse).numpy()[0]
    assert got.shape == (height // stride, width // stride, 3)
    # The parents' fill: the same layer at twice the stride, refined there, on an image
    # padded to whole parents (unguided pixels).
    pad = [[0, 0], [0, -height % (2 * stride)], [0, -width % (2 * stride)], [0, 0]]
    parents = fills.DensePrior(2 * stride, coarse_stride=16, refine=1)(np.pad(sparse, pad))
    doubled = np.repeat(np.repeat(parents.numpy()[0], 2, 0), 2, 1)
    if height // stride % 2 == 0 and width // stride % 2 == 0:
        np.testing.assert_array_equal(got, doubled[:got.shape[0], :got.shape[1]])
    # The guide in the last cell of the last row is that cell's vector, on odd counts too.
    np.testing.assert_allclose(got[-1, -1, :2], sparse[0, ys[0], xs[0], :2], atol=1e-5)
    # Against the fill that puts the cells' own guides back: the same vectors at most cells
    # and a distance within stride / sqrt(2) of its own.
    reseeded = fills.DensePrior(stride, coarse_stride=16, refine=1, refine_finest=False)(
        sparse).numpy()[0]
    same = np.abs(got[..., :2] - reseeded[..., :2]).max(-1) < 1e-4
    assert same.mean() > 0.95
    assert np.abs(got[same, 2] - reseeded[same, 2]).max() <= stride / np.sqrt(2) + 1e-4
    free = tf.function(resized.call, input_signature=[tf.TensorSpec([1, None, None, 3])])
    np.testing.assert_array_equal(free(sparse).numpy()[0], got)
    restored = fills.DensePrior.from_config(resized.get_config())
    assert restored.resize_finest and fills.fill_spec(restored) == fills.fill_spec(resized)


@pytest.mark.parametrize("options", [dict(coarse_stride=0, refine_finest=False),
                                     dict(coarse_stride=8, refine_finest=True),
                                     dict(coarse_stride=8, refine_finest=False,
                                          resize_finest=1)])
def test_the_resized_nearest_fill_refuses_options_without_a_next_level(options):
    options = {"resize_finest": True, **options}
    with pytest.raises(ValueError, match="resize_finest must be True or False, and True only"):
        fills.DensePrior(2, **options)


def test_the_level_doubling_copies_cells():
    """The levels' nearest-neighbour upsampling (copies through depth_to_space, which LiteRT's
    XNNPACK runs) equals TensorFlow's nearest resize."""
    x = tf.random.stateless_normal((2, 5, 7, 4), (1, 2))
    np.testing.assert_array_equal(
        fills._doubled(x).numpy(), tf.image.resize(x, (10, 14), method="nearest").numpy())


@pytest.mark.parametrize("coarse_stride", [2, 3, 6, 12, True, 8.0])
def test_the_multi_level_nearest_fill_refuses_a_coarse_stride_that_is_no_power_of_two_above(
        coarse_stride):
    with pytest.raises(ValueError, match="coarse_stride must be 0 .* of stride=2; got"):
        fills.DensePrior(2, coarse_stride=coarse_stride)


@pytest.mark.parametrize("stride", [1, 2])
def test_pull_push_fill_keeps_the_guides_and_interpolates_between_them(stride, rng):
    size = 64
    sparse = np.zeros((1, size, size, 3), np.float32)
    sparse[0, 8, 8], sparse[0, 8, 56] = (6.0, 0.0, 1.0), (0.0, 6.0, 1.0)
    fill = fills.PullPushFill(stride)(sparse).numpy()[0]
    assert fill.shape == (size // stride, size // stride, 2)
    np.testing.assert_allclose(fill[8 // stride, 8 // stride], [6, 0], atol=1e-5)
    np.testing.assert_allclose(fill[8 // stride, 56 // stride], [0, 6], atol=1e-5)
    row = fill[8 // stride, 8 // stride:56 // stride + 1, 0]  # u between the two guides
    assert np.all(np.diff(row) <= 1e-5) and 0.5 < row[len(row) // 2] < 5.5  # no plateau jump
    np.testing.assert_allclose(fill.sum(-1), 6.0, atol=1e-4)  # a blend of the two vectors
    empty = fills.PullPushFill(stride)(np.zeros((1, 16, 16, 3), np.float32)).numpy()
    np.testing.assert_array_equal(empty, 0)


def test_a_fills_weighted_mean_is_exact_and_never_divides_by_zero_in_float16():
    """The pull-push, edge-aware and affinity fills' cell means: where nothing is guided a
    float16 file (GPU delegates compute in half precision) rounds a floor such as 1e-12 to 0,
    and 0 / 0 was NaN everywhere an image had no guidance."""
    sums = tf.constant([[3.0, -6.0], [0.0, 0.0], [2.0**-38, 0.0]])
    weight = tf.constant([[1.5], [0.0], [2.0**-40]])
    np.testing.assert_array_equal(fills.weighted_mean(sums, weight).numpy(),
                                  [[2.0, -4.0], [0.0, 0.0], [4.0, 0.0]])
    half = fills.weighted_mean(tf.zeros([2, 2], tf.float16), tf.zeros([2, 1], tf.float16))
    assert half.dtype == tf.float16
    np.testing.assert_array_equal(half.numpy(), 0)
    np.testing.assert_array_equal(
        fills.weighted_mean(tf.constant([[3.0, 1.5]], tf.float16),
                            tf.constant([[0.75]], tf.float16)).numpy(), [[4.0, 2.0]])


def test_fill_layers_round_trip_their_export_spec():
    for layer in (fills.DensePrior(4, max_size=256), fills.PullPushFill(2, max_size=128)):
        again = fills.fill_from_spec(fills.fill_spec(layer))
        assert type(again) is type(layer) and fills.fill_spec(again) == fills.fill_spec(layer)
    assert isinstance(fills.fill_from_spec({"stride": 8, "max_size": 64}), fills.DensePrior)
    with pytest.raises(ValueError, match="Unknown guidance fill layer 'Voronoi'"):
        fills.fill_from_spec({"layer": "Voronoi", "stride": 8, "max_size": 64})


def test_blend_prior_model_starts_from_the_mean_of_the_nearest_and_smooth_fills(rng):
    config = load_config("cpu_bins")
    config.model.head, config.flow.loss = "fill_correction", "l1"
    config.model.options.fill_correction.update(gain=False, pull="box", relax=0)
    model = models.build_cmp(config)
    inputs = _inputs(rng, 1, 128, points=4)
    mean = 0.5 * (fills.DensePrior(2)(inputs["sparse"])[..., :2] + fills.PullPushFill(2)(inputs["sparse"]))
    want = L.ResizeLike()([mean, inputs["image"]]).numpy()
    assert model.get_layer("decoder").output.shape[-1] == 3  # (du, dv, blend weight)
    np.testing.assert_allclose(model(inputs)["flow"].numpy(), want, atol=0.05)
    out = np.zeros((1, 2, 2, 3), np.float32)
    out[..., 2] = 50.0  # weight ~1: the nearest fill alone, plus the correction
    out[..., 0] = 0.25
    nearest, smooth = np.full((1, 2, 2, 3), 4.0, np.float32), np.zeros((1, 2, 2, 2), np.float32)
    np.testing.assert_allclose(heads.BlendFills()([out, nearest, smooth])[..., 0], 4.25, rtol=1e-6)
    config.flow.loss = "discrete"
    with pytest.raises(ValueError, match=r"head='fill_correction' trains with config.flow.loss "
                                         r"in \('l1', 'l2'\); got 'discrete'"):
        models.build_cmp(config)


def test_without_the_free_correction_the_flow_is_the_gain_times_the_blend(rng):
    """`correction=False`: the decoder outputs the weight and the reach alone (2 channels),
    the flow is exactly gain x blend, and the option round-trips through the saved config."""
    nearest, smooth = np.full((1, 2, 2, 3), 4.0, np.float32), np.full((1, 2, 2, 2), 2.0, np.float32)
    nearest[..., 2] = [[0.0, 8.0], [16.0, 32.0]]
    blend = heads.BlendFills(gain=True, stride=8, correction=False)
    assert blend.channels == 2 and heads.BlendFills(gain=True).channels == 4
    out = rng.normal(size=(1, 2, 2, 2)).astype(np.float32)
    with_correction = np.concatenate([np.full((1, 2, 2, 2), 9.0, np.float32), out], -1)
    want = heads.BlendFills(gain=True, stride=8)([with_correction, nearest, smooth]) - 9.0
    np.testing.assert_allclose(blend([out, nearest, smooth]), want, atol=1e-5)
    clone = heads.BlendFills.from_config(blend.get_config())
    assert clone.correction is False and clone.channels == 2
    with pytest.raises(ValueError, match="correction must be True or False"):
        heads.BlendFills(correction=1)
    config = load_config("propagation")
    config.model.options.fill_correction.correction = False
    model = models.build_cmp(config)
    assert model.get_layer("decoder").output.shape[-1] == 2
    assert model(_inputs(rng, 1, 128))["flow"].shape == (1, 128, 128, 2)
    with pytest.raises(ValueError, match="fill_correction.correction must be True or False"):
        heads.FillCorrection(99, 50.0, "l1", correction="no")


def test_fill_gain_stops_a_guides_motion_at_its_reach_and_keeps_the_correction():
    nearest, smooth = np.full((1, 2, 2, 3), 4.0, np.float32), np.zeros((1, 2, 2, 2), np.float32)
    nearest[..., 2] = [[0.0, 8.0], [16.0, 32.0]]  # distances to the guide, px
    blend = heads.BlendFills(gain=True, stride=8)  # the image is 16 x 16 px: diagonal 16
    out = np.zeros((1, 2, 2, 4), np.float32)
    out[..., 2] = 50.0  # the nearest fill alone
    out[..., 0] = 0.25  # plus a correction
    out[..., 3] = 50.0  # a short reach: the guide's motion stops near it; the correction stays
    got = blend([out, nearest, smooth])[0, ..., 0].numpy()
    assert got[0, 0] == pytest.approx(4.25) and np.all(np.abs(got.flat[1:] - 0.25) < 1e-6)
    with pytest.raises(ValueError, match="gain must be True or False"):
        heads.BlendFills(gain="yes")
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        heads.BlendFills(gain=True, stride=0)
    config = load_config("propagation")
    del config.model.options.fill_correction["gain"]  # as a config.json with a string holds
    config.model.options.fill_correction.gain = "yes"
    with pytest.raises(ValueError, match="options.fill_correction.gain must be True or False"):
        models.build_cmp(config)


def test_without_its_fade_the_flow_is_the_blend_unscaled_and_the_switch_is_not_saved(rng):
    nearest, smooth = np.full((1, 2, 2, 3), 4.0, np.float32), np.zeros((1, 2, 2, 2), np.float32)
    nearest[..., 2] = [[0.0, 8.0], [16.0, 32.0]]
    out = np.zeros((1, 2, 2, 2), np.float32)
    out[..., 0], out[..., 1] = 50.0, 50.0  # the nearest fill alone; a short reach
    blend = heads.BlendFills(gain=True, stride=8, correction=False)
    faded = blend([out, nearest, smooth])[0, ..., 0].numpy()
    assert faded[0, 0] == pytest.approx(4.0) and np.all(faded.flat[1:] < 1e-3)
    config = load_config("propagation")
    model = models.build_cmp(config)
    inputs = _inputs(rng, 1, 128, points=3)
    before = model(inputs)["flow"].numpy()
    assert heads.set_fade(model, False) is model
    unfaded = model(inputs)["flow"].numpy()
    layer = next(layer for layer in model.layers if isinstance(layer, heads.BlendFills))
    assert not layer.fade and "fade" not in layer.get_config()
    assert heads.fade_of(model) is False
    assert not np.allclose(unfaded, before)
    # the blend of fills itself: far from the guides it keeps their motion
    assert np.abs(unfaded).mean() > np.abs(before).mean()
    heads.set_fade(model, True)
    np.testing.assert_allclose(model(inputs)["flow"].numpy(), before, atol=1e-5)
    with pytest.raises(ValueError, match="fade must be True or False; got 0"):
        heads.set_fade(model, 0)
    with pytest.raises(ValueError, match=r"fade applies to models whose read-out learns how far "
                                         r"a guide's motion carries .* 'cmp' has none"):
        heads.set_fade(models.build_cmp(load_config("cpu_bins")), False)
    assert heads.fade_of(models.build_cmp(load_config("cpu_bins"))) is None


def test_gaussian_gain_profile_is_flat_at_the_guides_and_a_quarter_diagonal_untrained(rng):
    config = load_config("propagation")
    model = models.build_cmp(config)
    assert model.get_layer("decoder").output.shape[-1] == 2  # blend weight, reach: no correction
    inputs = _inputs(rng, 1, 128, points=4)
    # The recipe's nearest fill at the output's stride (its layer may return a second level).
    recipe = next(layer for layer in model.layers
                  if isinstance(layer, fills.DensePrior) and layer.stride == 2)
    # the same fill on its own (its spec leaves out the second, coarse output)
    nearest = fills.fill_from_spec(fills.fill_spec(recipe))(inputs["sparse"]).numpy()
    smooth = fills.fill_from_spec(fills.fill_spec(model.get_layer("local_affine_out")))
    mean = 0.5 * (nearest[..., :2] + smooth(inputs["sparse"]).numpy())
    start = np.exp(-0.5 * (nearest[..., 2:] / 128 / 0.25) ** 2)  # sigma = diagonal / 4
    want = L.ResizeLike()([start * mean, inputs["image"]]).numpy()
    np.testing.assert_allclose(model(inputs)["flow"].numpy(), want, atol=0.05)
    nearest, smooth = np.full((1, 1, 3, 3), 4.0, np.float32), np.zeros((1, 1, 3, 2), np.float32)
    nearest[..., 2] = [0.0, 1.0, 8.0]  # px from the guide; the image diagonal is 8 x sqrt(3)
    out = np.zeros((1, 1, 3, 4), np.float32)
    out[..., 2], out[..., 3] = 50.0, 1.0  # the nearest fill alone, a shorter reach
    got = heads.BlendFills(True, 8)([out, nearest, smooth])[0, 0, :, 0].numpy()
    rate = heads.BlendFills.GAUSSIAN_SCALE * np.log1p(np.exp(1.0 + heads.BlendFills.GAUSSIAN_LOGIT_START))
    distance = nearest[0, 0, :, 2] / (8 * np.sqrt(3))
    np.testing.assert_allclose(got, 4.0 * np.exp(-0.5 * (rate * distance) ** 2), rtol=1e-5)
    # Flat at the guides: 1 px away the Gaussian keeps more than the exponential of that rate.
    assert got[1] > 4.0 * np.exp(-rate * distance[1]) and got[0] == pytest.approx(4.0)


def test_smoother_pull_push_keeps_the_guides_and_is_smoother_between_them(rng):
    sparse = np.zeros((1, 64, 64, 3), np.float32)
    rows, cols = rng.integers(0, 64, 12), rng.integers(0, 64, 12)
    sparse[0, rows, cols] = np.c_[rng.normal(0, 4, (12, 2)), np.ones(12)]
    box = fills.PullPushFill(1)(sparse).numpy()[0]
    smooth = fills.PullPushFill(1, pull="tent", relax=4)(sparse).numpy()[0]
    np.testing.assert_allclose(smooth[rows, cols], sparse[0, rows, cols, :2], atol=1e-5)

    def roughness(fill):  # the mean squared discrete Laplacian, unguided pixels only
        lap = 4 * fill[1:-1, 1:-1] - fill[:-2, 1:-1] - fill[2:, 1:-1] - fill[1:-1, :-2] \
            - fill[1:-1, 2:]
        free = sparse[0, 1:-1, 1:-1, 2] == 0
        return float(np.mean(np.square(lap[free])))

    assert roughness(smooth) < 0.5 * roughness(box)
    assert np.abs(smooth).max() <= np.abs(sparse[..., :2]).max() + 1e-5  # no overshoot: means
    spec = fills.fill_spec(fills.PullPushFill(2, pull="tent", relax=4))
    assert spec["pull"] == "tent" and spec["relax"] == 4
    assert fills.fill_spec(fills.fill_from_spec(spec)) == spec
    with pytest.raises(ValueError, match="pull must be one of"):
        fills.PullPushFill(2, pull="gauss")
    with pytest.raises(ValueError, match="relax must be an integer >= 0"):
        fills.PullPushFill(2, relax=-1)
    config = load_config("propagation")
    config.model.options.fill_correction.pull = "tnet"
    with pytest.raises(ValueError, match=r"config.model.options.fill_correction: pull must be one of"):
        models.build_cmp(config)


def test_dense_prior_without_guidance_is_zero_flow_far_away():
    prior = fills.DensePrior(8, max_size=512)(np.zeros((1, 32, 32, 3), np.float32)).numpy()
    np.testing.assert_array_equal(prior[..., :2], 0)
    np.testing.assert_array_equal(prior[..., 2], 512)


def test_prior_logits_read_out_as_the_prior():
    prior = np.array([[[[-7.3, 12.6]]]], np.float32)
    logits = heads.PriorLogits(99, 50.0, sigma=2.0)(prior)
    flow = heads.FlowReadout(99, 50.0)(logits).numpy()
    np.testing.assert_allclose(flow[0, 0, 0], prior[0, 0, 0], atol=1e-3)


def test_custom_layers_round_trip_their_config():
    for layer in (L.InputGuard(32, 128), heads.FlowReadout(99, 50.0), fills.DensePrior(8, max_size=1024),
                  heads.PriorLogits(99, 50.0, 2.0), L.ResizeLike()):
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_regression_head_outputs_flow_and_starts_from_the_prior(rng):
    config = load_config("cpu_bins")
    config.flow.loss, config.model.head = "l1", "regression"
    config.model.options.regression.nearest_prior = True
    model = models.build_cmp(config)
    inputs = _inputs(rng, 1, 128, points=1)
    out = model(inputs)
    assert tuple(out["logits"].shape) == (1, 64, 64, 2)  # flow itself at the decoder's stride
    vector = inputs["sparse"][0][inputs["sparse"][0, ..., 2] > 0][0, :2]
    np.testing.assert_allclose(out["flow"].numpy()[0].reshape(-1, 2).mean(0), vector, atol=0.5)


def test_mixed_precision_keeps_float32_outputs_and_gradients(rng):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        config = load_config("cpu_bins")
        model = models.build_cmp(config)
        from cmp_tf import losses

        with tf.GradientTape() as tape:
            out = model(_inputs(rng, 1, 128), training=True)
            loss = tf.reduce_mean(losses.make_loss(config.flow)(out["logits"],
                                                                tf.zeros((1, 128, 128, 2))))
        grads = tape.gradient(loss, model.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out["logits"].dtype == tf.float32 and out["flow"].dtype == tf.float32
    assert np.isfinite(float(loss)) and all(g is not None for g in grads)


def test_the_encoder_has_a_plain_keras_copy_with_the_same_outputs(rng):
    encoder = models.build_encoder(load_config("cpu_bins"))
    copy = L.plain_keras_copy(encoder)
    kinds = {type(layer).__name__ for layer in L.all_layers(copy)}
    assert "BatchNorm" not in kinds and "BatchNormalization" in kinds
    image = rng.uniform(0, 255, (1, 128, 128, 3)).astype(np.float32)
    for key in ("features", "skip2", "skip4"):
        np.testing.assert_allclose(copy(image)[key].numpy(), encoder(image)[key].numpy(),
                                   rtol=1e-6, atol=1e-6)


def test_synchronized_batch_norm_matches_plain_moments(rng):
    x = (1000.0 + rng.normal(size=(4, 6, 6, 3))).astype(np.float32)  # mean >> spread
    layer = L.BatchNorm(synchronized=True)
    layer.build(x.shape)
    mean, variance = layer._moments(tf.constant(x), None)
    np.testing.assert_allclose(mean.numpy(), x.mean((0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(variance.numpy(), x.var((0, 1, 2)), rtol=1e-4)


def test_build_cmp_names_a_config_that_is_not_a_recipe():
    config = load_config("cpu_bins")
    with pytest.raises(ValueError, match="config must be a recipe's ConfigDict with model and "
                                         "flow .* got dict"):
        models.build_cmp(config.to_dict())
    del config.model
    with pytest.raises(ValueError, match=r"got ConfigDict of \[.*'flow'"):
        models.build_cmp(config)
