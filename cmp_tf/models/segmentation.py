"""Segmentation models around a CMP image encoder: what transfer learning fine-tunes.

Heads follow the paper's protocols: an FCN classifier on AlexNet, a DeepLab-style ASPP head
on ResNet-50 and the mobile encoder (DeepLabv3+ when the encoder has stride-4 skips). Logits
are upsampled (align corners) to the image. The encoder is the layer `image_encoder`, so a CMP
checkpoint's weights load onto it by name (`cmp_tf.transfer`).
"""
import keras

from cmp_tf.models import cmp
from cmp_tf.models import layers as L

ENCODER = "image_encoder"  # the encoder's layer name in CMP models and segmentation models
HEADS = ("fcn", "aspp")
# AlexNet's output stride 32 and no skips: the paper transfers it with FCN-32s.
_AUTO_HEADS = {"alexnet_fcn_32x": "fcn"}
_AUTO_DEFAULT_HEAD = "aspp"


def head_name(config):
    """The head config.head.name picks; "auto": FCN for AlexNet, ASPP for the others."""
    name = config.head.name
    if name == "auto":
        return _AUTO_HEADS.get(config.model.image_encoder, _AUTO_DEFAULT_HEAD)
    if name not in HEADS:
        raise ValueError(f"config.head.name={name!r} is unknown; known: auto, {', '.join(HEADS)}.")
    return name


def fcn_head(features, num_classes, *, width, dropout, gain, name="head"):
    """FCN's classifier (as torchvision's FCNHead): 3x3 conv, BN, ReLU, dropout, 1x1 scores."""
    x = L.conv_bn_relu(features, width, 3, use_bias=False, name=f"{name}_conv", gain=gain)
    x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return L.conv(x, num_classes, 1, name=f"{name}_classifier", gain=gain)


def aspp_head(features, num_classes, *, width, rates, dropout, gain, skip=None, skip_width=0,
              name="head"):
    """DeepLabv3's ASPP (a 1x1 branch, atrous 3x3 branches at `rates`, image pooling), then
    DeepLabv3+'s refinement with the stride-4 `skip` features if given."""
    branches = [L.conv_bn_relu(features, width, 1, use_bias=False, name=f"{name}_aspp0",
                               gain=gain)]
    for i, rate in enumerate(rates, start=1):
        branches.append(L.conv_bn_relu(features, width, 3, dilation=rate, use_bias=False,
                                       name=f"{name}_aspp{i}", gain=gain))
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(features)
    pooled = L.conv_bn_relu(pooled, width, 1, use_bias=False, name=f"{name}_pool_conv",
                            gain=gain)
    branches.append(L.ResizeLike(name=f"{name}_pool_upsample")([pooled, features]))
    x = keras.layers.Concatenate(name=f"{name}_aspp_concat")(branches)
    x = L.conv_bn_relu(x, width, 1, use_bias=False, name=f"{name}_project", gain=gain)
    x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    if skip is not None:  # DeepLabv3+: boundaries from early, high-resolution features
        low = L.conv_bn_relu(skip, skip_width, 1, use_bias=False, name=f"{name}_skip",
                             gain=gain)
        x = L.ResizeLike(name=f"{name}_upsample")([x, low])  # [B, H/4, W/4, width]
        x = keras.layers.Concatenate(name=f"{name}_skip_concat")([x, low])
    x = L.conv_bn_relu(x, width, 3, use_bias=False, name=f"{name}_conv", gain=gain)
    return L.conv(x, num_classes, 1, name=f"{name}_classifier", gain=gain)


def _check_head_config(head):
    if head.width < 1:
        raise ValueError(f"config.head.width must be positive; got {head.width}.")
    if not 0 <= head.dropout < 1:
        raise ValueError(f"config.head.dropout must be in [0, 1); got {head.dropout}.")
    if head.skip_width < 0:
        raise ValueError(f"config.head.skip_width must be >= 0 (0: no skip); got "
                         f"{head.skip_width}.")
    if not head.rates_px or min(head.rates_px) <= 0:
        raise ValueError(f"config.head.rates_px must be positive pixel rates; got "
                         f"{tuple(head.rates_px)}.")


def build_segmentation_model(config, num_classes):
    """The recipe's image encoder (`cmp.build_encoder`) + the head config.head picks.

    Args:
        config: a segmentation config (configs/segmentation.py): model.* as the CMP recipe
            whose encoder is transferred, head.*.
        num_classes: classes including background (VOC: 21).
    Returns:
        keras.Model: "image" [B, H, W, 3] RGB 0..255 -> "logits" [B, H, W, num_classes]
        float32, for H, W multiples of the encoder's stride. The encoder is the layer
        `image_encoder`, so a CMP checkpoint's weights load onto it by name.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background and one class); got "
                         f"{num_classes!r}.")
    head = config.head
    _check_head_config(head)
    name = head_name(config)
    encoder = cmp.build_encoder(config)
    if encoder.name != ENCODER:
        raise ValueError(f"The image encoder must be named {ENCODER!r} so checkpoints map onto "
                         f"it; config.model.options names it {encoder.name!r}.")
    strides = cmp.part_strides(encoder)
    image = keras.Input((None, None, 3), name="image")
    encoded = encoder(image)
    if name == "fcn":
        logits = fcn_head(encoded["features"], num_classes, width=head.width,
                          dropout=head.dropout, gain=head.init_gain)
    else:
        rates = [max(1, round(px / strides["features"])) for px in head.rates_px]
        use_skip = head.skip_width > 0 and "skip4" in encoded
        logits = aspp_head(encoded["features"], num_classes, width=head.width, rates=rates,
                           dropout=head.dropout, gain=head.init_gain,
                           skip=encoded["skip4"] if use_skip else None,
                           skip_width=head.skip_width)
    logits = L.ResizeLike(name="upsample_logits")([logits, image])  # [B, H, W, classes]
    logits = keras.layers.Identity(name="logits", dtype="float32")(logits)
    return keras.Model(image, logits, name=f"segmentation_{name}")


def set_encoder_frozen(model, frozen):
    """Freezes the encoder (its BatchNorm then uses its stored statistics) or unfreezes it."""
    if not isinstance(frozen, bool):
        raise ValueError(f"config.transfer.freeze_encoder must be True or False; got {frozen!r}.")
    model.get_layer(ENCODER).trainable = not frozen
