"""TFLite (LiteRT) models: float32, float16 weights, and integer quantization.

Batch 1 and, by default, the fixed size a phone app feeds (the runtime resizes to it). Every
file takes `image` and `sparse` only and computes its guidance fills itself, with builtin ops.
Integer quantization is calibrated on representative samples of the training pipeline; five
parts stay float32 on purpose:
- the guidance fills (`cmp_tf.models.fills`): the nearest fill compares squared pixel distances
  up to 1e12, far beyond an int8 scale, and the smooth fills divide (by mask, or by the
  determinant of a local fit);
- the prior logits, the softmax readout and the flow upsampling: at int8 resolution the
  softmax over 99 bins would lose the sub-bin accuracy the readout exists for;
- the decoder's 1x1 `head` and the blend of fills (`add_prior`): one int8 scale over the
  head's channels (the correction, a blend weight, a gain's reach) moves a Gaussian gain by
  percents far from the guides (a model shipped earlier: its int8 EPE went up by 0.0095 px
  with the head quantized, by 0.0045 px without, both with the fills then fed from outside
  the file; by 0.0117 px with them inside, by 0.0047 px since the round trips below are
  dropped; a 1x1 convolution at stride 2, little of the time);
- the head's output resized to the fills' cells (`decoder_to_fills`) and the decoder layer
  the head reads (`head_inputs`: `fusion4` where the shipped decoder ends, `fusion2` in a
  decoder that ends at stride 2): calibrated on the shipped model, one int8 step of that
  resize was 2.0 in the blend's and the reach's logits, and its int8 `.tflite` lost 0.074 px
  of EPE at 384^2 (0.053 with the resize float, 0.022 with both); its int8 `.onnx`, whose
  resizes stay float, lost 0.065 px with the fusion quantized, 0.010 without.
- the layers reading the image's and the sparse map's 3 channels (`stem_layers`), for speed:
  XNNPACK's int8 kernels are at their slowest there.
MobileNetV3's hard swish is written, for the integer quantizer only, in ops XNNPACK runs in
int8 (`_delegable_hard_swish`): it runs no int8 HARD_SWISH, and each one split the graph.
Its multiplication by 1/6, and the squeeze-excite gates', are then folded into the scales of
the convolutions that read them (`fold_constant_factors`): one pass over the map less each.
The quantizer still puts QUANTIZE -> DEQUANTIZE round trips on some fill tensors it was told to
leave alone (the average-pooled guide positions); `drop_fill_round_trips` removes them.
The fills stay cheap to calibrate: every file runs the nearest fill's passes in their compact
form, one gather and pick each (20 ops a pass instead of 77, the same output; the integer
quantizer did not finish in 15 minutes with the sequential form). It is also the faster form
in LiteRT. The fills and their blend are traced in the ops LiteRT runs faster
(`savedmodel.litert_form`, the same output): channels taken by 1 x 1 convolutions (it runs
channel slices and concatenations of large maps several times slower), and the nearest fill's
neighbours zero-padded.
"""
import contextlib
import json
import re
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from cmp_tf import runners
from cmp_tf.models import layers
from export import savedmodel

PRECISIONS = ("float32", "float16", "int8")
# Layers of the CMP model kept in float32 in the integer model (see the module docstring).
# With them, the convolution the decoder's head reads (`head_inputs`).
FLOAT_LAYERS = ("head", "prior_logits", "add_prior", "propagate", "readout", "upsample_flow",
                "decoder_to_fills")
# The guidance fills' layer names, kept float32 too (cmp_tf.models.heads names them so).
FILL_LAYER_PATTERNS = (r"dense_prior\w*", r"pull_push\w*", r"local_affine\w*", r"edge_aware\w*")


def _scope_pattern(names):
    """A regex matching op and tensor names inside the scope of a layer named by one of
    `names` (regexes), with the suffix the converters add."""
    return re.compile(rf"(^|/)({'|'.join(names)})(_\d+)?/")


_FILL_NODE = _scope_pattern(FILL_LAYER_PATTERNS)


def float_node_pattern(extra_layers=()):
    """A regex matching the op and tensor names of FLOAT_LAYERS, the fills and `extra_layers`
    (layer names)."""
    return _scope_pattern(FLOAT_LAYERS + FILL_LAYER_PATTERNS
                          + tuple(re.escape(n) for n in extra_layers))


def head_inputs(model):
    """Names of the convolutions a CMP's decoder head reads, back through its batch norm and
    ReLU (the decoder's last fusion: `fusion4` in the shipped model, `fusion2` in a decoder
    ending at stride 2); none where the head reads several branches or there is no decoder."""
    try:
        decoder = model.get_layer("decoder")
        head = decoder.get_layer("head")
    except ValueError:
        return ()

    def producer(tensor):  # the decoder layer whose output `tensor` is (None: several inputs)
        return next((layer for layer in decoder.layers if layer.output is tensor), None)

    layer = producer(head.input)
    while isinstance(layer, (keras.layers.ReLU, keras.layers.BatchNormalization)):
        layer = producer(layer.input)
    convolutions = (keras.layers.Conv2D, keras.layers.SeparableConv2D,
                    keras.layers.DepthwiseConv2D)
    return (layer.name,) if isinstance(layer, convolutions) else ()


def stem_layers(model):
    """Names of the layers that read the image's and the sparse map's 3 channels, in each
    encoder through its first convolution, that convolution's batch norm and a ReLU after it
    (`model` a CMP or an image encoder): kept float32 in the integer model. XNNPACK's int8
    kernels are at their slowest on 3 channels (broadcasts over them in the pixel
    normalization, convolutions of 3 input channels): the shipped model's int8 file at 384^2
    took 12.6 ms with them quantized, 11.3 ms with the image encoder's float32 and 10.2 ms
    with both encoders', against 11.6 ms for the float32 file (2-core Xeon, 2 threads), the
    same EPE to 0.0001 px; the AlexNet recipe's 15.0 ms became 12.5, ResNet-50's stayed
    102 ms."""
    encoders = []
    for name in ("image_encoder", "sparse_encoder"):
        try:
            encoders.append(model.get_layer(name))
        except ValueError:
            pass
    names = []
    for encoder in encoders or [model]:
        stem, convolution = [], False
        for layer in layers.all_layers(encoder):
            if isinstance(layer, (keras.Model, keras.layers.InputLayer)):
                continue
            if convolution and not isinstance(layer, (keras.layers.BatchNormalization,
                                                      keras.layers.ReLU)):
                break
            stem.append(layer.name)
            convolution = convolution or isinstance(layer, keras.layers.Conv2D)
        names.extend(stem if convolution else [])
    return tuple(dict.fromkeys(names))


def convert(model, size, precision="float32", representative=None, metadata=None,
            dynamic=False, outputs=None):
    """`model` (Keras functional, named inputs) -> .tflite bytes with a `serving_default`
    signature.

    Args:
        size: (H, W) of the fixed-size model; with `dynamic`, H and W stay free (batch 1).
        precision: one of PRECISIONS.
        representative: for int8, a list of input dicts (batch 1, float32) to calibrate on.
        metadata: JSON-able dict stored under runners.METADATA_KEY.
        outputs: output names to keep (default all).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; known: {', '.join(PRECISIONS)}.")
    if precision == "int8" and not representative:
        raise ValueError("precision='int8' needs representative samples to calibrate on.")
    specs = savedmodel.input_specs(model, None if dynamic else size, batch=1)
    hard_swish = _delegable_hard_swish(model) if precision == "int8" else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp:
        with savedmodel.compact_fills(model), savedmodel.litert_form(model), hard_swish:
            savedmodel.write(model, tmp, specs, outputs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if precision == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
            flat = converter.convert()
        elif precision == "int8":
            flat = _quantize(converter, lambda: iter(representative),
                             head_inputs(model) + stem_layers(model))
        else:
            flat = converter.convert()
    if metadata is not None:
        flat = with_metadata(flat, metadata)
    return flat


def _hard_swish_delegable(x):
    """Hard swish, x relu6(x + 3) / 6, as (x / 6) relu6(x + 3): the same function, in an order
    the converter does not fuse into one HARD_SWISH, and whose int8 ADD (relu6 fused), MULs
    XNNPACK runs in one piece."""
    return (x * (1.0 / 6.0)) * tf.nn.relu6(x + 3.0)


def _delegable_hard_swish(model):
    """`model`'s hard swish activations (MobileNetV3's) written as `_hard_swish_delegable` while
    it is traced for integer quantization. XNNPACK, LiteRT's CPU delegate, runs no int8
    HARD_SWISH: each one splits the graph and runs on LiteRT's own kernels, and the shipped
    model's image encoder took 11.7 ms in int8 against 2.9 ms in float32 (384^2, 2 threads).
    Float files keep HARD_SWISH, which XNNPACK runs."""
    hard_swishes = savedmodel.layers_of(
        model, keras.layers.Activation,
        lambda layer: layer.activation is keras.activations.hard_silu)
    return savedmodel.layers_set(hard_swishes, "activation", _hard_swish_delegable)


def _quantize(converter, dataset, extra_layers=()):
    """Integer quantization with FLOAT_LAYERS, the fills, `extra_layers` and the model's
    outputs left in float32."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    with warnings.catch_warnings():  # the debugger runs the deprecated tf.lite interpreter
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                             debug_dataset=dataset)
        keep = float_nodes(debugger.calibrated_model, extra_layers)
        if keep:  # re-quantizes the calibrated model with these left out
            debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=keep)
        return fold_constant_factors(
            drop_fill_round_trips(debugger.get_nondebug_quantized_model()))


def drop_fill_round_trips(flat):
    """.tflite bytes without the QUANTIZE -> DEQUANTIZE pairs the quantizer still puts on some
    float32 fill tensors (the average-pooled guide positions of a nearest fill, up to the image
    side, lose pixels at an int8 scale): their consumers read the float tensor again. Other
    tensors are left as they are."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flat))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    builtin = flatbuffer_utils.schema_fb.BuiltinOperator
    float32 = flatbuffer_utils.schema_fb.TensorType.FLOAT32
    for graph in model.subgraphs:
        producer, readers = _producers_and_readers(graph)
        kept_outputs = set(int(t) for t in graph.outputs)
        dropped, rewire = set(), {}
        for op in graph.operators:
            if codes[op.opcodeIndex] != builtin.DEQUANTIZE:
                continue
            # Back from the DEQUANTIZE through QUANTIZE ops (a requantization may sit between)
            # to a float32 tensor, each step's tensor read by that step alone.
            chain, source = [op], int(op.inputs[0])
            while (source in producer and codes[producer[source].opcodeIndex] == builtin.QUANTIZE
                   and len(readers.get(source, [])) == 1):
                chain.append(producer[source])
                source = int(producer[source].inputs[0])
                if graph.tensors[source].type == float32:
                    break
            if (len(chain) < 2 or graph.tensors[source].type != float32
                    or not _FILL_NODE.search(graph.tensors[source].name.decode())
                    or int(op.outputs[0]) in kept_outputs):
                continue
            rewire[int(op.outputs[0])] = source
            dropped.update(id(step) for step in chain)
        if not rewire:
            continue
        graph.operators = [op for op in graph.operators if id(op) not in dropped]
        for op in graph.operators:
            op.inputs = np.array([rewire.get(int(t), int(t)) for t in op.inputs], np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _producers_and_readers(graph):
    """{tensor: the op writing it}, {tensor: the ops reading it} of a flatbuffer subgraph."""
    producer = {int(t): op for op in graph.operators for t in op.outputs}
    readers = {}
    for op in graph.operators:
        for t in op.inputs:
            if t >= 0:  # -1: an optional input left out
                readers.setdefault(int(t), []).append(op)
    return producer, readers


def fold_constant_factors(flat):
    """.tflite bytes where an int8 multiplication by a positive scalar constant k feeding one
    other multiplication is gone: that multiplication reads the unscaled tensor, its output's
    scale is divided by k, and the weight scales of the convolutions downstream (through
    means and multiplications, which commute with the factor) are multiplied by k. The same
    function, one rounding less, and one pass over the tensor less: the hard swish's 1/6
    (`_hard_swish_delegable`) and the squeeze-excite gate's hard sigmoid 1/6, which XNNPACK
    otherwise runs as an int8 multiplication of the whole map (the shipped model's int8 file
    at 384^2: 18 of them, about 0.9 ms of 13.5 ms on a 2-core Xeon). A factor whose product
    reaches anything else (an addition, a concatenation, a float32 op, an output) stays."""
    from tensorflow.lite.tools import flatbuffer_utils

    schema = flatbuffer_utils.schema_fb
    builtin = schema.BuiltinOperator
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flat))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]

    def kind(op):
        return codes[op.opcodeIndex]

    def no_activation(op):
        return op.builtinOptions.fusedActivationFunction == schema.ActivationFunctionType.NONE

    for graph in model.subgraphs:
        readers = _producers_and_readers(graph)[1]
        outputs = set(int(t) for t in graph.outputs)

        def scalar(t):  # the value of an int8 scalar constant, else None
            tensor = graph.tensors[t]
            data = model.buffers[tensor.buffer].data
            if tensor.type != schema.TensorType.INT8 or data is None or len(data) != 1:
                return None
            q = tensor.quantization
            return (int(np.frombuffer(bytes(data), np.int8)[0]) - int(q.zeroPoint[0])) * float(
                q.scale[0])

        def downstream(t, plan):
            """Adds to `plan` the rescaling that carries a factor on tensor `t` to the
            convolutions reading it; False where a reader does not commute with it."""
            if t in outputs:
                return False
            for op in readers.get(t, []):
                inputs = [int(i) for i in op.inputs]
                if kind(op) in (builtin.CONV_2D, builtin.DEPTHWISE_CONV_2D) and inputs[0] == t:
                    if inputs[1] == t or len(readers[inputs[1]]) != 1:
                        return False
                    plan.append(("weights", inputs[1]))
                elif ((kind(op) == builtin.MEAN and inputs[0] == t)
                      or (kind(op) == builtin.MUL and inputs.count(t) == 1 and no_activation(op))):
                    plan.append(("output", int(op.outputs[0])))
                    if not downstream(int(op.outputs[0]), plan):
                        return False
                else:
                    return False
            return True

        dropped = set()
        for op in graph.operators:
            if kind(op) != builtin.MUL or id(op) in dropped:
                continue
            inputs = [int(i) for i in op.inputs]
            factors = [scalar(t) for t in inputs]
            if len(inputs) != 2 or factors.count(None) != 1:
                continue
            factor = next(f for f in factors if f is not None)
            source = inputs[factors.index(None)]
            product = int(op.outputs[0])
            reader = readers.get(product, [])
            if (not factor > 0 or product in outputs or len(reader) != 1
                    or kind(reader[0]) != builtin.MUL or not no_activation(op)
                    or not no_activation(reader[0])):
                continue
            plan = [("output", int(reader[0].outputs[0]))]
            if not downstream(plan[0][1], plan) or len(set(plan)) != len(plan):
                continue
            for what, t in plan:
                q = graph.tensors[t].quantization
                scale = np.asarray(q.scale, np.float32)
                q.scale = scale / np.float32(factor) if what == "output" else scale * factor
            reader[0].inputs = np.array([source if int(t) == product else int(t)
                                         for t in reader[0].inputs], np.int32)
            dropped.add(id(op))
        graph.operators = [op for op in graph.operators if id(op) not in dropped]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def float_nodes(flat, extra_layers=()):
    """Names of the output tensors of FLOAT_LAYERS', the fills' and `extra_layers`' ops and of
    the graph outputs."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(bytearray(flat), 0).Subgraphs(0)
    outputs = set(graph.OutputsAsNumpy().tolist())
    pattern = float_node_pattern(extra_layers)
    names = []
    for i in range(graph.OperatorsLength()):
        for t in graph.Operators(i).OutputsAsNumpy().tolist():
            name = graph.Tensors(t).Name().decode()
            if t in outputs or pattern.search(name):
                names.append(name)
    return sorted(set(names))


def with_metadata(flat, metadata):
    """.tflite bytes with `metadata` (JSON) in the model's metadata table under METADATA_KEY
    (replacing an entry of that name)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flat))
    buffer = flatbuffer_utils.schema_fb.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = flatbuffer_utils.schema_fb.MetadataT()
    entry.name, entry.buffer = runners.METADATA_KEY, len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if m.name not in (runners.METADATA_KEY,
                                                                runners.METADATA_KEY.encode())]
    model.metadata = [*kept, entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
