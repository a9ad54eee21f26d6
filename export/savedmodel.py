"""SavedModel: the serving signature TensorFlow Serving reads, and the source of the TFLite and
ONNX conversions (both read a SavedModel more reliably than a live Keras model: its captured
constants are frozen and its variables are plain values)."""
import contextlib
import json
import os

import keras
import tensorflow as tf

from cmp_tf import runners
from cmp_tf.models import fills
from cmp_tf.models import heads
from cmp_tf.models import layers as layers_lib


def input_specs(model, size=None, batch=None):
    """{name: TensorSpec} of a functional model's inputs at `size` (H, W); None keeps H and W
    free."""
    specs = {}
    for name, tensor in _inputs(model).items():
        h, w = (None, None) if size is None else size
        specs[name] = tf.TensorSpec([batch, h, w, tensor.shape[-1]], tf.float32, name=name)
    return specs


def _inputs(model):
    return model.input if isinstance(model.input, dict) else {model.input.name: model.input}


def serving_function(model, outputs=None):
    """(**inputs) -> {name: output}: what a signature calls; `outputs` picks a subset."""
    names = list(_inputs(model))

    def serve(*args):
        feeds = dict(zip(names, args))
        out = model(feeds if len(names) > 1 else args[0], training=False)
        out = dict(out) if isinstance(out, dict) else {"output": out}
        return {k: v for k, v in out.items() if outputs is None or k in outputs}

    return serve


def write(model, path, specs=None, outputs=None, metadata=None):
    """Writes `model` as a SavedModel with one signature, runners.SIGNATURE, named inputs and
    outputs, and `metadata` (the runtime's size rules) in assets.extra/.

    Args:
        specs: from input_specs; default any batch and size.
        outputs: output names to serve (default all).
    """
    specs = specs or input_specs(model)
    archive = keras.export.ExportArchive()  # tracks the variables its endpoint uses, once
    # No size assertion in the file (layers.InputGuard): the runtime checks sizes itself.
    with layers_set(layers_of(model, layers_lib.InputGuard), "check_in_graph", False):
        archive.add_endpoint(runners.SIGNATURE, serving_function(model, outputs),
                             input_signature=list(specs.values()))
        archive.write_out(path, verbose=False)
    if metadata is not None:
        meta = os.path.join(path, runners.SAVED_MODEL_METADATA)
        os.makedirs(os.path.dirname(meta), exist_ok=True)
        with open(meta, "w") as f:
            json.dump(metadata, f, indent=1)
    return path


def compact_fills(model):
    """`model`'s nearest fills in their compact form (fills.DensePrior: one gather and pick a
    pass, the same output) while it is traced for LiteRT or ONNX, which run that form faster
    (and TFLite's integer quantizer finishes only with it); the sequential form, the faster in
    TensorFlow, again after."""
    return layers_set(layers_of(model, fills.DensePrior), "compact", True)


def litert_form(model):
    """`model`'s fills and blend of fills in the ops LiteRT runs faster (the same output; the
    layers' `litert_form`: channels taken by 1 x 1 convolutions, which it runs several times
    faster than channel slices and concatenations, and the nearest fill's neighbours
    zero-padded instead of framed) while it is traced for LiteRT; ONNX Runtime and
    TensorFlow run the other form faster."""
    return layers_set(layers_of(model, (*fills.FILL_LAYERS, heads.BlendFills)), "litert_form",
                      True)


def layers_of(model, kinds, where=None):
    """Every layer of `model` (those of nested models too) that is one of `kinds` and, when
    given, for which `where(layer)` holds: the layers an exporter's form switches."""
    return [layer for layer in layers_lib.all_layers(model)
            if isinstance(layer, kinds) and (where is None or where(layer))]


@contextlib.contextmanager
def layers_set(layers, attribute, value):
    """Each of `layers` with `attribute` set to `value` for a trace, its own value again after
    (an exporter's form of the same computation)."""
    before = [getattr(layer, attribute) for layer in layers]
    for layer in layers:
        setattr(layer, attribute, value)
    try:
        yield
    finally:
        for layer, old in zip(layers, before):
            setattr(layer, attribute, old)
