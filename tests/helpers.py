"""Helpers the tests import: recipes by name, a server thread, panning frames, an exported
file's ops.

Kept out of conftest.py, which pytest imports itself: a test module importing from it would
import it a second time under another name and run its set-up twice."""
import contextlib
import importlib
import threading


def load_config(name, arg=None):
    """The recipe `configs/<name>.py` as train.py would load it (without flag overrides)."""
    return importlib.import_module(f"configs.{name}").get_config(arg)


@contextlib.contextmanager
def serving(httpd):
    """Runs an HTTP server (e.g. the page's) in a daemon thread for the block."""
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def panning_frames(count=8, size=(64, 96), step=(3, 2), seed=0):
    """Frames of a textured scene panning by `step` (dx, dy) px per frame: flow is -step."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = size
    big = rng.uniform(0, 255, (h + count * step[1] + 8, w + count * step[0] + 8, 3))
    big = cv2.GaussianBlur(big.astype(np.float32), (0, 0), 2.0)
    big = ((big - big.min()) / (big.max() - big.min()) * 255).astype(np.uint8)
    return [big[t * step[1]: t * step[1] + h, t * step[0]: t * step[0] + w].copy()
            for t in range(count)]



def tflite_ops(path):
    """(builtin op names, custom op codes) of a .tflite file's operators."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(bytearray(f.read()), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    builtins, custom = set(), set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if op == schema.BuiltinOperator.CUSTOM:
            custom.add(code.CustomCode().decode())
        else:
            builtins.add(names[op])
    return builtins, custom


def fills_spanning(model, side):
    """`model`'s fill layers sized for images up to `side` px while it exports: a dynamic-size
    ONNX file unrolls the passes its fills need for their `max_size` (2048 px by default, 128
    coarse passes of the geodesic fill, which tf2onnx takes minutes to convert), the same ops
    at any size."""
    from cmp_tf.models import fills
    from export import savedmodel

    return savedmodel.layers_set(savedmodel.layers_of(model, fills.FILL_LAYERS), "max_size", side)
