"""Exported CMP files run as one callable each: the format runners behind `cmp_tf.runtime`.

Each runner loads one format `python -m export` writes (a `.keras` file, a SavedModel folder, a
`.tflite` for LiteRT, an `.onnx` for ONNX Runtime) and does one thing: run the network on
float32 NHWC batches of named inputs. What a CMP needs around that (sizes, guidance, scaling)
lives once in `runtime`. The metadata constants here are the contract with `export/`.
"""
import importlib
import json
import os
import sys
import threading
import zipfile

import numpy as np

from cmp_tf import extras
from cmp_tf import rundir

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
    """A .keras model, its forward pass traced once into a TensorFlow graph with free batch and
    image sizes (the same output as an eager call, several times faster: the shipped model on
    one 384 x 512 image 0.03 s against 0.30 s on 2 cores), so no image size retraces it.
    `threads` is unused: TensorFlow's threads are per process, not per model."""

    def __init__(self, path, threads=None):
        from cmp_tf import models  # registers the custom layers

        self.model = self._load(path)
        try:  # a Sequential model loaded from disk has no `input` until it is called
            inputs, outputs = self.model.input, self.model.output
        except AttributeError as error:
            raise ValueError(f"{path} is a Keras model but not a CMP ({error}).") from error
        inputs = inputs if isinstance(inputs, dict) else {inputs.name: inputs}
        self.inputs = {name: list(t.shape) for name, t in inputs.items()}
        self.outputs = sorted(outputs) if isinstance(outputs, dict) else ["output"]
        self.metadata, self._guard = None, None
        if "input_guard" in [layer.name for layer in self.model.layers]:
            self._guard = self.model.get_layer("input_guard")
            self.metadata = {"multiple": self._guard.multiple, "minimum": self._guard.minimum,
                             "maximum": models.traced_max_side(self.model)}
        self._forward = None  # the traced forward pass, made at the first call
        self._pid = os.getpid()

    def __call__(self, feeds):
        _check_process(self._pid, getattr(self, "path", "this model"))
        feeds = {name: np.asarray(value, np.float32) for name, value in feeds.items()}
        if self._guard is not None:  # the graph takes any size: refuse one the CMP cannot
            self._guard.check_sizes(feeds["image"].shape, feeds["sparse"].shape)
        if self._forward is None:
            self._forward = self._trace()
        out = self._forward(feeds)
        return {name: value.numpy() for name, value in out.items()}

    @staticmethod
    def _load(path):
        import keras

        if os.path.isfile(path) and not zipfile.is_zipfile(path):  # Keras says "not found"
            raise ValueError(f"{path} is not a .keras file: a .keras file is a zip archive, and "
                             f"this one ({os.path.getsize(path)} bytes) is empty, truncated or "
                             "of another kind.")
        try:
            model = keras.models.load_model(path)
        except Exception as error:  # a corrupt or foreign file: say which
            raise ValueError(f"{path} could not be loaded as a CMP model: {error}") from error
        return KerasRunner._in_float32(model, path)

    @staticmethod
    def _in_float32(model, path):
        """A run's model saved in mixed precision (as runs of earlier versions were) is read
        in float32, rebuilt from the run's recipe (`models.in_float32`)."""
        from cmp_tf import models

        if models.computes_in_float32(model):
            return model
        try:
            config, found = rundir.read_config(path)
            return models.in_float32(model, config) if found else model
        except ValueError:  # a config.json of another kind or recipe beside it: as saved
            return model

    def retrace(self):
        """Forgets the traced pass, so a change to the model's Python state (a switched fade,
        `runtime.Network.set_fade`) takes effect at the next call."""
        self._forward = None

    def _trace(self):
        import tensorflow as tf

        specs = {name: tf.TensorSpec([None] * (len(shape) - 1) + [shape[-1]], tf.float32)
                 for name, shape in self.inputs.items()}
        model = self.model

        @tf.function(input_signature=[specs])
        def forward(feeds):
            out = model(feeds if len(feeds) > 1 else next(iter(feeds.values())), training=False)
            return out if isinstance(out, dict) else {"output": out}

        return forward


class UnreadableCheckpoint(ValueError):
    """A training checkpoint whose files do not restore into its run's recipe."""


class CheckpointRunner(KerasRunner):
    """A training checkpoint of a run (`run/checkpoints/ckpt-500`): the recipe in the run's
    config.json built and the checkpoint's weights restored into it, so a run can be scored
    and tried before it ends."""

    @staticmethod
    def _load(path):
        import tensorflow as tf

        from cmp_tf import models

        config, found = rundir.read_config(path)
        if not found:
            raise ValueError(f"Checkpoint {path}: its run folder holds no {rundir.CONFIG_FILE} "
                             "(the recipe to build it from).")
        model = models.build_cmp(config)
        try:
            tf.train.Checkpoint(model=model).read(path).expect_partial() \
                .assert_existing_objects_matched()
        except Exception as error:  # noqa: BLE001  a corrupt file, or another recipe's
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UnreadableCheckpoint(f"Checkpoint {path} could not be restored into its "
                                       f"run's recipe: {reason[:300]}") from error
        return model


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
        self._pid, self._path = os.getpid(), path

    def __call__(self, feeds):
        _check_process(self._pid, self._path)
        out = self._fn(**{name: self._tf.constant(value) for name, value in feeds.items()})
        return {name: value.numpy() for name, value in out.items()}


def _check_process(loaded_in, path):
    """TensorFlow's runtime does not survive fork(): a model loaded before it (a DataLoader's
    fork-started workers) would wait for ever in the child; refused at once instead."""
    if os.getpid() != loaded_in:
        raise RuntimeError(f"{path} was loaded by process {loaded_in}, before this one was "
                           "forked from it, and TensorFlow cannot run it here: load the "
                           "Propagator inside each worker process, start the workers with the "
                           "'spawn' method, or use an exported .onnx or .tflite file.")


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
        # One interpreter holds its tensors between set and get: calls from several threads
        # take turns (ONNX Runtime's sessions and TensorFlow's graphs are safe as they are).
        self._lock = threading.RLock()

    def __call__(self, feeds):
        with self._lock:
            return self._run(feeds)

    def _run(self, feeds):
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
           "onnx": OnnxRunner, "checkpoint": CheckpointRunner}


def open_model(path, threads=None):
    """Any exported model (the CMP or an encoder), or a run's training checkpoint, as a
    callable {name: float32 array} -> {name: float32 array}, with `inputs` ({name: shape, None
    where free}), `outputs`, `metadata` (export/'s JSON object or None), `path` and `format`.

    Args:
        threads: CPU threads for LiteRT and ONNX Runtime; None: their default.
    """
    named, path = path, rundir.resolve_model_path(path, checkpoints=True)
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be a positive count or None (the runtime's default); "
                         f"got {threads}.")
    if rundir.model_format(path) in ("keras", "savedmodel", "checkpoint"):
        _check_tensorflow(path)
    if rundir.model_format(path) == "checkpoint" and not rundir.names_checkpoint(named):
        runner = _newest_readable(path)  # chosen for the user: one that reads back
    else:
        runner = RUNNERS[rundir.model_format(path)](path, None if threads is None
                                                    else int(threads))
        runner.path = path
    runner.format = rundir.model_format(runner.path)
    return runner


def _newest_readable(newest):
    """A run's newest training checkpoint that reads back, from `newest` down: a corrupt one (a
    crash or a full disk mid-save) falls back to the one before, with a warning naming both, as
    resuming training does; nothing on disk is changed. ValueError if none reads back."""
    steps = rundir.checkpoints_in(os.path.dirname(newest))
    kept = [steps[s] for s in sorted(steps, reverse=True) if s <= rundir.checkpoint_step(newest)]
    failures = []
    for prefix in kept:
        try:
            runner = CheckpointRunner(prefix)
        except UnreadableCheckpoint as error:
            failures.append(error)
            continue
        if failures:
            print(f"WARNING: {failures[0]} Reading the newest one that reads back instead, "
                  f"{prefix}.", file=sys.stderr)
        runner.path = prefix
        return runner
    if len(failures) == 1:
        raise failures[0]
    raise ValueError(f"{failures[0]} Nor could the {len(failures) - 1} before it: "
                     f"{', '.join(os.path.basename(p) for p in kept[1:])}.") from failures[0]


def _check_tensorflow(path):
    """A Keras model, SavedModel or checkpoint needs TensorFlow and Keras, which the lite
    install (`cmp_tf[lite]`) leaves out: said in one line, with what that install runs."""
    try:
        for name in ("tensorflow", "keras"):
            importlib.import_module(name)
    except ImportError as error:
        raise ValueError(extras.missing_line(
            path, error, "this install runs exported .tflite and .onnx files: pass one (the "
            "apps' --model; python -m export writes them)", extra="train")) from error


def _parse_metadata(text, path):
    try:
        meta = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path}: its {METADATA_KEY!r} metadata is not JSON ({error}).") from error
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its {METADATA_KEY!r} metadata must be a JSON object.")
    return meta
