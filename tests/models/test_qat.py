"""Fine-tuning (float and quantization-aware) and checkpoints that load back identically."""

from __future__ import annotations

import pytest
import torch
import transformers

import models
from models.data import labelled_batches, labelled_sentences
from models.qat import FinetuneConfig, finetune, new_task_model, save_checkpoint
from models.quantization import calibrate, named_quantizers
from tests.fixtures.tiny_models import VOCAB, padded_batch, save_tiny


@pytest.fixture
def tokenizer_dir(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]) + "\n")
    directory = tmp_path / "tokenizer"
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(directory)
    return directory


def synthetic_task(num_batches: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Label = which third of the vocabulary a sentence's tokens come from: learnable by a tiny model."""
    batches = []
    third = (VOCAB - 3) // 3
    for i in range(num_batches):
        batch = padded_batch("bert", batch=16, seq=10, seed=seed * 1000 + i)
        g = torch.Generator().manual_seed(seed * 1000 + i)
        labels = torch.randint(0, 3, (16,), generator=g)
        ids = 3 + labels[:, None] * third + torch.randint(0, third, (16, 10), generator=g)
        batch["input_ids"] = torch.where(batch["attention_mask"].bool(), ids, 0)
        batch["labels"] = labels
        batches.append(batch)
    return batches


def accuracy(model, batches) -> float:
    correct = total = 0
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        correct += (model(**inputs)["logits"].argmax(-1) == batch["labels"]).sum().item()
        total += len(batch["labels"])
    return correct / total


def test_qat_learns_keeps_amax_and_round_trips(tmp_path, tokenizer_dir):
    directory, _ = save_tiny(tmp_path / "tiny", "bert", "text-classification")
    model = models.load(directory, quantization="qdq")
    calibrate(model, synthetic_task(2, seed=9), method="percentile", progress=False)
    activation_amax = {n: q.amax.clone() for n, q in named_quantizers(model).items() if "_weight_" not in n}
    weights_before = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    train, dev = synthetic_task(8, seed=1), synthetic_task(4, seed=2)
    before = accuracy(model.eval(), dev)
    history = finetune(
        model, train, eval_fn=lambda m: {"accuracy": accuracy(m, dev)},
        config=FinetuneConfig(epochs=4, learning_rate=2e-3, warmup_ratio=0.1), progress=False,
    )
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"] * 0.8
    assert history[-1]["accuracy"] >= max(before + 0.2, 0.8)
    assert not torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, weights_before)
    for name, quantizer in named_quantizers(model).items():
        if name in activation_amax:
            assert torch.equal(quantizer.amax, activation_amax[name]), name  # activation amax stays as calibrated

    out = save_checkpoint(model, tokenizer_dir, tmp_path / "qat")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".qat")]  # no temporary leftovers
    loaded = models.load(out, quantization="qdq")
    assert loaded.task == "text-classification"
    feeds = padded_batch("bert", seed=33)
    with torch.no_grad():
        assert torch.equal(loaded(**feeds)["logits"], model.eval()(**feeds)["logits"])
        # transformers reads the same checkpoint as a float model (the `_amax` keys are extra)
        float_ours = models.load(out, quantization="none")(**feeds)["logits"]
        reference = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
        torch.testing.assert_close(reference(**feeds).logits, float_ours, atol=1e-5, rtol=1e-5)
    transformers.AutoTokenizer.from_pretrained(out)


def test_gradients_pass_through_fake_quantization(tmp_path):
    directory, _ = save_tiny(tmp_path, "squeezebert", "text-classification")
    model = models.load(directory, quantization="qdq")
    calibrate(model, synthetic_task(1, seed=3), progress=False)
    batch = synthetic_task(1, seed=4)[0]
    loss = torch.nn.functional.cross_entropy(
        model.train()(**{k: v for k, v in batch.items() if k != "labels"})["logits"], batch["labels"]
    )
    loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("transformer.encoder") and name.endswith("conv1d.weight"):
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_select_best_and_uncalibrated_refusal(tmp_path):
    directory, _ = save_tiny(tmp_path, "bert", "text-classification")
    float_model = models.load(directory)
    snapshots = []

    def first_epoch_is_best(model):
        snapshots.append(model.classifier.weight.detach().clone())
        return {"score": -len(snapshots)}

    finetune(float_model, synthetic_task(3, seed=5), eval_fn=first_epoch_is_best, select_best="score",
             config=FinetuneConfig(epochs=3, learning_rate=1e-3), progress=False)
    assert torch.equal(float_model.classifier.weight, snapshots[0])
    assert not torch.equal(snapshots[0], snapshots[-1])
    with pytest.raises(RuntimeError, match="not calibrated"):
        finetune(models.load(directory, quantization="qdq"), synthetic_task(1, seed=5), progress=False)


def test_new_task_model_starts_a_head(tmp_path):
    directory, reference = save_tiny(tmp_path, "bert", "feature-extraction")
    model = new_task_model(directory, "text-classification", labels=["negative", "positive"])
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.classifier.weight.shape == (2, 32)
    assert torch.equal(model.classifier.bias, torch.zeros(2))
    assert 0.005 < model.classifier.weight.std().item() < 0.05  # normal(0, initializer_range = 0.02)
    torch.testing.assert_close(model.bert.pooler.dense.weight, reference.pooler.dense.weight)
    with pytest.raises(ValueError, match="distinct"):
        new_task_model(directory, "text-classification", labels=["a", "a"])


@pytest.mark.slow
def test_float_finetuning_on_real_sentiment(minilm_dir, tmp_path):
    """The evaluation helper's use: a sentiment head on all-MiniLM-L6-v2, trained on the train split."""

    def polar(split: str, count: int):
        rows = [s for s in labelled_sentences(split) if abs(s.score) >= 1.5 and len(s.text) < 200][:count]
        return [s.text for s in rows], [int(s.score > 0) for s in rows]

    train_texts, train_labels = polar("train", 256)
    dev_texts, dev_labels = polar("dev", 128)
    train = labelled_batches(train_texts, train_labels, minilm_dir, batch_size=16, max_length=64)
    dev = labelled_batches(dev_texts, dev_labels, minilm_dir, batch_size=64, max_length=64)
    model = new_task_model(minilm_dir, "text-classification", labels=["negative", "positive"])
    history = finetune(model, train, eval_fn=lambda m: {"accuracy": accuracy(m, dev)},
                       config=FinetuneConfig(epochs=2, learning_rate=1e-4), progress=False)
    print(f"all-MiniLM-L6-v2 sentiment head, dev accuracy by epoch: {[round(r['accuracy'], 3) for r in history]}")
    majority = max(sum(dev_labels), len(dev_labels) - sum(dev_labels)) / len(dev_labels)
    assert history[-1]["accuracy"] >= max(0.8, majority + 0.1)
