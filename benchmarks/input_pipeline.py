r"""Input-side speed: the training guidance sampler against a plain NumPy/SciPy statement of it.

  python benchmarks/input_pipeline.py [--size=384] [--samples=20] [--threads=1] \
      [--out=runs/benchmarks/input_pipeline.json]

Prints a table per section and writes the JSON and a plot of the tables beside it (.png).
The plain statement below is the watershed sampler as the reference writes it out
(docs/design.md §3, docs/reference.md §5): scipy convolve2d, distance_transform_edt,
maximum_filter and a Python loop over the close pairs. It is the specification
`cmp_tf.data.sampling` is checked against here and in tests/test_sampling.py, so it stays
plain: no speed-ups belong in it.
"""
import os
import sys
import time

import cv2
import numpy as np
from absl import app
from absl import flags
from scipy import ndimage
from scipy import signal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reference as reference_lib  # noqa: E402
from cmp_tf import cli  # noqa: E402
from cmp_tf.data import sampling  # noqa: E402

# The guidance of the 384² recipes (configs/resnet50_semiauto.py): a 3 x 3 grid + watershed.
_BG_RATIO, _NMS_KS = 5.74e-5, 41
# Sobel x kernel as scipy convolves it (flipped by the convolution); y is its transpose.
_SOBEL = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)


# --- The plain statement ------------------------------------------------------------------------

def plain_watershed_candidates(flow, nms_ks):
    """Region middles of [H, W, 2] `flow` as (rows, cols), spelled out with SciPy."""
    edge = 0
    for c in range(2):
        gx = signal.convolve2d(flow[..., c], _SOBEL, mode="same", boundary="symm")
        gy = signal.convolve2d(flow[..., c], _SOBEL.T, mode="same", boundary="symm")
        edge = edge + np.sqrt(gx ** 2 + gy ** 2)
    edge = edge / max(edge.max(), 0.01)
    edge = (edge > 0.1).astype(np.float32)
    dist = ndimage.distance_transform_edt(1 - edge)  # to the nearest motion edge
    peaks = np.where(dist == ndimage.maximum_filter(dist, footprint=np.ones((nms_ks, nms_ks))),
                     dist, 0)
    peaks[0, :] = peaks[-1, :] = peaks[:, 0] = peaks[:, -1] = 0
    return np.nonzero(peaks > 0)


def plain_neighbor_elimination(rows, cols, distance, rng):
    """Keeps one of every two points closer than `distance` in both axes; a [N] bool.

    Close ordered pairs (i, j), i != j, are visited row-major with one draw each, as
    `sampling.eliminate_neighbors` documents.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    close = ((np.abs(rows[:, None] - rows[None, :]) < distance)
             & (np.abs(cols[:, None] - cols[None, :]) < distance))
    keep = np.ones(len(rows), bool)
    for i, j in zip(*np.nonzero(close)):
        if i == j:
            continue
        u = rng.random()
        if keep[i] and keep[j]:
            if u > 0.5:
                keep[i] = False
            else:
                keep[j] = False
    return keep


def plain_watershed_points(flow, nms_ks, rng):
    """Watershed guidance as (rows, cols) at full resolution."""
    ds = max(1, max(flow.shape[:2]) // 400)
    rows, cols = plain_watershed_candidates(flow[::ds, ::ds], nms_ks)
    keep = plain_neighbor_elimination(rows, cols, (nms_ks - 1) / 2, rng)
    return rows[keep] * ds, cols[keep] * ds


def plain_sample_guidance(flow, bg_ratio=_BG_RATIO, nms_ks=_NMS_KS, max_num_guide=-1, seed=0):
    """The default recipe's sampler, grid + watershed, as [H, W, 3] (u, v, mask)."""
    h, w = flow.shape[:2]
    rng = np.random.default_rng(seed)
    stride = int(np.sqrt(1.0 / bg_ratio))
    grid_h, grid_w = np.meshgrid(np.arange(int((h - h // stride * stride) / 2), h, stride),
                                 np.arange(int((w - w // stride * stride) / 2), w, stride),
                                 indexing="ij")
    shed_h, shed_w = plain_watershed_points(flow, nms_ks, rng)
    pts_h = np.concatenate([grid_h.ravel(), shed_h])
    pts_w = np.concatenate([grid_w.ravel(), shed_w])
    cap = len(pts_h) if max_num_guide == -1 else max_num_guide
    chosen = rng.permutation(len(pts_h))[:cap]
    sparse = np.zeros((h, w, 3), np.float32)
    sparse[pts_h[chosen], pts_w[chosen], :2] = flow[pts_h[chosen], pts_w[chosen]]
    sparse[pts_h[chosen], pts_w[chosen], 2] = 1
    return sparse


# --- Inputs ---------------------------------------------------------------------------------------

def moving_shapes_flow(size=384, shapes=5, noise=0.05, seed=0):
    """Teacher-like flow: a slowly zooming background and ellipses/boxes each turning and sliding.

    Motion inside each part is smooth (affine), edges are softened by a 1 px blur as a flow
    network's are, and Gaussian noise of `noise` px lies on top. Returns [size, size, 2] float32.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = (size - 1) / 2
    zoom = rng.uniform(-0.01, 0.01)
    flow = np.stack([zoom * (x - centre), zoom * (y - centre)], -1) + rng.uniform(-2, 2, 2)
    for _ in range(shapes):
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        ry, rx = rng.uniform(0.06, 0.2, 2) * size
        if rng.random() < 0.5:
            inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
        else:
            inside = (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)
        (tu, tv), turn = rng.uniform(-8, 8, 2), rng.uniform(-0.02, 0.02)
        part = np.stack([tu - turn * (y - cy), tv + turn * (x - cx)], -1)
        flow[inside] = part[inside]
    flow = cv2.GaussianBlur(flow.astype(np.float32), (0, 0), 1.0)
    return (flow + rng.normal(0, noise, flow.shape)).astype(np.float32)


# --- Sections -----------------------------------------------------------------------------------

def _ms_per_sample(fn, flows):
    fn(flows[0])  # warm up
    times = []
    for flow in flows:
        start = time.perf_counter()
        fn(flow)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.mean(times))


def guidance_sampling(size, samples, seed):
    """Fast sampler vs the plain statement: same points required, then ms per sample each."""
    flows = [moving_shapes_flow(size, seed=seed + k) for k in range(samples)]
    candidates, points = [], []
    for k, flow in enumerate(flows):
        rows, cols = plain_watershed_candidates(flow, _NMS_KS)
        fast_rows, fast_cols = sampling.watershed_candidates(flow, _NMS_KS)
        assert np.array_equal(rows, fast_rows) and np.array_equal(cols, fast_cols), \
            f"watershed candidates differ on flow {k}"
        sparse = sampling.sample_guidance(flow, bg_ratio=_BG_RATIO, nms_ks=_NMS_KS, seed=seed + k)
        assert np.array_equal(sparse, plain_sample_guidance(flow, seed=seed + k)), \
            f"guidance differs on flow {k}"
        candidates.append(len(rows))
        points.append(int(sparse[..., 2].sum()))
    statements = (
        ("watershed", lambda f: plain_watershed_points(f, _NMS_KS, np.random.default_rng(0)),
         lambda f: sampling.watershed_points(f, _NMS_KS, np.random.default_rng(0))),
        ("grid+watershed", lambda f: plain_sample_guidance(f),
         lambda f: sampling.sample_guidance(f, bg_ratio=_BG_RATIO, nms_ks=_NMS_KS)),
    )
    table = []
    for name, plain_fn, fast_fn in statements:
        plain_ms, fast_ms = _ms_per_sample(plain_fn, flows), _ms_per_sample(fast_fn, flows)
        table.append(dict(statement=name, size=size, samples=samples, plain_ms=plain_ms,
                         fast_ms=fast_ms, speedup=plain_ms / fast_ms))
    print(f"Guidance sampling, {samples} flows of {size}x{size}, nms_ks={_NMS_KS}, "
          f"bg_ratio={_BG_RATIO}: {np.mean(candidates):.1f} watershed candidates and "
          f"{np.mean(points):.1f} points (grid + watershed) per flow; fast == plain on all. "
          "Mean ms per sample:")
    print(f"{'statement':<18}{'plain ms':>10}{'fast ms':>10}{'speed-up':>10}")
    for r in table:
        print(f"{r['statement']:<18}{r['plain_ms']:>10.2f}{r['fast_ms']:>10.2f}"
              f"{r['speedup']:>9.1f}x")
    return dict(rows=table, candidates_per_flow=float(np.mean(candidates)),
                points_per_flow=float(np.mean(points)))


def pipeline_throughput(size, samples, seed):
    """End to end: shards of the sample clips -> crops of `size` with guidance, samples/s.

    The AlexNet recipe's data settings (short side size + 32, grid + watershed, at most 150
    points), batch 4, on the clips that ship with the package (ingested once into
    data/cache); the same pipeline without guidance sampling shows what sampling costs.
    """
    from cmp_tf import data
    from cmp_tf.data import pipeline
    from configs import alexnet_yfcc

    config = alexnet_yfcc.get_config()
    config.seed = seed
    config.data.train = data.sample_splits()[0]
    config.data.short_size, config.data.crop = size + 32, (size, size)
    config.data.batch_size, config.data.shuffle_buffer = 4, 64
    table = []
    for with_guidance in (True, False):
        ds = pipeline.make_dataset(config, "train", guidance=with_guidance)
        batches = iter(ds)
        for _ in range(3):  # warm up: autotuning, file opening
            next(batches)
        count = max(1, samples // 4)
        start = time.perf_counter()
        for _ in range(count):
            next(batches)
        rate = count * 4 / (time.perf_counter() - start)
        table.append(dict(guidance=with_guidance, size=size, samples_per_s=rate))
    print(f"tf.data pipeline, {size}x{size} crops, batch 4, {os.cpu_count()} CPUs:")
    print(f"{'guidance':<12}{'samples/s':>12}")
    for r in table:
        print(f"{str(r['guidance']):<12}{r['samples_per_s']:>12.1f}")
    return dict(rows=table)


SECTIONS = {"guidance_sampling": guidance_sampling, "pipeline": pipeline_throughput}


def _define_flags():
    """Flags only when run as a script, so tests can import the plain statement."""
    flags.DEFINE_integer("size", 384, "Square flow side in pixels.", lower_bound=16)
    flags.DEFINE_integer("samples", 20, "Generated flows, each sampled once per statement.",
                         lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of the first flow and of its guidance.", lower_bound=0)
    flags.DEFINE_integer("threads", 1, "OpenCV threads (0: OpenCV's default); 1 as one "
                         "tf.data worker per core runs it.", lower_bound=0)
    cli.define_output("out", "runs/benchmarks/input_pipeline.json", "Where the JSON goes (the plot "
                      "beside it, .png).", kind="file")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    opts = flags.FLAGS
    if opts.threads:
        cv2.setNumThreads(opts.threads)
    results = dict(threads=cv2.getNumThreads(), cpus=os.cpu_count())
    for name, section in SECTIONS.items():
        results[name] = section(opts.size, opts.samples, opts.seed)
    reference_lib.write_json(opts.out, results)
    plot = reference_lib.write_plot(opts.out, plot_panels(results, opts.size))
    print(f"Wrote {opts.out} and {plot}")


def plot_panels(results, size):
    """The sections' tables as charts: ms per sample of each statement, samples/s of the
    pipeline with and without guidance."""
    sampling, pipe = results["guidance_sampling"]["rows"], results["pipeline"]["rows"]
    return [
        reference_lib.Panel(f"Guidance sampling, {size}² flows",
                            [r["statement"] for r in sampling],
                            {"plain": [r["plain_ms"] for r in sampling],
                             "fast": [r["fast_ms"] for r in sampling]},
                            "ms per sample (lower is faster)"),
        reference_lib.Panel(f"tf.data pipeline, {size}² crops, batch 4",
                            [f"{'with' if r['guidance'] else 'without'} guidance" for r in pipe],
                            {"samples/s": [r["samples_per_s"] for r in pipe]},
                            "samples/s (higher is faster)")]


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
