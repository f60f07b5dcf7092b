"""Integer mode end to end on tiny models: bit-for-bit Hugging Face I-BERT (quant_mode=True) for every head and
force_dequant, checkpoint state, calibration of float checkpoints, export path and fine-tuning."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file

import models
from models.quantization.integer.calibration import calibrate_integer, integer_state, reset_integer_state
from models.quantization.integer.modules import NotCalibratedError, QuantAct, load_integer_state
from tests.fixtures.tiny_models import hf_model, hf_outputs, padded_batch

IBERT_TASKS = (
    "feature-extraction",
    "fill-mask",
    "text-classification",
    "token-classification",
    "question-answering",
    "multiple-choice",
)
FORCE_DEQUANT = ("none", "gelu", "softmax", "layernorm", "nonlinear")
# Realistic activation magnitudes (initializer_range 0.2 on the tiny hidden size 32): with the default
# 0.02 the attention scores are so small that Hugging Face's float32 emulation of the exp integers
# (~2**38) loses bits, and it, not the integer algorithm, is then what differs (docs/integer.md).
REALISTIC = dict(initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def choices_for(task: str) -> int | None:
    return 4 if task == "multiple-choice" else None


def hf_calibrated(tmp_path, task: str, force_dequant: str = "none", save: bool = True):
    """A Hugging Face I-BERT with quant_mode=True whose ranges come from training-mode passes, saved."""
    model = hf_model("ibert", task, quant_mode=True, force_dequant=force_dequant, **REALISTIC).train()
    with torch.no_grad():
        for seed in range(3):
            feeds = padded_batch("ibert", seed=10 + seed, choices=choices_for(task))
            feeds.pop("token_type_ids")
            model(**feeds)
    model.eval()
    if save:
        model.save_pretrained(tmp_path)
    return model


PARITY_CASES = [(task, "none") for task in IBERT_TASKS] + [("feature-extraction", fd) for fd in FORCE_DEQUANT[1:]]


@pytest.mark.parametrize(("task", "force_dequant"), PARITY_CASES)
def test_matches_hugging_face_ibert(tmp_path, task, force_dequant):
    """Same weights, same ranges: the same outputs, bit for bit.

    Hugging Face computes i-GELU's products (~2**26) in float32, which rounds; we compute them exactly.
    Where that moves a GELU output across a rounding boundary of the next 8-bit requantization (about
    one element in 10**4), one activation differs by one step and the difference travels on; the test
    allows that much (it happens for one case of these 10 with these seeds).
    """
    reference = hf_calibrated(tmp_path, task, force_dequant)
    ours = models.load(tmp_path, task=task)  # quant_mode=true checkpoint: integer mode by default
    assert ours.quantization == "integer"
    feeds = padded_batch("ibert", choices=choices_for(task))
    expected = hf_outputs(reference, task, feeds)
    with torch.no_grad():
        got = ours(**feeds)
    for name, value in expected.items():
        equal = (got[name] == value).float().mean().item()
        difference = (got[name] - value).abs().max().item()
        print(f"{task} force_dequant={force_dequant} {name}: {equal:.2%} bitwise equal, max |diff| {difference:.3g}")
        assert equal >= 0.97 and difference <= 0.05, f"{name}: {equal:.2%} equal, max |ours - transformers| {difference:.3g}"


def test_checkpoint_restores_ranges_and_shifts(tmp_path):
    hf_calibrated(tmp_path, "feature-extraction")
    saved = {f"ibert.{k}": v for k, v in load_file(tmp_path / "model.safetensors").items()}  # IBertModel: no prefix
    ours = models.load(tmp_path, task="feature-extraction")
    state = ours.state_dict()
    keys = [k for k in saved if k.endswith(("x_min", "x_max", "shift"))]
    assert len(keys) > 40 and any(saved[k].item() > 0 for k in keys if k.endswith("shift"))
    for key in keys:
        assert torch.equal(state[key], saved[key]), key
    # the same state into a fresh model by the function the loader's hook can call
    fresh = models.load(tmp_path, task="feature-extraction")
    reset_integer_state(fresh)
    assert load_integer_state(fresh, saved) == []
    assert integer_state(fresh) == integer_state(ours)


def test_calibration_reproduces_hugging_face_training_mode_ranges(tmp_path):
    """calibrate_integer(method="ema") = I-BERT's own range rule on the same batches (without dropout)."""
    reference = hf_model("ibert", "feature-extraction", quant_mode=True, **REALISTIC)
    reference.save_pretrained(tmp_path)  # uncalibrated: ranges at their initial ±1e-5
    ours = models.load(tmp_path, task="feature-extraction")
    batches = []
    for seed in range(3):
        feeds = padded_batch("ibert", seed=10 + seed)
        feeds.pop("token_type_ids")
        batches.append(feeds)
    reference.train()
    with torch.no_grad():
        for feeds in batches:
            reference(**feeds)
    calibrate_integer(ours, batches, method="ema", progress=False)
    expected = {f"ibert.{k}": v for k, v in reference.state_dict().items()}
    for name, values in integer_state(ours).items():
        for field, value in values.items():
            target = expected[f"{name}.{field}"].item()
            # softmax.act observes exp integers (~2**40) and intermediate.output_activation the i-GELU output,
            # both of which Hugging Face computes in float32 (rounded), we exactly; a GELU output that rounds
            # the other way then moves later ranges by ~1e-6
            inexact = ".softmax." in name or "intermediate.output_activation" in name
            assert value == pytest.approx(target, rel=1e-4 if inexact else 1e-5), f"{name}.{field}"


def test_uncalibrated_model_says_how_to_calibrate(tmp_path):
    reference = hf_model("roberta", "feature-extraction")
    reference.save_pretrained(tmp_path)
    ours = models.load(tmp_path, task="feature-extraction", quantization="integer")
    with pytest.raises(NotCalibratedError, match="calibrate_integer"):
        ours(**padded_batch("roberta"))


@pytest.mark.parametrize("model_type", ["bert", "roberta", "ibert"])
@pytest.mark.parametrize("method", ["ema", "minmax"])
def test_calibrated_float_checkpoints_stay_close_to_float(tmp_path, model_type, method):
    reference = hf_model(model_type, "feature-extraction", **REALISTIC)
    reference.save_pretrained(tmp_path)
    ours = models.load(tmp_path, task="feature-extraction", quantization="integer")
    batches = [padded_batch(model_type, seed=20 + i) for i in range(4)]
    calibrate_integer(ours, batches, method=method, progress=False)
    assert ours.calibration_info["method"] == f"ibert-{method}"
    feeds = padded_batch(model_type)
    expected = hf_outputs(reference, "feature-extraction", feeds)["last_hidden_state"]
    with torch.no_grad():
        got = ours(**feeds)["last_hidden_state"]
    mask = feeds["attention_mask"].bool()
    cosine = torch.nn.functional.cosine_similarity(got[mask], expected[mask], dim=-1)
    print(f"{model_type} {method}: mean token cosine to float {cosine.mean():.4f}")
    assert cosine.mean() > 0.98
    assert cosine.min() > 0.9


def test_bert_token_types_are_used(tmp_path):
    hf_model("bert", "feature-extraction", **REALISTIC).save_pretrained(tmp_path)
    ours = models.load(tmp_path, task="feature-extraction", quantization="integer")
    calibrate_integer(ours, [padded_batch("bert", seed=3)], progress=False)
    feeds = padded_batch("bert")
    with torch.no_grad():
        with_types = ours(**feeds)["last_hidden_state"]
        without = ours(**{**feeds, "token_type_ids": torch.zeros_like(feeds["token_type_ids"])})["last_hidden_state"]
    assert not torch.equal(with_types, without)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_trace_uses_qdq_and_ibert_ops_and_agrees_with_eager(tmp_path):
    hf_calibrated(tmp_path, "feature-extraction")
    ours = models.load(tmp_path, task="feature-extraction")
    feeds = padded_batch("ibert")

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = ours

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask)["last_hidden_state"]

    last_hidden_state = LastHiddenState().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(last_hidden_state, (feeds["input_ids"], feeds["attention_mask"]), check_trace=False)
    kinds = [node.kind() for node in traced.inlined_graph.nodes()]
    assert kinds.count("aten::fake_quantize_per_channel_affine") >= 12  # every QuantLinear weight
    assert kinds.count("aten::fake_quantize_per_tensor_affine") >= 20  # the 8-bit requantizations
    assert {"ibert::int_gelu", "ibert::int_softmax", "ibert::int_layernorm"} <= set(kinds)
    with torch.no_grad():
        eager = last_hidden_state(feeds["input_ids"], feeds["attention_mask"])
        exported = traced(feeds["input_ids"], feeds["attention_mask"])
    # Q/DQ + float MatMul instead of the integer GEMM: float sums in another order, rare one-step flips
    step = ours.ibert.encoder.layer[-1].output.output_activation.scale()[0]
    assert (exported - eager).abs().max().item() <= 4 * step
    assert (exported == eager).float().mean().item() > 0.95


def test_fine_tuning_gets_straight_through_gradients(tmp_path):
    hf_calibrated(tmp_path, "text-classification")
    ours = models.load(tmp_path, task="text-classification").train()
    feeds = padded_batch("ibert")
    loss = ours(**feeds)["logits"].logsumexp(-1).mean()
    loss.backward()
    layer = ours.ibert.encoder.layer[0]
    for param in (
        ours.ibert.embeddings.word_embeddings.weight,
        layer.attention.self.query.weight,
        layer.intermediate.dense.weight,
        layer.output.LayerNorm.weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0
    acts = [m for m in ours.modules() if isinstance(m, QuantAct)]
    assert all(m.is_calibrated for m in acts if m.name.endswith("_activation"))


def test_bad_configuration_is_named(tmp_path):
    hf_model("bert", "feature-extraction", hidden_act="relu").save_pretrained(tmp_path / "relu")
    with pytest.raises(ValueError, match="only 'gelu'"):
        models.load(tmp_path / "relu", task="feature-extraction", quantization="integer")
    hf_calibrated(tmp_path / "ibert", "feature-extraction")
    with pytest.raises(ValueError, match="force_dequant must be one of"):
        models.load(tmp_path / "ibert", task="feature-extraction", force_dequant="relu")
