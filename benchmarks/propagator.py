r"""What one `Propagator.propagate` call costs: the runtime's whole path (the image resized, the
sparse map built, the network, the flow scaled back) for each model, and, for a Keras model,
the same path with the network called eagerly, layer by layer, as the runtime once did
instead of running the graph it traces (`runners.KerasRunner`).

  python benchmarks/propagator.py [--models=cmp_tf/pretrained/default,exported/model.tflite]
      [--sizes=128x128,384x512] [--guides=25] [--repeats=10] [--threads=2]

Prints the median seconds per call after a first, untimed one (whose time, the trace, is
printed too) and writes propagator.json and a plot of them, propagator.png.
"""
import os
import sys
import time

import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reference as reference_lib  # noqa: E402
from cmp_tf import cli  # noqa: E402
from cmp_tf import runtime  # noqa: E402

_MODELS = flags.DEFINE_list("models", ["cmp_tf/pretrained/default"], "Models (a run directory, "
                            ".keras, .tflite or .onnx file, a SavedModel folder).")
_SIZES = flags.DEFINE_list("sizes", ["128x128", "384x512"], "Image sizes HxW, px.")
_GUIDES = flags.DEFINE_integer("guides", 25, "Guidance points per call.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per model and size.")
_THREADS = flags.DEFINE_integer("threads", None, "LiteRT / ONNX Runtime threads (default "
                                "theirs).")
_OUT = cli.define_output("out", "runs/benchmarks", "Folder for propagator.json and .png.")


def parse_size(text):
    """'HxW' -> (H, W); ValueError naming --sizes otherwise."""
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        height = width = 0
    if height < 1 or width < 1:
        raise ValueError(f"--sizes: expected HxW in px, e.g. 384x512; got {text!r}.")
    return height, width


def load_models(paths, threads):
    """{path: Propagator} of every --models entry, all loaded before any is timed: a missing or
    unreadable one is named (with the flag) before the others' minutes are spent."""
    if not paths:
        raise ValueError("--models: expected at least one model; got none.")
    propagators = {}
    for path in paths:
        try:
            propagators[path] = runtime.Propagator(path, threads=threads)
        except ValueError as error:
            raise ValueError(f"--models: {error}") from error
    return propagators


def eager(propagator):
    """`propagator` with its Keras network called eagerly instead of through its traced graph."""
    runner = propagator._network.runner
    runner._forward = lambda feeds: runner.model(feeds, training=False)
    return propagator


def time_calls(propagator, size, guides, repeats, seed=0):
    """(first call s, median of `repeats` later calls s) on a random image of `size`."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    points = rng.uniform(0, [width - 1, height - 1], (guides, 2)).astype(np.float32)
    vectors = rng.normal(0, 3, (guides, 2)).astype(np.float32)
    start = time.perf_counter()
    propagator.propagate(image, points, vectors)
    first = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        propagator.propagate(image, points, vectors)
        seconds.append(time.perf_counter() - start)
    return first, float(np.median(seconds))


def run():
    if _REPEATS.value < 1 or _GUIDES.value < 1:
        raise ValueError(f"--repeats and --guides must be positive; got {_REPEATS.value} and "
                         f"{_GUIDES.value}.")
    sizes = [parse_size(text) for text in _SIZES.value]
    propagators = load_models(_MODELS.value, _THREADS.value)
    rows = []
    for path, loaded in propagators.items():
        variants = [("runtime", loaded)]
        if variants[0][1].format == "keras":
            variants.append(("eager", eager(runtime.Propagator(path))))
        for mode, propagator in variants:
            for size in sizes:
                first, median = time_calls(propagator, size, _GUIDES.value, _REPEATS.value)
                rows.append(dict(model=path, format=propagator.format, mode=mode,
                                 size=list(size), working_size=list(propagator.working_size(
                                     *size)), first_seconds=first, seconds=median))
                print(f"{path} {propagator.format} {mode} {size[0]}x{size[1]}: "
                      f"{median:.4f} s (first call {first:.2f} s)", flush=True)
    lines = ["| model | format | run | image | works at | s per call | first call s |",
             "|---|---|---|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['format']} | {r['mode']} | {r['size'][0]}x"
                     f"{r['size'][1]} | {r['working_size'][0]}x{r['working_size'][1]} | "
                     f"{r['seconds']:.4f} | {r['first_seconds']:.2f} |")
    print(f"\nPropagator.propagate, {_GUIDES.value} guides, median of {_REPEATS.value} calls "
          f"({reference_lib.cpu_model()}, {os.cpu_count()} cores)\n")
    print("\n".join(lines))
    out = reference_lib.write_json(os.path.join(_OUT.value, "propagator.json"), dict(
        cpu=reference_lib.cpu_model(), cores=os.cpu_count(), threads=_THREADS.value,
        guides=_GUIDES.value, repeats=_REPEATS.value, rows=rows))
    print(f"\nWrote {out} and {reference_lib.write_plot(out, [plot_panel(rows)])}")


def plot_panel(rows):
    """Seconds per call for each model and image size, a bar per way of running it."""
    def key(r):
        return f"{r['model']} ({r['format']}) {r['size'][0]}x{r['size'][1]}"

    labels = list(dict.fromkeys(map(key, rows)))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    seconds = {(key(r), r["mode"]): r["seconds"] for r in rows}
    return reference_lib.Panel(
        f"Propagator.propagate, {_GUIDES.value} guides, median of {_REPEATS.value} calls",
        labels, {mode: [seconds.get((label, mode)) for label in labels] for mode in modes},
        "seconds per call (lower is faster)")


main = cli.main_of(run)


if __name__ == "__main__":
    cli.run(main)
