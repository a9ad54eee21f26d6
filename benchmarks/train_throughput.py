r"""Training-step throughput (images/s) of the paper recipes and their CPU-scale version.

  python benchmarks/train_throughput.py [--size=384] [--batch=4] [--steps=5]
      [--precisions=float32,mixed_bfloat16] [--jit=false,true] [--fused_loss=true,false]
      [--out=runs/benchmarks]

Times `cmp_tf.training.make_step_fn` (forward, full-resolution loss, backward, coupled weight
decay, SGD update) on a fixed synthetic batch, so only the step is measured. Prints a table
and writes train_throughput.json and a plot of it, train_throughput.png. The reference column
is the PyTorch networks measured on this machine by benchmarks/torch_reference.py when its
JSON is there, else the Xeon figures of docs/reference.md §7 (benchmarks/reference.py says
which). Runs on a GPU host as well.
"""
import importlib
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cmp_tf import cli  # noqa: E402
from cmp_tf import losses  # noqa: E402
from cmp_tf import models  # noqa: E402
from cmp_tf import training  # noqa: E402
from benchmarks import recipes as recipes_lib  # noqa: E402
from benchmarks import reference as reference_lib  # noqa: E402

_SIZE = flags.DEFINE_integer("size", 384, "Square crop side in pixels.")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch size.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (median reported) after 2 warm-up.",
                              lower_bound=1)
_PRECISIONS = flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras policies.")
_JIT = flags.DEFINE_list("jit", ["false"], "XLA on the whole step, settings to try: false, true.")
_FUSED_LOSS = flags.DEFINE_list("fused_loss", ["true"],
                                "XLA on the loss alone (the library default), settings to try.")
_RECIPES = flags.DEFINE_list("recipes", ["alexnet_yfcc", "resnet50_semiauto", "cpu_bins"],
                             "Recipes under configs/.")
_OUT = cli.define_output("out", "runs/benchmarks", "Folder for train_throughput.json and .png.")

SWITCHES = {"true": True, "false": False}  # the settings --jit and --fused_loss take


def switches(holder):
    """The settings of a list flag of `SWITCHES` as booleans: anything else (`ture`, `yes`,
    `1`) is refused, not run as false under a row that reads as the setting asked for."""
    bad = [value for value in holder.value if value.lower() not in SWITCHES]
    if bad or not holder.value:
        raise ValueError(f"--{holder.name}={','.join(holder.value)}: each setting must be "
                         f"{' or '.join(SWITCHES)}; got {', '.join(map(repr, bad)) or 'none'}.")
    return [SWITCHES[value.lower()] for value in holder.value]


def check_precisions(names):
    """Refuses a --precisions entry Keras has no policy for before the first model is timed."""
    if not names:
        raise ValueError("--precisions: expected at least one Keras policy; got none.")
    for name in names:
        try:
            keras.mixed_precision.Policy(name)
        except ValueError as error:
            raise ValueError(f"--precisions: {name!r} is no Keras policy: {error}") from error


def check_size(recipes, size):
    """Refuses a --size one of `recipes`' models cannot take before the first is timed. Building
    each model (seconds) is what tells its stride and minimum side; building it to time it
    refused the size only after the recipes before it were timed, naming config.data.crop."""
    for recipe in recipes:
        model = models.build_cmp(importlib.import_module(f"configs.{recipe}").get_config())
        recipes_lib.check_size(model, recipe, size)


def synthetic_batch(size, batch, points=30, seed=0):
    rng = np.random.default_rng(seed)
    sparse = np.zeros((batch, size, size, 3), np.float32)
    for b in range(batch):
        ys, xs = rng.integers(0, size, points), rng.integers(0, size, points)
        sparse[b, ys, xs, :2] = rng.uniform(-20, 20, (points, 2))
        sparse[b, ys, xs, 2] = 1
    x = {"image": tf.constant(rng.uniform(0, 255, (batch, size, size, 3)), tf.float32),
         "sparse": tf.constant(sparse)}
    y = {"flow": tf.constant(rng.uniform(-20, 20, (batch, size, size, 2)), tf.float32),
         "valid": tf.ones((batch, size, size))}
    return x, y


def images_per_second(recipe, precision, jit, fused_loss, size, batch, steps):
    keras.mixed_precision.set_global_policy(precision)
    try:
        config = importlib.import_module(f"configs.{recipe}").get_config()
        config.data.crop = (size, size)
        model = models.build_cmp(config)
        optimizer = training.make_optimizer(config)
        loss_fn = losses.make_loss(config.flow, fused_loss)
        step_fn = training.make_step_fn(model, optimizer, loss_fn, batch,
                                        config.optim.weight_decay)
        step = tf.function(step_fn, jit_compile=jit)
        x, y = synthetic_batch(size, batch)
        for _ in range(2):
            float(step(x, y)[0])
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            loss = float(step(x, y)[0])
            times.append(time.perf_counter() - start)
        if not np.isfinite(loss):
            raise FloatingPointError(f"{recipe} {precision}: loss {loss}")
        return batch / float(np.median(times))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main(argv):
    del argv
    recipes_lib.check(_RECIPES.value)  # built from configs/ alone: a run's name does not count
    check_precisions(_PRECISIONS.value)
    settings = [(jit, fused) for jit in switches(_JIT) for fused in switches(_FUSED_LOSS)]
    check_size(_RECIPES.value, _SIZE.value)  # last: it builds every model
    threads = (tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count())
    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({threads} threads)"
    rows = []
    for recipe in _RECIPES.value:
        for precision in _PRECISIONS.value:
            for jit, fused in settings:
                rate = images_per_second(recipe, precision, jit, fused, _SIZE.value,
                                         _BATCH.value, _STEPS.value)
                reference, source = reference_lib.lookup(
                    recipe, _SIZE.value, "train_images_per_s", threads, _BATCH.value)
                rows.append(dict(recipe=recipe, precision=precision, jit=jit, fused_loss=fused,
                                 images_per_s=rate, reference_images_per_s=reference,
                                 reference_source=source,
                                 speedup=rate / reference if reference else None))
                r = rows[-1]
                print(f"{recipe:<20}{precision:<16}{'xla' if jit else '-':<5}"
                      f"{'fused' if fused else '-':<7}"
                      f"{rate:>8.2f} img/s" + (f"  ({r['speedup']:.2f}x the reference, {source})"
                                               if reference else ""), flush=True)
    print(f"\nDevice: {device}; crop {_SIZE.value}^2, batch {_BATCH.value}.")
    print(f"{'recipe':<20}{'precision':<16}{'xla':<5}{'loss':<7}{'img/s':>8}{'reference':>11}"
          f"{'speedup':>9}  source")
    for r in rows:
        ref = f"{r['reference_images_per_s']:.2f}" if r["reference_images_per_s"] else "-"
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(f"{r['recipe']:<20}{r['precision']:<16}{'yes' if r['jit'] else 'no':<5}"
              f"{'fused' if r['fused_loss'] else 'plain':<7}"
              f"{r['images_per_s']:>8.2f}{ref:>11}{speed:>9}  {r['reference_source'] or '-'}")
    path = reference_lib.write_json(os.path.join(_OUT.value, "train_throughput.json"), dict(
        device=device, cpu=reference_lib.cpu_model(), size=_SIZE.value, batch=_BATCH.value,
        steps=_STEPS.value, rows=rows))
    plot = reference_lib.write_plot(path, [reference_lib.Panel(
        f"Training step, {device}, {_SIZE.value}², batch {_BATCH.value}",
        [f"{r['recipe']} {r['precision']}{' xla' if r['jit'] else ''}"
         f"{' fused' if r['fused_loss'] else ''}" for r in rows],
        {"ours": [r["images_per_s"] for r in rows],
         "reference": [r["reference_images_per_s"] for r in rows]},
        "images/s (higher is faster)")])
    print(f"Wrote {path} and {plot}")


if __name__ == "__main__":
    cli.run(main)
