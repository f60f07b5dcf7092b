"""Placement x method -> INT8 share and sentence cosine to float, on all-MiniLM-L6-v2 (docs/qdq.md, docs/integer.md).

    PYTHONPATH=. .venv/bin/python scripts/int8_placements.py --output /tmp/int8-placements.json [--rows qdq-default ...]

Each row exports the checkpoint with its recipe (calibrated on the shipped calibration_data/, the recipe's
defaults otherwise; no validation), reads the INT8 share from export.json (exporter.report), then loads the
PyTorch model with the export's calibration.json and compares its mean-pooled sentence embeddings with the
float model's on held-out sentences (models.data.labelled_sentences("test"), never in the calibration split).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import exporter
import models
from models.data import calibration_batches, labelled_sentences
from models.demo_model import demo_checkpoint
from models.quantization import QuantizationRecipe
from models.quantization.recipe import PREVIOUS_WIDE_ACTIVATIONS
from trt_runtime.contract.export_dir import CALIBRATION_JSON, read_export_info
from trt_runtime.contract.files import write_json_atomic

ROWS: dict[str, dict[str, Any]] = {
    "qdq-default": {"mode": "qdq"},  # SmoothQuant auto, residual adds float
    "qdq-unsmoothed": {"mode": "qdq", "smoothing": "none"},  # residual adds + FFN output input float
    "qdq-ffn-output-quantized": {"mode": "qdq", "smoothing": "none", "keep_float": ("residual-adds",)},
    "qdq-quantize-all": {"mode": "qdq", "smoothing": "none", "keep_float": ()},
    "integer-default": {"mode": "integer"},  # every wide site: ffn-input, ffn-output-input, hidden-states, softmax-output
    "integer-previous-default": {"mode": "integer", "wide_activations": PREVIOUS_WIDE_ACTIVATIONS},
    "integer-8-bit": {"mode": "integer", "wide_activations": ()},
    "integer-wide-ffn-output-input": {"mode": "integer", "wide_activations": ("ffn-output-input",)},
    "integer-wide-hidden-states": {"mode": "integer", "wide_activations": ("hidden-states",)},
}


def mean_pooled(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (model(**batch)["last_hidden_state"] * mask).sum(1) / mask.sum(1)


def embeddings(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], what: str) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([mean_pooled(model, batch) for batch in tqdm(batches, desc=what, unit="batch")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: all-MiniLM-L6-v2, models.demo_model)")
    parser.add_argument("--output", required=True, help="JSON file of the rows")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--sentences", type=int, default=256, help="held-out test-split sentences (default 256)")
    parser.add_argument("--num-samples", type=int, default=None, help="calibration samples (default: the recipe's)")
    parser.add_argument("--smoothing", default=None, help="qdq rows: override the row's smoothing (ALPHA, auto or none)")
    args = parser.parse_args(argv)
    checkpoint = Path(args.model) if args.model else demo_checkpoint()
    texts = [row.text for row in labelled_sentences("test")[: args.sentences]]
    batches = calibration_batches(texts, checkpoint, batch_size=32)
    float_model = models.load(checkpoint, task="feature-extraction", quantization="none")
    reference = embeddings(float_model, batches, "float")
    results: dict[str, Any] = {"model": str(checkpoint), "sentences": len(texts), "rows": {}}
    if Path(args.output).exists():  # add to the rows of an earlier run
        results["rows"] = json.loads(Path(args.output).read_text())["rows"]
    for name in args.rows:
        fields = dict(ROWS[name])
        if args.smoothing is not None and fields["mode"] == "qdq":
            fields["smoothing"] = args.smoothing
            name = f"{name}+smoothing-{args.smoothing}"
        if args.num_samples is not None:
            fields["num_samples"] = args.num_samples
        recipe = QuantizationRecipe(**fields)
        with tempfile.TemporaryDirectory(prefix="int8-placements-") as scratch:
            out = exporter.export(
                checkpoint, Path(scratch) / "out", task="feature-extraction", recipe=recipe, validate=False,
                log=lambda message: print(message, file=sys.stderr, flush=True),
            )
            share = read_export_info(out).int8_share
            model = models.load(checkpoint, task="feature-extraction", quantization=recipe.mode,
                                calibration=out / CALIBRATION_JSON)
        cosine = torch.nn.functional.cosine_similarity(embeddings(model, batches, name), reference)
        assert share is not None
        linear, attention = share["linear"], share["attention"]
        results["rows"][name] = row = {
            "recipe": recipe.to_dict(),
            "linear_int8_share": linear["int8_work"] / linear["work"],
            "linear_split_share": linear["split_work"] / linear["work"],
            "attention_int8": f"{attention['int8_gemms']} of {attention['gemms']}",
            "attention_split": attention["split_gemms"],
            "mean_cosine": float(cosine.mean()),
            "min_cosine": float(cosine.min()),
        }
        print(f"{name}: {row}", flush=True)
        write_json_atomic(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
