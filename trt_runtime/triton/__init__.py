"""Serving export directories with NVIDIA Triton Inference Server (docs/serving.md).

- `trt_runtime.triton.repository.write_repository(exports, output)`: a Triton model repository: per export
  a `tensorrt_plan` model (the engine), an ONNX model (`onnxruntime_onnx`, or our OrtRunner in Triton's
  Python backend) and a text-in/JSON-out model (the task pipeline in the Python backend).
  `python -m trt_runtime triton-repo` is its command line.
- `trt_runtime.triton.config`: config.pbtxt as data, written in protobuf text format.
- `trt_runtime.triton.python_model`: the Python-backend model (copied into the repository as model.py).
- `trt_runtime.triton.server`: a real `tritonserver` (the one bundled in the nvidia-pytriton wheel) in
  its own virtual environment, started on loopback and stopped within a bounded time.
  `python -m trt_runtime triton-serve` is its command line.
- `trt_runtime.triton.client`: a `tritonclient` example (HTTP and gRPC) and the load generator; it runs
  in the server environment, where tritonclient is installed.

Nothing here imports onnxruntime, tokenizers, tritonclient or Triton's Python backend at module load.
"""
