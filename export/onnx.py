"""ONNX through tf2onnx, from the SavedModel (whose constants are frozen; tf2onnx on a live
Keras 3 function leaves the normalization constants as graph inputs). Height and width stay
dynamic; the guidance fills export as plain standard-domain ops inside the file, which takes
`image` and `sparse` only.

Integer quantization (ONNX Runtime's static QDQ) covers the convolutions, which hold nearly all
the arithmetic, but the decoder's 1x1 head and the guidance fills'; every other op, the fills
and the softmax readout among them, stays float32 (see export/tflite.py for why).
"""
import json
import os
import tempfile
import warnings

from cmp_tf import runners
from export import tflite as tflite_export

# ONNX opset written: 18 is the newest tf2onnx 1.17 targets, and ONNX Runtime 1.32 runs it.
OPSET = 18


def _numpy2_compatible_tf2onnx():
    """tf2onnx 1.17 predates NumPy 2 (its transpose optimizer fails, silently leaving extra
    transposes); Keras ships the patch it applies before its own ONNX export."""
    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    with warnings.catch_warnings():  # the patch probes np.object, which NumPy 2 warns about
        warnings.simplefilter("ignore", FutureWarning)
        patch_tf2onnx()


def convert(saved_model, metadata=None, opset=OPSET):
    """A SavedModel folder's runners.SIGNATURE -> ONNX ModelProto with the same input and
    output names and `metadata` (JSON) in metadata_props under runners.METADATA_KEY."""
    import onnx  # here, not at the top: exporting other formats needs neither package
    import tf2onnx
    from tf2onnx import tf_loader

    _numpy2_compatible_tf2onnx()
    graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
        saved_model, None, None, tag=["serve"], signatures=[runners.SIGNATURE],
        return_tensors_to_rename=True)
    proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs,
                                              output_names=outputs, opset=opset,
                                              tensors_to_rename=renames)
    if metadata is not None:
        onnx.helper.set_model_props(proto, {runners.METADATA_KEY: json.dumps(metadata)})
    return proto


def write(saved_model, path, metadata=None, opset=OPSET):
    import onnx

    onnx.save(convert(saved_model, metadata, opset), path)
    return path


# Ops quantized to int8 (per-channel weights, uint8 activations: the u8 x s8 dot products that
# x86 VNNI runs natively).
QUANTIZED_OPS = ("Conv",)
# ... but for the convolutions of the layers TFLite keeps float32 (its FLOAT_LAYERS: the
# decoder's 1x1 head, with the fusion it reads passed in, and the guidance fills: a smooth
# fill's tent pull is a depthwise convolution of (vector x mask, mask); at uint8 its ratio is
# off by up to a step, and the blend reads it).


def _float_layer_nodes(nodes, producers, extra_layers=()):
    """Names of the nodes of the layers kept float32 (and of `extra_layers`): named in one of
    their scopes, or named by tf2onnx (no scope: the convolutions it merges or splits) and
    reading such a node."""
    pattern = tflite_export.float_node_pattern(extra_layers)
    floats = set()
    for node in nodes:  # topological order
        source = producers.get(node.input[0]) if node.input else None
        if pattern.search(node.name) or ("/" not in node.name and source is not None
                                         and source.name in floats):
            floats.add(node.name)
    return floats


def _reads_input(producers, node, name):
    """Whether `node` reads graph input `name` directly or through layout transposes only.

    The convolutions that read the sparse map stay float32: the quantizer puts one
    quantize-dequantize pair on a tensor for all its readers, so the guidance fills' first
    convolution (fills.masked_guidance), which tf2onnx lets share the sparse encoder's input,
    would read the vectors and the mask at uint8 steps (about 0.1 px of EPE at 384^2)."""
    tensor = node.input[0]
    while tensor in producers and producers[tensor].op_type == "Transpose":
        tensor = producers[tensor].input[0]
    return tensor == name


def quantize(source, path, samples, metadata=None, float_layers=()):
    """Float ONNX file `source` -> int8 ONNX file `path`, calibrated on `samples` (dicts of
    float32 inputs by name); the convolutions of `float_layers` (the layers the decoder's head
    reads: tflite.head_inputs) stay float32 with those TFLite keeps."""
    import onnx
    from onnxruntime import quantization

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self._samples = iter(samples)

        def get_next(self):
            return next(self._samples, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")  # shapes inferred, graph simplified
        quantization.shape_inference.quant_pre_process(source, prepared,
                                                       skip_symbolic_shape=True)
        nodes = onnx.load(prepared).graph.node
        producers = {out: node for node in nodes for out in node.output}
        floats = _float_layer_nodes(nodes, producers, float_layers)
        keep = [node.name for node in nodes
                if node.op_type in QUANTIZED_OPS and (node.name in floats
                                                      or _reads_input(producers, node, "sparse"))]
        quantization.quantize_static(
            prepared, path, Reader(), quant_format=quantization.QuantFormat.QDQ,
            per_channel=True, op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=keep,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8)
    if metadata is not None:
        proto = onnx.load(path)
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, {runners.METADATA_KEY: json.dumps(metadata)})
        onnx.save(proto, path)
    return path
