"""Integer PTQ placements of `make eval`'s fine-tuned float checkpoint, scored on the binary task's dev split.

    PYTHONPATH=. .venv/bin/python scripts/integer_dev_sweep.py --checkpoint EVAL_CACHE/binary/float-<key> \\
        --output /tmp/integer-dev-sweep.json [--rows previous-default previous+softmax-output ...]

Each row loads the checkpoint in integer mode with its sites and force_dequant, calibrates it as the exporter
does (the recipe's 512 shipped samples, minmax), runs the whole dev split in PyTorch (whose integers are the
export's, bit for bit) and compares it with the float model on the same sentences: accuracy and its change
with a paired bootstrap interval, the share of predictions flipped and the RMS change of the logit margin
(the eval's dev-analysis measures). Only the dev split: nothing here is chosen on test (docs/integer.md,
"Accuracy on labels").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.eval.metrics import METRICS, bootstrap_indices, paired_bootstrap
from benchmarks.eval.steps import (
    _fidelity,
    eval_max_length,
    load_tokenizer,
    predictions,
    scores_from_logits,
    torch_logits,
)
from benchmarks.eval.tasks import TASKS, examples
from models.quantization.recipe import PREVIOUS_WIDE_ACTIVATIONS
from trt_runtime.contract.files import write_json_atomic

PREVIOUS = PREVIOUS_WIDE_ACTIVATIONS  # ffn-output-input, hidden-states
ROWS: dict[str, dict[str, Any]] = {
    "previous-default": {"wide_activations": PREVIOUS},
    "previous-fd-nonlinear": {"wide_activations": PREVIOUS, "force_dequant": "nonlinear"},
    "previous-fd-softmax": {"wide_activations": PREVIOUS, "force_dequant": "softmax"},
    "previous-fd-gelu": {"wide_activations": PREVIOUS, "force_dequant": "gelu"},
    "previous-fd-layernorm": {"wide_activations": PREVIOUS, "force_dequant": "layernorm"},
    "previous+softmax-output": {"wide_activations": (*PREVIOUS, "softmax-output")},
    "previous+ffn-input": {"wide_activations": ("ffn-input", *PREVIOUS)},
    "default": {},  # every site: ffn-input, ffn-output-input, hidden-states, softmax-output
}


def main(argv: list[str] | None = None) -> int:
    import torch

    import models
    from models.quantization import recipe_batches
    from models.quantization.calibration import calibrate_model
    from models.quantization.recipe import QuantizationRecipe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the eval's fine-tuned float checkpoint directory")
    parser.add_argument("--output", required=True, help="JSON file of the rows (an existing one is added to)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = Path(args.checkpoint)
    task = TASKS["binary"]
    dev = examples(task, "dev")
    tokenizer = load_tokenizer(checkpoint)
    max_length = eval_max_length(checkpoint)
    indices = bootstrap_indices(len(dev), 1000, 0)
    float_model = models.load(checkpoint, task="text-classification", quantization="none")
    float_logits = torch_logits(float_model, dev.texts, tokenizer, 32, max_length, "dev: float")
    float_predictions = predictions(task, scores_from_logits(task, float_logits))
    results: dict[str, Any] = {"checkpoint": str(checkpoint), "rows": {}}
    if Path(args.output).exists():  # add to the rows of an earlier run
        results["rows"] = json.loads(Path(args.output).read_text())["rows"]
    for name in args.rows:
        started = time.monotonic()
        row = ROWS[name]
        recipe = QuantizationRecipe(mode="integer", **row)
        model = models.load(checkpoint, task="text-classification", quantization="integer", **row)
        calibrate_model(model, recipe_batches(recipe, tokenizer), recipe)
        logits = torch_logits(model, dev.texts, tokenizer, 32, max_length, f"dev: {name}")
        got = predictions(task, scores_from_logits(task, logits))
        change = paired_bootstrap("accuracy", dev.targets, float_predictions, got, indices, 0.95)
        record = {
            "row": name, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in row.items()},
            "sentences": len(dev), "float_accuracy": float(METRICS["accuracy"](dev.targets, float_predictions)),
            "accuracy": float(METRICS["accuracy"](dev.targets, got)), "change": change.to_dict(),
            **_fidelity(task, logits, float_logits), "seconds": round(time.monotonic() - started, 1),
            "load_average": Path("/proc/loadavg").read_text().split()[:3],
        }
        print(json.dumps(record), flush=True)
        results["rows"][name] = record
        write_json_atomic(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
