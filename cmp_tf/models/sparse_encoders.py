"""Sparse motion encoders ("ShallowNet"): guidance (u, v, mask) -> features at the image
encoder's stride, so the decoder can concatenate the two.
"""
import keras

from cmp_tf import registry
from cmp_tf.models import layers as L


def _shallownet(final_pool, width, init_gain, name):
    sparse = keras.Input((None, None, 3), name="sparse")  # (u, v, mask)
    x = L.conv_bn_relu(sparse, width, 5, strides=2, padding=2, name="conv1", gain=init_gain)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)  # [B, H/4, W/4, width]
    x = L.conv_bn_relu(x, width, 3, name="conv2", gain=init_gain)
    x = keras.layers.AveragePooling2D(final_pool, name="pool2")(x)  # [B, H/(4 * pool), ...]
    return keras.Model(sparse, x, name=name)


@registry.register("sparse_encoder", "shallownet8x")
def shallownet8x(width=16, init_gain=0.02, name="sparse_encoder"):
    """Output stride 8, for the dilated ResNet-50."""
    return _shallownet(2, width, init_gain, name)


@registry.register("sparse_encoder", "shallownet32x")
def shallownet32x(width=16, init_gain=0.02, name="sparse_encoder"):
    """Output stride 32, for AlexNet and MobileNetV3."""
    return _shallownet(8, width, init_gain, name)
