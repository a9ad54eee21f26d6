"""Flow losses. The discrete loss is the paper's: motion is multi-modal, and classifying it into
bins keeps the modes apart where regression would average them into a blur.

Every loss returns one value per example (mean over that example's valid pixels), so a
distributed loop can average over the global batch (`tf.nn.compute_average_loss`).
"""
import tensorflow as tf

from cmp_tf import flow as flow_lib
from cmp_tf import ops
from cmp_tf.data.voc import IGNORE_LABEL

LOSSES = ("discrete", "l1", "l2")


def _check_target(pred, target, weight):
    if len(pred.shape) != 4 or len(target.shape) != 4 or target.shape[-1] != 2:
        raise ValueError(f"Expected prediction [B, h, w, C] and target flow [B, H, W, 2]; got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}.")
    if weight is not None:
        if len(weight.shape) == 4:
            weight = weight[..., 0]
        if len(weight.shape) != 3:
            raise ValueError(
                f"weight must be [B, H, W] or [B, H, W, 1]; got {tuple(weight.shape)}.")
        weight = tf.cast(weight, tf.float32)
    return tf.cast(target, tf.float32), weight


def _upsample_to(pred, target):
    """Upsamples a prediction to the target's size (align corners), as the reference loss does."""
    if pred.shape[1:3] == target.shape[1:3] and pred.shape[1] is not None:
        return pred
    return ops.upsample_align_corners(pred, tf.unstack(tf.shape(target)[1:3]))


def _mean_per_example(per_pixel, weight):
    """[B, H, W] -> [B]: mean over pixels, weighted by `weight` where given."""
    if weight is None:
        return tf.reduce_mean(per_pixel, axis=[1, 2])
    total = tf.reduce_sum(per_pixel * weight, axis=[1, 2])
    return total / tf.maximum(tf.reduce_sum(weight, axis=[1, 2]), 1.0)


def discrete_flow_loss(logits, target, nbins, fmax, weight=None):
    """Cross-entropy of x and y flow bins (summed), per example.

    Args:
        logits: [B, h, w, 2 * nbins], x bins first, at the decoder's stride; upsampled
            (bilinear, align corners) to the target size before the softmax, as in the paper.
        target: [B, H, W, 2] flow in pixels at the input resolution.
        weight: optional [B, H, W] per-pixel validity (0 leaves a pixel out, e.g. where the
            teacher flow failed its forward-backward check).
    Returns:
        [B] float32.
    """
    target, weight = _check_target(logits, target, weight)
    if logits.shape[-1] != 2 * nbins:
        raise ValueError(f"logits must have 2 * nbins = {2 * nbins} channels; got "
                         f"{logits.shape[-1]}.")
    logits = tf.cast(_upsample_to(logits, target), tf.float32)
    per_pixel = 0.0
    for axis, part in enumerate((logits[..., :nbins], logits[..., nbins:])):
        bins = flow_lib.quantize(target[..., axis], nbins, fmax)
        per_pixel += tf.nn.sparse_softmax_cross_entropy_with_logits(bins, part)
    return _mean_per_example(per_pixel, weight)


def regression_flow_loss(pred, target, norm, weight=None):
    """L1 (|du| + |dv|) or L2 ((du^2 + dv^2) / 2) flow regression loss, per example.

    `pred` is [B, h, w, 2] flow at the decoder's stride, upsampled to the target's size.
    """
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2'; got {norm!r}.")
    target, weight = _check_target(pred, target, weight)
    diff = tf.cast(_upsample_to(pred, target), tf.float32) - target
    if norm == "l1":
        per_pixel = tf.reduce_sum(tf.abs(diff), -1)
    else:
        per_pixel = 0.5 * tf.reduce_sum(tf.square(diff), -1)
    return _mean_per_example(per_pixel, weight)


def make_loss(flow_config, jit_compile=True):
    """The loss named by `config.flow.loss`, as fn(logits, target, weight=None) -> [B].

    `jit_compile` fuses the full-resolution upsampling with the loss (XLA): on CPU the AlexNet
    recipe's loss runs forward and backward 3.4x faster than the unfused ops.
    """
    kind = flow_config.loss
    if kind == "discrete":
        nbins, fmax = flow_config.nbins, flow_config.fmax
        flow_lib.check_bins(nbins, fmax)

        def loss(logits, target, weight=None):
            return discrete_flow_loss(logits, target, nbins, fmax, weight)
    elif kind in ("l1", "l2"):

        def loss(pred, target, weight=None):
            return regression_flow_loss(pred, target, kind, weight)
    else:
        raise ValueError(f"config.flow.loss={kind!r} is unknown; known: {', '.join(LOSSES)}.")
    return tf.function(loss, jit_compile=True) if jit_compile else loss


def segmentation_loss(logits, labels, ignore_label=IGNORE_LABEL):
    """Softmax cross-entropy averaged over labelled pixels; `ignore_label` pixels add nothing.

    Args:
        logits: [B, H, W, C]; labels: [B, H, W] integer class indices or `ignore_label`.
    """
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
        tf.where(valid, labels, 0), tf.cast(logits, tf.float32))
    weight = tf.cast(valid, tf.float32)
    return tf.reduce_sum(per_pixel * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)


def grouping_loss(layer_logits, target, weight, tau=1.0, offsets=(1, 4)):
    """Per example: soft layers [B, h, w, L] (logits) that follow the target flow's motion
    regions. For cell pairs `offsets` apart along x and y, m . m' (softmax memberships) is
    pushed to 1 where the cells' mean flows differ by less than `tau` px and to 0 where they
    differ more: the two kinds of pairs averaged apart."""
    member = tf.nn.softmax(tf.cast(layer_logits, tf.float32), -1)
    h, w = member.shape[1], member.shape[2]
    s = target.shape[1] // h  # static in training: fixed crops
    cells = tf.nn.avg_pool2d(target * weight[..., None], s, s, "VALID")[:, :h, :w]
    valid = tf.nn.avg_pool2d(weight[..., None], s, s, "VALID")[:, :h, :w]
    cells = cells / tf.maximum(valid, 1e-6)
    same_sum, same_n, apart_sum, apart_n = 0.0, 0.0, 0.0, 0.0
    for k in offsets:
        for a, b in (((slice(None), slice(k, None)), (slice(None), slice(None, -k))),
                     ((slice(k, None), slice(None)), (slice(None, -k), slice(None)))):
            m1, m2 = member[:, a[0], a[1]], member[:, b[0], b[1]]
            f1, f2 = cells[:, a[0], a[1]], cells[:, b[0], b[1]]
            v = tf.cast((valid[:, a[0], a[1]] > 0.5) & (valid[:, b[0], b[1]] > 0.5), tf.float32)
            dot = tf.reduce_sum(m1 * m2, -1, keepdims=True)
            near = tf.cast(tf.reduce_sum(tf.abs(f1 - f2), -1, keepdims=True) < tau, tf.float32)
            same_sum += tf.reduce_sum((1.0 - dot) * near * v, [1, 2, 3])
            same_n += tf.reduce_sum(near * v, [1, 2, 3])
            apart_sum += tf.reduce_sum(dot * (1.0 - near) * v, [1, 2, 3])
            apart_n += tf.reduce_sum((1.0 - near) * v, [1, 2, 3])
    return same_sum / tf.maximum(same_n, 1.0) + apart_sum / tf.maximum(apart_n, 1.0)

