r"""What coarser fill cells cost at a larger working size: a fill-correction model with its
fills on its trained cells next to the same weights on the cells `python -m export` gives
files of that size (`export_lib.model_for_files`, 'auto'), or on --fill_strides.

Exported files have a fixed size; at 384^2 the shipped model's files run their fills on 4 px
cells instead of the 2 px cells it trained on at 128^2, for half the fills' time
(benchmarks/inference.py). This scores both with `evaluate.py`'s protocol at that size:
generated scenes rendered at --size (exact flow), and clips' pairs upscaled to it (the image
bicubic, the flow resized and scaled), with the nearest fill and linear interpolation beside.

  python benchmarks/fill_cells.py [--checkpoint=cmp_tf/pretrained/default] [--size=384]
  python benchmarks/fill_cells.py --data=cmp_tf/data/samples/bikes.mp4 --pairs=16

Prints relative EPE per strategy and K (and EPE near motion boundaries) and writes
fill_cells.json and a plot of the relative EPE, fill_cells.png.
"""
import os
import sys
import tempfile

import cv2
import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reference as reference_lib  # noqa: E402
from cmp_tf import cli  # noqa: E402
from cmp_tf import rundir  # noqa: E402
from cmp_tf import runtime  # noqa: E402
from cmp_tf.apps import inputs  # noqa: E402
from cmp_tf.evaluation import baselines  # noqa: E402
from cmp_tf.evaluation import benchmark  # noqa: E402
from cmp_tf.evaluation import pairs as pairs_lib  # noqa: E402
from cmp_tf.models import cmp as cmp_models  # noqa: E402
from export import export_lib  # noqa: E402

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run directory or .keras file of a "
                                  "fill-correction model (default: the shipped one).")
_SIZE = flags.DEFINE_integer("size", 384, "Working side in px: generated scenes are rendered "
                             "at it, clips' pairs upscaled to it (a multiple of their side).")
_DATA = flags.DEFINE_string("data", pairs_lib.GENERATED, "'generated' or a clip (as "
                            "evaluate.py's --data).")
_PAIRS = flags.DEFINE_integer("pairs", 16, "Pairs scored (fixed seed).")
_KS = flags.DEFINE_list("ks", [str(k) for k in benchmark.KS], "Guidance counts K.")
_FILL_STRIDES = flags.DEFINE_list("fill_strides", [], "Fill cells (px) to score besides the "
                                  "trained ones; default those export gives files of --size.")
_OUT = cli.define_output("out", "runs/benchmarks", "Folder for fill_cells.json and .png.")


def upscaled(pairs, side):
    """Pairs resized to side x side: image bicubic, flow bilinear and scaled, valid nearest."""
    out = []
    for image, flow, valid in pairs:
        height, width = image.shape[:2]
        scale = np.array([side / width, side / height], np.float32)
        out.append((cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC),
                    cv2.resize(flow, (side, side), interpolation=cv2.INTER_LINEAR) * scale,
                    cv2.resize(valid.astype(np.uint8), (side, side),
                               interpolation=cv2.INTER_NEAREST) > 0))
    return out


def run():
    pairs_lib.check_pair_count(_PAIRS.value, allow_all=False)
    ks = inputs.counts(_KS.value, "--ks")
    fill_strides = inputs.counts(_FILL_STRIDES.value, "--fill_strides", allow_empty=True)
    # the shipped model unless named: the newest run may have another head
    model, config, path = export_lib.load_checkpoint(_CHECKPOINT.value or rundir.PRETRAINED)
    trained = cmp_models.fill_stride(model)
    if trained is None:
        raise ValueError(f"--checkpoint={path}: its head has no blend of fills "
                         f"(config.model.head={config.model.head!r}).")
    size = (_SIZE.value, _SIZE.value)
    strides = (fill_strides if fill_strides else
               [cmp_models.fill_stride_for_size(model, config, size)])
    methods = {"zero": baselines.zero, "nearest": baselines.nearest, "linear": baselines.linear,
               f"{trained} px cells (trained)": runtime.Propagator(path)}
    if _DATA.value == pairs_lib.GENERATED:
        pairs = pairs_lib.generated_pairs(_PAIRS.value, size=_SIZE.value)
    else:
        clip_pairs, _ = pairs_lib.validation_pairs(config, False, [_DATA.value], _PAIRS.value)
        pairs = upscaled(clip_pairs, _SIZE.value)
    with tempfile.TemporaryDirectory() as tmp:
        for stride in (s for s in strides if s != trained):
            saved = os.path.join(tmp, f"cells{stride}.keras")  # the runtime reads files
            export_lib.model_for_files(model, config, size, stride)[0].save(saved)
            methods[f"{stride} px cells"] = runtime.Propagator(saved)
        result = benchmark.evaluate(methods, pairs, ks=ks)
    names = [name for name in methods if name != "zero"]
    lines = ["| fill | " + " | ".join(f"{s[0]}{k}" for s in result["strategies"]
                                      for k in result["ks"]) + " | near w25 / w100 px |",
             "|---|" + "---:|" * (len(result["strategies"]) * len(result["ks"])) + "---|"]
    table = {}
    for name in names:
        rows = {(r["strategy"], r["k"]): r for r in result["rows"] if r["method"] == name}
        table[name] = {f"{s}/{k}": rows[s, k]["relative"] for s, k in rows}
        near = " / ".join(f"{rows['watershed', k]['epe_near']:.3f}"
                          for k in (25, 100) if ("watershed", k) in rows) or "-"
        lines.append(f"| {name} | " + " | ".join(
            f"{rows[s, k]['relative']:.4f}" for s in result["strategies"]
            for k in result["ks"]) + f" | {near} |")
    print(f"\n{path} at {_SIZE.value}^2, {_DATA.value}, {result['pairs']} pairs: relative EPE "
          "(w watershed, u uniform, then K)\n")
    print("\n".join(lines))
    out = reference_lib.write_json(os.path.join(_OUT.value, "fill_cells.json"), dict(
        checkpoint=path, size=_SIZE.value, data=_DATA.value, pairs=result["pairs"], table=table))
    plot = reference_lib.write_plot(out, [reference_lib.table_panel(
        f"Fills of {path} at {_SIZE.value}², {result['pairs']} pairs: relative EPE", table,
        "EPE / zero-flow EPE (lower is better)")])
    print(f"\nWrote {out} and {plot}")


main = cli.main_of(run)


if __name__ == "__main__":
    cli.run(main)
