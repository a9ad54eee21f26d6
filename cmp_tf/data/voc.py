"""PASCAL VOC 2012-format segmentation folders -> checked file lists -> tf.data batches.

A folder holds `ImageSets/Segmentation/<split>.txt` (one image id a line), `JPEGImages/<id>.jpg`
and `SegmentationClass/<id>.png`: palette PNGs whose *indices* are the classes (VOC: 0
background, 1..20 objects) and 255 marks pixels to ignore (VOC's object boundaries and
ambiguous regions). Decoding such a PNG as RGB would return the palette colours, so labels
are read with Pillow, which returns the indices.

Elements are (image [H, W, 3] float32 0..255, label [H, W] int32 with 255 = ignore), batched.
"""
import functools
import glob
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from cmp_tf.data import formats
from cmp_tf.data import pipeline

IGNORE_LABEL = 255
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")
IMAGE_DIR, LABEL_DIR, LIST_DIR = "JPEGImages", "SegmentationClass", "ImageSets/Segmentation"
STREAMS = dict(scale=0, crop_top=1, crop_left=2, flip=3)  # each random choice's own stream
_LABEL_MODES = ("P", "L")  # palette or 8-bit grey: both store class indices
_LABEL_VALUES = 256  # an 8-bit label's values
ZERO_255_HINT = (f"A mask saved as 0 and 255 marks its objects {IGNORE_LABEL}, which is "
                 "ignored; save them as class indices (1, 2, ...).")
_COLORMAP_BITS = 8  # the VOC colour map spreads an index's bits over the three channels


def voc_colormap(count=256):
    """[count, 3] uint8: the VOC development kit's colour map (index 255 -> (224, 224, 192))."""
    colormap = np.zeros((count, 3), np.uint8)
    for index in range(count):
        r = g = b = 0
        c = index
        for bit in range(_COLORMAP_BITS):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colormap[index] = (r, g, b)
    return colormap


def colorize(label):
    """[H, W] class indices -> [H, W, 3] uint8 RGB in the VOC colours (for previews)."""
    return voc_colormap()[np.asarray(label, np.uint8)]


def write_label(path, label):
    """Writes [H, W] class indices (255 = ignore) as a VOC palette PNG."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label for {path} must be [H, W] class indices; got shape {label.shape}.")
    if label.size and (label.min() < 0 or label.max() > IGNORE_LABEL):
        raise ValueError(f"label for {path} must hold indices 0..{IGNORE_LABEL}; got "
                         f"{label.min()}..{label.max()}.")
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(voc_colormap().tobytes())
    image.save(os.fspath(path))


def read_label(path, num_classes=-1):
    """Reads a palette (or grey) PNG as [H, W] uint8 class indices.

    Args:
        num_classes: if positive, values other than 0..num_classes-1 and 255 are an error.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Label file {path} does not exist.")
    with Image.open(path) as image:
        if image.mode not in _LABEL_MODES:
            raise ValueError(f"Label file {path} has mode {image.mode}; need a palette ('P') "
                             "or 8-bit grey ('L') PNG whose values are class indices.")
        label = np.array(image)
    if num_classes > 0:
        bad = (label >= num_classes) & (label != IGNORE_LABEL)
        if bad.any():
            found = np.unique(label[bad])[:8].tolist()
            raise ValueError(f"Label file {path} holds values {found} that are neither classes "
                             f"0..{num_classes - 1} nor the ignore label {IGNORE_LABEL}.")
    return label


def _size(path, what):
    """(height, width) from the file header only."""
    if not os.path.isfile(path):
        stem = os.path.splitext(path)[0]
        others = sorted(glob.glob(glob.escape(stem) + ".*"))
        found = (f": {os.path.basename(others[0])} is there, but a VOC-format folder's images "
                 f"are {IMAGE_DIR}/<id>.jpg and labels {LABEL_DIR}/<id>.png") if others else ""
        raise ValueError(f"{what} {path} does not exist{found}.")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError as error:
        raise ValueError(f"{what} {path} could not be read: {error}.") from error
    return height, width


def split_files(folder, split):
    """(list file, ids, image paths, label paths) a split's list names, in its order, the
    files unread; ValueError for a missing folder or list, or an empty list."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"VOC data folder {folder} does not exist.")
    list_file = os.path.join(folder, LIST_DIR, f"{split}.txt")
    if not os.path.isfile(list_file):
        raise ValueError(f"{list_file} does not exist: {folder} is not a VOC-format folder for "
                         f"split {split!r} (expected {LIST_DIR}/{split}.txt, {IMAGE_DIR}/ and "
                         f"{LABEL_DIR}/).")
    with open(list_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError(f"{list_file} lists no images.")
    images = [os.path.join(folder, IMAGE_DIR, f"{i}.jpg") for i in ids]
    labels = [os.path.join(folder, LABEL_DIR, f"{i}.png") for i in ids]
    return list_file, ids, images, labels


def read_split(folder, split):
    """Lists and checks a split of a VOC-format folder before anything is decoded.

    Returns:
        (ids, image paths, label paths, sizes as (height, width)), in list-file order.
    Raises:
        ValueError naming the folder or file: missing folder or list, empty list, missing
        image or label, image and label of different sizes.
    """
    _, ids, images, labels = split_files(folder, split)
    sizes = []
    for image, label in zip(images, labels):
        image_size, label_size = _size(image, "Image"), _size(label, "Label file")
        if image_size != label_size:
            raise ValueError(f"Label file {label} is {label_size[0]}x{label_size[1]} but its "
                             f"image {image} is {image_size[0]}x{image_size[1]}.")
        sizes.append(image_size)
    return ids, images, labels, sizes


@functools.lru_cache(maxsize=None)
def _label_counts(path, num_classes, size, modified_ns):
    """read_label's check of one file version (its size and time in the key), done once, and
    its pixels per value (0..255)."""
    del size, modified_ns
    counts = np.bincount(read_label(path, num_classes).ravel(), minlength=_LABEL_VALUES)
    counts.flags.writeable = False  # shared by every call for this file version
    return counts


@functools.lru_cache(maxsize=None)
def _checked_image(path, size, modified_ns):
    """Decodes one image file version with the pipeline's own decoder, once: a JPEG whose
    data is damaged can decode in OpenCV and PIL yet stop TensorFlow's decoder mid-run."""
    del size, modified_ns
    if formats.truncated_jpeg_file(path):
        raise ValueError(f"Image {path} is a JPEG cut short (no end-of-image marker).")
    try:
        tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    except tf.errors.InvalidArgumentError as error:
        reason = error.message.splitlines()[0] if error.message else "no reason given"
        raise ValueError(f"Image {path} does not decode as a JPEG: {reason}") from None


def check_contents(images, labels, num_classes):
    """Refuses, naming the file, a JPEG that does not decode (cut short or damaged) and a label
    with values outside the classes: found inside the input pipeline, either would end a run
    with TensorFlow's error around the message (and a label read there in flight could keep
    the process from exiting). Each file version is decoded once per process.

    Returns:
        the labels' pixels per value, int64 [256] (classes first, IGNORE_LABEL last).
    """
    for image in images:
        stat = os.stat(image)
        _checked_image(image, stat.st_size, stat.st_mtime_ns)
    counts = np.zeros(_LABEL_VALUES, np.int64)
    for label in labels:
        stat = os.stat(label)
        counts += _label_counts(label, num_classes, stat.st_size, stat.st_mtime_ns)
    return counts


def class_counts(folder, split, num_classes, max_images=-1):
    """Labelled pixels per class [num_classes] of a split (its first `max_images`), its
    files checked (`check_contents`); ValueError naming the list file where no pixel is
    labelled (every label all IGNORE_LABEL): it would train on nothing, or score nothing."""
    _, images, labels, _ = read_split(folder, split)
    if max_images > 0:
        images, labels = images[:max_images], labels[:max_images]
    return _labelled(folder, split, images, labels, num_classes)


def _labelled(folder, split, images, labels, num_classes):
    counts = check_contents(images, labels, num_classes)
    if not counts[:num_classes].any():
        raise ValueError(f"{os.path.join(folder, LIST_DIR, f'{split}.txt')}: none of its "
                         f"{len(labels)} labels holds a labelled pixel (all "
                         f"{IGNORE_LABEL}, the ignore label). {ZERO_255_HINT}")
    return counts[:num_classes]


def _pad_to(image, label, height, width, image_pad, centered):
    """Pads to at least height x width: the image with `image_pad` (per channel), the label
    with the ignore label, so padding never counts in the loss or the scores."""
    shape = tf.shape(label)
    pad_h, pad_w = tf.maximum(height - shape[0], 0), tf.maximum(width - shape[1], 0)
    top, left = (pad_h // 2, pad_w // 2) if centered else (0, 0)
    paddings = [[top, pad_h - top], [left, pad_w - left]]
    fill = tf.constant(image_pad, tf.float32)
    image = tf.pad(image - fill, paddings + [[0, 0]]) + fill
    label = tf.pad(label - IGNORE_LABEL, paddings) + IGNORE_LABEL
    return image, label


def _check_pair(name, value, positive=True):
    if len(value) != 2 or (positive and min(value) <= 0):
        raise ValueError(f"{name} must be two positive numbers; got {tuple(value)}.")


def make_dataset(folder, split, num_classes, *, training, batch_size, crop=(-1, -1),
                 scale=(1.0, 1.0), flip=False, seed=0, shuffle_buffer=256, pad_to=(-1, -1),
                 image_pad=(0.0, 0.0, 0.0), max_images=-1, start_step=0):
    """The segmentation input pipeline of a VOC-format folder.

    Training: shuffled, repeated; per image a random scale in `scale` (image bilinear, label
    nearest, so no invented classes at borders), padding to `crop` if smaller, a random
    `crop`, a random horizontal flip; batches of fixed shape. Every random choice of element
    i is seeded by (seed, i). Evaluation: one pass in list order, each image padded at the
    bottom and right to `pad_to` (default: the largest image), labels with 255.

    Args:
        num_classes: labels outside 0..num_classes-1 other than 255 raise (naming the file).
        image_pad: RGB value of padded image pixels (the mean pixel makes them zero after
            normalization).
        max_images: use only the first N images of the list (-1: all).
        start_step: training only: begin at this batch of the stream, as the stream that
            began at 0 reaches it (a resumed run). Only file names are skipped: no image is
            read for the batches passed over.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background and one class); got "
                         f"{num_classes}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}.")
    if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) \
            or start_step < 0:
        raise ValueError(f"start_step must be an integer >= 0; got {start_step!r}.")
    _, images, labels, sizes = read_split(folder, split)
    if max_images > 0:
        images, labels, sizes = images[:max_images], labels[:max_images], sizes[:max_images]
    _labelled(folder, split, images, labels, num_classes)

    def load(image_path, label_path):
        image = tf.cast(tf.io.decode_jpeg(tf.io.read_file(image_path), channels=3), tf.float32)
        label = tf.numpy_function(lambda p: read_label(p.decode(), num_classes), [label_path],
                                  tf.uint8)
        return image, tf.cast(tf.ensure_shape(label, [None, None]), tf.int32)

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        _check_pair("crop", crop)
        _check_pair("scale", scale)
        if scale[0] > scale[1]:
            raise ValueError(f"scale must be (low, high) with low <= high; got {tuple(scale)}.")
        height, width = (int(v) for v in crop)
        ds = ds.repeat().shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

        def augment(index, paths):
            image, label = load(*paths)
            element_seed = tf.stack([tf.cast(seed, tf.int64), index])

            def draw(purpose, *bounds):
                return pipeline.draw(element_seed, purpose, *bounds, streams=STREAMS)

            factor = draw("scale", scale[0], scale[1])
            size = tf.cast(tf.round(tf.cast(tf.shape(label), tf.float32) * factor), tf.int32)
            size = tf.maximum(size, 1)
            image = tf.image.resize(image, size, "bilinear")
            label = tf.image.resize(label[..., None], size, "nearest")[..., 0]
            image, label = _pad_to(image, label, height, width, image_pad, centered=True)
            shape = tf.shape(label)
            top = draw("crop_top", 0, shape[0] - height + 1, tf.int32)
            left = draw("crop_left", 0, shape[1] - width + 1, tf.int32)
            image = image[top:top + height, left:left + width]
            label = label[top:top + height, left:left + width]
            if flip:
                mirrored = draw("flip") < 0.5
                image = tf.where(mirrored, image[:, ::-1], image)
                label = tf.where(mirrored, label[:, ::-1], label)
            return (tf.ensure_shape(image, [height, width, 3]),
                    tf.ensure_shape(label, [height, width]))

        ds = ds.enumerate().skip(int(start_step) * batch_size)
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    largest = tuple(int(v) for v in np.max(sizes, axis=0))
    height, width = (largest if tuple(pad_to) == (-1, -1) else tuple(int(v) for v in pad_to))
    if height < largest[0] or width < largest[1]:
        raise ValueError(f"pad_to={tuple(pad_to)} is smaller than the largest {split} image "
                         f"({largest[0]}x{largest[1]}); use -1 to pad to the largest.")

    def pad(image_path, label_path):
        image, label = load(image_path, label_path)
        image, label = _pad_to(image, label, height, width, image_pad, centered=False)
        return tf.ensure_shape(image, [height, width, 3]), tf.ensure_shape(label, [height, width])

    ds = ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
