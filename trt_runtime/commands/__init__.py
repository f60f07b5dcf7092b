"""Sub-commands of `python -m trt_runtime` (one module each; see trt_runtime/__main__.py)."""
