"""The torch-free contract that every part of the project shares (standard library and NumPy only).

- `export_dir`: the export directory's file names and `export.json` schema, read and checked (with what a load
  checks of the other files: links out of the directory, the metadata copy, the graph's quantization).
- `onnx_wire`: an ONNX file's metadata and node op types, read from the protobuf wire format without parsing
  the model (for those checks).
- `ibert`: the `ibert` op domain (name, version, op list), the integer constants derived from the scales and
  the NumPy int64 reference of each op: what the torch modules, the ONNX function bodies and the TensorRT
  plugin kernels are all tested against.
- `int8_share`: the INT8 share of a graph's GEMM work by TensorRT's explicit-quantization rule (the export log,
  export.json's `int8_share`, `python -m trt_runtime build`).
- `files`: the one implementation of atomic, fsynced, link-refusing writes and directory swaps, and sha256.
- `compat`: old module names that keep importing (with a DeprecationWarning) for one release.

`models` and `exporter` may import this package and nothing else of `trt_runtime` (tests/test_architecture.py).
"""
