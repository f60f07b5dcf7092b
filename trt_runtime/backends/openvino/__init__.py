"""The OpenVINO backend: `runner.OpenVinoRunner` compiles the export's own model.onnx for the CPU.

`openvino` is optional (`pip install qbert-deploy[openvino]`): nothing here imports it at module load, so
`trt_runtime` imports, and `trt_runtime.load` falls back to ONNX Runtime, where it is not installed.
"""
