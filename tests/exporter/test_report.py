"""The INT8 share report of the exports of tiny models of the three architectures (and of an integer
export's TensorRT form), whose expected shares are counted from the model's config (the GEMMs of a BERT /
SqueezeBERT layer and their weight sizes), not from the code under test. The rule itself, on hand-built
graphs: tests/trt_runtime/contract/test_int8_share.py.

The rule (TensorRT developer guide, "Explicit Quantization"): a GEMM runs in INT8 only when every data
input comes from an int8 DequantizeLinear, through shape-only ops; docs/integer.md: 8-bit integer GEMMs
are IntMatMul, 16-bit inputs and attention probabilities IntMatMulWide.
"""

from __future__ import annotations

import json

import onnx
import pytest

import exporter
from exporter.__main__ import main as exporter_main
from models.quantization import QuantizationRecipe
from tests.fixtures.tiny_models import save_tiny, tiny_config
from trt_runtime.backends.tensorrt.integer_form import tensorrt_form
from trt_runtime.contract.export_dir import read_export_info
from trt_runtime.contract.int8_share import format_report, int8_share

# --- tiny models of the three architectures --------------------------------------------------------------


def _bert_layer_weights(config):
    """Weight elements of one BERT layer's linear GEMMs, by role (Q, K, V, attention output, FFN in, FFN out)."""
    h, i = config.hidden_size, config.intermediate_size
    return {"query": h * h, "key": h * h, "value": h * h, "attention-output": h * h, "ffn-input": h * i, "ffn-output": i * h}


def _squeezebert_layer_weights(config):
    """SqueezeBERT's grouped 1x1 convolutions: out x in / groups elements each."""
    h, i = config.hidden_size, config.intermediate_size
    return {
        "query": h * h // config.q_groups, "key": h * h // config.k_groups, "value": h * h // config.v_groups,
        "attention-output": h * h // config.post_attention_groups, "ffn-input": h * i // config.intermediate_groups,
        "ffn-output": i * h // config.output_groups,
    }


def _share(weights, roles):
    return sum(weights[r] for r in roles) / sum(weights.values())


def _export(tmp_path, model_type, task, recipe):
    directory, _ = save_tiny(tmp_path / "ckpt", model_type, task)
    out = exporter.export(directory, tmp_path / "out", task=task, recipe=recipe, log=None, validate=False)
    return read_export_info(out).int8_share, out


QUICK = {"num_samples": 8, "batch_size": 8}
ADDS = ("residual-adds",)
ALL_ROLES = ("query", "key", "value", "attention-output", "ffn-input", "ffn-output")


@pytest.mark.parametrize(
    ("model_type", "task", "recipe", "int8_roles", "heads"),
    [
        # the qdq default: SmoothQuant auto, only the residual adds float (docs/qdq.md): every linear GEMM INT8
        ("bert", "text-classification", QuantizationRecipe(mode="qdq", **QUICK), ALL_ROLES, 2),
        # without smoothing the FFN output projection's input stays float (DEFAULT_KEEP_FLOAT_UNSMOOTHED)
        ("bert", "text-classification", QuantizationRecipe(mode="qdq", smoothing="none", **QUICK), ALL_ROLES[:5], 2),
        # residual adds float, smoothed: a Div before each smoothed site's QuantizeLinear, every linear INT8
        ("bert", "feature-extraction", QuantizationRecipe(mode="qdq", keep_float=ADDS, smoothing="auto", **QUICK), ALL_ROLES, 1),
        ("bert", "feature-extraction", QuantizationRecipe(mode="qdq", keep_float=(), **QUICK), ALL_ROLES, 1),
        ("squeezebert", "feature-extraction", QuantizationRecipe(mode="qdq", **QUICK), ALL_ROLES[:5], 1),
        ("squeezebert", "feature-extraction", QuantizationRecipe(mode="qdq", keep_float=ADDS, **QUICK), ALL_ROLES, 1),
        ("bert", "feature-extraction", QuantizationRecipe(mode="none"), (), 1),
    ],
    ids=["bert-qdq-default", "bert-qdq-unsmoothed", "bert-qdq-smoothed", "bert-qdq-quantize-all", "squeezebert-qdq-default",
         "squeezebert-qdq-adds-float", "bert-float"],
)
def test_qdq_and_float_exports_report_the_share_counted_from_the_config(tmp_path, model_type, task, recipe, int8_roles, heads):
    share, _ = _export(tmp_path, model_type, task, recipe)
    config = tiny_config(model_type, task)
    layers = config.num_hidden_layers
    weights = (_squeezebert_layer_weights if model_type == "squeezebert" else _bert_layer_weights)(config)
    linear = share["linear"]
    assert linear["gemms"] == 6 * layers and linear["work"] == layers * sum(weights.values())
    assert linear["int8_work"] / linear["work"] == pytest.approx(_share(weights, int8_roles))
    assert linear["int8_gemms"] == len(int8_roles) * layers and linear["split_gemms"] == 0
    attention = share["attention"]  # scores and context per layer; both quantized unless the export is float
    assert attention["gemms"] == 2 * layers
    assert attention["int8_gemms"] == (0 if recipe.mode == "none" else 2 * layers)
    assert share["heads"] == {**share["heads"], "gemms": heads, "int8_gemms": 0}  # heads and pooler stay float
    assert len(share["float_gemms"]) == share["linear"]["gemms"] - linear["int8_gemms"] + heads + (
        attention["gemms"] - attention["int8_gemms"]
    )


@pytest.mark.parametrize(
    ("model_type", "wide", "split_roles"),
    [
        # hidden-states widens what Q, K, V read; ffn-input and ffn-output-input what the FFN projections read
        ("roberta", None, ("query", "key", "value", "ffn-input", "ffn-output")),
        ("ibert", (), ()),
    ],
    ids=["roberta-integer-default", "ibert-integer-8-bit"],
)
def test_integer_exports_count_integer_gemms_and_split_16_bit_gemms_as_int8(tmp_path, model_type, wide, split_roles):
    recipe = QuantizationRecipe(mode="integer", wide_activations=wide, **QUICK)
    share, out = _export(tmp_path, model_type, "feature-extraction", recipe)
    config = tiny_config(model_type)
    layers, weights = config.num_hidden_layers, _bert_layer_weights(config)
    linear, attention = share["linear"], share["attention"]
    assert linear["int8_work"] == linear["work"] == layers * sum(weights.values())
    assert linear["split_work"] / linear["work"] == pytest.approx(_share(weights, split_roles))
    assert linear["split_gemms"] == len(split_roles) * layers
    # the probabilities (0..256, 9 bits) enter the context matmul through IntMatMulWide in every layer
    assert attention["int8_gemms"] == attention["gemms"] == 2 * layers and attention["split_gemms"] == layers
    assert share["heads"]["gemms"] == 1 and share["heads"]["int8_gemms"] == 0  # the float pooler
    # the graph TensorRT gets: each split GEMM is two MatMuls on int8 Q/DQ inputs, INT8 by the same rule
    form = int8_share(tensorrt_form(onnx.load(str(out / "model.onnx")))).to_dict()
    linear, attention = form["linear"], form["attention"]
    assert linear["gemms"] == linear["int8_gemms"] == (6 + len(split_roles)) * layers and linear["split_gemms"] == 0
    assert linear["int8_work"] == linear["work"] == layers * (sum(weights.values()) + sum(weights[r] for r in split_roles))
    assert attention["gemms"] == attention["int8_gemms"] == 3 * layers  # scores once, probabilities x V twice
    assert not [g for g in form["float_gemms"] if g["group"] != "heads"]


def test_report_flag_prints_the_report_and_export_json_matches_the_graph(tmp_path, capsys):
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "feature-extraction")
    out = tmp_path / "out"
    argv = ["--model", str(directory), "--output", str(out), "--quantization", "qdq", "--no-validate", "--quiet",
            "--num-calibration-samples", "8", "--calibration-batch-size", "8", "--report",
            "--smoothing", "none"]  # unsmoothed, so that the report lists float GEMMs (the FFN output projections)
    assert exporter_main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out)  # the path stays the last line
    recorded = json.loads((out / "export.json").read_text())["int8_share"]
    assert "\n".join(printed[:-1]) == format_report(recorded)
    assert recorded == int8_share(onnx.load(str(out / "model.onnx"))).to_dict()
    assert printed[0].startswith("INT8 share: encoder linear GEMM work 75.0 % (10 of 12 GEMMs)")


def test_export_json_int8_share_is_optional_and_must_be_an_object():
    from trt_runtime.contract.export_dir import ExportDirError, ExportInfo

    spec = {"name": "input_ids", "dtype": "int64", "shape": ["batch_size", "sequence_length"]}
    base = {"architecture": "bert", "model_type": "bert", "task": "feature-extraction", "quantization": "qdq",
            "opset": 17, "inputs": [spec], "outputs": [{**spec, "name": "last_hidden_state"}],
            "max_sequence_length": 64, "vocab_size": 99}
    assert ExportInfo.from_dict(base).int8_share is None  # exports made before the report
    assert ExportInfo.from_dict({**base, "int8_share": {"rule": "r"}}).int8_share == {"rule": "r"}
    with pytest.raises(ExportDirError, match="int8_share must be an object"):
        ExportInfo.from_dict({**base, "int8_share": 0.66})
