"""The backends that run an export: one folder each, one base class for all (`base.BaseRunner`, with
`base.RunnerOptions` for each backend's options); `artefacts`: what a backend derives from model.onnx, kept with
a record that is checked before use, in the export or a cache directory, or in memory.

- `onnxruntime/`: `OrtRunner` (the CPU fallback that is always there; CUDA with onnxruntime-gpu), its options
  (`options`), the graphs it runs (`graphs`): the CPU INT8 graph it derives from qdq exports (`cpu_int8`) and
  the fused float graph of float exports (`cpu_float`), with their recipes (`recipes`).
- `tensorrt/`: the engine builder, ONNX preparation, optimization profiles, engine.json, the ibert plugins,
  trtexec, and `TensorRTRunner`.
- `openvino/`: `OpenVinoRunner`, the export's own model.onnx compiled by OpenVINO for the CPU (optional:
  `pip install qbert-deploy[openvino]`).

Nothing here imports a backend's library at module load: a backend is imported when it is used.
"""
