"""The validation check training ends with: end-point error of the model on the pipeline's own
guidance, next to the zero and nearest fills of the same points. The full protocol (K points,
every baseline) is `benchmark`.
"""
import numpy as np

from cmp_tf import models  # noqa: F401  (registers the layers a saved model needs)
from cmp_tf.data import pipeline
from cmp_tf.models import fills


def evaluate_dataset(model, dataset, progress=False, total=None):
    """End-point error of `model` on a pipeline's batches, next to the zero and nearest fills
    on the same guidance, over valid pixels; with `progress`, a bar over the batches (`total`
    of them, when known: a bar with an ETA).

    Returns:
        {"epe": {"cmp", "zero", "nearest"} in px, "relative": cmp / each fill, "samples",
         "guidance_points_per_sample"}.
    """
    from cmp_tf import progress as progress_lib

    sums = {"cmp": 0.0, "zero": 0.0, "nearest": 0.0}
    pixels = samples = points = 0.0
    fill = fills.DensePrior(1)
    for x, y in progress_lib.bar(pipeline.batches(dataset), desc="validation", unit="batch",
                                 total=total, disable=not progress):
        flow, valid = y["flow"].numpy(), y["valid"].numpy()
        candidates = {"cmp": model(x, training=False)["flow"].numpy(),
                      "zero": np.zeros_like(flow),
                      "nearest": fill(x["sparse"]).numpy()[..., :2]}
        for method, pred in candidates.items():
            sums[method] += float((np.linalg.norm(pred - flow, axis=-1) * valid).sum())
        pixels += float(valid.sum())
        samples += len(flow)
        points += float(x["sparse"][..., 2].numpy().sum())
    if not samples:
        raise ValueError("The evaluation dataset is empty.")
    if not pixels:  # every EPE would read 0, the model "as good as" every fill
        raise ValueError(f"The evaluation dataset's {int(samples)} samples have no valid flow "
                         "pixel: nothing to score (a teacher that failed on every pair?).")
    epe = {method: total / max(pixels, 1.0) for method, total in sums.items()}
    return dict(epe=epe, relative={f"to_{m}": epe["cmp"] / max(epe[m], 1e-9)
                                   for m in ("zero", "nearest")},
                samples=int(samples), guidance_points_per_sample=points / samples)
