"""Small TensorFlow ops shared by the model, the losses and evaluation."""
import tensorflow as tf


def resize_align_corners(x, size):
    """Bilinear resize of NHWC `x` to `size` (h, w) with align_corners=True, as every CMP resize.

    Keras' own resize has no align_corners and fails to export with dynamic sizes; the raw op
    exports to TFLite and ONNX, differentiates, and keeps the input dtype (the op itself
    returns float32 even for float16 input).
    """
    y = tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=True, half_pixel_centers=False)
    return tf.cast(y, x.dtype)
