"""cmp_tf: Conditional Motion Propagation (Zhan et al., CVPR 2019) in TensorFlow / Keras 3."""
import importlib.util

__version__ = "0.1.0"

# Where Keras is installed, `import cmp_tf` registers the custom layers, so that
# `keras.models.load_model` reads every .keras file cmp_tf writes. A runtime-only install
# (TFLite / ONNX files, no Keras) skips it.
if importlib.util.find_spec("keras") is not None:
    from cmp_tf import models  # noqa: F401,E402  (registers the layers)
