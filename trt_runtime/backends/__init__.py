"""The backends that run an export: one folder each, one base class for all (`base.BaseRunner`).

- `onnxruntime/`: `OrtRunner` (the CPU fallback that is always there; CUDA with onnxruntime-gpu) and the CPU
  INT8 graph it derives from qdq exports (`cpu_int8`).
- `tensorrt/`: the engine builder, ONNX preparation, optimization profiles, engine.json, the ibert plugins,
  trtexec, and `TensorRTRunner`.

Nothing here imports a backend's library at module load: a backend is imported when it is used.
"""
