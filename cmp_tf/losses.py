"""Flow losses. The discrete loss is the paper's: motion is multi-modal, and classifying it into
bins keeps the modes apart where regression would average them into a blur.

Every flow loss returns one value per example (mean over that example's valid pixels), so a
distributed loop can average over the global batch (`tf.nn.compute_average_loss`).
`segmentation_loss` (transfer learning, one device) returns the batch's mean over its
labelled pixels.
"""
import math
import numbers

import tensorflow as tf

from cmp_tf import flow as flow_lib
from cmp_tf import ops
from cmp_tf.data.voc import IGNORE_LABEL

LOSSES = ("discrete", "l1", "l2")


def _differ(a, b):
    """Whether two static dimensions are known and different."""
    return a is not None and b is not None and a != b


def _check_target(pred, target, weight):
    """Shapes checked where they are known (before a graph is traced), so a mismatch is named
    here and not inside TensorFlow's broadcasting."""
    if len(pred.shape) != 4 or len(target.shape) != 4 or target.shape[-1] != 2:
        raise ValueError(f"Expected prediction [B, h, w, C] and target flow [B, H, W, 2]; got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}.")
    if _differ(pred.shape[0], target.shape[0]):
        raise ValueError(f"prediction and target differ in batch: {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}.")
    if weight is not None:
        if len(weight.shape) == 4 and weight.shape[-1] == 1:
            weight = weight[..., 0]
        if len(weight.shape) != 3 or any(_differ(w, t) for w, t in zip(weight.shape,
                                                                         target.shape[:3])):
            raise ValueError(f"weight must be [B, H, W] (or [B, H, W, 1]) as the target "
                             f"{tuple(target.shape[:3])}; got {tuple(weight.shape)}.")
        weight = tf.cast(weight, tf.float32)
        # A left-out pixel's target may be anything (NaN where a flow is unknown): NaN x 0 is
        # NaN, and a NaN quantizes to a label out of range.
        return tf.where(weight[..., None] > 0, tf.cast(target, tf.float32), 0.0), weight
    return tf.cast(target, tf.float32), weight


def _upsample_to(pred, target):
    """Upsamples a prediction to the target's size (align corners), as the reference loss does."""
    if pred.shape[1:3] == target.shape[1:3] and pred.shape[1] is not None:
        return pred
    return ops.upsample_align_corners(pred, tf.unstack(tf.shape(target)[1:3]))


def _mean_per_example(per_pixel, weight):
    """[B, H, W] -> [B]: mean over pixels, weighted by `weight` where given (0 for an example
    with no weight at all)."""
    if weight is None:
        return tf.reduce_mean(per_pixel, axis=[1, 2])
    total = tf.reduce_sum(per_pixel * weight, axis=[1, 2])
    return tf.math.divide_no_nan(total, tf.reduce_sum(weight, axis=[1, 2]))


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
    if pred.shape[-1] != 2:
        raise ValueError(f"pred must be flow with 2 channels (u, v); got {pred.shape[-1]}.")
    diff = tf.cast(_upsample_to(pred, target), tf.float32) - target
    if norm == "l1":
        per_pixel = tf.reduce_sum(tf.abs(diff), -1)
    else:
        per_pixel = 0.5 * tf.reduce_sum(tf.square(diff), -1)
    return _mean_per_example(per_pixel, weight)


def _check_floor(floor):
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not floor > 0 or \
            not math.isfinite(floor):
        raise ValueError(f"config.flow.relative_floor must be > 0; got {floor!r} (a finite "
                         "number, in the loss's own units).")


def relative_to_zero_flow(per_example, target, norm, floor, weight=None):
    """`per_example` regression losses divided by each example's loss of predicting no motion
    (at least `floor`): the error as the share of the motion left unexplained.

    Plain L1 in pixels is dominated by the samples with the most motion (the layered scenes'
    large translations), so the slow real footage a model is used on teaches it little; the
    relative loss weighs every sample as evaluation's relative EPE does. `floor` (the zero-flow
    loss in the loss's own units) keeps nearly still samples from being weighed without bound.
    """
    _check_floor(floor)
    target = tf.cast(target, tf.float32)
    still = regression_flow_loss(tf.zeros_like(target), target, norm, weight)
    return per_example / tf.maximum(still, float(floor))


def make_loss(flow_config, jit_compile=True):
    """The loss named by `config.flow.loss`, as fn(logits, target, weight=None) -> [B];
    with `config.flow.relative`, a regression loss divided by the zero-flow loss per example
    (`relative_to_zero_flow`).

    `jit_compile` fuses the full-resolution upsampling with the loss (XLA): on CPU the AlexNet
    recipe's loss runs forward and backward 3.4x faster than the unfused ops.
    """
    needed = ("loss", "nbins", "fmax") if flow_config.get("loss") == "discrete" else ("loss",)
    missing = [name for name in needed if name not in flow_config]
    if missing:
        raise ValueError(f"config.flow lacks {', '.join(missing)}: the loss needs them.")
    kind = flow_config.loss
    relative = bool(flow_config.get("relative", False))
    if relative and kind not in ("l1", "l2"):
        raise ValueError(f"config.flow.relative=True needs a regression loss (l1, l2); "
                         f"config.flow.loss is {kind!r}.")
    if relative:
        _check_floor(flow_config.get("relative_floor"))
    if kind == "discrete":
        nbins, fmax = flow_config.nbins, flow_config.fmax
        flow_lib.check_bins(nbins, fmax)

        def loss(logits, target, weight=None):
            return discrete_flow_loss(logits, target, nbins, fmax, weight)
    elif kind in ("l1", "l2"):

        def loss(pred, target, weight=None):
            per_example = regression_flow_loss(pred, target, kind, weight)
            if relative:
                per_example = relative_to_zero_flow(per_example, target, kind,
                                                    flow_config.relative_floor, weight)
            return per_example
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
