r"""Forward latency of each recipe's model on this machine, batch 1, next to the reference, and
of every deployment format.

  python benchmarks/inference.py [--size=384] [--repeats=5] [--jit] [--out=runs/benchmarks]
  python benchmarks/inference.py --formats=all --bfloat16       # + every exported format

Prints a table and writes inference.json and a plot of it, inference.png; "fills s" is the
guidance fills alone (every fill layer of the model on the same input) and "share" their part
of the forward
(in Keras; with --formats=tflite the deployment table gives them for the .tflite files too,
which all compute them in float32: converted alone as export converts the model). The reference
column is the PyTorch networks' median
forward time measured on this machine by benchmarks/torch_reference.py when its JSON is there,
else the Xeon figure of docs/reference.md §7 (see benchmarks/reference.py).

With --formats, each recipe's model is exported (export/, into a temporary folder) and every
file is timed through cmp_tf.runtime at --size, batch 1, --threads threads, with its size and
its flow difference from the Keras model on real validation samples. The fixed-size .tflite
files' fills run on the cells export gives that size ("fill px"; coarser than the trained
cells well above the training crop, export's --fill_stride=auto), the other files and Keras
on the trained ones; "EPE change" adds what the coarser cells alone change ("cells").
--bfloat16 adds the Keras model under the mixed_bfloat16 policy (oneDNN's bfloat16 kernels on
CPUs that have them). A recipe with a finished run under --runs uses its trained weights, the
others random ones; a name with a run and no recipe file is that run (two versions of a model
side by side: --recipes=before,after --runs=DIR, DIR/before/model.keras and DIR/after/...).
"""
import importlib
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
sys.path.insert(0, ROOT)
from benchmarks import recipes  # noqa: E402
from benchmarks import reference as reference_lib  # noqa: E402
from cmp_tf import cli  # noqa: E402
from cmp_tf import models  # noqa: E402
from cmp_tf import rundir  # noqa: E402
from export import export_lib  # noqa: E402
from export import parity  # noqa: E402

_SIZE = flags.DEFINE_integer("size", 384, "Square input side in pixels.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed forward passes (median reported).",
                                lower_bound=1)
_JIT = flags.DEFINE_bool("jit", False, "Compile the forward pass with XLA.")
_OUT = cli.define_output("out", "runs/benchmarks", "Folder for inference.json and .png.")
_RECIPES = flags.DEFINE_list("recipes", ["alexnet_yfcc", "resnet50_semiauto", "mobile", "cpu_bins"],
                             "Recipes under configs/, or runs under --runs.")
_FORMATS = flags.DEFINE_list("formats", [], "Export formats to time too (any of "
                             f"{', '.join(export_lib.FORMATS)}), or 'all'.")
_BFLOAT16 = flags.DEFINE_bool("bfloat16", False, "Also time the Keras model in mixed_bfloat16.")
_THREADS = flags.DEFINE_integer("threads", None, "CPU threads for LiteRT and ONNX Runtime; "
                                "default all cores (TensorFlow uses all cores).")
_RUNS = flags.DEFINE_string("runs", "runs", "Run directories: <runs>/<recipe>/model.keras, if "
                            "there, gives a recipe trained weights.")
_CALIBRATION = flags.DEFINE_integer("calibration", 16, "Samples calibrating the int8 formats.")
_PARITY = flags.DEFINE_integer("parity_samples", 4, "Validation samples for the flow difference.")


def forward_inputs(size):
    """The timed inputs, batch 1: a random image and no guidance (every fill's work is the
    same whatever the guides)."""
    rng = np.random.default_rng(0)
    return {"image": rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32),
            "sparse": np.zeros((1, size, size, 3), np.float32)}


def time_forward(model, size, repeats, jit):
    inputs = tf.nest.map_structure(tf.constant, forward_inputs(size))
    forward = tf.function(lambda x: model(x, training=False)["flow"], jit_compile=jit)
    return parity.median_seconds(lambda: forward(inputs).numpy(), repeats)


def fill_model(model, size):
    """`model`'s guidance fill layers alone as a Keras model of (image, sparse), each layer on
    the inputs it takes in `model`: the part of the forward that is not the network. Learned
    edge features, when a fill takes them, are zeros of their shape. None without fills."""
    import keras
    from cmp_tf.models import fills

    image = keras.Input((size, size, 3), name="image")
    sparse = keras.Input((size, size, 3), name="sparse")
    outputs = {}
    for layer in model.layers:
        if not isinstance(layer, fills.FILL_LAYERS):
            continue
        args = sparse
        if isinstance(layer.input, (list, tuple)):  # [sparse, image(, edge features)]
            cells = size // layer.stride
            extra = [keras.layers.Lambda(lambda s, c=t.shape[-1]: keras.ops.zeros(
                (1, cells, cells, c)))(sparse) for t in layer.input[2:]]
            args = [sparse, image, *extra]
        for i, out in enumerate(tf.nest.flatten(layer(args))):
            outputs[f"{layer.name}_{i}"] = out
    return keras.Model({"image": image, "sparse": sparse}, outputs) if outputs else None


def time_fills(model, size, repeats):
    """Median seconds of `fill_model` in TensorFlow on `forward_inputs`; 0 without fills."""
    fills_only = fill_model(model, size)
    if fills_only is None:
        return 0.0
    inputs = tf.nest.map_structure(tf.constant, forward_inputs(size))
    run = tf.function(lambda x: tf.nest.flatten(fills_only(x, training=False)))
    return parity.median_seconds(lambda: [out.numpy() for out in run(inputs)], repeats)


def time_tflite_fills(model, size, repeats, threads):
    """Median seconds of `fill_model` as a float32 .tflite (export's converter, batch 1,
    `threads` threads) on `forward_inputs`; 0 without fills."""
    from cmp_tf import runners
    from export import tflite

    fills_only = fill_model(model, size)
    if fills_only is None:
        return 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fills.tflite")
        with open(path, "wb") as f:
            f.write(tflite.convert(fills_only, (size, size)))
        runner = runners.TFLiteRunner(path, threads=threads)
        inputs = forward_inputs(size)
        return parity.median_seconds(lambda: runner(inputs), repeats)


def load_recipe(recipe, runs):
    """(model, config, weights): a finished run's trained model if <runs>/<recipe> has one,
    else the recipe's model with random weights."""
    run = os.path.join(runs, recipe)
    if os.path.isfile(os.path.join(run, rundir.MODEL_FILE)):
        model, config, _ = export_lib.load_checkpoint(run)
        return model, config, "trained"
    config = importlib.import_module(f"configs.{recipe}").get_config()
    return models.build_cmp(config), config, "random"


def bfloat16_copy(model, config):
    """`model` rebuilt under the mixed_bfloat16 policy with the same weights."""
    import keras

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        copy = models.build_cmp(config)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def flow_difference(model, other, samples):
    """Mean |flow difference| in pixels of two Keras models on real samples."""
    diffs = [np.abs(np.asarray(model({"image": s["image"], "sparse": s["sparse"]})["flow"])
                    - np.asarray(other({"image": s["image"], "sparse": s["sparse"]})["flow"]))
             for s in samples]
    return float(np.mean(diffs))


def format_rows(model, config, size, formats, threads):
    """Exports `model` into a temporary folder and returns export's parity rows (latency,
    bytes, flow differences) and the report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = export_lib.export(model, config, tmp, formats, size=(size, size),
                                   calibration=_CALIBRATION.value,
                                   parity_samples=_PARITY.value, threads=threads,
                                   repeats=_REPEATS.value, encoder=False, logits=False,
                                   log=lambda _: None)
    return report["rows"], report


def main(argv):
    del argv
    formats = list(export_lib.FORMATS) if _FORMATS.value == ["all"] else _FORMATS.value
    unknown = sorted(set(formats) - set(export_lib.FORMATS))
    if unknown:
        raise app.UsageError(f"--formats: unknown {unknown}; known: "
                             f"{', '.join(export_lib.FORMATS)} or all.")
    if flags.FLAGS["runs"].present and not os.path.isdir(_RUNS.value):
        raise app.UsageError(f"--runs={_RUNS.value} is not a folder (of run directories "
                             "<runs>/<recipe>/).")
    recipes.check(_RECIPES.value, runs=_RUNS.value)  # a run's name counts: load_recipe takes it
    threads = _THREADS.value or os.cpu_count()
    loaded = {recipe: load_recipe(recipe, _RUNS.value) for recipe in _RECIPES.value}
    for recipe, (model, _, _) in loaded.items():
        recipes.check_size(model, recipe, _SIZE.value)
    rows, deploy = [], []
    for recipe in _RECIPES.value:
        model, config, weights = loaded[recipe]
        seconds = time_forward(model, _SIZE.value, _REPEATS.value, _JIT.value)
        fill_seconds = time_fills(model, _SIZE.value, _REPEATS.value)
        tf_threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
        reference, source = reference_lib.lookup(recipe, _SIZE.value, "eval_fwd_s", tf_threads)
        rows.append(dict(recipe=recipe, size=_SIZE.value, params=model.count_params(),
                         seconds=seconds, fill_seconds=fill_seconds,
                         reference_seconds=reference, reference_source=source,
                         speedup=reference / seconds if reference else None))
        if not (formats or _BFLOAT16.value):
            continue
        base = dict(recipe=recipe, weights=weights, keras_seconds=seconds)
        deploy.append(dict(base, format="keras", precision="float32", seconds=seconds,
                           mean_abs_px=0.0, epe_change=0.0, bytes=None,
                           fill_seconds=fill_seconds, fill_stride=models.fill_stride(model)))
        if _BFLOAT16.value:
            half = bfloat16_copy(model, config)
            samples = export_lib.real_samples(config, "val", _PARITY.value,
                                              (_SIZE.value, _SIZE.value))
            deploy.append(dict(base, format="keras", precision="bfloat16", bytes=None,
                               seconds=time_forward(half, _SIZE.value, _REPEATS.value,
                                                    _JIT.value),
                               mean_abs_px=flow_difference(model, half, samples),
                               epe_change=None))
        if formats:
            # The .tflite files' fills on the cells export gives them at this size.
            files_model = export_lib.model_for_files(model, config, (_SIZE.value,) * 2)[0]
            tflite_fills = (time_tflite_fills(files_model, _SIZE.value, _REPEATS.value, threads)
                            if "tflite" in formats else None)
            rows_of_files, report = format_rows(model, config, _SIZE.value, formats, threads)
            for r in rows_of_files:
                # Every .tflite computes its fills in float32 (export/tflite.py).
                fills_s = tflite_fills if r["artifact"].endswith(".tflite") else None
                deploy.append(dict(base, format=r["artifact"], precision=r["precision"],
                                   bytes=r["bytes"], seconds=r["latency_s"],
                                   mean_abs_px=r["mean_abs_px"], epe_change=r["epe_change"],
                                   fill_seconds=fills_s, fill_stride=r["fill_stride"],
                                   cells_epe_change=r["keras_epe"] - report["keras_epe"]))
    print(f"{'recipe':<20}{'params':>12}{'forward s':>12}{'fills s':>10}{'share':>7}"
          f"{'reference s':>13}{'speedup':>9}  source")
    for r in rows:
        ref = f"{r['reference_seconds']:.4f}" if r["reference_seconds"] else "-"
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        share = f"{r['fill_seconds'] / r['seconds']:.0%}" if r["fill_seconds"] else "-"
        print(f"{r['recipe']:<20}{r['params']:>12,}{r['seconds']:>12.4f}"
              f"{r['fill_seconds']:>10.4f}{share:>7}{ref:>13}{speed:>9}"
              f"  {r['reference_source'] or '-'}")
    if deploy:
        print(f"\nDeployment formats at {_SIZE.value}^2, batch 1, median of {_REPEATS.value}; "
              f"LiteRT and ONNX Runtime on {threads} threads; flow difference from Keras "
              "float32 on real validation samples.")
        print(deployment_table(deploy))
    path = reference_lib.write_json(os.path.join(_OUT.value, "inference.json"), {
        "jit": _JIT.value, "threads": os.cpu_count(), "cpu": reference_lib.cpu_model(),
        "rows": rows, "deployment": deploy, "deployment_threads": threads})
    print(f"Wrote {path} and {reference_lib.write_plot(path, plot_panels(rows, deploy))}")


def plot_panels(rows, deploy):
    """The plot of the tables: forward, fills and reference seconds per recipe, then latency
    and fills per deployment format."""
    panels = [reference_lib.Panel(
        f"Forward pass, {_SIZE.value}², batch 1", [r["recipe"] for r in rows],
        {"forward s": [r["seconds"] for r in rows],
         "fills s": [r["fill_seconds"] for r in rows],
         "reference s": [r["reference_seconds"] for r in rows]}, "seconds (lower is faster)")]
    if deploy:
        panels.append(reference_lib.Panel(
            f"Deployment formats, {_SIZE.value}², batch 1",
            [f"{r['recipe']} {r['format']} {r['precision']}" for r in deploy],
            {"latency s": [r["seconds"] for r in deploy],
             "fills s": [r.get("fill_seconds") for r in deploy]}, "seconds (lower is faster)"))
    return panels


def deployment_table(deploy):
    """Markdown: one row per recipe and format; speed-up is over Keras float32. "fill px" is
    the cell size the fills run on; "EPE change" is the file's against Keras on the same
    cells, then (after +) the cells' own change against the trained cells, when they differ."""
    lines = [("| recipe | weights | format | precision | size MB | latency s | fill px | "
              "fills s (share) | vs Keras fp32 | mean abs px | EPE change |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in deploy:
        size = f"{r['bytes'] / 2**20:.1f}" if r["bytes"] else "-"
        change = "-" if r["epe_change"] is None else f"{r['epe_change']:+.4f}"
        if r.get("cells_epe_change"):
            change += f" (cells {r['cells_epe_change']:+.4f})"
        fills_s = r.get("fill_seconds")
        fills = f"{fills_s:.4f} ({fills_s / r['seconds']:.0%})" if fills_s else "-"
        lines.append(f"| {r['recipe']} | {r['weights']} | {r['format']} | {r['precision']} | "
                     f"{size} | {r['seconds']:.4f} | {r.get('fill_stride') or '-'} | {fills} | "
                     f"{r['keras_seconds'] / r['seconds']:.2f}x | "
                     f"{r['mean_abs_px']:.4f} | {change} |")
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run(main)
