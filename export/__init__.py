"""Export of trained CMP models to SavedModel, TFLite and ONNX with parity checks."""
