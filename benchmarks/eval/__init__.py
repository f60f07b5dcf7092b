"""Accuracy evaluation on real data (`make eval`, docs/eval.md): float vs INT8 for a sentiment model.

all-MiniLM-L6-v2 is fine-tuned on the shipped VADER corpus (binary sentiment and score regression,
models.data's fixed splits), exported float, Q/DQ with every calibrator, Q/DQ after quantization-aware
training and I-BERT integer-only, and scored on the test split through `trt_runtime.pipeline` on ONNX
Runtime, next to the same models in PyTorch, with paired-bootstrap intervals for every change.

    metrics.py   metrics and the paired bootstrap (NumPy)
    tasks.py     the two tasks, their examples per split, batching
    recipe.py    every setting, the model variants, cache keys
    steps.py     fine-tuning, dev analysis (calibrator choice, per-layer sensitivity), exports, predictions
    report.py    scoring, JSON / Markdown / PNG
    __main__.py  the command line that `make eval` runs
"""
