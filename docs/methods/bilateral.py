"""A bilateral fill of the guidance, for `python evaluate.py --method=docs/methods/bilateral.py`
(docs/ablation.md, "Reading colour at the guides"): each pixel takes a weighted mean of its
nearest guides, weighed by their distance (relative to the nearest one's) and by the CIE Lab
distance between the pixel's colour and the guide's, both read on the image blurred."""
import cv2
import numpy as np

from cmp_tf.data import sampling

NEAREST = 8  # guides each pixel weighs
REACH = 0.5  # the spatial sigma: REACH x the nearest guide's distance + FLOOR_PX
FLOOR_PX = 2.0
COLOUR_SIGMA = 20.0  # Lab units; 0 leaves colour out
BLUR_PX = 3.0
ROWS = 32  # rows computed at a time (memory: ROWS x W x K distances)


def propagate(image, points, vectors):
    image, points, vectors = sampling.check_guidance(image, points, vectors)
    height, width = image.shape[:2]
    lab = cv2.cvtColor(cv2.GaussianBlur(image, (0, 0), BLUR_PX), cv2.COLOR_RGB2LAB)
    lab = lab.astype(np.float32)
    xy = np.round(points).astype(int)  # on the image: check_guidance
    guide_colour = lab[xy[:, 1], xy[:, 0]]  # [K, 3]
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    flow = np.zeros((height, width, 2), np.float32)
    nearest = min(NEAREST, len(points))
    for top in range(0, height, ROWS):
        band = slice(top, min(height, top + ROWS))
        d2 = (cols[band, :, None] - points[:, 0]) ** 2 + (rows[band, :, None] - points[:, 1]) ** 2
        index = np.argpartition(d2, nearest - 1, axis=-1)[..., :nearest]
        d2 = np.take_along_axis(d2, index, -1)
        d2_first = d2.min(-1, keepdims=True)
        sigma = REACH * np.sqrt(d2_first) + FLOOR_PX
        logit = -(d2 - d2_first) / (2 * sigma * sigma)
        if COLOUR_SIGMA:
            c2 = ((lab[band, :, None, :] - guide_colour[index]) ** 2).sum(-1)
            logit = logit - c2 / (2 * COLOUR_SIGMA ** 2)
        weight = np.exp(logit - logit.max(-1, keepdims=True))
        weight /= weight.sum(-1, keepdims=True)
        flow[band] = (weight[..., None] * vectors[index]).sum(-2)
    return flow
