"""Building blocks shared by the model parts, and the few layers Keras does not have.

Conventions of the reference (PyTorch) that decide checkpoint parity: symmetric padding
(explicit ZeroPadding2D + 'valid' where a stride > 1 makes Keras' 'same' pad bottom/right
only), BatchNorm epsilon 1e-5 / momentum 0.1 (Keras 0.9), align-corners bilinear resizes,
conv weights Xavier-normal with gain 0.02 and BN gamma ~ N(1, 0.02).
"""
import math

import keras
import numpy as np
import tensorflow as tf

from cmp_tf import flow as flow_lib
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

    The check runs in Python when the size is known (eager calls, traced training steps), so a
    wrong size fails with a message instead of a shape error deep inside a concat.

    Args:
        multiple: height and width must be multiples of this (the encoders' stride).
        minimum: and at least this (the decoder pools the features by its largest scale).
    """

    def __init__(self, multiple, minimum=0, **kwargs):
        super().__init__(**kwargs)
        self.multiple, self.minimum = int(multiple), int(minimum)

    def call(self, inputs):
        image, sparse = inputs
        h, w = image.shape[1:3]
        if h is not None and w is not None and min(h, w) < self.minimum:
            raise ValueError(
                f"image height and width must be at least {self.minimum} for this model (its "
                f"decoder pools the encoder's features further); got {h}x{w}.")
        if h is not None and w is not None and (h % self.multiple or w % self.multiple):
            up = (-(-h // self.multiple) * self.multiple, -(-w // self.multiple) * self.multiple)
            raise ValueError(
                f"image height and width must be multiples of {self.multiple} for this model "
                f"(its encoders' stride); got {h}x{w}. Resize or pad, e.g. to {up[0]}x{up[1]}.")
        if None not in (h, w, *sparse.shape[1:3]) and tuple(sparse.shape[1:3]) != (h, w):
            raise ValueError(f"sparse must have the image's size {h}x{w}; got "
                             f"{sparse.shape[1]}x{sparse.shape[2]}.")
        return [tf.identity(image), tf.identity(sparse)]

    def compute_output_shape(self, input_shape):
        return list(input_shape)

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple, "minimum": self.minimum}


@keras.saving.register_keras_serializable(package="cmp_tf")
class FlowReadout(keras.layers.Layer):
    """Bin logits -> flow by the softmax expectation over bin centres (the reference's Fuser)."""

    def __init__(self, nbins, fmax, **kwargs):
        super().__init__(**kwargs)
        flow_lib.check_bins(nbins, fmax)
        self.nbins, self.fmax = int(nbins), float(fmax)

    def call(self, logits):
        return tf.cast(flow_lib.expected_flow(logits, self.nbins, self.fmax), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)

    def get_config(self):
        return {**super().get_config(), "nbins": self.nbins, "fmax": self.fmax}


def _end(margin):
    """Slice end that drops `margin` trailing elements (None keeps them all)."""
    return -margin if margin else None


class _GuidanceFill(keras.layers.Layer):
    """A fill of `sparse` on a grid of `stride` x `stride` cells with `channels` channels;
    `max_size` (px) bounds the passes when the image size is unknown at trace time."""

    channels = None

    def __init__(self, stride, max_size=2048, **kwargs):
        super().__init__(**kwargs)
        self.stride, self.max_size = int(stride), int(max_size)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, None if h is None else h // self.stride,
                None if w is None else w // self.stride, self.channels)

    def get_config(self):
        return {**super().get_config(), "stride": self.stride, "max_size": self.max_size}


@keras.saving.register_keras_serializable(package="cmp_tf")
class DensePrior(_GuidanceFill):
    """Nearest-guidance fill of `sparse` on a grid of `stride` x `stride` cells (beyond the paper).

    Returns [B, H/stride, W/stride, 3]: (u, v) of the nearest guided cell and the distance in
    pixels from the cell centre to that cell's guides (their mean position). A cell holding
    several guides takes their mean vector. With no guidance at all the fill is zero flow at
    distance `max_size`. Computed by jump flooding (Rong & Tan, 2006): log2(size) passes of
    shifted comparisons, i.e. pads, slices and selects only, so it exports to TFLite and ONNX.

    Args:
        stride: cell size in input pixels (the resolution the fill is used at).
        max_size: the largest image side the fill must span, in pixels; used for the number
            of passes when the size is unknown when traced (exported models).
    """

    _FAR = 1e6  # position of "no guide yet": farther than any image pixel.
    channels = 3

    def _pass_steps(self, size):
        cells = max(1, math.ceil((size or self.max_size) / self.stride))
        passes = max(1, math.ceil(math.log2(cells)))
        return [2**p for p in reversed(range(passes))] + [1]  # JFA+1: one more unit pass

    def call(self, sparse):
        s = self.stride
        sparse = tf.cast(sparse, tf.float32)
        mask = sparse[..., 2:3]
        height, width = tf.shape(sparse)[1], tf.shape(sparse)[2]
        ys = tf.cast(tf.range(height), tf.float32)[None, :, None, None]
        xs = tf.cast(tf.range(width), tf.float32)[None, None, :, None]
        # Per cell: fraction of guided pixels, and the mean (y, x, u, v) of its guides.
        pooled = tf.nn.avg_pool2d(
            tf.concat([mask, mask * ys, mask * xs, sparse[..., :2] * mask], -1), s, s, "VALID")
        count = pooled[..., :1]
        seeded = count > 0
        seed = pooled[..., 1:] / tf.maximum(count, 1e-12)
        far = tf.constant([self._FAR, self._FAR, 0.0, 0.0])
        state = tf.where(seeded, seed, far)  # [B, h, w, 4] = (y, x, u, v) of the nearest guide
        h, w = tf.shape(state)[1], tf.shape(state)[2]
        cy = (tf.cast(tf.range(h), tf.float32) * s + (s - 1) / 2)[None, :, None, None]
        cx = (tf.cast(tf.range(w), tf.float32) * s + (s - 1) / 2)[None, None, :, None]

        def dist2(st):
            return tf.square(st[..., :1] - cy) + tf.square(st[..., 1:2] - cx)

        best = dist2(state)
        size = None if None in sparse.shape[1:3] else max(sparse.shape[1:3])
        for k in self._pass_steps(size):
            padded = tf.concat([
                tf.pad(state[..., :2], [[0, 0], [k, k], [k, k], [0, 0]], constant_values=self._FAR),
                tf.pad(state[..., 2:], [[0, 0], [k, k], [k, k], [0, 0]])], -1)
            for dy in (-k, 0, k):
                for dx in (-k, 0, k):
                    if dy == dx == 0:
                        continue
                    # Constant bounds (no tensor sizes) keep the channel count static for the
                    # exporters' shape inference: the decoder's convs need it.
                    other = padded[:, k + dy:_end(k - dy), k + dx:_end(k - dx)]
                    other_d2 = dist2(other)
                    closer = other_d2 < best
                    state = tf.where(closer, other, state)
                    best = tf.minimum(best, other_d2)
        found = best < (self._FAR / 2) ** 2
        uv = tf.where(found, state[..., 2:], 0.0)
        dist = tf.where(found, tf.sqrt(best), float(self.max_size))
        return tf.cast(tf.concat([uv, dist], -1), self.compute_dtype)


@keras.saving.register_keras_serializable(package="cmp_tf")
class PullPushFill(_GuidanceFill):
    """Smooth fill of `sparse` on a grid of `stride` x `stride` cells, by pull-push (Gortler
    et al., 1996; beyond the paper): [B, H, W, 3] -> [B, H/stride, W/stride, 2] (u, v).

    Pull: a pyramid of 2x2 means of (vector x mask, mask). Push, coarse to fine: a cell holding
    guides takes their mean vector, any other cell the bilinear upsampling of the coarser level.
    Far from the guides the fill is therefore interpolated between them at the scale of their
    spacing, where the nearest fill is piecewise constant. Pools, resizes and selects only: it
    exports like DensePrior. No guidance gives zero flow.

    The box pull snaps each guide to the centre of its coarse cell, up to half the spacing of
    the guides away; `pull="tent"` weighs the 3x3 children 1-2-1 instead, and `relax` 3x3
    mean passes per level with the guided cells held fix the push's blockiness. On the unseen
    clip both bring the fill closer to linear interpolation (README, "A smoother fill").

    Args:
        stride, max_size: as DensePrior.
        pull: "box" (2x2 means) or "tent" (3x3 1-2-1 weights, stride 2).
        relax: 3x3 mean passes over the unguided cells after each push level.
    """

    channels = 2
    PULLS = ("box", "tent")
    # The tent pull's depthwise kernel over (u x mask, v x mask, mask): 1-2-1 x 1-2-1 / 16.
    _TENT = np.tile((np.outer([1, 2, 1], [1, 2, 1]) / 16).astype(np.float32)[:, :, None, None],
                    (1, 1, 3, 1))

    def __init__(self, stride, max_size=2048, pull="box", relax=0, **kwargs):
        super().__init__(stride, max_size, **kwargs)
        if pull not in self.PULLS:
            raise ValueError(f"pull must be one of {self.PULLS}; got {pull!r}.")
        if isinstance(relax, bool) or not isinstance(relax, (int, np.integer)) or relax < 0:
            raise ValueError(f"relax must be an integer >= 0; got {relax!r}.")
        self.pull, self.relax = pull, int(relax)

    def _coarser(self, cells):
        if self.pull == "box":
            return tf.nn.avg_pool2d(cells, 2, 2, "SAME")
        # Zero padding is harmless: weights and weighted vectors are padded alike.
        return tf.nn.depthwise_conv2d(cells, self._TENT, [1, 2, 2, 1], "SAME")

    def call(self, sparse):
        s = self.stride
        sparse = tf.cast(sparse, tf.float32)
        mask = sparse[..., 2:3]
        level = tf.nn.avg_pool2d(tf.concat([sparse[..., :2] * mask, mask], -1), s, s, "VALID")
        size = None if None in sparse.shape[1:3] else max(sparse.shape[1:3])
        pyramid = [level]
        for _ in range(max(1, math.ceil(math.log2(max(1, (size or self.max_size) / s))))):
            pyramid.append(self._coarser(pyramid[-1]))

        def mean(cells):
            return cells[..., :2] / tf.maximum(cells[..., 2:], 1e-12)

        fill = mean(pyramid[-1])
        for cells in reversed(pyramid[:-1]):
            up = tf.raw_ops.ResizeBilinear(images=fill, size=tf.shape(cells)[1:3],
                                           half_pixel_centers=True)
            guided, held = cells[..., 2:] > 0, mean(cells)
            fill = tf.where(guided, held, up)
            for _ in range(self.relax):  # SAME average pools leave the padding out of the mean
                fill = tf.where(guided, held, tf.nn.avg_pool2d(fill, 3, 1, "SAME"))
        return tf.cast(fill, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "pull": self.pull, "relax": self.relax}


# Layers computing a fill of the guidance from `sparse` alone: full-integer exports cut them out
# and the runtime computes them in float32 (their squared distances and divisions do not
# quantize).
FILL_LAYERS = (DensePrior, PullPushFill)


def fill_spec(layer):
    """A fill layer as JSON (stored in exported files' metadata)."""
    spec = {"layer": type(layer).__name__, "stride": layer.stride, "max_size": layer.max_size}
    if isinstance(layer, PullPushFill):
        spec.update(pull=layer.pull, relax=layer.relax)
    return spec


def fill_from_spec(spec, name=None):
    """The fill layer of `fill_spec`; specs without "layer" (older exports) are DensePriors."""
    spec = dict(spec)
    kinds = {cls.__name__: cls for cls in FILL_LAYERS}
    kind = spec.pop("layer", "DensePrior")
    if kind not in kinds:
        raise ValueError(f"Unknown guidance fill layer {kind!r}; known: {sorted(kinds)}.")
    return kinds[kind](**spec, name=name)


@keras.saving.register_keras_serializable(package="cmp_tf")
class HonourGuidance(keras.layers.Layer):
    """[flow, sparse] -> flow with the given vectors at the guided pixels (beyond the paper):
    a user's arrow is then exactly what the output says at its tail."""

    def call(self, inputs):
        flow, sparse = inputs
        sparse = tf.cast(sparse, flow.dtype)
        mask = sparse[..., 2:3]
        return flow * (1 - mask) + sparse[..., :2] * mask

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="cmp_tf")
class BlendFills(keras.layers.Layer):
    """[decoder output (du, dv, a[, g]), nearest fill, smooth fill] -> flow (beyond the paper):
    gain x (sigmoid(a) x nearest + (1 - sigmoid(a)) x smooth) + (du, dv).

    The nearest fill is right inside a guided object up to its boundary, the smooth one between
    guides on one surface: the network learns per pixel which to trust, from the image, plus a
    correction. An untrained head (a = 0) reads out their mean, which is already closer to the
    reference flow than linear interpolation at 5 to 25 guides on unseen frames.

    With `gain`, a fourth channel r scales the blend by a gain falling with d / diagonal, d the
    distance to the nearest guide (the nearest fill's third channel) and diagonal sqrt(H W) of
    the image, at a rate learned per pixel from the image: how far a guide's motion carries.
    Both fills copy a guide's vector all the way to the image border, though in real video what
    moves is mostly near where it is guided and the rest is still. A product of the fill and a
    function of the distance is what a ReLU decoder's additive correction learns slowly; the
    gain is 1 at a guide whatever r. Profiles:
      "exponential": exp(-REACH_SCALE x softplus(r + REACH_LOGIT_START) x d / diagonal);
      "gaussian": exp(-(rate x d / diagonal)^2 / 2), rate = GAUSSIAN_SCALE x softplus(r +
        GAUSSIAN_LOGIT_START), 4 untrained: a Gaussian of a quarter diagonal. Flat at the
        guides, it leaves dense guidance alone where the exponential shrinks every vector a
        little (README, "Gain profile").

    Args:
        gain: read the reach r from channel 3.
        stride: input pixels per cell of the fills (the image diagonal is stride x sqrt(h w)).
        profile: "exponential" or "gaussian", the gain's fall with the distance.
        learn_weight: read a from channel 2; False blends the fills half and half and reads
            r from channel 2 (on the unseen clip the learned weight did worse than 1/2).
    """

    REACH_LOGIT_START = -3.0  # untrained: the gain is 0.91 a quarter diagonal from any guide
    REACH_SCALE = 8.0  # decay rate per image diagonal at softplus(...) = 1
    GAUSSIAN_LOGIT_START = -0.4328  # softplus = 0.5: rate 4, sigma a quarter diagonal
    GAUSSIAN_SCALE = 8.0
    PROFILES = ("exponential", "gaussian")

    def __init__(self, gain=False, stride=1, profile="exponential", learn_weight=True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(gain, bool):
            raise ValueError(f"gain must be True or False; got {gain!r}.")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be an integer >= 1; got {stride!r}.")
        if profile not in self.PROFILES:
            raise ValueError(f"profile must be one of {self.PROFILES}; got {profile!r}.")
        if not isinstance(learn_weight, bool):
            raise ValueError(f"learn_weight must be True or False; got {learn_weight!r}.")
        self.gain, self.stride, self.profile = gain, stride, profile
        self.learn_weight = learn_weight

    @property
    def channels(self):
        """Decoder channels read: the correction (2), the weight a, the reach r."""
        return 2 + self.learn_weight + self.gain

    def call(self, inputs):
        out, nearest, smooth = (tf.cast(x, tf.float32) for x in inputs)
        if self.learn_weight:
            weight = tf.sigmoid(out[..., 2:3])
            fill = weight * nearest[..., :2] + (1 - weight) * smooth[..., :2]
        else:
            fill = 0.5 * (nearest[..., :2] + smooth[..., :2])
        if self.gain:
            reach = out[..., self.channels - 1:self.channels]
            cells = tf.cast(tf.shape(nearest)[1] * tf.shape(nearest)[2], tf.float32)
            distance = nearest[..., 2:3] / (self.stride * tf.sqrt(cells))
            if self.profile == "gaussian":
                rate = self.GAUSSIAN_SCALE * tf.nn.softplus(reach + self.GAUSSIAN_LOGIT_START)
                fill = tf.exp(-0.5 * tf.square(rate * distance)) * fill
            else:
                rate = self.REACH_SCALE * tf.nn.softplus(reach + self.REACH_LOGIT_START)
                fill = tf.exp(-rate * distance) * fill
        return tf.cast(fill + out[..., :2], self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], 2)

    def get_config(self):
        return {**super().get_config(), "gain": self.gain, "stride": self.stride,
                "profile": self.profile, "learn_weight": self.learn_weight}


@keras.saving.register_keras_serializable(package="cmp_tf")
class PriorLogits(keras.layers.Layer):
    """Bin logits of a Gaussian around a prior flow: added to the decoder's logits, the network
    starts from the prior's readout and learns a correction to it.

    Input [..., >=2] prior (u, v) in pixels; output [..., 2 * nbins], -(centre - prior)^2 / 2s^2.
    """

    def __init__(self, nbins, fmax, sigma, **kwargs):
        super().__init__(**kwargs)
        flow_lib.check_bins(nbins, fmax)
        if not sigma > 0:
            raise ValueError(f"config.model.prior_sigma must be positive pixels; got {sigma!r}.")
        self.nbins, self.fmax, self.sigma = int(nbins), float(fmax), float(sigma)

    def call(self, prior):
        centers = tf.constant(flow_lib.bin_centers(self.nbins, self.fmax))
        prior = tf.cast(prior, tf.float32)
        scale = -0.5 / self.sigma**2
        x = scale * tf.square(centers - prior[..., :1])
        y = scale * tf.square(centers - prior[..., 1:2])
        return tf.cast(tf.concat([x, y], -1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2 * self.nbins)

    def get_config(self):
        return {**super().get_config(), "nbins": self.nbins, "fmax": self.fmax,
                "sigma": self.sigma}
