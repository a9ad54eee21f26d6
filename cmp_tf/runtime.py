"""A trained CMP behind one call: a few arrows on a photo in, the dense motion out.

    from cmp_tf.runtime import Propagator
    flow = Propagator().propagate(image, points, vectors)  # the shipped model; or a path:
    Propagator("runs/default"), Propagator("exported/model_int8.tflite"), ...

Applications, `evaluate.py` and outside code use this, never the network directly: it checks
the guidance, resizes the image to a size the network takes (scaling the guidance with it),
builds the sparse input and scales the answer back, so every caller gets H x W x 2 flow in its
own pixels for its own H x W image. The network may be in any format `python -m export`
writes: a `.keras` file or run directory, a SavedModel folder, a `.tflite` (LiteRT) or an
`.onnx` (ONNX Runtime). Each format's runner below does one thing, run the network on float32
NHWC batches, so the resizing and scaling above exist once for all of them.
"""
import json
import os

import cv2
import numpy as np

from cmp_tf import rundir
from cmp_tf.data import sampling

BATCH = 8  # guidance sets per forward pass in propagate_batch
SIGNATURE = "serving_default"  # the serving signature of exported SavedModels and .tflite files
INPUTS, OUTPUT = ("image", "sparse"), "flow"  # the CMP's tensor names in every format (§8)
# export/ stores how a network may be fed (stride multiple, minimum side, inputs it leaves to
# the runtime) as a JSON object: ONNX metadata_props and TFLite metadata under this key, or
# this file inside a SavedModel (assets.extra/ is the SavedModel's place for such files).
METADATA_KEY = "cmp_tf"
SAVED_MODEL_METADATA = os.path.join("assets.extra", "cmp_tf.json")


def _static(dim):
    return int(dim) if isinstance(dim, (int, np.integer)) and dim > 0 else None


class KerasRunner:
    """A .keras model, called eagerly (TensorFlow's threads are per process, not per model)."""

    def __init__(self, path, threads=None):
        import keras

        from cmp_tf import models  # noqa: F401  (registers the custom layers)

        try:
            self.model = keras.models.load_model(path)
        except Exception as error:  # a corrupt or foreign file: say which
            raise ValueError(f"{path} could not be loaded as a CMP model: {error}") from error
        try:  # a Sequential model loaded from disk has no `input` until it is called
            inputs, outputs = self.model.input, self.model.output
        except AttributeError as error:
            raise ValueError(f"{path} is a Keras model but not a CMP ({error}).") from error
        inputs = inputs if isinstance(inputs, dict) else {inputs.name: inputs}
        self.inputs = {name: list(t.shape) for name, t in inputs.items()}
        self.outputs = sorted(outputs) if isinstance(outputs, dict) else ["output"]
        self.metadata = None
        if "input_guard" in [layer.name for layer in self.model.layers]:
            guard = self.model.get_layer("input_guard")
            self.metadata = {"multiple": guard.multiple, "minimum": guard.minimum}

    def __call__(self, feeds):
        out = self.model(feeds if len(feeds) > 1 else next(iter(feeds.values())), training=False)
        out = out if isinstance(out, dict) else {"output": out}
        return {name: np.asarray(value) for name, value in out.items()}


class SavedModelRunner:
    """A SavedModel folder's serving signature."""

    def __init__(self, path, threads=None):
        import tensorflow as tf

        try:
            self._fn = tf.saved_model.load(path).signatures[SIGNATURE]
        except Exception as error:
            raise ValueError(f"{path} could not be loaded as a SavedModel with a {SIGNATURE!r} "
                             f"signature: {error}") from error
        specs = self._fn.structured_input_signature[1]
        self.inputs = {name: spec.shape.as_list() for name, spec in specs.items()}
        self.outputs = sorted(self._fn.structured_outputs)
        meta = os.path.join(path, SAVED_MODEL_METADATA)
        self.metadata = None
        if os.path.isfile(meta):
            with open(meta) as f:
                self.metadata = _parse_metadata(f.read(), path)
        self._tf = tf

    def __call__(self, feeds):
        out = self._fn(**{name: self._tf.constant(value) for name, value in feeds.items()})
        return {name: value.numpy() for name, value in out.items()}


def tflite_metadata(path):
    """The METADATA_KEY entry of a .tflite file's metadata table as text, or None."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(bytearray(f.read()), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() is not None and entry.Name().decode() == METADATA_KEY:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
    return None


class TFLiteRunner:
    """A .tflite file through LiteRT. Tensors are matched by their signature names (converted
    models list inputs in any order); a model with batch 1 runs a batch one item at a time;
    other sizes are allocated with resize_tensor_input where the model allows them; integer
    inputs and outputs (full-integer models) use the model's own scale and zero point."""

    def __init__(self, path, threads=None):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interpreter = Interpreter(model_path=path, num_threads=threads)
            runner = self._interpreter.get_signature_runner(SIGNATURE)
        except Exception as error:
            raise ValueError(f"{path} could not be loaded as a TFLite model with a "
                             f"{SIGNATURE!r} signature: {error}") from error
        self._inputs, self._outputs = runner.get_input_details(), runner.get_output_details()
        self.inputs = {name: [None if d < 0 else int(d) for d in detail["shape_signature"]]
                       for name, detail in self._inputs.items()}
        self.outputs = sorted(self._outputs)
        text = tflite_metadata(path)
        self.metadata = None if text is None else _parse_metadata(text, path)
        self._allocated = None  # {name: shape} the tensors are allocated for
        self.path = path

    def __call__(self, feeds):
        count = len(next(iter(feeds.values())))
        if count > 1 and all(shape[0] == 1 for shape in self.inputs.values()):
            parts = [self({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(count)]
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        shapes = {name: tuple(value.shape) for name, value in feeds.items()}
        if shapes != self._allocated:
            for name, shape in shapes.items():
                expected = self.inputs[name]
                if len(shape) != len(expected) or any(
                        e is not None and e != s for e, s in zip(expected, shape)):
                    raise ValueError(f"{self.path} input {name!r} takes shape {expected} (None: "
                                     f"any); got {list(shape)}.")
                self._interpreter.resize_tensor_input(self._inputs[name]["index"], shape,
                                                      strict=True)
            self._interpreter.allocate_tensors()
            self._allocated = shapes
        for name, value in feeds.items():
            detail = self._inputs[name]
            self._interpreter.set_tensor(detail["index"], quantize(value, detail))
        self._interpreter.invoke()
        return {name: dequantize(self._interpreter.get_tensor(detail["index"]), detail)
                for name, detail in self._outputs.items()}


def quantize(value, detail):
    """float -> a LiteRT tensor's dtype; integer tensors by their scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return np.asarray(value, dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(value / scale + zero), info.min, info.max).astype(dtype)


def dequantize(value, detail):
    if not np.issubdtype(value.dtype, np.integer):
        return value.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((value.astype(np.float32) - zero) * scale).astype(np.float32)


class OnnxRunner:
    """An .onnx file through ONNX Runtime on the CPU."""

    def __init__(self, path, threads=None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self._session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise ValueError(f"{path} could not be loaded by ONNX Runtime: {error}") from error
        self.inputs = {i.name: [_static(d) for d in i.shape] for i in self._session.get_inputs()}
        self.outputs = sorted(o.name for o in self._session.get_outputs())
        text = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = None if text is None else _parse_metadata(text, path)

    def __call__(self, feeds):
        values = self._session.run(self.outputs, feeds)
        return dict(zip(self.outputs, values))


RUNNERS = {"keras": KerasRunner, "savedmodel": SavedModelRunner, "tflite": TFLiteRunner,
           "onnx": OnnxRunner}


def open_model(path, threads=None):
    """Any exported model (the CMP or an encoder) as a callable {name: float32 array} ->
    {name: float32 array}, with `inputs` ({name: shape, None where free}), `outputs`,
    `metadata` (export/'s JSON object or None), `path` and `format`.

    Args:
        threads: CPU threads for LiteRT and ONNX Runtime; None: their default.
    """
    path = rundir.resolve_model_path(path)
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be a positive count or None (the runtime's default); "
                         f"got {threads}.")
    runner = RUNNERS[rundir.model_format(path)](path, None if threads is None else int(threads))
    runner.path, runner.format = path, rundir.model_format(path)
    return runner


def _parse_metadata(text, path):
    try:
        meta = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path}: its {METADATA_KEY!r} metadata is not JSON ({error}).") from error
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its {METADATA_KEY!r} metadata must be a JSON object.")
    return meta


class Network:
    """The CMP in any format as (image, sparse) -> flow on float32 NHWC batches it can take.

    Attributes:
        multiple, minimum: height and width must be multiples of `multiple`, at least `minimum`.
        size: (H, W) for a fixed-size file (TFLite), else None.
    Inputs that export/ left to the runtime (the dense prior of full-integer models, whose
    jump flooding does not quantize) are computed here, with the model's own layer.
    """

    def __init__(self, path, threads=None):
        self.runner = open_model(path, threads)
        self.path, self.format = self.runner.path, self.runner.format
        meta = self.runner.metadata
        if meta is None and self.format == "keras":
            raise ValueError(f"{self.path} is a Keras model but not a CMP (no input_guard layer).")
        if meta is None:
            raise ValueError(f"{self.path} has no {METADATA_KEY!r} metadata (stride multiple, "
                             "minimum size); export it with `python -m export`, which stores it "
                             "with every format.")
        try:
            self.multiple, self.minimum = int(meta["multiple"]), int(meta["minimum"])
            self._priors = {name: dict(spec) for name, spec in meta.get("priors", {}).items()}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{self.path}: its {METADATA_KEY!r} metadata {meta} lacks "
                             f"'multiple', 'minimum' or a valid 'priors' ({error}).") from error
        expected = set(INPUTS) | set(self._priors)
        if set(self.runner.inputs) != expected or OUTPUT not in self.runner.outputs:
            raise ValueError(f"{self.path} takes {sorted(self.runner.inputs)} and returns "
                             f"{self.runner.outputs}; a CMP takes {sorted(expected)} and returns "
                             f"{OUTPUT!r}.")
        shape = self.runner.inputs["image"]
        self.size = None if None in shape[1:3] else (shape[1], shape[2])
        self._prior_fn = self._prior_layers() if self._priors else None

    def _prior_layers(self):
        import tensorflow as tf

        from cmp_tf.models import fills

        priors = {name: fills.fill_from_spec(spec, name=name)
                  for name, spec in self._priors.items()}

        @tf.function(autograph=False)  # plain tensor code: nothing for autograph to convert
        def compute(sparse):
            return {name: layer(sparse) for name, layer in priors.items()}

        return compute

    def __call__(self, image, sparse):
        feeds = {"image": image, "sparse": sparse}
        if self._prior_fn is not None:
            feeds.update({k: v.numpy() for k, v in self._prior_fn(sparse).items()})
        return self.runner(feeds)[OUTPUT]


class Propagator:
    """Sparse-to-dense motion with a trained CMP.

    Args:
        path: a run directory, a .keras, .tflite or .onnx file, or a SavedModel folder; None:
            the pretrained model that ships with cmp_tf (`rundir.PRETRAINED`).
        max_side: if > 0, images whose longer side exceeds it are shrunk for the network (and
            the flow scaled back): bounds time and memory on large photos. -1 keeps the size
            (up to rounding each side to the encoders' stride). A fixed-size file (TFLite)
            always runs at its own size.
        threads: CPU threads for LiteRT and ONNX Runtime; None: their default.
    """

    def __init__(self, path=None, max_side=-1, threads=None):
        if int(max_side) == 0 or int(max_side) < -1:
            raise ValueError(f"max_side must be -1 (full size) or positive; got {max_side}.")
        self.max_side = int(max_side)
        self._network = Network(path, threads)
        self.path, self.format = self._network.path, self._network.format
        self.multiple, self.minimum = self._network.multiple, self._network.minimum

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
            flows.append(self._network(images, chunk))
        flow = np.concatenate(flows).astype(np.float32)
        if (work_h, work_w) != (height, width):
            flow = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)
                             for f in flow]) / scale
        return flow.astype(np.float32)

    def working_size(self, height, width):
        """The size the network runs at for an H x W image: a fixed-size file's own size, else
        within max_side, each side rounded to the nearest multiple of the encoders' stride, at
        least the model's minimum."""
        if self._network.size is not None:
            return self._network.size
        scale = 1.0
        if self.max_side > 0 and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)

        def fit(side):
            return max(self.minimum, self.multiple,
                       int(round(side * scale / self.multiple)) * self.multiple)

        return fit(height), fit(width)
