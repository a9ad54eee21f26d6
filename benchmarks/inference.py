r"""Forward latency of each recipe's model on this machine, batch 1, next to the reference.

  python benchmarks/inference.py [--size=384] [--repeats=5] [--jit] [--out=runs/benchmarks]

Prints a table and writes inference.json. The reference column is the PyTorch networks' median
forward time measured on this machine by benchmarks/torch_reference.py when its JSON is there,
else the Xeon figure of ../shared/REFERENCE.md §7 (see benchmarks/reference.py).
"""
import importlib
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reference as reference_lib  # noqa: E402
from cmp_tf import models  # noqa: E402

_SIZE = flags.DEFINE_integer("size", 384, "Square input side in pixels.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed forward passes (median reported).")
_JIT = flags.DEFINE_bool("jit", False, "Compile the forward pass with XLA.")
_OUT = flags.DEFINE_string("out", "runs/benchmarks", "Folder for inference.json.")
_RECIPES = flags.DEFINE_list("recipes", ["alexnet_yfcc", "resnet50_semiauto", "mobile", "default"],
                             "Recipes under configs/.")

def time_forward(model, size, repeats, jit):
    rng = np.random.default_rng(0)
    inputs = {"image": tf.constant(rng.uniform(0, 255, (1, size, size, 3)), tf.float32),
              "sparse": tf.zeros((1, size, size, 3))}
    forward = tf.function(lambda x: model(x, training=False)["flow"], jit_compile=jit)
    forward(inputs).numpy()  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(inputs).numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv):
    del argv
    rows = []
    for recipe in _RECIPES.value:
        model = models.build_cmp(importlib.import_module(f"configs.{recipe}").get_config())
        seconds = time_forward(model, _SIZE.value, _REPEATS.value, _JIT.value)
        threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
        reference, source = reference_lib.lookup(recipe, _SIZE.value, "eval_fwd_s", threads)
        rows.append(dict(recipe=recipe, size=_SIZE.value, params=model.count_params(),
                         seconds=seconds, reference_seconds=reference, reference_source=source,
                         speedup=reference / seconds if reference else None))
    print(f"{'recipe':<20}{'params':>12}{'forward s':>12}{'reference s':>13}{'speedup':>9}  source")
    for r in rows:
        ref = f"{r['reference_seconds']:.4f}" if r["reference_seconds"] else "-"
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(f"{r['recipe']:<20}{r['params']:>12,}{r['seconds']:>12.4f}{ref:>13}{speed:>9}"
              f"  {r['reference_source'] or '-'}")
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, "inference.json")
    with open(path, "w") as f:
        json.dump({"jit": _JIT.value, "threads": os.cpu_count(), "cpu": reference_lib.cpu_model(),
                   "rows": rows}, f, indent=1)
    print(f"Wrote {path}")


if __name__ == "__main__":
    app.run(main)
