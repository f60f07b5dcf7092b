"""SmoothQuant-style migration (models.quantization.smoothing) against a NumPy float64 reimplementation on the
Hugging Face model's own activations, and against modelopt's SmoothQuant (`INT8_SMOOTHQUANT_CFG`) on the
same tiny model and data."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

import exporter
import models
from models.quantization import QuantizationRecipe, set_quantization
from models.quantization.smoothing import SCALE_RANGE, smooth, smoothing_sites
from tests.fixtures.tiny_models import hf_model, padded_batch, save_tiny
from trt_runtime.contract.export_dir import CALIBRATION_JSON

ALPHA = 0.5
LAYERS = 2  # tiny_config's num_hidden_layers


def _batches(count=3):
    batches = []
    for index in range(count):
        feeds = padded_batch("bert", batch=4, seq=12, seed=10 + index)
        batches.append(dict(feeds))
    return batches


def _hf_site_inputs(model, batches):
    """Float64 inputs of each smoothing site's first linear, captured from the Hugging Face model."""
    captured: dict[str, list[np.ndarray]] = {}
    handles = []
    for name, module in model.named_modules():
        if name.endswith(("attention.self.query", "intermediate.dense")) or (name.endswith("output.dense") and ".attention." not in name):
            def hook(module, inputs, name=name):
                captured.setdefault(name, []).append(inputs[0].detach().double().reshape(-1, inputs[0].shape[-1]).numpy())
            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for handle in handles:
        handle.remove()
    return {name: np.concatenate(rows) for name, rows in captured.items()}


def _hf(name):
    """Our module name -> the Hugging Face BertModel's (ours sit under "bert.", as BertFor* heads name them)."""
    return name.removeprefix("bert.")


def _numpy_scales(activation, weights, alpha):
    """SmoothQuant's s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha), in float64 (weights: [out, in] each)."""
    a = np.abs(activation).max(axis=0)
    w = np.max([np.abs(weight).max(axis=0) for weight in weights], axis=0)
    return np.clip(a**alpha / w ** (1 - alpha), *SCALE_RANGE)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory, reference = save_tiny(tmp_path_factory.mktemp("smoothing") / "ckpt", "bert", "feature-extraction")
    return directory, reference


def test_smoothing_is_an_identity_before_quantization_and_matches_numpy_float64(tiny):
    directory, reference = tiny
    batches = _batches()
    model = models.load(directory, task="feature-extraction", quantization="qdq")
    sites = smoothing_sites(model)
    assert [s.name.rsplit(".", 1)[1] for s in sites] == ["qkv", "ffn-input", "ffn-output"] * LAYERS
    scales = smooth(model, batches, ALPHA, progress=False)

    inputs = _hf_site_inputs(reference, batches)
    hf_modules = dict(reference.named_modules())
    for site in sites:
        first = site.linears[0]
        weights = [hf_modules[_hf(name)].weight.detach().double().numpy() for name in site.linears]
        expected = _numpy_scales(inputs[_hf(first)], weights, ALPHA)
        np.testing.assert_allclose(scales[first].double().numpy(), expected, rtol=1e-5)
        for name, weight in zip(site.linears, weights):  # the GEMM itself: (x / s) (W diag(s))^T = x W^T
            smoothed = dict(model.named_modules())[name].weight.detach().double().numpy()
            np.testing.assert_allclose(smoothed, weight * expected, rtol=1e-5)
            x = inputs[_hf(first)]
            np.testing.assert_allclose((x / expected) @ (weight * expected).T, x @ weight.T, rtol=1e-5, atol=1e-9)

    set_quantization(model, False)  # the float function of the smoothed model: Hugging Face's, to rounding
    with torch.no_grad():
        for batch in batches:
            got = model(**batch)["last_hidden_state"].double()
            want = reference(**batch).last_hidden_state.double()
            assert float((got - want).abs().max() / want.abs().max()) < 1e-5


def test_scales_match_modelopt_smoothquant_on_the_same_model_and_data(tiny):
    mtq = pytest.importorskip("modelopt.torch.quantization")
    directory, _ = tiny
    batches = _batches()
    ours = models.load(directory, task="feature-extraction", quantization="qdq")
    scales = smooth(ours, batches, ALPHA, progress=False)

    theirs = copy.deepcopy(hf_model("bert", "feature-extraction"))  # the checkpoint's weights (same seed)
    config = {**copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG), "algorithm": {"method": "smoothquant", "alpha": ALPHA}}

    def forward_loop(model):
        with torch.no_grad():
            for batch in batches:
                model(**batch)

    mtq.quantize(theirs, config, forward_loop)
    modules = dict(theirs.named_modules())
    compared = 0
    for site in smoothing_sites(ours):
        if len(site.linears) > 1:  # modelopt scales query, key and value apart; ours share one (max over the three)
            continue
        (name,) = site.linears
        pre_quant_scale = modules[_hf(name)].input_quantizer.pre_quant_scale.detach().double()  # modelopt's x multiplier
        np.testing.assert_allclose(1.0 / pre_quant_scale.numpy(), scales[name].double().numpy(), rtol=1e-4)
        compared += 1
    assert compared == 2 * LAYERS


def test_smoothed_qdq_export_records_scales_merges_qkv_and_reloads_bitwise(tmp_path, tiny):
    directory, _ = tiny
    recipe = QuantizationRecipe(mode="qdq", num_samples=16, batch_size=8)  # the default: SmoothQuant auto
    out = exporter.export(directory, tmp_path / "out", task="feature-extraction", recipe=recipe, log=None)  # validates
    import json

    import onnx

    calibration = json.loads((out / CALIBRATION_JSON).read_text())
    assert calibration["recipe"]["smoothing"] == "auto"
    graph = onnx.load(str(out / "model.onnx")).graph
    divisions = [n for n in graph.node if n.op_type == "Div" and any(c.op_type == "QuantizeLinear" for c in graph.node if n.output[0] in c.input)]
    sites = {name.rsplit(".", 1)[0] for name in calibration["smoothing"]}  # one Div per site, Q/K/V merged
    smoothed_sites = len({tuple(v) for v in calibration["smoothing"].values()})
    assert len(divisions) == smoothed_sites <= 3 * LAYERS and sites
    # calibration.json alone rebuilds the exported model: ONNX Runtime (optimizations off) agrees with it
    reloaded = models.load(directory, task="feature-extraction", quantization="qdq", calibration=out / CALIBRATION_JSON)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    batch = _batches(1)[0]
    (onnx_out,) = session.run(["last_hidden_state"], {k: v.numpy() for k, v in batch.items() if k in {i.name for i in session.get_inputs()}})
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(**batch)["last_hidden_state"].numpy(), onnx_out, atol=1e-5)
    for name, values in calibration["smoothing"].items():
        quantizer = dict(reloaded.named_modules())[f"{name}._input_quantizer"]
        assert quantizer.smoothing_scale.tolist() == values


def test_recipe_smoothing_field():
    assert QuantizationRecipe(mode="qdq").to_dict()["smoothing"] == "auto"  # the default (docs/qdq.md)
    recipe = QuantizationRecipe(mode="qdq", smoothing="0.50")
    assert recipe.smoothing == "0.5" and recipe.to_dict()["smoothing"] == "0.5"
    assert QuantizationRecipe.from_dict(recipe.to_dict()) == recipe
    for bad in ("1.5", "strong"):
        with pytest.raises(ValueError, match="--smoothing"):
            QuantizationRecipe(mode="qdq", smoothing=bad)
    with pytest.raises(ValueError, match="qdq only"):
        QuantizationRecipe(mode="integer", smoothing="auto")


def test_a_checkpoint_saved_smoothed_keeps_its_scales_when_calibrated_again(tmp_path, tiny):
    """QAT saves a smoothed qdq model (weights W diag(s), the quantizers' s); calibrating it again with the
    default recipe (smoothing auto), as the exporter does, must not smooth twice: the float function stays the
    original model's and the scales stay the saved ones."""
    from models.qat import save_checkpoint
    from models.quantization import calibrate_model

    directory, reference = tiny
    batches = _batches()
    model = models.load(directory, task="feature-extraction", quantization="qdq")
    scales = smooth(model, batches, ALPHA, progress=False)
    save_checkpoint(model, directory, tmp_path / "smoothed")
    again = models.load(tmp_path / "smoothed", task="feature-extraction", quantization="qdq")
    calibrate_model(again, batches, QuantizationRecipe(mode="qdq", num_samples=12, batch_size=4), progress=False)
    modules = dict(again.named_modules())
    for name, scale in scales.items():
        assert torch.equal(modules[name].input_quantizer.smoothing_scale, scale)
    set_quantization(again, False)
    with torch.no_grad():
        got = again(**batches[0])["last_hidden_state"].double()
        want = reference(**batches[0]).last_hidden_state.double()
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5


def test_a_smoothed_checkpoint_loaded_as_float_computes_the_original_model(tmp_path, tiny):
    """Its weights are W diag(s); loaded as float (the exporter's default mode for a bert config) or integer,
    models.load folds s back out, so the float function is the original checkpoint's."""
    from models.qat import save_checkpoint

    directory, reference = tiny
    batches = _batches()
    model = models.load(directory, task="feature-extraction", quantization="qdq")
    assert smooth(model, batches, ALPHA, progress=False)
    save_checkpoint(model, directory, tmp_path / "smoothed")
    as_float = models.load(tmp_path / "smoothed", task="feature-extraction", quantization="none")
    with torch.no_grad():
        got = as_float(**batches[0])["last_hidden_state"].double()
        want = reference(**batches[0]).last_hidden_state.double()
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
