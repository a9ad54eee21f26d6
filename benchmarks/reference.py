"""The reference figures our benchmarks print next to their own.

Preferred: the PyTorch reference measured on this very machine by torch_reference.py (its JSON,
same CPU model, threads and size), which is the side-by-side comparison. Otherwise the figures
docs/reference.md §7 records for an Intel Xeon with 2 threads, labelled as such: another
CPU, so only indicative. And what every benchmark's JSON records of how it was measured
(`environment`, `write_json`). Plain Python at import: torch_reference.py runs without
TensorFlow.
"""
import json
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
