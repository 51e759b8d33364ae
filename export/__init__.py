"""Checkpoint -> artifacts: the ONNX graph (`onnx`), TensorRT engines (`tensorrt`), their
place in the model repository (`layout`), parity checks (`verify`), the ONNX Runtime and
TensorRT encoders (`encoders`), and `build.export_model`, which ties them together."""
