"""The reference figures our benchmarks print next to their own.

Preferred: the PyTorch reference measured on this very machine by torch_reference.py (its JSON,
same CPU model, threads and size), which is the side-by-side comparison. Otherwise the figures
docs/reference.md §7 records for an Intel Xeon with 2 threads, labelled as such: another
CPU, so only indicative.
"""
import json
import os
import platform

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
