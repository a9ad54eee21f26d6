"""Propagation accuracy: end-point error of the dense flow a model spreads from a few vectors,
next to the fills a user would otherwise use on the same points.
"""
import keras
import numpy as np

from cmp_tf import flow as flow_lib
from cmp_tf import models  # noqa: F401  (registers the layers a saved model needs)
from cmp_tf.data import sampling
from cmp_tf.data import synthetic
from cmp_tf.models import layers


def nearest_fill(sparse):
    """[H, W, 3] guidance -> [H, W, 2] flow of the nearest guide (zero without guidance)."""
    return layers.DensePrior(1)(sparse[None]).numpy()[0, ..., :2]


def synthetic_propagation(model, scenes=8, points=10, size=128, seed=0):
    """Mean EPE on generated moving-square scenes with `points` uniform guides each.

    `model` is a CMP keras.Model or the path of a saved one.

    Returns:
        {"cmp": EPE of the model, "zero": of zero flow, "nearest": of the nearest fill}.
    """
    if not isinstance(model, keras.Model):
        model = keras.models.load_model(model)
    rng = np.random.default_rng(seed)
    errors = {"cmp": [], "zero": [], "nearest": []}
    for scene in range(scenes):
        background, square = rng.integers(-4, 5, 2), rng.integers(-8, 9, 2)
        image, _, flow = synthetic.moving_square(size, size // 2, tuple(background),
                                                 tuple(square), seed=seed + scene)
        xy = sampling.uniform_points(size, size, points, rng)
        sparse = sampling.sparse_from_points(xy, flow[xy[:, 1].astype(int), xy[:, 0].astype(int)],
                                             size, size)
        pred = model({"image": image[None].astype(np.float32), "sparse": sparse[None]})["flow"]
        errors["cmp"].append(flow_lib.endpoint_error(np.asarray(pred)[0], flow))
        errors["zero"].append(flow_lib.endpoint_error(np.zeros_like(flow), flow))
        errors["nearest"].append(flow_lib.endpoint_error(nearest_fill(sparse), flow))
    return {method: float(np.mean(values)) for method, values in errors.items()}


def evaluate_dataset(model, dataset):
    """End-point error of `model` on a pipeline's batches, next to the zero and nearest fills
    on the same guidance, over valid pixels.

    Returns:
        {"epe": {"cmp", "zero", "nearest"} in px, "relative": cmp / each fill, "samples",
         "guidance_points_per_sample"}.
    """
    sums = {"cmp": 0.0, "zero": 0.0, "nearest": 0.0}
    pixels = samples = points = 0.0
    fill = layers.DensePrior(1)
    for x, y in dataset:
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
    epe = {method: total / max(pixels, 1.0) for method, total in sums.items()}
    return dict(epe=epe, relative={f"to_{m}": epe["cmp"] / max(epe[m], 1e-9)
                                   for m in ("zero", "nearest")},
                samples=int(samples), guidance_points_per_sample=points / samples)
