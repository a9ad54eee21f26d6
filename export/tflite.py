"""TFLite (LiteRT) models: float32, float16 weights, and integer quantization.

Batch 1 and, by default, the fixed size a phone app feeds (the runtime resizes to it). Integer
quantization is calibrated on representative samples of the training pipeline; three parts stay
float32 on purpose:
- the dense prior's jump flooding compares squared pixel distances up to 1e12, far beyond an
  int8 scale, and its ~800 small ops keep the quantizer busy for minutes: it is cut out of the
  graph and becomes an input that `cmp_tf.runtime` computes with the same layer;
- the prior logits, the softmax readout and the flow upsampling: at int8 resolution the
  softmax over 99 bins would lose the sub-bin accuracy the readout exists for;
- the decoder's 1x1 `head` and the blend of fills (`add_prior`): one int8 scale over the
  head's channels (the correction, a blend weight, a gain's reach) moves a Gaussian gain by
  percents far from the guides (the shipped model's int8 EPE went up by 0.0095 px with the
  head quantized, by 0.0045 px without; a 1x1 convolution at stride 2, little of the time).
"""
import json
import re
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from cmp_tf import runners
from cmp_tf.models import fills
from export import savedmodel

PRECISIONS = ("float32", "float16", "int8")
# Layers of the CMP model kept in float32 in the integer model (see the module docstring).
FLOAT_LAYERS = ("head", "prior_logits", "add_prior", "readout", "upsample_flow")
_FLOAT_NODE = re.compile(rf"(^|/)({'|'.join(FLOAT_LAYERS)})(_\d+)?/")


def split_priors(model):
    """`model` with each guidance-fill layer's output (fills.FILL_LAYERS) turned into an input
    of that layer's name, and {name: its config} for the runtime to compute them; unchanged
    without one."""
    priors = [layer for layer in model.layers if isinstance(layer, fills.FILL_LAYERS)]
    if not priors:
        return model, {}
    inputs = {**model.input, **{layer.name: layer.output for layer in priors}}
    with warnings.catch_warnings():  # Keras asks inner tensors to be named like their keys
        warnings.simplefilter("ignore")
        core = keras.Model(inputs, model.output, name=f"{model.name}_prior_as_input")
    return core, {layer.name: fills.fill_spec(layer) for layer in priors}


def with_priors(samples, priors):
    """Representative samples {image, sparse} with the prior inputs computed, as the runtime
    computes them."""
    fns = {name: fills.fill_from_spec(spec) for name, spec in priors.items()}
    for sample in samples:
        yield {**sample, **{name: np.asarray(fn(sample["sparse"])) for name, fn in fns.items()}}


def convert(model, size, precision="float32", representative=None, metadata=None,
            dynamic=False, outputs=None):
    """`model` (Keras functional, named inputs) -> .tflite bytes with a `serving_default`
    signature.

    Args:
        size: (H, W) of the fixed-size model; with `dynamic`, H and W stay free (batch 1).
        precision: one of PRECISIONS.
        representative: for int8, a list of input dicts (batch 1, float32) to calibrate on.
        metadata: JSON-able dict stored under runners.METADATA_KEY; priors cut out for int8
            are added to it under "priors".
        outputs: output names to keep (default all).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; known: {', '.join(PRECISIONS)}.")
    if precision == "int8" and not representative:
        raise ValueError("precision='int8' needs representative samples to calibrate on.")
    priors = {}
    if precision == "int8":
        model, priors = split_priors(model)
    strides = {name: spec["stride"] for name, spec in priors.items()}
    specs = savedmodel.input_specs(model, None if dynamic else size, batch=1, strides=strides)
    with tempfile.TemporaryDirectory() as tmp:
        savedmodel.write(model, tmp, specs, outputs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if precision == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
            flat = converter.convert()
        elif precision == "int8":
            calibration = list(with_priors(representative, priors))
            flat = _quantize(converter, lambda: iter(calibration))
        else:
            flat = converter.convert()
    if metadata is not None:
        flat = with_metadata(flat, {**metadata, "priors": priors} if priors else metadata)
    return flat


def _quantize(converter, dataset):
    """Integer quantization with FLOAT_LAYERS and the model's outputs left in float32."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    with warnings.catch_warnings():  # the debugger runs the deprecated tf.lite interpreter
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                             debug_dataset=dataset)
        keep = float_nodes(debugger.calibrated_model)
        if keep:  # re-quantizes the calibrated model with these left out
            debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=keep)
        return debugger.get_nondebug_quantized_model()


def float_nodes(flat):
    """Names of the output tensors of FLOAT_LAYERS' ops and of the graph outputs."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(bytearray(flat), 0).Subgraphs(0)
    outputs = set(graph.OutputsAsNumpy().tolist())
    names = []
    for i in range(graph.OperatorsLength()):
        for t in graph.Operators(i).OutputsAsNumpy().tolist():
            name = graph.Tensors(t).Name().decode()
            if t in outputs or _FLOAT_NODE.search(name):
                names.append(name)
    return sorted(set(names))


def with_metadata(flat, metadata):
    """.tflite bytes with `metadata` (JSON) in the model's metadata table under METADATA_KEY."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flat))
    buffer = flatbuffer_utils.schema_fb.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = flatbuffer_utils.schema_fb.MetadataT()
    entry.name, entry.buffer = runners.METADATA_KEY, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
