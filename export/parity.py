"""Parity of exported artifacts with the Keras model they came from, on real samples.

Every artifact is loaded the way users load it (`cmp_tf.runtime`) and run on the same batches
as the Keras model: the flow differences in pixels, the end-point error against the reference
flow and its change, file size and batch-1 latency. A float32 artifact that drifts from Keras by
more than FLOAT32_MEAN_TOLERANCE_PX fails the export; quantized ones report their cost.
"""
import os
import time

import numpy as np

from cmp_tf import runners
from cmp_tf import runtime

# Mean |flow difference| a float32 artifact may show against Keras (issue 7): rounding-level
# differences between runtimes are ~1e-5 px; anything near this is a conversion bug.
FLOAT32_MEAN_TOLERANCE_PX = 0.01


class ParityError(ValueError):
    """A float32 artifact does not reproduce the Keras model."""


def file_bytes(path):
    """Size of a file, or of every file under a folder (a SavedModel)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def median_seconds(fn, repeats):
    """Median wall time of `repeats` calls of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def epe(flow, samples):
    """Mean end-point error of [N, H, W, 2] flows against the samples' reference flow, over
    valid pixels."""
    target = np.concatenate([s["flow"] for s in samples])
    valid = np.concatenate([s["valid"] for s in samples]).reshape(target.shape[:3]) > 0
    return float(np.linalg.norm(flow - target, axis=-1)[valid].mean())


def differences(reference, values):
    """(max, mean) absolute difference of two arrays (or dicts of arrays, pooled)."""
    if isinstance(reference, dict):
        diffs = [np.abs(values[k] - reference[k]).ravel() for k in sorted(reference)]
        diff = np.concatenate(diffs)
    else:
        diff = np.abs(values - reference)
    return float(diff.max()), float(diff.mean())


def flow_row(name, flows, reference, samples):
    """Parity of one CMP artifact's flows [N, H, W, 2] with the Keras flows `reference`."""
    max_abs, mean_abs = differences(reference, flows)
    keras_epe, artifact_epe = epe(reference, samples), epe(flows, samples)
    return dict(max_abs_px=max_abs, mean_abs_px=mean_abs, epe=artifact_epe, keras_epe=keras_epe,
                epe_change=artifact_epe - keras_epe)


def cmp_parity(path, reference, samples, threads, repeats):
    """Runs the CMP artifact at `path` on `samples` (dicts of batch-1 arrays) through the
    runtime; returns its row."""
    network = runtime.Network(path, threads)
    flows = np.concatenate([network(s["image"], s["sparse"]) for s in samples])
    row = flow_row(os.path.basename(path), flows, reference, samples)
    first = samples[0]
    row["latency_s"] = median_seconds(lambda: network(first["image"], first["sparse"]), repeats)
    return row


def encoder_parity(path, reference, images, threads, repeats):
    """The encoder artifact at `path` on `images` against Keras' outputs `reference` (a list of
    {name: array}, one per image): feature differences, absolute and relative to the mean
    feature magnitude."""
    runner = runners.open_model(path, threads)
    outputs = [runner({"image": image}) for image in images]
    stacked = {k: np.concatenate([o[k] for o in outputs]) for k in reference[0]}
    expected = {k: np.concatenate([r[k] for r in reference]) for k in reference[0]}
    max_abs, mean_abs = differences(expected, stacked)
    scale = float(np.mean([np.abs(v).mean() for v in expected.values()]))
    return dict(max_abs=max_abs, mean_abs=mean_abs, relative=mean_abs / max(scale, 1e-12),
                latency_s=median_seconds(lambda: runner({"image": images[0]}), repeats))


def check(rows):
    """Raises ParityError naming every float32 CMP artifact beyond the tolerance."""
    bad = [r for r in rows if r["part"] == "model" and r["precision"] == "float32"
           and r.get("mean_abs_px") is not None and r["mean_abs_px"] > FLOAT32_MEAN_TOLERANCE_PX]
    if bad:
        listed = "; ".join(f"{r['artifact']}: mean |diff| {r['mean_abs_px']:.4g} px, max "
                           f"{r['max_abs_px']:.4g} px" for r in bad)
        raise ParityError(f"float32 artifacts differ from the Keras model by more than "
                          f"{FLOAT32_MEAN_TOLERANCE_PX} px on average: {listed}. The export "
                          "is wrong; the files are left for inspection.")


def _num(value, digits=4):
    return "-" if value is None else f"{value:.{digits}g}"


def markdown(report):
    """The parity report as two markdown tables (CMP, encoder)."""
    rows = report["rows"]
    lines = [(f"Parity with Keras: {report['samples']} samples of {report['data']} at "
              f"{report['size'][0]}x{report['size'][1]}, latency batch 1, median of "
              f"{report['repeats']}, {report['threads']} threads. Keras EPE "
              f"{_num(report['keras_epe'])} px, latency {_num(report['keras_latency_s'])} s."),
             ""]
    by_cells = report.get("keras_epe_by_fill_stride") or {}
    if len(by_cells) > 1:
        cells = " against ".join(f"{epe:.4f} px on {stride} px cells"
                                 for stride, epe in by_cells.items())
        lines += [("The fixed-size files compute the guidance fills on coarser cells than the "
                   f"model trained with (`--fill_stride`; column fill px): Keras EPE {cells}. "
                   "Each file's EPE change is against Keras on its own cells."), ""]
    lines += [("| artifact | precision | size MB | latency s | max abs px | mean abs px | EPE | "
               "EPE change | fill px |"),
              "|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["part"] == "model"):
        lines.append(f"| {r['artifact']} | {r['precision']} | {r['bytes'] / 2**20:.2f} | "
                     f"{_num(r['latency_s'])} | {_num(r['max_abs_px'])} | "
                     f"{_num(r['mean_abs_px'])} | {_num(r['epe'])} | "
                     f"{r['epe_change']:+.4f} | {r.get('fill_stride') or '-'} |")
    encoders = [r for r in rows if r["part"] == "encoder"]
    if encoders:
        lines += ["", ("| encoder artifact | precision | size MB | latency s | max abs | mean abs "
                       "| mean abs / mean abs feature |"), "|---|---|---|---|---|---|---|"]
        for r in encoders:
            lines.append(f"| {r['artifact']} | {r['precision']} | {r['bytes'] / 2**20:.2f} | "
                         f"{_num(r['latency_s'])} | {_num(r['max_abs'])} | "
                         f"{_num(r['mean_abs'])} | {_num(r['relative'])} |")
    return "\n".join(lines)
