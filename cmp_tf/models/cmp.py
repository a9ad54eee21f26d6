"""The CMP model (paper Fig. 2): image encoder + sparse motion encoder -> propagation decoder.

Wiring only: the parts are built elsewhere (by name, from the config) and passed in, so a test
can pass a two-layer encoder.
"""
import keras

from cmp_tf import flow as flow_lib
from cmp_tf import losses
from cmp_tf import registry
from cmp_tf.models import layers as L

PRIOR_FILLS = ("nearest", "pull_push", "blend")  # config.model.prior_fill
# Side of the square image whose symbolic shapes reveal each part's stride (a multiple of all).
_PROBE = 1024


def _stride(shape):
    return _PROBE // shape[1]


def assemble(image_encoder, sparse_encoder, decoder, *, nbins, fmax, loss="discrete",
             dense_prior=False, prior_sigma=2.0, decoder_scale=1, honour_guidance=False,
             prior_skips=False, prior_fill="nearest", fill_gain=False, pull_push=None,
             gain_profile="exponential", learn_blend_weight=True, name="cmp"):
    """Wires built parts into the CMP model.

    Args:
        image_encoder: image [B, H, W, 3] -> dict with `features` (and `skip2`, `skip4` if the
            decoder takes them).
        sparse_encoder: sparse [B, H, W, 3] -> features at the image features' stride.
        decoder: dict of `features` (image, sparse and prior features concatenated) and skips
            -> [B, h, w, C] with C = 2 * nbins (discrete loss) or 2 (regression).
        dense_prior: feed the decoder a nearest-guidance fill and add it to the output, so the
            network learns a correction to it (beyond the paper).
        decoder_scale: the largest factor by which the decoder pools its input features; the
            image must give it at least one feature cell there.
        honour_guidance: the returned flow equals the given vectors at the guided pixels
            (the logits, hence the loss, are unchanged).
        prior_skips: also append the nearest-guidance fill at each skip's stride to that skip
            (the decoder's skip channels count it: 3 more each), so the fine layers see where
            the guides are, not only the coarse features.
        prior_fill: what the output adds to the decoder's: "nearest" (the nearest guide's
            vector), "pull_push" (a smooth fill interpolating between guides) or, with a
            regression loss, "blend" (a per-pixel mix of the two that the decoder's third
            output channel weighs; layers.BlendFills).
        fill_gain: with prior_fill="blend", a fourth decoder channel scales the blend per
            pixel by a gain falling with the distance to the guides (layers.BlendFills: how far
            a guide's motion carries).
        gain_profile: how the gain falls with the distance ("exponential" or "gaussian").
        learn_blend_weight: with prior_fill="blend", the decoder weighs the two fills per pixel
            (False: half and half, one decoder channel fewer).
        pull_push: keyword arguments of the smooth fill (layers.PullPushFill: pull, relax).
    Returns:
        keras.Model: {"image": [B, H, W, 3] RGB 0..255, "sparse": [B, H, W, 3] (u, v, mask)} ->
        {"logits": [B, h, w, C] at the decoder's stride, "flow": [B, H, W, 2] pixels}.
    """
    regression = loss != "discrete"
    enc_shapes = image_encoder.compute_output_shape((1, _PROBE, _PROBE, 3))
    strides = {key: _stride(shape) for key, shape in enc_shapes.items()}
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
    parts = [encoded["features"], sparse_encoder(sparse_in)]
    if dense_prior:
        coarse = L.DensePrior(strides["features"], name="dense_prior")(sparse_in)
        parts.append(keras.layers.Rescaling(1.0 / fmax, name="dense_prior_scale")(coarse))
    features = keras.layers.Concatenate(name="fuse_inputs")(parts)
    skips = {key: encoded[key] for key in decoder.input if key != "features"}
    fills = {}  # nearest-guidance fills by stride, each computed once
    if prior_skips:
        for key in sorted(skips):
            fills[strides[key]] = L.DensePrior(strides[key], name=f"dense_prior_{key}")(sparse_in)
            fill = keras.layers.Rescaling(1.0 / fmax, name=f"dense_prior_{key}_scale")(
                fills[strides[key]])
            skips[key] = keras.layers.Concatenate(name=f"{key}_with_prior")([skips[key], fill])
    out = decoder({"features": features, **skips})
    if dense_prior:
        fills.setdefault(strides["features"], coarse)
        prior = fills.get(out_stride)
        if prior_fill == "pull_push":
            prior = L.PullPushFill(out_stride, **(pull_push or {}), name="pull_push_out")(
                sparse_in)
        elif prior is None:
            prior = L.DensePrior(out_stride, name="dense_prior_out")(sparse_in)
        if prior_fill == "blend":
            smooth = L.PullPushFill(out_stride, **(pull_push or {}), name="pull_push_out")(
                sparse_in)
            out = L.BlendFills(fill_gain, out_stride, gain_profile, learn_blend_weight,
                               name="add_prior")([out, prior, smooth])
        elif regression:
            out = keras.layers.Add(name="add_prior")([out, prior[..., :2]])
        else:
            prior_logits = L.PriorLogits(nbins, fmax, prior_sigma, name="prior_logits")(prior)
            out = keras.layers.Add(name="add_prior")([out, prior_logits])
    flow = out if regression else L.FlowReadout(nbins, fmax, name="readout")(out)
    flow = L.ResizeLike(name="upsample_flow")([flow, image])
    if honour_guidance:
        flow = L.HonourGuidance(name="honour_guidance")([flow, sparse_in])
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


def build_cmp(config):
    """Builds the CMP model of a recipe (see `assemble` for inputs and outputs)."""
    m, f = config.model, config.flow
    if f.loss not in losses.LOSSES:
        raise ValueError(f"config.flow.loss={f.loss!r} is unknown; known: "
                         f"{', '.join(losses.LOSSES)}.")
    flow_lib.check_bins(f.nbins, f.fmax)
    prior_fill = m.get("prior_fill", "nearest")
    if prior_fill not in PRIOR_FILLS:
        raise ValueError(f"config.model.prior_fill={prior_fill!r} is unknown; known: "
                         f"{', '.join(PRIOR_FILLS)}.")
    if prior_fill != "nearest" and not m.dense_prior:
        raise ValueError(f"config.model.prior_fill={prior_fill!r} needs "
                         "config.model.dense_prior=True (it is the prior's fill).")
    blend = prior_fill == "blend"
    gain = m.get("fill_gain", False)
    if blend and f.loss == "discrete":
        raise ValueError("config.model.prior_fill='blend' needs a regression loss "
                         "(config.flow.loss=l1 or l2); got config.flow.loss='discrete'.")
    learn_weight = m.get("learn_blend_weight", True)
    for field in ("dense_prior", "honour_guidance", "prior_skips", "fill_gain",
                  "learn_blend_weight"):
        if not isinstance(m.get(field, False), bool):
            raise ValueError(f"config.model.{field} must be True or False; got {m[field]!r}.")
    gain_profile = m.get("gain_profile", "exponential")
    if gain_profile not in L.BlendFills.PROFILES:
        raise ValueError(f"config.model.gain_profile={gain_profile!r} is unknown; known: "
                         f"{', '.join(L.BlendFills.PROFILES)}.")
    if gain and not blend:
        raise ValueError("config.model.fill_gain=True scales the blend of fills: it needs "
                         f"config.model.prior_fill='blend'; got {prior_fill!r}.")
    pull_push = _plain_dict(m.get("pull_push"))
    try:
        L.PullPushFill(1, **pull_push)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.model.pull_push={pull_push}: {e} (fields: pull, relax)") from e
    image_encoder = build_encoder(config)
    options = _options(config)
    sparse_encoder = registry.build("sparse_encoder", m.sparse_encoder, options,
                                    init_gain=m.init_gain)
    enc_shapes = image_encoder.compute_output_shape((1, _PROBE, _PROBE, 3))
    sparse_channels = sparse_encoder.compute_output_shape((1, _PROBE, _PROBE, 3))[-1]
    if f.loss == "discrete":
        out_channels = 2 * f.nbins
    else:  # flow, or what the blend of fills reads
        out_channels = L.BlendFills(gain, 1, gain_profile, learn_weight).channels if blend else 2
    context = dict(in_channels=enc_shapes["features"][-1] + sparse_channels + 3 * m.dense_prior,
                   out_channels=out_channels,
                   combo=tuple(m.decoder_combo), init_gain=m.init_gain)
    if m.get("prior_skips", False) and not (
            m.dense_prior and "skip_channels" in registry.parameters("decoder", m.decoder)):
        raise ValueError("config.model.prior_skips=True needs config.model.dense_prior=True and "
                         f"a decoder with skips (skip_layer); got dense_prior={m.dense_prior}, "
                         f"decoder={m.decoder!r}.")
    if "skip_channels" in registry.parameters("decoder", m.decoder):
        if not {"skip4", "skip2"} <= set(enc_shapes):
            raise ValueError(
                f"config.model.decoder={m.decoder!r} needs skip features that the image encoder "
                f"{m.image_encoder!r} does not return; use the 'plain' decoder.")
        extra = 3 * m.get("prior_skips", False)
        context["skip_channels"] = (enc_shapes["skip4"][-1] + extra,
                                    enc_shapes["skip2"][-1] + extra)
    decoder = registry.build("decoder", m.decoder, options, **context)
    model = assemble(image_encoder, sparse_encoder, decoder, nbins=f.nbins, fmax=f.fmax,
                     loss=f.loss, dense_prior=m.dense_prior, prior_sigma=m.prior_sigma,
                     decoder_scale=max(context["combo"]),
                     honour_guidance=m.get("honour_guidance", False),
                     prior_skips=m.get("prior_skips", False),
                     prior_fill=prior_fill, fill_gain=gain, pull_push=pull_push,
                     gain_profile=gain_profile, learn_blend_weight=learn_weight)
    crop = tuple(config.data.crop) if "data" in config and "crop" in config.data else None
    guard = model.get_layer("input_guard")
    if crop and (crop[0] % guard.multiple or crop[1] % guard.multiple or min(crop) < guard.minimum):
        raise ValueError(f"config.data.crop={crop} must be a multiple of {guard.multiple} (the "
                         f"stride of this config's encoders) and at least {guard.minimum}.")
    return model
