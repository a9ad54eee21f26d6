"""The shipped model's flow passed through a guided filter with the image as its guide, for
`python evaluate.py --method=docs/methods/guided_filter.py` (docs/ablation.md, "A guided
filter on the model's flow"): in each (2r + 1)^2 window the flow becomes an affine function of
the colour, so a flow edge that a colour edge runs beside moves onto it, and a window of one
colour keeps its mean. GUIDED_RADIUS (px) and GUIDED_EPS (grey levels squared) set r and the
regularisation; defaults 2 and 625."""
import os

import cv2
import numpy as np

from cmp_tf import runtime

RADIUS = int(os.environ.get("GUIDED_RADIUS", 2))
EPS = float(os.environ.get("GUIDED_EPS", 625.0))
_model = []


def propagate(image, points, vectors):
    if not _model:
        _model.append(runtime.Propagator())
    flow = _model[0].propagate(image, points, vectors)
    return cv2.ximgproc.guidedFilter(image.astype(np.float32), flow, RADIUS, EPS)
