"""Dense motion from a few arrows with an exported CMP `.tflite` file and nothing of cmp_tf:
LiteRT's interpreter and NumPy only, as a phone app would call it.

    python docs/examples/tflite_plain.py exported/model.tflite

The file takes two float32 tensors at its own size H x W (batch 1, NHWC):
  image  [1, H, W, 3]  RGB, 0..255 (the model normalizes it itself);
  sparse [1, H, W, 3]  (u, v, mask): at each guided pixel the motion in pixels and mask 1,
                       zeros everywhere else;
and returns flow [1, H, W, 2] (u, v) in pixels at that size. The guidance fills are computed
inside the file. A photo of another size is scaled to fit inside H x W first, its aspect
kept and the rest padded, its arrows' positions and vectors scaled by the same factor, and the
flow of its part scaled back: as `cmp_tf.runtime.Propagator` runs such a file, to within
the resize (bilinear here; the Propagator averages areas when it shrinks a photo).
"""
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def to_tensor(value, detail):
    """float32 -> the input's dtype (integer inputs by their scale and zero point)."""
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return value.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(value / scale + zero), info.min, info.max).astype(dtype)


def resize_bilinear(array, height, width):
    """H x W x C -> height x width x C, bilinear between pixel centres, as OpenCV's
    INTER_LINEAR (NumPy only)."""

    def taps(out, size):
        at = np.clip((np.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)
        low = np.floor(at).astype(int)
        return low, np.minimum(low + 1, size - 1), (at - low).astype(np.float32)

    row0, row1, down = taps(height, array.shape[0])
    col0, col1, right = taps(width, array.shape[1])
    array = array.astype(np.float32)
    rows = array[row0] * (1 - down)[:, None, None] + array[row1] * down[:, None, None]
    return rows[:, col0] * (1 - right)[None, :, None] + rows[:, col1] * right[None, :, None]


def propagate(path, image, points, vectors):
    """image uint8 h x w x 3 RGB, points K x 2 (x, y) px, vectors K x 2 (u, v) px -> flow
    float32 h x w x 2 (u, v) px."""
    runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    inputs = runner.get_input_details()
    _, height, width, _ = inputs["image"]["shape"]
    # 1. The photo scaled to fit inside H x W, its aspect kept; the rest repeats its edge.
    fit = min(height / image.shape[0], width / image.shape[1])
    fit_h = min(height, max(1, round(image.shape[0] * fit)))
    fit_w = min(width, max(1, round(image.shape[1] * fit)))
    scale = np.array([fit_w / image.shape[1], fit_h / image.shape[0]], np.float32)  # (x, y)
    work = np.pad(resize_bilinear(image, fit_h, fit_w),
                  ((0, height - fit_h), (0, width - fit_w), (0, 0)), mode="edge")
    # 2. The arrows at the same scale.
    sparse = np.zeros((height, width, 3), np.float32)
    centre = (np.array([fit_w, fit_h]) - 1) / 2
    for (x, y), uv in zip(np.asarray(points, np.float32), np.asarray(vectors, np.float32)):
        pixel = np.floor(np.array([x, y]) + 0.5)  # the pixel the point is on, halves up
        at = (pixel + 0.5) * [fit_w / image.shape[1], fit_h / image.shape[0]] - 0.5
        nearest = np.where(at <= centre, np.floor(at + 0.5), np.ceil(at - 0.5))  # halves inwards
        col, row = np.clip(nearest, 0, [fit_w - 1, fit_h - 1]).astype(int)
        sparse[row, col] = [*(uv * scale), 1.0]
    # 3. The flow of the photo's part, at the photo's size.
    out = runner(image=to_tensor(work[None], inputs["image"]),
                 sparse=to_tensor(sparse[None], inputs["sparse"]))
    detail = runner.get_output_details()["flow"]
    flow = out["flow"][0].astype(np.float32)
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        flow = (flow - detail["quantization"][1]) * detail["quantization"][0]
    return resize_bilinear(flow[:fit_h, :fit_w], *image.shape[:2]) / scale


def main(path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)  # any RGB photo, any size
    points = np.array([[20, 10], [100, 70]], np.float32)  # (x, y) px
    vectors = np.array([[6, -4], [0, 0]], np.float32)  # (u, v) px: a push and a pin
    flow = propagate(path, image, points, vectors)
    arrow, pin = (flow[y, x].astype(float).round(2).tolist() for x, y in points.astype(int))
    print(f"flow {flow.shape}, at the arrow (20, 10): {arrow}, at the pin (100, 70): {pin}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} model.tflite")
    try:
        main(sys.argv[1])
    except ValueError as error:  # LiteRT's words for a missing file or one that is not a model
        sys.exit(f"{sys.argv[1]}: {error}")
