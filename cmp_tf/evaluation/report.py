"""The benchmark's report: markdown tables, the relative-EPE plot, example panels, and the
folder evaluate.py writes them to (results.md, results.json, relative_epe.png, panels.png).
"""
import json
import os

import numpy as np

from cmp_tf import rundir
from cmp_tf.evaluation.benchmark import NEAR_BOUNDARY_PX


def markdown_table(result):
    """One row per (strategy, K), one column per method: EPE (relative to zero flow)."""
    names = result["methods"]
    lines = ["| guidance | K | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    by_key = {(r["strategy"], r["k"], r["method"]): r for r in result["rows"]}
    for strategy in result["strategies"]:
        for k in result["ks"]:
            best = min(by_key[(strategy, k, n)]["epe"] for n in names)
            cells = []
            for name in names:
                row = by_key[(strategy, k, name)]
                cell = f"{row['epe']:.3f} ({row['relative']:.2f})"
                cells.append(f"**{cell}**" if row["epe"] == best else cell)
            mark = "*" if strategy == "watershed" and result["watershed_filled"][k] else ""
            lines.append(f"| {strategy} | {k}{mark} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Mean end-point error in px over valid pixels of {result['pairs']} pairs; in "
                 "brackets the mean over pairs of EPE / zero-flow EPE. Bold: best per row.")
    left_out = result.get("still_pairs", 0)
    if left_out:
        lines.append(f"{left_out} of the {result['pairs']} pairs move less than "
                     f"{result['min_zero_epe']:g} px on average (zero-flow EPE) and are "
                     "left out of the relative errors" + (", which hold no pair." if
                                                           left_out == result["pairs"] else "."))
    filled = {k: n for k, n in result["watershed_filled"].items() if n}
    if filled:
        lines.append("*: watershed found fewer than K points on some pairs (" + ", ".join(
            f"K={k}: {n}" for k, n in filled.items()) + "); the rest were drawn among valid "
            "pixels, favouring those far from motion edges.")
    return "\n".join(lines)


def boundary_table(result, strategy=None):
    """EPE near / far from motion boundaries per K and method, for `strategy` (default
    watershed if it was scored, else the first strategy scored)."""
    names = result["methods"]
    scored = result["strategies"]
    strategy = strategy or ("watershed" if "watershed" in scored else scored[0])
    if strategy not in scored:
        raise ValueError(f"strategy={strategy!r} was not scored; scored: {', '.join(scored)}.")
    by_key = {(r["strategy"], r["k"], r["method"]): r for r in result["rows"]}
    lines = [f"| K ({strategy}) | " + " | ".join(names) + " |",
             "|---:|" + "---:|" * len(names)]
    for k in result["ks"]:
        cells = [f"{_number(by_key[(strategy, k, n)]['epe_near'])} / "
                 f"{_number(by_key[(strategy, k, n)]['epe_far'])}" for n in names]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"EPE (px) within {NEAR_BOUNDARY_PX} px of a motion edge / farther away; "
                 "-: no such pixels.")
    return "\n".join(lines)


def _number(value):
    return f"{value:.2f}" if np.isfinite(value) else "-"


def plot_relative(result, path):
    """Relative EPE against K, one line per method, one panel per guidance strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = result["strategies"]
    figure, axes = plt.subplots(1, len(strategies), figsize=(5.5 * len(strategies), 4),
                                squeeze=False, sharey=True)
    for axis, strategy in zip(axes[0], strategies):
        for name in result["methods"]:
            rows = sorted((r for r in result["rows"]
                           if r["strategy"] == strategy and r["method"] == name),
                          key=lambda r: r["k"])
            axis.plot([r["k"] for r in rows], [r["relative"] for r in rows], marker="o",
                      label=name)
        axis.set_xscale("log")
        axis.set_xlabel("guidance points K")
        axis.set_title(f"{strategy} guidance")
        axis.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("EPE / zero-flow EPE")
    axes[0][-1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def example_panels(result, path):
    """Per kept pair, a row: image with guidance | reference | each method's flow | its error."""
    import cv2

    from cmp_tf import flow as flow_lib

    rows = []
    for example in result["examples"]:
        flow, valid = example["flow"], example["valid"]
        scale = flow_lib.color_scale(flow, valid)
        image = example["image"].copy()
        for (x, y), (u, v) in zip(example["points"].astype(int), example["vectors"]):
            cv2.arrowedLine(image, (int(x), int(y)), (int(round(x + u)), int(round(y + v))),
                            (255, 0, 0), 1, tipLength=0.3)
            cv2.circle(image, (int(x), int(y)), 2, (255, 0, 0), -1)
        tiles = [("image + guidance", image), ("reference", flow_lib.flow_to_color(flow, scale))]
        for name, (pred, error) in example["predictions"].items():
            tiles.append((name, flow_lib.flow_to_color(pred, scale)))
            heat = np.clip(error / scale * 255, 0, 255).astype(np.uint8)
            heat = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
            heat[~valid] = 0
            tiles.append((f"{name} error", heat))
        labelled = []
        for label, tile in tiles:
            tile = np.ascontiguousarray(tile)
            (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)
            cv2.rectangle(tile, (0, 0), (text_w + 5, text_h + 6), (0, 0, 0), -1)  # legible
            cv2.putText(tile, label, (3, text_h + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 255), 1, cv2.LINE_AA)
            labelled.append(tile)
        rows.append(np.concatenate(labelled, 1))
    if not rows:
        return None
    panel = np.concatenate(rows, 0)
    cv2.imwrite(path, cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    return path


REPORT_FILES = ("results.md", "results.json", "relative_epe.png", "panels.png")


def json_safe(value):
    """`value` with every NaN or infinity replaced by None (null): JSON has no NaN, and a
    score that does not exist (no pixels near an edge) must not read as a number."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_report(result, folder, title="Sparse-to-dense motion propagation"):
    """results.md, results.json, relative_epe.png and panels.png (when examples were kept) in
    `folder`, which then holds exactly this report (REPORT_FILES that exist). Returns the
    markdown text."""
    os.makedirs(folder, exist_ok=True)
    text = "\n\n".join([f"# {title}", markdown_table(result), boundary_table(result)])
    serializable = json_safe({k: v for k, v in result.items() if k != "examples"})
    # An earlier report goes first, and each file is written whole then renamed: a command cut
    # short leaves part of this report, never this report's tables beside the last one's plots.
    for name in REPORT_FILES:
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))

    def whole(name, write):
        with rundir.whole_file(os.path.join(folder, name)) as partial:
            write(partial)  # panels.png is not drawn when no example was kept

    def write_text(path):
        with open(path, "w") as f:
            f.write(text + "\n")

    def write_json(path):
        with open(path, "w") as f:
            json.dump(serializable, f, indent=1, allow_nan=False)

    whole("results.md", write_text)
    whole("results.json", write_json)
    whole("relative_epe.png", lambda path: plot_relative(result, path))
    whole("panels.png", lambda path: example_panels(result, path))  # None: none kept
    return text
