r"""Which part of a fill-correction model's read-out (`model.head=fill_correction`) earns its
score.

The read-out is gain x (w x nearest + (1 - w) x smooth) [+ correction], every term predicted
per pixel (heads.BlendFills). This scores the trained model next to the same read-out with parts
replaced by their untrained value (w = 1/2, the gain's starting reach, correction 0) or
dropped (no gain), with `evaluate.py`'s
protocol on the same pairs, so a part that learned nothing, or something that does not carry
to unseen frames, shows as a row equal to or better than the full model.

  python benchmarks/blend_parts.py [--checkpoint=cmp_tf/pretrained/default] [--pairs=32]
  python benchmarks/blend_parts.py --data=generated      # or clips, shards, as evaluate.py

Prints relative EPE per strategy and K and writes blend_parts.json and a plot
of it, blend_parts.png.
"""
import functools
import os
import sys

import keras
import numpy as np
import tensorflow as tf
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reference as reference_lib  # noqa: E402
from cmp_tf import cli  # noqa: E402
from cmp_tf import rundir  # noqa: E402
from cmp_tf.data import sampling  # noqa: E402
from cmp_tf.evaluation import baselines  # noqa: E402
from cmp_tf.evaluation import benchmark  # noqa: E402
from cmp_tf.evaluation import pairs as pairs_lib  # noqa: E402
from cmp_tf.models import heads as heads_lib  # noqa: E402

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run directory or .keras file of a blend "
                                  "model (default: the shipped one).")
_PAIRS = flags.DEFINE_integer("pairs", 32, "Validation pairs scored (fixed seed).")
_DATA = flags.DEFINE_list("data", [], "Pairs scored, as evaluate.py's --data: videos, shard "
                          "folders, list files, or 'generated'. Default: the run's validation "
                          "data.")
_OUT = cli.define_output("out", "runs/benchmarks", "Folder for blend_parts.json and .png.")

# name -> (blend weight: True (learned) | False (1/2, untrained) | "smooth" (the smooth fill
# alone), gain: "learned" | "start" (its untrained reach) | "none", learned correction?); an
# unlearned correction is 0.
PARTS = {"full model": (True, "learned", True), "no correction": (True, "learned", False),
         "smooth fill x learned gain": ("smooth", "learned", False),
         "weight 1/2": (False, "learned", True),
         "weight 1/2, no correction": (False, "learned", False),
         "untrained gain": (True, "start", True), "no gain": (True, "none", True),
         "fills x untrained gain (weight 1/2)": (False, "start", False),
         "fills only (weight 1/2)": (False, "none", False)}
_SMOOTH_ONLY_LOGIT = -100.0  # the blend weight's logit for "smooth": sigmoid 0 in float32


def _read_out(head, nearest, smooth, parts, blend):
    """`heads.BlendFills` with the parts not in `parts` at their untrained value."""
    learned_weight, gain, learned_correction = parts
    head = np.array(head)
    weight = 2 * blend.correction  # the weight's channel, after the correction if any
    if learned_weight is False:
        head[..., weight] = 0.0  # sigmoid(0) = 1/2
    elif learned_weight == "smooth":
        head[..., weight] = _SMOOTH_ONLY_LOGIT
    if not learned_correction and blend.correction:
        head[..., :2] = 0.0
    if gain == "start" and blend.gain:
        head[..., blend.channels - 1] = 0.0
    if gain == "none" and blend.gain:
        head = head[..., :-1]
    return _blend_layer(blend.gain and gain != "none", blend.stride, blend.correction)(
        [tf.constant(head), nearest, smooth])


def parts_of(blend):
    """The part sets worth scoring: without a free correction in the model, the rows that
    differ only in it are one."""
    if blend.correction:
        return dict(PARTS)
    parts = {}
    for name, (weight, gain, _) in PARTS.items():
        if (weight, gain, False) not in parts.values():
            parts[name] = (weight, gain, False)
    return parts


@functools.cache
def _blend_layer(gain, stride, correction):
    """One read-out layer per setting: `_read_out` runs per pair, K and part set."""
    return heads_lib.BlendFills(gain, stride, correction=correction)


def run():
    pairs_lib.check_pair_count(_PAIRS.value)
    path = rundir.resolve_model_path(_CHECKPOINT.value)
    if rundir.model_format(path) != "keras":
        raise ValueError(f"--checkpoint={path}: a run directory or a .keras file is needed.")
    model = keras.models.load_model(path)
    try:
        blend = model.get_layer("add_prior")
    except ValueError:
        blend = None
    if not isinstance(blend, heads_lib.BlendFills):
        raise ValueError(f"--checkpoint={path}: not a fill-correction model (config.model.head="
                         "fill_correction); nothing to take apart.")
    parts_model = keras.Model(model.inputs, blend.input)

    cache = {}  # the head's outputs per guidance set of the current image, for every read-out

    def heads(image, points, vectors):
        image, points, vectors = sampling.check_guidance(image, points, vectors)
        if cache.get("image") != image.tobytes():
            cache.clear()
            cache["image"] = image.tobytes()
        key = (points.tobytes(), vectors.tobytes())
        if key not in cache:
            sparse = sampling.sparse_from_points(points, vectors, *image.shape[:2])
            cache[key] = parts_model({"image": tf.constant(image[None], tf.float32),
                                      "sparse": tf.constant(sparse[None], tf.float32)})
        return cache[key]

    def method(parts):
        def propagate(image, points, vectors):
            flow = _read_out(*heads(image, points, vectors), parts, blend)
            return tf.image.resize(flow, image.shape[:2]).numpy()[0]
        return propagate

    pairs, _ = pairs_lib.scored_pairs(*rundir.read_config(path), _DATA.value, _PAIRS.value)
    methods = {"zero": baselines.zero, **{name: method(p) for name, p in parts_of(blend).items()},
               "linear": baselines.linear}
    result = benchmark.evaluate(methods, pairs)
    table = {}
    lines = ["| read-out | " + " | ".join(f"{s[0]}{k}" for s in result["strategies"]
                                         for k in result["ks"]) + " |",
             "|---|" + "---:|" * len(result["strategies"]) * len(result["ks"])]
    for name in methods:
        if name == "zero":
            continue
        rel = {f"{r['strategy']}/{r['k']}": r["relative"] for r in result["rows"]
               if r["method"] == name}
        table[name] = rel
        lines.append(f"| {name} | " + " | ".join(
            f"{rel[f'{s}/{k}']:.3f}" for s in result["strategies"] for k in result["ks"]) + " |")
    print(f"\n{path}, {result['pairs']} pairs: relative EPE (w watershed, u uniform, then K)\n")
    print("\n".join(lines))
    out = reference_lib.write_json(os.path.join(_OUT.value, "blend_parts.json"), dict(
        checkpoint=path, data=_DATA.value, pairs=result["pairs"], table=table))
    plot = reference_lib.write_plot(out, [reference_lib.table_panel(
        f"Read-outs of {path}, {result['pairs']} pairs: relative EPE", table,
        "EPE / zero-flow EPE (lower is better)")])
    print(f"\nWrote {out} and {plot}")


main = cli.main_of(run)


if __name__ == "__main__":
    cli.run(main)
