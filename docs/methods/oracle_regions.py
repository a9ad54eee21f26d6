r"""How much knowing where motion boundaries are can gain: linear interpolation run separately
inside each of the reference flow's own motion regions, scored beside the shipped model and the
classical fills with `evaluate.py`'s protocol (the same pairs, guides and scores).

The regions are the connected parts of the image between the reference's motion edges (the edge
map `evaluate.py`'s "near" figures and watershed guides use); an edge pixel joins the region
nearest to it. A region interpolates only its own guides (the nearest of them outside their
convex hull); a region with none keeps plain linear interpolation. It reads the reference flow,
so it is a bound for the benchmark's sets, not a method anyone can run on new footage
(docs/ablation.md, "What knowing the motion regions can gain").

  python docs/methods/oracle_regions.py                                  # the validation clip
  python docs/methods/oracle_regions.py --data=generated                 # held-out layered scenes
"""
import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from cmp_tf import rundir  # noqa: E402
from cmp_tf import runtime  # noqa: E402
from cmp_tf.data import sampling  # noqa: E402
from cmp_tf.evaluation import baselines  # noqa: E402
from cmp_tf.evaluation import benchmark  # noqa: E402
from cmp_tf.evaluation import pairs as pairs_lib  # noqa: E402


def motion_regions(flow):
    """[H, W] int32 region index (from 1) of every pixel: the 4-connected parts between the
    flow's motion edges, each edge pixel given the region of its nearest non-edge pixel."""
    inside = (~sampling.motion_edges(flow)).astype(np.uint8)
    _, regions = cv2.connectedComponents(inside, connectivity=4)
    if inside.all() or not inside.any():
        return np.ones(inside.shape, np.int32)
    # Every pixel's nearest non-edge pixel, numbered by OpenCV in raster order.
    _, nearest = cv2.distanceTransformWithLabels(1 - inside, cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    by_number = np.concatenate([[0], regions[inside > 0]]).astype(np.int32)
    return by_number[nearest]


class RegionOracle:
    """propagate(image, points, vectors) that looks the pair's motion regions up by its image
    (computed once per pair, for every guide count and strategy)."""

    def __init__(self, pairs):
        self.regions = {np.asarray(image, np.uint8).tobytes():
                        motion_regions(np.asarray(flow, np.float32)) for image, flow, _ in pairs}

    def __call__(self, image, points, vectors):
        regions = self.regions[np.asarray(image, np.uint8).tobytes()]
        points, vectors = np.asarray(points, np.float64), np.asarray(vectors, np.float32)
        cols = np.clip(np.round(points[:, 0]).astype(int), 0, regions.shape[1] - 1)
        rows = np.clip(np.round(points[:, 1]).astype(int), 0, regions.shape[0] - 1)
        guide_regions = regions[rows, cols]
        out = baselines.linear(image, points, vectors)
        for region in np.unique(guide_regions):
            own = guide_regions == region
            mask = regions == region
            out[mask] = baselines.linear(image, points[own], vectors[own])[mask]
        return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="", help="'generated', a video, or empty for the "
                        "shipped model's validation clip")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--ks", default=",".join(map(str, benchmark.KS)),
                        help="as evaluate.py's --ks: the guides drawn depend on the largest")
    args = parser.parse_args()
    checkpoint = os.path.join(os.path.dirname(runtime.__file__), "pretrained", "default")
    pairs, _ = pairs_lib.scored_pairs(*rundir.read_config(checkpoint),
                                      [args.data] if args.data else [], args.pairs, 0)
    pairs = list(pairs)
    methods = {"zero": baselines.zero, "nearest": baselines.nearest,
               "linear": baselines.linear, "gaussian": baselines.gaussian,
               "cmp": runtime.Propagator(checkpoint), "oracle_regions": RegionOracle(pairs)}
    ks = [int(k) for k in args.ks.split(",")]
    result = benchmark.evaluate(methods, pairs, ks=ks, seed=0)
    rows = {(r["method"], r["strategy"][0] + str(r["k"])): r for r in result["rows"]}
    columns = [s + str(k) for s in "wu" for k in ks]
    print("| method | " + " | ".join(columns) + " | near " + " / ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for method in methods:
        if method == "zero":
            continue
        relative = " | ".join(f"{rows[method, c]['relative']:.3f}" for c in columns)
        near = " / ".join(f"{rows[method, c]['epe_near']:.3f}" for c in columns)
        print(f"| {method} | {relative} | {near} |")


if __name__ == "__main__":
    main()
