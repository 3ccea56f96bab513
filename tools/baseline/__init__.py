"""The frozen numpy runtime the ONNX graphs replaced, kept only as the bench's baseline."""
