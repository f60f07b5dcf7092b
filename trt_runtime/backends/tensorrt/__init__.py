"""The TensorRT backend: builder, ONNX preparation, profiles, engine.json, ibert plugins, trtexec, the runner.

Importing these modules needs neither TensorRT nor a GPU (`libs.require_tensorrt` says what is missing when
a function needs them).
"""
