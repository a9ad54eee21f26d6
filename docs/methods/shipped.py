"""The shipped model (`cmp_tf/pretrained/default`) as an outside method, to set it beside
another checkpoint in one report: `python evaluate.py --checkpoint=RUN
--method=docs/methods/shipped.py` scores both on the same pairs and points and draws both in
panels.png (docs/results.md, "A real stereo pair with true disparity")."""
from cmp_tf.runtime import Propagator

_MODEL = []  # loaded at the first call


def propagate(image, points, vectors):
    if not _MODEL:
        _MODEL.append(Propagator())
    return _MODEL[0].propagate(image, points, vectors)
