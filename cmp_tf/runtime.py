"""A trained CMP behind one call: a few arrows on a photo in, the dense motion out.

    from cmp_tf.runtime import Propagator
    flow = Propagator("runs/default").propagate(image, points, vectors)

Applications, `evaluate.py` and outside code use this, never the Keras model directly: it
checks the guidance, resizes the image to a size the network takes (scaling the guidance with
it), builds the sparse input and scales the answer back, so every caller gets H x W x 2 flow
in its own pixels for its own H x W image.
"""
import os

import cv2
import numpy as np

from cmp_tf.data import sampling

MODEL_FILE = "model.keras"  # a run directory's whole model (DESIGN.md §8)
BATCH = 8  # guidance sets per forward pass in propagate_batch


def resolve_model_path(path):
    """A run directory or a .keras file -> the .keras file; ValueError naming `path` otherwise."""
    if path is None:
        raise ValueError("path=None asks for the pretrained model that ships with cmp_tf; none "
                         "ships yet: pass a run directory (runs/<recipe>) or a .keras file.")
    path = os.fspath(path)
    if os.path.isdir(path):
        candidate = os.path.join(path, MODEL_FILE)
        if os.path.isfile(candidate):
            return candidate
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"{path} is a SavedModel: exported formats (SavedModel, .tflite, "
                             ".onnx) load once cmp_tf.runtime has their backends (issue 7); "
                             "pass the run directory or its model.keras.")
        raise ValueError(f"{path} is a directory without {MODEL_FILE}: not a finished run "
                         "directory (train.py writes it at the end).")
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: expected a run directory or a .keras file.")
    if not path.endswith(".keras"):
        raise ValueError(f"{path}: expected a .keras file or a run directory; .tflite, .onnx "
                         "and SavedModel load once cmp_tf.runtime has their backends (issue 7).")
    return path


class Propagator:
    """Sparse-to-dense motion with a trained CMP.

    Args:
        path: a run directory or a .keras file.
        max_side: if > 0, images whose longer side exceeds it are shrunk for the network (and
            the flow scaled back): bounds time and memory on large photos. -1 keeps the size
            (up to rounding each side to the encoders' stride).
    """

    def __init__(self, path, max_side=-1):
        import keras

        from cmp_tf import models  # noqa: F401  (registers the custom layers)

        self.path = resolve_model_path(path)
        try:
            self._model = keras.models.load_model(self.path)
        except Exception as error:  # a corrupt or foreign file: say which
            raise ValueError(f"{self.path} could not be loaded as a CMP model: {error}") from error
        if "input_guard" not in [layer.name for layer in self._model.layers]:
            raise ValueError(f"{self.path} is a Keras model but not a CMP (no input_guard layer).")
        guard = self._model.get_layer("input_guard")
        self.multiple, self.minimum = guard.multiple, guard.minimum
        if int(max_side) == 0 or int(max_side) < -1:
            raise ValueError(f"max_side must be -1 (full size) or positive; got {max_side}.")
        self.max_side = int(max_side)

    def __repr__(self):
        return f"Propagator({self.path!r}, max_side={self.max_side})"

    def propagate(self, image, points, vectors):
        """image uint8 H x W x 3 RGB, points K x 2 (x, y) px, vectors K x 2 (u, v) px ->
        flow float32 H x W x 2."""
        return self.propagate_batch(image, [(points, vectors)])[0]

    def propagate_batch(self, image, guidance):
        """Several guidance sets [(points, vectors), ...] on one image -> N x H x W x 2."""
        if not len(guidance):
            raise ValueError("guidance must hold at least one (points, vectors) pair; got none.")
        checked = [sampling.check_guidance(image, p, v) for p, v in guidance]
        image = checked[0][0]
        height, width = image.shape[:2]
        work_h, work_w = self.working_size(height, width)
        scale = np.array([work_w / width, work_h / height], np.float32)  # (x, y)
        work = image if (work_h, work_w) == (height, width) else cv2.resize(
            image, (work_w, work_h), interpolation=cv2.INTER_AREA if scale.max() < 1
            else cv2.INTER_LINEAR)
        sparse = []
        for _, points, vectors in checked:
            # Pixel centres map as OpenCV's resize maps them.
            xy = np.clip(np.rint((points + 0.5) * scale - 0.5), 0, [work_w - 1, work_h - 1])
            sparse.append(sampling.sparse_from_points(xy, vectors * scale, work_h, work_w))
        flows = []
        for start in range(0, len(sparse), BATCH):
            chunk = np.stack(sparse[start:start + BATCH])
            images = np.repeat(work[None].astype(np.float32), len(chunk), axis=0)
            out = self._model({"image": images, "sparse": chunk}, training=False)["flow"]
            flows.append(np.asarray(out))
        flow = np.concatenate(flows).astype(np.float32)
        if (work_h, work_w) != (height, width):
            flow = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)
                             for f in flow]) / scale
        return flow.astype(np.float32)

    def working_size(self, height, width):
        """The size the network runs at for an H x W image: within max_side, each side rounded
        to the nearest multiple of the encoders' stride, at least the model's minimum."""
        scale = 1.0
        if self.max_side > 0 and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)

        def fit(side):
            return max(self.minimum, self.multiple,
                       int(round(side * scale / self.multiple)) * self.multiple)

        return fit(height), fit(width)
