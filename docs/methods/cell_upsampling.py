"""The shipped model's flow on its 2 px cells, brought to full resolution another way than the
model's own align-corners bilinear resize (docs/ablation.md, "The last resize: from the fills'
cells to pixels"):

  CMP_UPSAMPLING=joint_bilateral python evaluate.py --checkpoint=cmp_tf/pretrained/default \\
      --method=docs/methods/cell_upsampling.py [--data=generated | --data=... --pairs=16]

CMP_FADE=0 reads the model out without its learned fade (`Propagator(fade=False)`, for a
moving camera: the stereo pair). CMP_UPSAMPLING:
  align_corners    the model's own resize (reproduces its row to the digit);
  half_pixel       bilinear with the cells' centres where the fills put them (2j + 0.5 px);
  joint_bilateral  (default) each pixel a mean of the 3 x 3 cells around its own, weighed by a
                   Gaussian of the distance to their centres (one cell) and of the colour
                   difference between the pixel and the cell's mean colour (RGB 0..255,
                   sigma JOINT_SIGMA): a cell across a colour edge counts little.
"""
import os

import cv2
import keras
import numpy as np

from cmp_tf import ops
from cmp_tf.data import sampling
from cmp_tf.runtime import Propagator

JOINT_SIGMA = 20.0  # colour sigma, 0..255 RGB (10 scored within 0.003 of it)
SPATIAL_SIGMA = 1.0  # cells
_CELLS = []  # the shipped model cut before its last resize, built at the first call


def cell_flow(image, points, vectors):
    """The model's flow on its cells, [h, w, 2] px, for one guidance set on `image`."""
    if not _CELLS:
        fade = os.environ.get("CMP_FADE", "1") != "0"
        model = Propagator(fade=None if fade else False)._network.runner.model
        resize = model.get_layer("upsample_flow")
        _CELLS.append(keras.Model(model.inputs, resize.input[0]))
    height, width = image.shape[:2]
    xy = np.clip(np.rint(points), 0, [width - 1, height - 1])
    sparse = sampling.sparse_from_points(xy, vectors, height, width)
    cells = _CELLS[0]({"image": image[None].astype(np.float32), "sparse": sparse[None]})
    return np.asarray(cells)[0]


def joint_bilateral(cells, image, sigma=JOINT_SIGMA, spatial=SPATIAL_SIGMA):
    """cells [h, w, C] (each the mean of a stride x stride block) -> [H, W, C] guided by image."""
    height, width = image.shape[:2]
    rows, cols = cells.shape[:2]
    stride = height // rows
    image = image.astype(np.float32)
    means = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA)
    ys, xs = np.mgrid[:height, :width]
    cy, cx = (ys + 0.5) / stride - 0.5, (xs + 0.5) / stride - 0.5  # pixel centres, in cells
    own_y, own_x = ys // stride, xs // stride
    total, weights = 0.0, 0.0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny, nx = np.clip(own_y + dy, 0, rows - 1), np.clip(own_x + dx, 0, cols - 1)
            weight = np.exp(-((ny - cy) ** 2 + (nx - cx) ** 2) / (2 * spatial ** 2)
                            - np.sum((image - means[ny, nx]) ** 2, -1) / (2 * sigma ** 2))
            total = total + weight[..., None] * cells[ny, nx]
            weights = weights + weight
    return (total / np.maximum(weights, 1e-12)[..., None]).astype(np.float32)


def propagate(image, points, vectors):
    image, points, vectors = sampling.check_guidance(image, points, vectors)
    cells = cell_flow(image, points, vectors)
    kind = os.environ.get("CMP_UPSAMPLING", "joint_bilateral")
    height, width = image.shape[:2]
    if kind == "align_corners":
        return ops.resize_align_corners(cells[None], (height, width))[0].numpy()
    if kind == "half_pixel":
        return cv2.resize(cells, (width, height), interpolation=cv2.INTER_LINEAR)
    if kind == "joint_bilateral":
        return joint_bilateral(cells, image)
    raise ValueError(f"CMP_UPSAMPLING={kind!r}; known: align_corners, half_pixel, "
                     "joint_bilateral.")
