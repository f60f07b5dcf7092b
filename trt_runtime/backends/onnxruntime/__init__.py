"""The ONNX Runtime backend: `runner.OrtRunner` and the derived CPU INT8 graph (`cpu_int8`)."""
