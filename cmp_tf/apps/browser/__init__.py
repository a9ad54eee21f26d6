"""Propagation in the browser: a page that runs an exported `.onnx` model with onnxruntime-web
on the user's own machine; the Python server only hands out static files (`python -m
cmp_tf.apps.browser`)."""
