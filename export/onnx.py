"""ONNX through tf2onnx, from the SavedModel (whose constants are frozen; tf2onnx on a live
Keras 3 function leaves the normalization constants as graph inputs). Height and width stay
dynamic; the dense prior's jump flooding exports as plain ops."""
import json
import warnings

import onnx
import tf2onnx
from tf2onnx import tf_loader

from cmp_tf import runtime

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
    """A SavedModel folder's runtime.SIGNATURE -> ONNX ModelProto with the same input and
    output names and `metadata` (JSON) in metadata_props under runtime.METADATA_KEY."""
    _numpy2_compatible_tf2onnx()
    graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
        saved_model, None, None, tag=["serve"], signatures=[runtime.SIGNATURE],
        return_tensors_to_rename=True)
    proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs,
                                              output_names=outputs, opset=opset,
                                              tensors_to_rename=renames)
    if metadata is not None:
        onnx.helper.set_model_props(proto, {runtime.METADATA_KEY: json.dumps(metadata)})
    return proto


def write(saved_model, path, metadata=None, opset=OPSET):
    onnx.save(convert(saved_model, metadata, opset), path)
    return path
