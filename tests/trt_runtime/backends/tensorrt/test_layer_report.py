"""The layer-precision report (trt_runtime.backends.tensorrt.layer_report) and `python -m trt_runtime inspect`.

No engine can be built here, so the summariser runs on engine-inspector JSON in TensorRT's own format
(tests/fixtures/tensorrt_formats.py: layers of trt-engine-explorer's example engines and of the BERT
Myelin engine in NVIDIA/TensorRT issue #4397); the expected counts and GEMM work are worked out here from
the fixture's shapes.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.tensorrt_formats import RESNET_QAT_LAYERS, bert_layer_fixture, inspector_text
from tests.fixtures.tensorrt_test_models import ENGINE_BYTES, engine_info
from trt_runtime.__main__ import build_parser
from trt_runtime.backends.tensorrt.engine_info import ENGINE_LAYERS, write_engine
from trt_runtime.backends.tensorrt.layer_report import (
    LayerReportError,
    datatype,
    format_layer_report,
    layer_rows,
    onnx_nodes,
    summarize_layers,
)

B, S, H, HEADS = 8, 128, 768, 12


@pytest.mark.parametrize(
    ("text", "precision"),
    [
        ("Row major linear FP32", "FP32"),
        ("Row major linear FP16 format", "FP16"),
        ("Thirty-two wide channel vectorized row major Int8 format", "INT8"),
        ("Channel major BFloat16 format where channel % 8 == 0", "BF16"),
        ("Half", "FP16"),  # Myelin ("kgen") tensors
        ("Float", "FP32"),
        ("Int8", "INT8"),
        ("Row major linear UInt8 format", "UINT8"),
        ("Row major linear Int64 format", "INT64"),
        ("Unknown format", "unknown"),
    ],
)
def test_datatypes_of_the_inspectors_format_strings(text, precision):
    assert datatype(text) == precision


def test_a_qdq_bert_engine():
    report = summarize_layers(inspector_text(bert_layer_fixture(B, S, H, HEADS)))
    tokens = B * S
    int8_work = 2 * tokens * (3 * H) * H + 2 * tokens * H * H + 2 * tokens * (4 * H) * H + 2 * tokens * H * (4 * H)
    fp32_work = 2 * B * 3 * H
    attention_work = 2 * (2 * B * HEADS * S * (H // HEADS) * S)  # Q K^T and P V
    assert report["layers"] == 8  # the NoOp is not a layer that runs
    assert report["precision"] == {"INT8": 4, "FP16": 2, "FP32": 2}
    assert report["gemm"]["layers"] == {"INT8": 4, "FP32": 1}
    assert report["gemm"]["work"] == {"INT8": int8_work, "FP32": fp32_work}
    assert report["gemm"]["work_share"]["INT8"] == pytest.approx(int8_work / (int8_work + fp32_work), abs=1e-4)
    assert report["fused_attention"] == {"layers": {"FP16": 1}, "work": {"FP16": attention_work}}
    total = int8_work + fp32_work + attention_work
    assert report["matmul_work_share"]["FP16"] == pytest.approx(attention_work / total, abs=1e-4)
    assert report["myelin"] is True and report["ibert_plugins"] == {} and report["layers_with_unknown_work"] == 0


def test_an_ibert_engine_has_its_plugins_and_no_fused_attention():
    data = bert_layer_fixture(B, S, H, HEADS, ibert_plugins=True)
    nodes = {"/encoder/layer.0/attention/self/softmax/IntSoftmax": "ibert::IntSoftmax",
             "/encoder/layer.0/intermediate/intermediate_act_fn/IntGELU": "ibert::IntGELU"}
    report = summarize_layers(data, nodes)
    assert report["ibert_plugins"] == {"ibert::IntGELU": 1, "ibert::IntSoftmax": 1}
    assert report["fused_attention"]["layers"] == {}
    assert report["gemm"]["layers"] == {"INT8": 4, "FP16": 1, "FP32": 2}  # the two attention GEMMs apart
    # without node names the plugins are found by op name in the layer name or metadata
    assert summarize_layers(data)["ibert_plugins"] == report["ibert_plugins"]


def test_classic_layers_of_a_real_engine():
    report = summarize_layers({"Layers": RESNET_QAT_LAYERS})
    assert report["precision"] == {"FP32": 1, "INT8": 1}  # the Reformat reads FP32, the convolution Int8
    assert report["gemm"]["layers"] == {"INT8": 1}
    assert report["gemm"]["work"] == {"INT8": 2 * (32 * 64 * 112 * 112) * 3 * 7 * 7}
    assert report["myelin"] is False


def test_metadata_records():
    layer = bert_layer_fixture()["Layers"][1]
    assert onnx_nodes(layer) == ["/encoder/layer.0/attention/self/query/MatMul",
                                 "/encoder/layer.0/attention/self/key/MatMul",
                                 "/encoder/layer.0/attention/self/value/MatMul"]


def test_other_profiles_and_dynamic_shapes():
    data = bert_layer_fixture()
    copy = json.loads(json.dumps(data["Layers"][1]))
    copy["Name"] += " [profile 1]"
    data["Layers"].append(copy)
    dynamic = json.loads(json.dumps(data["Layers"][3]))
    dynamic["Name"] = "dynamic"
    dynamic["Inputs"][0]["Dimensions"] = [-1, -1, H]
    data["Layers"].append(dynamic)
    report = summarize_layers(data)
    assert report["gemm"]["layers"]["INT8"] == 5  # profile 1's copy not counted, the dynamic one counted...
    assert report["layers_with_unknown_work"] == 1  # ...but its work cannot be known


def test_layer_names_only_is_a_clear_error():
    with pytest.raises(LayerReportError, match="without ProfilingVerbosity.DETAILED"):
        summarize_layers({"Layers": ["conv1", "relu1"]})
    with pytest.raises(LayerReportError, match="no 'Layers' list"):
        summarize_layers({"Bindings": []})


def test_text_report():
    text = format_layer_report(summarize_layers(bert_layer_fixture(B, S, H, HEADS)))
    assert "layers: 8 (INT8 4, FP16 2, FP32 2) [Myelin]" in text
    assert "GEMM layers: INT8 4, FP32 1; GEMM work: INT8 100.0%, FP32 0.0%" in text
    assert "fused attention layers: FP16 1" in text and "ibert plugins: none" in text


def _inspect(tmp_path, *argv):
    parser, commands = build_parser()
    args = parser.parse_args(["inspect", str(tmp_path), *argv])
    return commands["inspect"].main(args)


def test_inspect_command(tmp_path, capsys):
    data = bert_layer_fixture(B, S, H, HEADS, ibert_plugins=True)
    info = engine_info(layers=summarize_layers(data), cuda_driver_version="12.4", plugin_ptx_version=84,
                       min_cuda_driver_version="12.4")
    write_engine(tmp_path, ENGINE_BYTES, info, inspector_text(data))
    assert (tmp_path / ENGINE_LAYERS).exists()
    assert _inspect(tmp_path, "--layers") == 0
    out = capsys.readouterr().out
    assert "TensorRT 10.13.0.35, NVIDIA H100 80GB HBM3 (compute capability 9.0), CUDA driver 12.4" in out
    assert "strongly typed, FP32 outside the INT8 parts (Q/DQ)" in out
    assert "plugins: ibert::IntGELU, ibert::IntLayerNorm, ibert::IntSoftmax (aot; needs a CUDA 12.4+ driver)" in out
    assert "ibert plugins: ibert::IntGELU 1, ibert::IntSoftmax 1" in out
    assert "PluginV3" in out and "_myl0_4" in out  # the layer list
    assert len([line for line in out.splitlines() if line.startswith("profile ")]) == 1
    assert _inspect(tmp_path, "--json", "--layers") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["layers"]["ibert_plugins"] == {"ibert::IntGELU": 1, "ibert::IntSoftmax": 1}
    names = [layer["Name"] for layer in data["Layers"]]
    assert [row["name"] for row in record["layer_list"]] == [row[0] for row in layer_rows(data)] == names


def test_inspect_without_an_engine(tmp_path, capsys):
    assert _inspect(tmp_path) == 1
    assert "model.engine not found; build it: python -m trt_runtime build" in capsys.readouterr().err
