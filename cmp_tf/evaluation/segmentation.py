"""Segmentation scores as VOC computes them: confusion matrix, per-class IoU and mIoU.

The transfer-learning comparison (`cmp_tf.transfer`) scores both initializations with these;
255 labels are ignored.
"""
import numpy as np
import tensorflow as tf

from cmp_tf.data import sampling
from cmp_tf.data import voc


def confusion_matrix(labels, predictions, num_classes, ignore_label=voc.IGNORE_LABEL):
    """[C, C] int64 pixel counts, rows = true class, columns = predicted; ignored pixels skipped.

    Raises:
        ValueError on different shapes or values outside 0..num_classes-1 (labels may also be
        `ignore_label`).
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must have "
                         "the same shape.")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if not np.issubdtype(values.dtype, np.integer):  # 1.7 would count as class 1
            raise ValueError(f"{name} must hold integer class indices; got dtype "
                             f"{values.dtype}.")
    keep = labels != ignore_label
    truth, guess = labels[keep].astype(np.int64), predictions[keep].astype(np.int64)
    for name, values in (("labels", truth), ("predictions", guess)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must be classes 0..{num_classes - 1} (or {ignore_label} "
                             f"in labels); got {values.min()}..{values.max()}.")
    return np.bincount(truth * num_classes + guess, minlength=num_classes**2).reshape(
        num_classes, num_classes)


def iou_from_confusion(confusion):
    """Per-class IoU = TP / (TP + FP + FN) and their mean (mIoU, as VOC scores it).

    A class with no labelled pixel in the scored set has no IoU (NaN), whatever was predicted,
    and is left out of the mean: every model scored on one set is averaged over the same
    classes (a class predicted by one model and not another would otherwise count for one).

    Returns:
        (per-class IoU float64 [C] with NaN for classes not in the labels, mIoU float; NaN if
        none).
    """
    confusion = np.asarray(confusion, np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix; got shape {confusion.shape}.")
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    labelled = confusion.sum(1) > 0  # rows: the true class
    iou = np.full(len(tp), np.nan)
    np.divide(tp, union, out=iou, where=labelled)
    return iou, (float(np.nanmean(iou)) if labelled.any() else float("nan"))


def predict_classes(model, image):
    """Argmax class map [B, H, W] int32 of a segmentation model on [B, H, W, 3] images."""
    return tf.argmax(model(image, training=False), -1, output_type=tf.int32)


def evaluate_segmentation(model, dataset, num_classes, progress=False, desc="score"):
    """Scores `model` on batches of (image, label) (255 = ignore) by their confusion matrix;
    with `progress`, a bar over the batches (VOC's 1,449 val images take minutes on a CPU).

    Returns:
        {"miou", "per_class_iou" (NaN: a class with no labelled pixel),
         "pixel_accuracy", "pixels" (labelled pixels scored), "images", "confusion" ([C][C]
         lists, rows = true class)}.
    """
    from cmp_tf import progress as progress_lib

    if not sampling.is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}.")
    num_classes = int(num_classes)
    predict = tf.function(lambda image: predict_classes(model, image))
    confusion = np.zeros((num_classes, num_classes), np.int64)
    images = 0
    total = int(dataset.cardinality())
    bar = progress_lib.bar(dataset, desc=desc, unit="batch", disable=not progress,
                           total=total if total > 0 else None)
    for image, label in bar:
        confusion += confusion_matrix(label.numpy(), predict(image).numpy(), num_classes)
        images += int(image.shape[0])
    iou, miou = iou_from_confusion(confusion)
    pixels = int(confusion.sum())
    if not pixels:
        raise ValueError("The evaluation dataset has no labelled (non-ignored) pixels.")
    return {"miou": miou, "per_class_iou": iou.tolist(),
            "pixel_accuracy": float(np.trace(confusion) / pixels), "pixels": pixels,
            "images": images, "confusion": confusion.tolist()}
