"""Building blocks shared by the model parts (the reference's conventions), and the few
wiring layers Keras does not have. Guidance fills live in `fills`, propagation heads in `heads`.

Conventions of the reference (PyTorch) that decide checkpoint parity: symmetric padding
(explicit ZeroPadding2D + 'valid' where a stride > 1 makes Keras' 'same' pad bottom/right
only), BatchNorm epsilon 1e-5 / momentum 0.1 (Keras 0.9), align-corners bilinear resizes,
conv weights Xavier-normal with gain 0.02 and BN gamma ~ N(1, 0.02).
"""
import keras
import numpy as np
import tensorflow as tf

from cmp_tf import ops

BN_EPSILON = 1e-5  # PyTorch's default, used by the reference.
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1 in Keras' convention.
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255: the model takes raw pixels.
IMAGENET_STD = (58.395, 57.12, 57.375)


def conv_init(gain):
    """Xavier-normal with `gain`, as the reference's init_weights('xavier', 0.02)."""
    return keras.initializers.VarianceScaling(gain**2, "fan_avg", "untruncated_normal")


@keras.saving.register_keras_serializable(package="cmp_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization whose synchronized (cross-replica) statistics are computed in two
    passes: the global mean first, then the all-reduced squared deviations from it.

    Keras computes the synchronized variance as E[x^2] - E[x]^2, which cancels badly when a
    channel's mean dwarfs its spread (the sparse encoder's mostly-zero input does that): N
    replicas then drift from one device within a few steps. Two passes cost one more
    all-reduce and agree with one device to rounding.
    """

    def _moments(self, inputs, mask):
        if not self.synchronized or mask is not None:
            return super()._moments(inputs, mask)
        replica = tf.distribute.get_replica_context()

        def total(value):
            return replica.all_reduce(tf.distribute.ReduceOp.SUM, value) if replica else value

        x = tf.cast(inputs, tf.float32)
        axes = self._reduction_axes
        shape = tf.shape(x)
        count = total(tf.cast(tf.reduce_prod(tf.gather(shape, axes)), tf.float32))
        mean = total(tf.reduce_sum(x, axes)) / count
        variance = total(tf.reduce_sum(tf.square(x - mean), axes)) / count
        return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)


def batch_norm(gain, name):
    return BatchNorm(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                     gamma_initializer=keras.initializers.RandomNormal(1.0, gain), name=name)


def with_stable_batch_norm(model):
    """A copy of a functional `model` (e.g. from keras.applications) whose BatchNormalization
    layers are `BatchNorm`s with the project's momentum; weights are freshly initialized."""

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["momentum"] = BN_MOMENTUM  # Keras apps use 0.999: statistics would lag
            return BatchNorm.from_config(config)
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def all_layers(model):
    """Every layer of `model`, those of the models nested in it (MobileNet's trunk) included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def plain_keras_copy(model):
    """A copy of `model` with the same weights in stock Keras layers only, where it has no
    other custom layer (an image encoder): `keras.models.load_model` then reads the saved
    file without importing cmp_tf, for fine-tuning anywhere."""

    def clone(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone)
        config = layer.get_config()
        if isinstance(layer, BatchNorm):
            return keras.layers.BatchNormalization.from_config(config)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def conv(x, filters, kernel, *, name, gain, strides=1, padding=None, dilation=1, use_bias=True):
    """Conv2D with PyTorch-style symmetric `padding` (default: 'same' for odd kernels)."""
    if padding is None:
        padding = dilation * (kernel - 1) // 2
    same = strides == 1 and 2 * padding == dilation * (kernel - 1)
    if padding and not same:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(
        filters, kernel, strides=strides, padding="same" if same else "valid",
        dilation_rate=dilation, use_bias=use_bias, kernel_initializer=conv_init(gain),
        name=name)(x)


def conv_bn_relu(x, filters, kernel, *, name, gain, relu=True, bn_name=None, **conv_kwargs):
    """conv -> BatchNorm -> ReLU, the unit of every CMP part."""
    x = conv(x, filters, kernel, name=name, gain=gain, **conv_kwargs)
    x = batch_norm(gain, bn_name or f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def separable_conv_bn_relu(x, filters, kernel, *, name, gain):
    """Depthwise `kernel` x `kernel` conv, pointwise 1x1 conv -> BatchNorm -> ReLU: a
    conv_bn_relu at a fraction of the cost (kernel^2 + filters multiply-adds per input
    channel and pixel instead of kernel^2 x filters), for the decoder's full-resolution
    layers."""
    x = keras.layers.SeparableConv2D(
        filters, kernel, padding="same", depthwise_initializer=conv_init(gain),
        pointwise_initializer=conv_init(gain), name=name)(x)
    x = batch_norm(gain, f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def max_pool(x, size, strides, padding, name):
    """Max pooling with PyTorch-style padding; inputs follow a ReLU, so zero padding is exact."""
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(size, strides, padding="valid", name=name)(x)


def normalize(image):
    """Raw RGB 0..255 -> ImageNet-normalized, inside the model so exported models take pixels."""
    return keras.layers.Normalization(
        mean=IMAGENET_MEAN, variance=np.square(IMAGENET_STD).tolist(), name="normalize")(image)


@keras.saving.register_keras_serializable(package="cmp_tf")
class ResizeLike(keras.layers.Layer):
    """Bilinear resize (align corners) of inputs[0] to the spatial size of inputs[1].

    Resizing to a reference tensor's dynamic shape works for any input size and exports.
    """

    def call(self, inputs):
        x, reference = inputs
        return ops.resize_align_corners(x, tf.shape(reference)[1:3])

    def compute_output_shape(self, input_shape):
        x, reference = input_shape
        return (x[0], reference[1], reference[2], x[3])


@keras.saving.register_keras_serializable(package="cmp_tf")
class InputGuard(keras.layers.Layer):
    """Passes (image, sparse) through, refusing sizes the network cannot take.

    The check runs in Python when the size is known (eager calls, traced training steps; the
    runtime's graph for any size calls `check_sizes` on each call's arrays), so a wrong
    size fails with a message instead of a shape error deep inside a concat. A graph traced
    for free sizes elsewhere (`model.predict` retraces with free sizes once it has seen a
    few; a `tf.function` of the model) checks each call's size with an assertion, which
    fails naming the size: without it some wrong sizes ran on, the encoders' features
    misaligned with the image, and others failed deep inside a concat. The exporters turn
    that off while they trace (`check_in_graph`; their files carry no assertion, and
    `runtime.Network` checks each call's size itself).

    Args:
        multiple: height and width must be multiples of this (the encoders' stride).
        minimum: and at least this (the decoder pools the features by its largest scale).
    """

    def __init__(self, multiple, minimum=0, **kwargs):
        super().__init__(**kwargs)
        self.multiple, self.minimum = int(multiple), int(minimum)
        # Whether a trace for free sizes asserts each call's size (not part of the config).
        self.check_in_graph = True

    def call(self, inputs):
        image, sparse = inputs
        self.check_sizes(image.shape, sparse.shape)
        if self.check_in_graph and None in (*image.shape[1:3], *sparse.shape[1:3]):
            with tf.control_dependencies([self._assert_sizes(image, sparse)]):
                return [tf.identity(image), tf.identity(sparse)]
        return [tf.identity(image), tf.identity(sparse)]

    def _assert_sizes(self, image, sparse):
        """`check_sizes` as a graph assertion on the sizes known only when run."""
        h, w = tf.shape(image)[1], tf.shape(image)[2]
        sh, sw = tf.shape(sparse)[1], tf.shape(sparse)[2]
        ok = tf.reduce_all(tf.stack([
            tf.equal(h % self.multiple, 0), tf.equal(w % self.multiple, 0),
            tf.greater_equal(tf.minimum(h, w), self.minimum), tf.equal(sh, h),
            tf.equal(sw, w)]))
        return tf.debugging.Assert(ok, [
            f"image height and width must be multiples of {self.multiple} (the stride of "
            f"its encoders) and at least {self.minimum} for this model, and sparse must be "
            "as large as the image; got image height, width, sparse height, width:",
            h, w, sh, sw])

    def check_sizes(self, image_shape, sparse_shape):
        """ValueError for an NHWC image or sparse map of a size the network cannot take;
        dimensions that are None pass (a graph traced for any size checks them in its
        assertion, `call`, or, exported without one, its caller checks each call's arrays:
        `runners.KerasRunner`, `runtime.Network`)."""
        h, w = image_shape[1:3]
        if h is not None and w is not None and min(h, w) < self.minimum:
            raise ValueError(
                f"image height and width must be at least {self.minimum} for this model (its "
                f"decoder pools the encoder's features further); got {h}x{w}.")
        if h is not None and w is not None and (h % self.multiple or w % self.multiple):
            up = (-(-h // self.multiple) * self.multiple, -(-w // self.multiple) * self.multiple)
            raise ValueError(
                f"image height and width must be multiples of {self.multiple} for this model "
                f"(its encoders' stride); got {h}x{w}. Resize or pad, e.g. to {up[0]}x{up[1]}.")
        if None not in (h, w, *sparse_shape[1:3]) and tuple(sparse_shape[1:3]) != (h, w):
            raise ValueError(f"sparse must have the image's size {h}x{w}; got "
                             f"{sparse_shape[1]}x{sparse_shape[2]}.")

    def compute_output_shape(self, input_shape):
        return list(input_shape)

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple, "minimum": self.minimum}
