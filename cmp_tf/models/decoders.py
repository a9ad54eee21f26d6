"""Propagation nets + fusion: image and sparse-motion features -> 2 * nbins flow-bin logits.

Parallel branches see the features at several scales (max-pooled by each factor in `combo`),
so guidance propagates over distances the 3x3 convs alone could not reach.
"""
import keras

from cmp_tf import registry
from cmp_tf.models import layers as L


def _branches(x, combo, depth, width, gain):
    """One conv stack per scale in `combo`, upsampled back to `x`'s size and concatenated."""
    outs = []
    for scale in combo:
        y = keras.layers.MaxPooling2D(scale, name=f"decoder{scale}_pool")(x) if scale > 1 else x
        for i in range(1, depth + 1):
            y = L.conv_bn_relu(y, width, 3, name=f"decoder{scale}_conv{i}", gain=gain)
        if scale > 1:
            y = L.ResizeLike(name=f"decoder{scale}_up")([y, x])
        outs.append(y)
    return keras.layers.Concatenate(name="branches")(outs) if len(outs) > 1 else outs[0]


def _check_combo(combo):
    combo = tuple(int(c) for c in combo)
    if not combo or any(c < 1 for c in combo) or len(set(combo)) != len(combo):
        raise ValueError(f"config.model.decoder_combo must be distinct positive scales; got "
                         f"{combo}.")
    return combo


@registry.register("decoder", "plain")
def plain(in_channels, out_channels, combo=(1, 2, 4), width=128, init_gain=0.02, name="decoder"):
    """Branches of two 3x3 convs per scale, then a 1x1 head; output at the features' stride."""
    features = keras.Input((None, None, in_channels), name="features")
    x = _branches(features, _check_combo(combo), 2, width, init_gain)
    logits = L.conv(x, out_channels, 1, name="head", gain=init_gain)
    return keras.Model({"features": features}, logits, name=name)


@registry.register("decoder", "skip_layer")
def skip_layer(in_channels, out_channels, skip_channels, combo=(1, 2, 4, 8), width=128,
               fusion_widths=(256, 128, 64), skip_widths=(128, 32), separable=False,
               out_stride=2, init_gain=0.02, name="decoder"):
    """Branches of three 3x3 convs per scale, then fusion with the encoder's stride-4 and
    stride-2 skips; output at stride 2 (paper, ResNet-50 semi-automatic annotation model).

    Args:
        skip_channels: (channels of skip4, channels of skip2) from the image encoder.
        separable: the convs at strides 4 and 2 (the fusions and the skips' convs, nearly all
            of the decoder's cost) depthwise-separable (`layers.separable_conv_bn_relu`).
        out_stride: 2 (the paper), or 4: end after the fusion with the stride-4 skip. The
            stride-2 stage works on 4 times the cells of any other; without it the head's
            fills and read-out work on 4 px cells too.
    """
    if not isinstance(separable, bool):
        raise ValueError(f"config.model.options.skip_layer.separable must be True or False; "
                         f"got {separable!r}.")
    if isinstance(out_stride, bool) or out_stride not in (2, 4):
        raise ValueError(f"config.model.options.skip_layer.out_stride must be 2 or 4; got "
                         f"{out_stride!r}.")
    fine = L.separable_conv_bn_relu if separable else L.conv_bn_relu
    features = keras.Input((None, None, in_channels), name="features")
    skip4 = keras.Input((None, None, skip_channels[0]), name="skip4")
    x = _branches(features, _check_combo(combo), 3, width, init_gain)
    x = L.conv_bn_relu(x, fusion_widths[0], 3, name="fusion8", gain=init_gain)
    x = L.ResizeLike(name="up4")([x, skip4])
    s4 = fine(skip4, skip_widths[0], 3, name="skipconv4", gain=init_gain)
    x = keras.layers.Concatenate(name="cat4")([x, s4])
    x = fine(x, fusion_widths[1], 3, name="fusion4", gain=init_gain)
    inputs = {"features": features, "skip4": skip4}
    if out_stride == 2:
        skip2 = keras.Input((None, None, skip_channels[1]), name="skip2")
        x = L.ResizeLike(name="up2")([x, skip2])
        s2 = fine(skip2, skip_widths[1], 3, name="skipconv2", gain=init_gain)
        x = keras.layers.Concatenate(name="cat2")([x, s2])
        x = fine(x, fusion_widths[2], 3, name="fusion2", gain=init_gain)
        inputs["skip2"] = skip2
    logits = L.conv(x, out_channels, 1, name="head", gain=init_gain)
    return keras.Model(inputs, logits, name=name)
