"""The real all-MiniLM-L6-v2 checkpoint loads and matches transformers.BertModel on real sentences."""

from __future__ import annotations

import torch
import transformers

import models


def test_minilm_matches_transformers(minilm_dir, sentences):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    real_tokens = batch["attention_mask"].bool()
    reference = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    ours = models.load(minilm_dir, task="feature-extraction")
    with torch.no_grad():
        expected, got = reference(**batch), ours(**batch)
        # float64 on both sides: any difference left is a difference in the computation, not rounding
        expected64, got64 = reference.double()(**batch), ours.double()(**batch)
    diffs = {
        "last_hidden_state (real tokens)": (got["last_hidden_state"] - expected.last_hidden_state)[real_tokens],
        "pooler_output": got["pooler_output"] - expected.pooler_output,
    }
    for name, diff in diffs.items():
        print(f"all-MiniLM-L6-v2 {name}: max |ours - transformers| = {diff.abs().max().item():.2e} (float32)")
        assert diff.abs().max().item() <= 1e-5
    diff64 = (got64["last_hidden_state"] - expected64.last_hidden_state).abs().max().item()
    print(f"all-MiniLM-L6-v2 last_hidden_state: max |ours - transformers| = {diff64:.2e} (float64, all tokens)")
    assert diff64 <= 1e-10
