"""The shipped model given a flat grey image instead of the photo, for `python evaluate.py
--checkpoint=cmp_tf/pretrained/default --method=docs/methods/flat_image.py`
(docs/ablation.md, "What the shipped model reads from the image"): the guidance is the same,
so the gap between this row and the model's own is what reading the image is worth."""
import numpy as np

from cmp_tf.data import sampling
from cmp_tf.runtime import Propagator

GREY = 128  # the flat image's value in every channel
_MODEL = []  # the shipped model, loaded at the first call


def propagate(image, points, vectors):
    image, points, vectors = sampling.check_guidance(image, points, vectors)
    if not _MODEL:
        _MODEL.append(Propagator())
    return _MODEL[0].propagate(np.full_like(image, GREY), points, vectors)
