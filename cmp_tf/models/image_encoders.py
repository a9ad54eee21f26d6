"""Image encoders: the part CMP trains to transfer. Each takes raw RGB (0..255) and returns a dict:
`features` (width channels at the encoder's stride) and, where the decoder can use them,
`skip2` / `skip4` (early features at strides 2 and 4) for the skip-layer decoder.
"""
import keras

from cmp_tf import registry
from cmp_tf.models import layers as L


def _image_input():
    return keras.Input((None, None, 3), name="image")


@registry.register("image_encoder", "alexnet_fcn_32x")
def alexnet_fcn_32x(width=256, dropout=0.5, init_gain=0.02, name="image_encoder"):
    """AlexNet with BatchNorm as a fully convolutional net, output stride 32 (paper, AlexNet)."""
    image = _image_input()
    x = L.normalize(image)
    x = L.conv_bn_relu(x, 96, 11, strides=4, padding=5, name="conv1", gain=init_gain)  # H/4
    x = L.max_pool(x, 3, 2, 1, name="pool1")  # H/8
    x = L.conv_bn_relu(x, 256, 5, name="conv2", gain=init_gain)
    x = L.max_pool(x, 3, 2, 1, name="pool2")  # H/16
    x = L.conv_bn_relu(x, 384, 3, name="conv3", gain=init_gain)
    x = L.conv_bn_relu(x, 384, 3, name="conv4", gain=init_gain)
    x = L.conv_bn_relu(x, 256, 3, name="conv5", gain=init_gain)
    x = L.max_pool(x, 3, 2, 1, name="pool5")  # H/32
    x = L.conv_bn_relu(x, 4096, 3, name="fc6", gain=init_gain)  # fully connected layers as convs
    x = keras.layers.Dropout(dropout, name="fc6_dropout")(x)
    x = L.conv_bn_relu(x, 4096, 1, name="fc7", gain=init_gain)
    x = keras.layers.Dropout(dropout, name="fc7_dropout")(x)
    features = L.conv(x, width, 1, name="conv8", gain=init_gain)  # [B, H/32, W/32, width]
    return keras.Model(image, {"features": features}, name=name)


def _bottleneck(x, planes, *, strides, dilation, downsample, name, gain):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv, as in torchvision."""
    shortcut = x
    y = L.conv_bn_relu(x, planes, 1, use_bias=False, name=f"{name}_conv1", bn_name=f"{name}_bn1",
                       gain=gain)
    y = L.conv_bn_relu(y, planes, 3, strides=strides, dilation=dilation, use_bias=False,
                       name=f"{name}_conv2", bn_name=f"{name}_bn2", gain=gain)
    y = L.conv_bn_relu(y, 4 * planes, 1, use_bias=False, relu=False, name=f"{name}_conv3",
                       bn_name=f"{name}_bn3", gain=gain)
    if downsample:
        shortcut = L.conv_bn_relu(x, 4 * planes, 1, strides=strides, use_bias=False, relu=False,
                                  name=f"{name}_downsample_0", bn_name=f"{name}_downsample_1",
                                  gain=gain)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu")(y)


@registry.register("image_encoder", "resnet50")
def resnet50(width=256, init_gain=0.02, name="image_encoder"):
    """Dilated ResNet-50, output stride 8 (paper, ResNet-50).

    layer3 and layer4 keep stride 1 and dilate *every* block's 3x3 conv by 2 and 4, the first
    included (unlike torchvision's replace_stride_with_dilation). Layer names follow
    torchvision's keys with '.' -> '_' (layer3_0_conv2, layer3_0_downsample_0, ...).
    """
    image = _image_input()
    x = L.normalize(image)
    x = L.conv_bn_relu(x, 64, 7, strides=2, padding=3, use_bias=False, name="conv1",
                       bn_name="bn1", gain=init_gain)
    skip2 = x  # [B, H/2, W/2, 64]
    x = L.max_pool(x, 3, 2, 1, name="maxpool")
    # (blocks, planes, stride of the first block, dilation) per stage.
    stages = ((3, 64, 1, 1), (4, 128, 2, 1), (6, 256, 1, 2), (3, 512, 1, 4))
    skip4 = None
    for stage, (blocks, planes, strides, dilation) in enumerate(stages, start=1):
        for block in range(blocks):
            x = _bottleneck(x, planes, strides=strides if block == 0 else 1, dilation=dilation,
                            downsample=block == 0, name=f"layer{stage}_{block}", gain=init_gain)
        if stage == 1:
            skip4 = x  # [B, H/4, W/4, 256]
    features = L.conv(x, width, 1, name="conv5", gain=init_gain)  # [B, H/8, W/8, width]
    return keras.Model(image, {"features": features, "skip2": skip2, "skip4": skip4}, name=name)


def _block_input(backbone, pad):
    """The tensor entering the inverted-residual block that `pad` (a stride-2 block) belongs to."""
    prefix = pad.name[: -len("depthwise_pad")]
    names = {layer.name for layer in backbone.layers}
    return backbone.get_layer(f"{prefix}expand").input if f"{prefix}expand" in names else pad.input


@registry.register("image_encoder", "mobilenet_v3")
def mobilenet_v3(variant="large", alpha=1.0, minimalistic=False, width=256, init_gain=0.02,
                 name="image_encoder"):
    """MobileNetV3 (keras.applications, trained from scratch) for on-device use; stride 32.

    Beyond the paper. The skips are the inputs of the blocks that first reach strides 4 and 8,
    i.e. each stride's last block output.
    """
    factories = {"small": keras.applications.MobileNetV3Small,
                 "large": keras.applications.MobileNetV3Large}
    if variant not in factories:
        raise ValueError(f"config.model.image_encoder.variant={variant!r}; known: small, large.")
    backbone = L.with_stable_batch_norm(factories[variant](
        input_shape=(None, None, 3), alpha=alpha, minimalistic=minimalistic, include_top=False,
        weights=None, include_preprocessing=False))
    pads = [layer for layer in backbone.layers if layer.name.endswith("depthwise_pad")]
    trunk = keras.Model(backbone.input,
                        {"features": backbone.output, "skip2": _block_input(backbone, pads[0]),
                         "skip4": _block_input(backbone, pads[1])},
                        name=f"mobilenet_v3_{variant}")
    image = _image_input()
    out = trunk(L.normalize(image))
    features = L.conv(out["features"], width, 1, name="conv_out", gain=init_gain)
    return keras.Model(image, {"features": features, "skip2": out["skip2"],
                               "skip4": out["skip4"]}, name=name)
