"""Integer mode's options and files: wide (16-bit) activation sites, and calibration.json's save / load.

Bit widths are checked against Hugging Face's IBertModel (quant_mode=True), whose QuantActs define I-BERT's
8/16/22/32-bit layout; the file round trip against the calibrated model itself (bitwise equal outputs).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import models
from models.ibert import (
    DEFAULT_WIDE_ACTIVATIONS,
    WIDE_ACTIVATION_BIT,
    WIDE_ACTIVATION_SITES,
    WIDE_SOFTMAX_OUTPUT_BIT,
    wide_activation_names,
)
from models.quantization import (
    CalibrationError,
    calibrate,
    calibrate_integer,
    load_calibration,
    load_integer_calibration,
    save_calibration,
    save_integer_calibration,
)
from models.quantization.integer.calibration import integer_state
from models.quantization.integer.modules import NotCalibratedError
from tests.fixtures.tiny_models import hf_model, padded_batch

REALISTIC = dict(initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TASK = "feature-extraction"


def activation_bits(model: torch.nn.Module, prefix: str = "") -> dict[str, int]:
    """{QuantAct name: activation_bit} of ours or of Hugging Face's I-BERT (same module names)."""
    return {
        prefix + name: module.activation_bit
        for name, module in model.named_modules()
        if type(module).__name__ == "QuantAct"
    }


def calibrated(directory, model_type: str = "bert", **load_options) -> models.TaskModel:
    model = models.load(directory, task=TASK, quantization="integer", **load_options)
    batches = [padded_batch(model_type, seed=20 + i) for i in range(3)]
    return calibrate_integer(model, batches, progress=False, data="unit test")


def outputs(model: torch.nn.Module, model_type: str = "bert") -> torch.Tensor:
    with torch.no_grad():
        return model(**padded_batch(model_type, seed=5))["last_hidden_state"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bert")
    hf_model("bert", TASK, **REALISTIC).save_pretrained(directory)
    return directory


# --- wide activations ----------------------------------------------------------------------------------


def test_wide_activations_widen_exactly_their_sites(tmp_path):
    reference = hf_model("ibert", TASK, quant_mode=True, **REALISTIC)
    reference.save_pretrained(tmp_path)
    expected = activation_bits(reference, "ibert.")
    assert len(expected) > 30  # every QuantAct of the embeddings and the two layers

    # an I-BERT quant_mode checkpoint keeps I-BERT's widths: its ranges were trained with them
    faithful = models.load(tmp_path, task=TASK)
    assert faithful.config.wide_activations == ()
    assert activation_bits(faithful) == expected

    softmax_bits = {name: m.output_bit for name, m in faithful.named_modules() if type(m).__name__ == "IntSoftmax"}
    assert len(softmax_bits) == 2 and set(softmax_bits.values()) == {8}  # Hugging Face's IntSoftmax(8)
    for sites in [("ffn-input",), ("ffn-output-input",), ("hidden-states",), ("softmax-output",), DEFAULT_WIDE_ACTIVATIONS]:
        wide = models.load(tmp_path, task=TASK, wide_activations=sites)
        assert wide.config.wide_activations == sites
        got = activation_bits(wide)
        changed = {name for name in got if got[name] != expected[name]}
        names = {f"ibert.{name}" for name in wide_activation_names(sites, num_layers=2)}
        assert changed == {name for name in names if not name.endswith(".softmax")}
        assert all(got[name] == WIDE_ACTIVATION_BIT and expected[name] == 8 for name in changed)
        softmax = {name: m.output_bit for name, m in wide.named_modules() if type(m).__name__ == "IntSoftmax"}
        widened = {name for name, bits in softmax.items() if bits != 8}
        assert widened == {name for name in names if name.endswith(".softmax")}
        assert all(softmax[name] == WIDE_SOFTMAX_OUTPUT_BIT for name in widened)
        assert changed or widened
        # attention.output.output_activation ends like the layer's output.output_activation: its own site
        assert (got["ibert.encoder.layer.0.attention.output.output_activation"] == 16) == ("ffn-input" in sites)


def test_wide_activations_default_and_errors(bert_dir):
    model = models.load(bert_dir, task=TASK, quantization="integer")
    assert model.config.wide_activations == DEFAULT_WIDE_ACTIVATIONS == (
        "ffn-input", "ffn-output-input", "hidden-states", "softmax-output"
    )
    assert activation_bits(model)["bert.encoder.layer.1.pre_output_act"] == WIDE_ACTIVATION_BIT
    assert models.load(bert_dir, task=TASK, quantization="integer", wide_activations=[]).config.wide_activations == ()
    with pytest.raises(ValueError, match="unknown site.*'query'.*ffn-input, ffn-output-input, hidden-states, softmax-output"):
        models.load(bert_dir, task=TASK, quantization="integer", wide_activations=["query"])
    with pytest.raises(ValueError, match="quantization='integer' only"):
        models.load(bert_dir, task=TASK, quantization="qdq", wide_activations=["hidden-states"])


def test_wide_activations_are_closer_to_float(bert_dir):
    """16 bits at the wide sites: a smaller quantization error than I-BERT's 8 bits, same calibration data."""
    reference = outputs(models.load(bert_dir, task=TASK, quantization="none"))
    errors = {}
    for sites in [(), DEFAULT_WIDE_ACTIVATIONS]:
        got = outputs(calibrated(bert_dir, wide_activations=sites))
        errors[sites] = ((got - reference).norm() / reference.norm()).item()
    print(f"relative error to float: 8-bit {errors[()]:.4f}, wide {errors[DEFAULT_WIDE_ACTIVATIONS]:.4f}")
    assert errors[DEFAULT_WIDE_ACTIVATIONS] < 0.9 * errors[()]  # tiny random model: most error is elsewhere


def _captured_inputs(model: torch.nn.Module, kind: str) -> dict[str, object]:
    """{module name: the IntegerTensor its last forward took} for the modules of type `kind`."""
    captured: dict[str, object] = {}
    for name, module in model.named_modules():
        if type(module).__name__ == kind:
            module.register_forward_pre_hook(lambda m, args, name=name: captured.__setitem__(name, args[0]))
    outputs(model)
    return captured


def test_a_wide_ffn_input_keeps_the_gelu_on_the_8_bit_grid(bert_dir):
    """"ffn-input": the FFN input projection reads 16 bits (IntMatMulWide) and its accumulator is requantized
    onto the grid an 8-bit input's would be, 2**8 x coarser, so the i-GELU gets the 8-bit layout's constants."""
    model = calibrated(bert_dir, wide_activations=("ffn-input",))
    gelu_inputs = _captured_inputs(model, "IntGELU")
    layers = dict(model.named_modules())
    for name, x in gelu_inputs.items():
        layer = name.removesuffix(".intermediate.intermediate_act_fn")
        act = layers[f"{layer}.pre_intermediate_act"]
        assert act.activation_bit == 16
        weight_scale = layers[f"{layer}.intermediate.dense"].weight_scale()
        grid = np.float32(np.asarray(act.scale(), np.float32).reshape(1)[0] * np.float32(256))
        np.testing.assert_array_equal(x.scale, (weight_scale * grid).astype(np.float32))
    # the snapped accumulator is the exact GEMM rounded once: within half a step (+ the bias's) of float64
    # x W^T + b on the dequantized 16-bit input
    captured = _captured_inputs(model, "QuantLinear")
    for name, x in captured.items():
        if not name.endswith("intermediate.dense"):
            continue
        dense = layers[name]
        gelu_input = gelu_inputs[name.replace(".dense", ".intermediate_act_fn")]
        a = x.values.to(torch.float64).numpy() * np.float64(np.asarray(x.scale).reshape(-1)[0])
        weight_t = dense.integers(np.asarray(x.scale, np.float32)).weight_t  # the int8 weights: an input here
        w = weight_t.to(torch.float64).numpy() * dense.weight_scale().astype(np.float64)[None, :]
        expected = a @ w + dense.bias.detach().to(torch.float64).numpy()
        step = np.asarray(gelu_input.scale, np.float64)
        got = gelu_input.values.to(torch.float64).numpy() * step
        assert np.all(np.abs(got - expected) <= step * 1.01 + 1e-9)


def test_a_wide_softmax_output_is_closer_to_float64_softmax(bert_dir):
    """"softmax-output": probabilities on a 2**-14 grid instead of I-BERT's 2**-8, against NumPy's float64
    softmax of the same (dequantized) scores; the i-exp polynomial's error is what remains."""
    errors = {}
    for sites in [(), ("softmax-output",)]:
        model = calibrated(bert_dir, wide_activations=sites)
        softmax = next(m for m in model.modules() if type(m).__name__ == "IntSoftmax")
        captured: dict[str, object] = {}
        softmax.register_forward_hook(
            lambda m, args, out, captured=captured: captured.update(scores=args[0], mask=args[1], probs=out)
        )
        outputs(model)
        scores, probs = captured["scores"], captured["probs"]
        assert probs.values.max() <= 2**softmax.output_bit and float(probs.scale[0]) == 2.0**-softmax.output_bit
        x = scores.values.to(torch.float64).numpy() * float(np.asarray(scores.scale).reshape(-1)[0])
        x = np.where(captured["mask"].numpy() < 0, -np.inf, x)
        reference = np.exp(x - x.max(-1, keepdims=True))
        reference /= reference.sum(-1, keepdims=True)
        errors[sites] = np.abs(probs.values.numpy() * 2.0**-softmax.output_bit - reference).max()
    print(f"softmax max error to float64: 8 bits {errors[()]:.5f}, 14 bits {errors[('softmax-output',)]:.5f}")
    assert errors[("softmax-output",)] < 0.5 * errors[()]


# --- calibration.json ----------------------------------------------------------------------------------


def test_calibration_file_round_trip(bert_dir, tmp_path):
    model = calibrated(bert_dir)
    path = save_integer_calibration(model, tmp_path / "calibration.json")
    data = json.loads(path.read_text())
    assert (data["format_version"], data["mode"], data["method"], data["data"]) == (1, "integer", "ibert-minmax", "unit test")
    assert data["num_samples"] == 9 and data["model"]["hidden_size"] == 32 and len(data["model"]["weights_sha256"]) == 64
    assert (data["force_dequant"], data["wide_activations"]) == ("none", list(DEFAULT_WIDE_ACTIVATIONS))
    assert len(data["activations"]) == len(activation_bits(model)) and len(data["layernorm_shifts"]) == 5
    assert data["activations"]["bert.encoder.layer.0.pre_output_act"]["bits"] == 16
    assert data["activations"]["bert.encoder.layer.0.attention.self.query_activation"]["bits"] == 8

    with pytest.raises(NotCalibratedError):
        outputs(models.load(bert_dir, task=TASK, quantization="integer"))
    expected = outputs(model)
    fresh = models.load(bert_dir, task=TASK, quantization="integer", calibration=path)
    assert torch.equal(outputs(fresh), expected)
    assert integer_state(fresh) == integer_state(model)
    assert fresh.calibration_info["method"] == "ibert-minmax"
    for load in (load_calibration, load_integer_calibration):  # the functions, on a loaded model
        target = models.load(bert_dir, task=TASK, quantization="integer")
        assert load(target, path)["mode"] == "integer"
        assert torch.equal(outputs(target), expected)
    own = model.state_dict()
    buffers = {k: v for k, v in target.state_dict().items() if k.endswith(("x_min", "x_max", "act_scaling_factor", "shift"))}
    assert len(buffers) > 90 and all(torch.equal(value, own[key]) for key, value in buffers.items())


def test_calibration_file_carries_force_dequant_and_wide_activations(bert_dir, tmp_path):
    model = calibrated(bert_dir, force_dequant="gelu", wide_activations=["ffn-output-input"])
    path = save_integer_calibration(model, tmp_path / "calibration.json")
    fresh = models.load(bert_dir, task=TASK, quantization="integer", calibration=path)  # settings from the file
    assert (fresh.config.force_dequant, fresh.config.wide_activations) == ("gelu", ("ffn-output-input",))
    assert torch.equal(outputs(fresh), outputs(model))
    with pytest.raises(CalibrationError, match=r"wide_activations=\['ffn-output-input'\].*load the model"):
        models.load(bert_dir, task=TASK, quantization="integer", wide_activations=(), calibration=path)
    with pytest.raises(CalibrationError, match="force_dequant='gelu', this model has force_dequant='none'"):
        models.load(bert_dir, task=TASK, quantization="integer", force_dequant="none", calibration=path)


def test_a_file_of_the_other_mode_is_a_clear_error(bert_dir, tmp_path):
    integer_path = save_integer_calibration(calibrated(bert_dir), tmp_path / "integer.json")
    qdq = models.load(bert_dir, task=TASK, quantization="qdq")
    calibrate(qdq, [padded_batch("bert", seed=20)], method="max", progress=False)
    qdq_path = save_calibration(qdq, tmp_path / "qdq.json")
    assert json.loads(qdq_path.read_text())["mode"] == "qdq"

    with pytest.raises(CalibrationError, match="is a qdq calibration file.*quantization='qdq'"):
        models.load(bert_dir, task=TASK, quantization="integer", calibration=qdq_path)
    with pytest.raises(CalibrationError, match="is a qdq calibration file"):
        load_integer_calibration(models.load(bert_dir, task=TASK, quantization="integer"), qdq_path)
    with pytest.raises(CalibrationError, match="qdq calibration file; this model is in integer mode"):
        load_calibration(models.load(bert_dir, task=TASK, quantization="integer"), qdq_path)
    for quantization in ("qdq", "none"):
        with pytest.raises(CalibrationError, match="integer calibration file.*quantization='integer'"):
            models.load(bert_dir, task=TASK, quantization=quantization, calibration=integer_path)
    # and a qdq file still loads into a qdq model
    again = models.load(bert_dir, task=TASK, quantization="qdq", calibration=qdq_path)
    assert torch.equal(outputs(again), outputs(qdq))


def test_calibration_file_errors_name_the_problem(bert_dir, tmp_path, caplog):
    path = save_integer_calibration(calibrated(bert_dir), tmp_path / "calibration.json")

    def broken(change) -> str:
        bad = json.loads(path.read_text())
        change(bad)
        target = tmp_path / "bad.json"
        target.write_text(json.dumps(bad))
        return str(target)

    act = "bert.encoder.layer.0.attention.self.query_activation"
    norm = "bert.encoder.layer.1.output.LayerNorm"
    cases = {
        "made for another model: hidden_size 768": lambda d: d["model"].update(hidden_size=768),
        "QuantActs this model does not have: nope": lambda d: d["activations"].update(nope=d["activations"][act]),
        f"nothing for this model's QuantActs: {act}": lambda d: d["activations"].pop(act),
        f"nothing for this model's IntLayerNorms: {norm}": lambda d: d["layernorm_shifts"].pop(norm),
        f"{act} was calibrated at 16 bits, this model has 8": lambda d: d["activations"][act].update(bits=16),
        "x_min 5.0 > x_max 1.0": lambda d: d["activations"][act].update(x_min=5.0, x_max=1.0),
        "must be {'bits', 'x_min', 'x_max'} numbers": lambda d: d["activations"][act].update(x_max=None),
        f"shift of {norm} must be an integer": lambda d: d["layernorm_shifts"].update({norm: -1}),
        "'activations' and 'layernorm_shifts' must be objects": lambda d: d.update(activations=[]),
        "unknown calibration mode 'float'": lambda d: d.update(mode="float"),
        "format_version 7": lambda d: d.update(format_version=7),
    }
    for message, change in cases.items():
        with pytest.raises(CalibrationError, match=message.replace("{", r"\{").replace("}", r"\}")):
            load_calibration(models.load(bert_dir, task=TASK, quantization="integer"), broken(change))

    # other weights of the same shapes (a fine-tuned copy): a warning, and the ranges still apply
    fine_tuned = models.load(bert_dir, task=TASK, quantization="integer")
    with torch.no_grad():
        fine_tuned.bert.encoder.layer[0].attention.self.query.weight.mul_(1.01)
    with caplog.at_level(logging.WARNING):
        load_calibration(fine_tuned, path)
    assert "calibrated on other weights" in caplog.text
    with pytest.raises(CalibrationError, match="no range"):
        save_integer_calibration(models.load(bert_dir, task=TASK, quantization="integer"), tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_every_site_names_quantacts_of_hugging_face_ibert():
    """The site table names modules that exist in I-BERT's module tree (so checkpoints and files agree):
    QuantActs, and for the softmax output Hugging Face's IntSoftmax of every layer."""
    reference = hf_model("ibert", TASK, quant_mode=True)
    hf_names = set(activation_bits(reference))  # IBertModel: backbone names
    hf_softmax = {name for name, m in reference.named_modules() if type(m).__name__ == "IntSoftmax"}
    assert len(hf_softmax) == 2
    for site in WIDE_ACTIVATION_SITES:
        names = wide_activation_names([site], num_layers=2)
        assert names == hf_softmax if site == "softmax-output" else (len(names) >= 3 and names <= hf_names), site
