"""The CMP model (paper Fig. 2): image encoder + sparse motion encoder -> propagation decoder
-> propagation head.

Wiring only: the parts are built elsewhere (by name, from the config) and passed in, so a test
can pass a two-layer encoder.
"""
import math

import keras
import ml_collections

from cmp_tf import flow as flow_lib
from cmp_tf import losses
from cmp_tf import registry
from cmp_tf.models import layers as L

# Side of the square image whose symbolic shapes reveal each part's stride (a multiple of all).
_PROBE = 1024


def _stride(shape):
    return _PROBE // shape[1]


def part_strides(part):
    """{output name: stride} of an image encoder (features, and skip2 / skip4 if it has
    them), read from its symbolic output shapes."""
    shapes = part.compute_output_shape((1, _PROBE, _PROBE, 3))
    return {key: _stride(shape) for key, shape in shapes.items()}


def assemble(image_encoder, sparse_encoder, decoder, head, *, decoder_scale=1, name="cmp"):
    """Wires built parts into the CMP model.

    Args:
        image_encoder: image [B, H, W, 3] -> dict with `features` (and `skip2`, `skip4` if the
            decoder takes them).
        sparse_encoder: sparse [B, H, W, 3] -> features at the image features' stride.
        decoder: dict of `features` (image features, sparse features and the head's guidance
            maps, concatenated) and skips -> [B, h, w, head.decoder_channels].
        head: a propagation head (`cmp_tf.models.heads`): the guidance maps the decoder reads
            and how its output becomes flow.
        decoder_scale: the largest factor by which the decoder pools its input features; the
            image must give it at least one feature cell there.
    Returns:
        keras.Model: {"image": [B, H, W, 3] RGB 0..255, "sparse": [B, H, W, 3] (u, v, mask)} ->
        {"logits": what the loss reads, at the decoder's stride (at the fills' cells for a
        head whose fills are finer), "flow": [B, H, W, 2] pixels}.
    """
    enc_shapes = image_encoder.compute_output_shape((1, _PROBE, _PROBE, 3))
    strides = part_strides(image_encoder)
    sparse_stride = _stride(sparse_encoder.compute_output_shape((1, _PROBE, _PROBE, 3)))
    if sparse_stride != strides["features"]:
        raise ValueError(
            f"The sparse encoder {sparse_encoder.name!r} has stride {sparse_stride} but the image "
            f"encoder {image_encoder.name!r} has stride {strides['features']}; pick the "
            f"shallownet{strides['features']}x sparse encoder.")
    missing = sorted(set(decoder.input) - {"features"} - set(enc_shapes))
    if missing:
        raise ValueError(f"The decoder {decoder.name!r} needs {missing} from the image encoder, "
                         f"which returns only {sorted(enc_shapes)}; use the 'plain' decoder.")
    multiple = max(max(strides.values()), sparse_stride)
    out_stride = min(strides[key] for key in decoder.input)  # decoders end at their finest input

    image = keras.Input((None, None, 3), name="image")
    sparse = keras.Input((None, None, 3), name="sparse")
    image_in, sparse_in = L.InputGuard(multiple, strides["features"] * decoder_scale,
                                       name="input_guard")([image, sparse])
    encoded = image_encoder(image_in)
    guidance_maps, read_out = head.attach(sparse_in, image_in, strides["features"], out_stride)
    parts = [encoded["features"], sparse_encoder(sparse_in), *guidance_maps]
    features = keras.layers.Concatenate(name="fuse_inputs")(parts)
    skips = {key: encoded[key] for key in decoder.input if key != "features"}
    out, flow = read_out(decoder({"features": features, **skips}))
    flow = L.ResizeLike(name="upsample_flow")([flow, image])
    # float32 outputs under mixed precision too: the loss and the flow want full precision.
    outputs = {"logits": keras.layers.Identity(name="logits", dtype="float32")(out),
               "flow": keras.layers.Identity(name="flow", dtype="float32")(flow)}
    return keras.Model({"image": image, "sparse": sparse}, outputs, name=name)


def _plain_dict(value):
    """A config field (ConfigDict, dict or None) as a plain dict of keyword arguments."""
    value = value or {}
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def _options(config):
    """`config.model.options` as plain dicts: builder kwargs keyed by part name."""
    options = _plain_dict(config.model.get("options"))
    registry.check_options(options)
    return options


def build_encoder(config):
    """The image encoder named by `config.model.image_encoder` (what transfer learning reuses)."""
    return registry.build("image_encoder", config.model.image_encoder, _options(config),
                          init_gain=config.model.init_gain)


def computes_in_float32(model):
    """Whether every layer of `model` computes in float32 (not under a mixed policy)."""
    return all(layer.dtype_policy.name == "float32" for layer in L.all_layers(model))


def in_float32(model, config):
    """`model` if every layer computes in float32, else the CMP of `config` built under the
    float32 policy holding `model`'s weights. A run trained in mixed precision is saved, read
    and exported so: its float16 arithmetic is slow on a CPU, LiteRT's builtins refuse it, and
    its bfloat16 flow moved in 0.25 px steps at 32 px. For a model as trained or loaded: what
    is switched outside the recipe (a fade turned off, BatchNorm's sync) is not carried over.
    ValueError where `config` builds other weights than `model` holds."""
    if computes_in_float32(model):
        return model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_cmp(config)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    shapes = [tuple(w.shape) for w in model.weights]
    if [tuple(w.shape) for w in copy.weights] != shapes:
        raise ValueError(f"config builds {len(copy.weights)} weights of other shapes than the "
                         f"model's {len(shapes)}: it is another recipe's.")
    copy.set_weights(model.get_weights())
    return copy


def build_head(config):
    """The propagation head named by `config.model.head`, with its options (heads.py)."""
    f = config.flow
    return registry.build("head", config.model.head, _options(config), nbins=f.nbins,
                          fmax=f.fmax, loss=f.loss)


def build_cmp(config):
    """Builds the CMP model of a recipe (see `assemble` for inputs and outputs)."""
    if not isinstance(config, ml_collections.ConfigDict) or "model" not in config or \
            "flow" not in config:
        fields = f" of {sorted(config)}" if hasattr(config, "keys") else ""
        raise ValueError(f"config must be a recipe's ConfigDict with model and flow "
                         f"(configs/*.py get_config()); got {type(config).__name__}{fields}.")
    m, f = config.model, config.flow
    if f.loss not in losses.LOSSES:
        raise ValueError(f"config.flow.loss={f.loss!r} is unknown; known: "
                         f"{', '.join(losses.LOSSES)}.")
    flow_lib.check_bins(f.nbins, f.fmax)
    gain = m.init_gain
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not (
            math.isfinite(gain) and gain >= 0):  # NaN weights: a NaN loss at the first step
        raise ValueError(f"config.model.init_gain={gain!r} must be a finite number >= 0 (the "
                         "initial weights' standard deviation).")
    head = build_head(config)
    image_encoder = build_encoder(config)
    options = _options(config)
    sparse_encoder = registry.build("sparse_encoder", m.sparse_encoder, options,
                                    init_gain=m.init_gain)
    enc_shapes = image_encoder.compute_output_shape((1, _PROBE, _PROBE, 3))
    sparse_channels = sparse_encoder.compute_output_shape((1, _PROBE, _PROBE, 3))[-1]
    context = dict(in_channels=enc_shapes["features"][-1] + sparse_channels + head.prior_channels,
                   out_channels=head.decoder_channels,
                   combo=tuple(m.decoder_combo), init_gain=m.init_gain)
    if "skip_channels" in registry.parameters("decoder", m.decoder):
        if not {"skip4", "skip2"} <= set(enc_shapes):
            raise ValueError(
                f"config.model.decoder={m.decoder!r} needs skip features that the image encoder "
                f"{m.image_encoder!r} does not return; use the 'plain' decoder.")
        context["skip_channels"] = (enc_shapes["skip4"][-1], enc_shapes["skip2"][-1])
    decoder = registry.build("decoder", m.decoder, options, **context)
    model = assemble(image_encoder, sparse_encoder, decoder, head,
                     decoder_scale=max(context["combo"]))
    crop = tuple(config.data.crop) if "data" in config and "crop" in config.data else None
    guard = model.get_layer("input_guard")
    if crop and (crop[0] % guard.multiple or crop[1] % guard.multiple or min(crop) < guard.minimum):
        raise ValueError(f"config.data.crop={crop} must be a multiple of {guard.multiple} (the "
                         f"stride of this config's encoders) and at least {guard.minimum}.")
    return model


def decoder_stride(model):
    """Input pixels per cell of a CMP's decoder output: its finest input's stride (`assemble`)."""
    strides = part_strides(model.get_layer("image_encoder"))
    return min(strides[key] for key in model.get_layer("decoder").input)


def fill_stride(model):
    """The cell size in px of a CMP's blend of fills (`heads.BlendFills`); None without one."""
    from cmp_tf.models import heads

    blends = [layer for layer in model.layers if isinstance(layer, heads.BlendFills)]
    return blends[0].stride if blends else None


def check_sides(model, sides, flag, name="this model", largest=None):
    """Refuses image sides (px) a CMP cannot take as they are (each a multiple of its encoders'
    stride, at least its minimum, at most `largest` when given) in one line naming `flag` and
    the model as `name`, before anything is built or timed from them; returns them."""
    guard = model.get_layer("input_guard")
    bad = [side for side in sides if side < max(guard.minimum, 1) or side % guard.multiple
           or (largest is not None and side > largest)]
    if bad or not sides:
        most = "" if largest is None else f" and at most {largest}"
        raise ValueError(f"{flag}={','.join(map(str, sides))}: {name} takes sides that are "
                         f"multiples of {guard.multiple} (its encoders' stride), at least "
                         f"{guard.minimum}{most}; got {', '.join(map(str, bad)) or 'none'}.")
    return sides


def traced_max_side(model):
    """The longest image side in px a CMP's guidance fills span when its graph is traced for any
    size (a free-size runtime graph or export): the smallest `max_size` of its fill layers;
    None without fills. Beyond it the fills plan too few passes, so larger images must be
    shrunk to it (`runtime.Propagator` does)."""
    from cmp_tf.models import fills
    from cmp_tf.models import layers

    sides = [layer.max_size for layer in layers.all_layers(model)
             if isinstance(layer, fills.FILL_LAYERS)]
    return min(sides) if sides else None


def fill_stride_for_size(model, config, size):
    """The fills' cell size for a fixed working `size` (H, W): the trained cells scaled by the
    largest power of two within size / the training crop (short sides), at most the decoder's
    stride; the trained cells where the head has no blend of fills.

    Why: a recipe trains its fills on cells fine enough for its crop (dense guidance on 128^2
    is 6 px apart); at 384^2 the same guidance is 19 px apart, and 4 px cells keep it for a
    quarter of the cells. On the shipped weights at 384^2 that is within 0.0012 in relative
    EPE at every K from 1 to 400 on the bikes clip and from 1 to 100 on the generated scenes
    (400 uniform guides there 0.129 against 0.125), and the fills take half the time
    (benchmarks/fill_cells.py, docs/speed.md)."""
    trained = fill_stride(model)
    height, width = (int(s) for s in size)
    if trained is None or config.model.head != "fill_correction":
        return trained
    crop = min(int(s) for s in config.data.crop)
    factor = 1
    while 2 * factor * crop <= min(height, width):
        factor *= 2
    return min(trained * factor, decoder_stride(model))


def with_fill_stride(model, config, stride):
    """(model, config): `model` rebuilt with its fills and blend on `stride` px cells (the
    fill_correction head's `fill_stride`), the same weights and fade; the nearest fill's
    coarsest level stays where it was. `model` itself when its fills are on them already.

    Raises:
        ValueError: the head is not fill_correction, or `stride` is not a power of two that
            divides the decoder's stride.
    """
    import copy

    from cmp_tf.models import heads

    current = fill_stride(model)
    if not isinstance(stride, bool) and stride == current:
        return model, config
    if config.model.head != "fill_correction":
        raise ValueError(f"fill_stride: config.model.head={config.model.head!r} has no fills "
                         "whose cells can change; only 'fill_correction' does.")
    coarsest = decoder_stride(model)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 \
            or stride & (stride - 1) or coarsest % stride:
        raise ValueError(f"fill_stride must be a power of two dividing the decoder's stride "
                         f"{coarsest}; got {stride!r}.")
    config = copy.deepcopy(config)
    options = config.model.options.fill_correction
    if options.get("nearest_levels", 0):
        coarse = current * 2 ** options.nearest_levels
        options.nearest_levels = max(1, (coarse // stride).bit_length() - 1)
    options.fill_stride = stride
    rebuilt = build_cmp(config)
    source = {layer.name: layer for layer in model.layers}
    for layer in rebuilt.layers:
        if layer.weights:
            layer.set_weights(source[layer.name].get_weights())
    fade = heads.fade_of(model)
    if fade is not None:
        heads.set_fade(rebuilt, fade)
    return rebuilt, config
