"""The reference figures our benchmarks print next to their own.

Preferred: the PyTorch reference measured on this very machine by torch_reference.py (its JSON,
same CPU model, threads and size), which is the side-by-side comparison. Otherwise the figures
docs/reference.md §7 records for an Intel Xeon with 2 threads, labelled as such: another
CPU, so only indicative. And what every benchmark's JSON records of how it was measured
(`environment`, `write_json`), and the bar chart of its figures drawn beside it (`write_plot`).
Plain Python at import: torch_reference.py runs without TensorFlow.
"""
import collections
import json
import math
import os
import platform
import subprocess
import sys

TORCH_JSON = "runs/benchmarks/torch_reference.json"
# docs/reference.md §7 (torch, 2 threads, 2-core Intel Xeon): eval forward b1 and train step b4.
XEON = {("alexnet_yfcc", 384): dict(eval_fwd_s=0.0849, train_images_per_s=1.9),
        ("alexnet_yfcc", 256): dict(eval_fwd_s=0.0494),
        ("resnet50_semiauto", 384): dict(eval_fwd_s=0.492, train_images_per_s=0.39),
        ("resnet50_semiauto", 256): dict(eval_fwd_s=0.235)}


def cpu_model():
    """The CPU's model name: figures from two machines are never compared as one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def lookup(recipe, size, field, threads, batch=None, path=TORCH_JSON):
    """(value, source) of the reference's `field` for `recipe` at `size`, or (None, None)."""
    if os.path.isfile(path):
        with open(path) as f:
            measured = json.load(f)
        row = measured.get("recipes", {}).get(recipe)
        if (row and measured.get("cpu") == cpu_model() and measured.get("size") == size
                and measured.get("threads") == threads and row.get(field) is not None
                and batch in (None, measured.get("batch"))):
            return row[field], "torch here"
    value = XEON.get((recipe, size), {}).get(field) if batch in (None, 4) else None
    return (value, "xeon") if value is not None else (None, None)


_PACKAGES = ("numpy", "tensorflow", "keras", "cv2", "onnxruntime", "ai_edge_litert", "torch")


def environment():
    """What a measurement was made with: Python and the versions of the packages loaded, the
    CPU and its thread count, and the checkout's commit (`dirty` when it has changes)."""
    packages = {name: str(getattr(sys.modules[name], "__version__", "?"))
                for name in _PACKAGES if name in sys.modules}
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        if commit:
            dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                        cwd=checkout, capture_output=True, text=True,
                                        timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git here, or not a checkout
        pass
    return dict(python=platform.python_version(), packages=packages, cpu=cpu_model(),
                cpu_count=os.cpu_count(), commit=commit, dirty=dirty)


def write_json(path, value, indent=1):
    """A benchmark's results as JSON at `path`, written whole, with `environment()` beside
    them and NaN / infinities as null (strict JSON parsers refuse them). Returns `path`."""
    from cmp_tf import rundir
    from cmp_tf.evaluation.report import json_safe

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with rundir.whole_file(path) as partial, open(partial, "w") as f:
        json.dump(json_safe({**value, "environment": environment()}), f, indent=indent,
                  allow_nan=False)
    return path


# One chart of a benchmark's plot: `series` is {name: values}, a value per label (None, NaN or
# not a number: not measured, no bar), `unit` the x axis' label.
Panel = collections.namedtuple("Panel", "title labels series unit")
_LABEL_CHARS = 48  # longer labels (paths) keep their tail, which tells them apart


def _number(value):
    """`value` as a finite float, or None: a format not measured, a teacher that refused."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def table_panel(title, table, unit):
    """A `Panel` of a {row: {column: value}} table as the JSON holds it (relative EPE per
    strategy/K): a series per column, in the order first met; a cell a row lacks is missing."""
    columns = list(dict.fromkeys(column for row in table.values() for column in row))
    return Panel(title, list(table), {c: [row.get(c) for row in table.values()]
                                      for c in columns}, unit)


def write_plot(path, panels):
    """The figures a benchmark prints, as grouped horizontal bar charts (one `Panel` each,
    stacked) in a PNG beside its JSON: `path` with its suffix replaced by .png, written whole
    (results people look at are pictures too). A missing value draws no bar; a row with none
    shows "-". Returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmp_tf import rundir

    png = os.path.splitext(path)[0] + ".png"
    panels = [Panel(*p) for p in panels] or [Panel("no figures", [], {}, "")]
    for panel in panels:
        if any(len(column) != len(panel.labels) for column in panel.series.values()):
            raise ValueError(f"{panel.title}: each series needs a value per label "
                             f"({len(panel.labels)}).")
    heights = [1.2 + len(p.labels) * (0.2 + 0.13 * max(1, len(p.series))) for p in panels]
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, sum(heights)), squeeze=False,
                                gridspec_kw=dict(height_ratios=heights))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
        for axis, panel in zip(axes[:, 0], panels):
            _bars(axis, panel)
        figure.tight_layout()
        with rundir.whole_file(png) as partial:
            figure.savefig(partial, dpi=100, bbox_inches="tight")
    finally:
        plt.close(figure)
    return png


def _bars(axis, panel):
    """One panel's grouped horizontal bars, the first row on top as the table prints it."""
    values = {name: [_number(v) for v in column] for name, column in panel.series.items()}
    bar = 0.8 / max(1, len(values))
    for i, (name, column) in enumerate(values.items()):
        drawn = [(row, v) for row, v in enumerate(column) if v is not None]
        if not drawn:
            axis.barh([], [], label=name)  # in the legend all the same: its colour
            continue
        rows, widths = zip(*drawn)
        bars = axis.barh([r - 0.4 + (i + 0.5) * bar for r in rows], widths, bar, label=name)
        axis.bar_label(bars, [f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}" for v in widths],
                       padding=2, fontsize=7)
    for row in range(len(panel.labels)):
        if all(column[row] is None for column in values.values()):
            axis.text(0, row, " -", va="center")
    axis.set_yticks(range(len(panel.labels)), [
        label if len(label) <= _LABEL_CHARS else "..." + label[3 - _LABEL_CHARS:]
        for label in map(str, panel.labels)])
    axis.set_ylim(max(1, len(panel.labels)) - 0.5, -0.5)  # the first row on top
    known = [v for c in values.values() for v in c if v is not None]
    low, high = min(known + [0]) * 1.15, max(known + [0]) * 1.15  # room for the values
    axis.set_xlim(low, high if high > low else 1)
    axis.set_xlabel(panel.unit)
    axis.set_title(panel.title, fontsize=10)
    axis.grid(True, axis="x", alpha=0.3)
    if len(values) > 1:
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
