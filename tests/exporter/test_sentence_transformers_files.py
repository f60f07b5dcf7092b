"""sentence-transformers' module files (modules.json, 1_Pooling/, ..., as all-MiniLM-L6-v2 ships them) are
copied into the export as regular files; a link that leaves the checkpoint is refused."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import exporter
import trt_runtime
from exporter.errors import ExportError
from tests.conftest import SENTENCES
from tests.fixtures.runtime_exports import save_checkpoint

ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def sentence_transformers_checkpoint(directory, minilm_dir):
    """A tiny BERT with all-MiniLM-L6-v2's sentence-transformers files (pooling sized to the tiny model)."""
    save_checkpoint(directory, "bert", "feature-extraction")
    for name in ST_FILES:
        shutil.copyfile(minilm_dir / name, directory / name)
    pooling = json.loads((minilm_dir / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    pooling["word_embedding_dimension"] = json.loads((directory / "config.json").read_text())["hidden_size"]
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling), encoding="utf-8")
    return directory


def test_module_files_copied_and_the_embeddings_are_sentence_transformers(tmp_path, minilm_dir):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    checkpoint = sentence_transformers_checkpoint(tmp_path / "checkpoint", minilm_dir)
    assert not (minilm_dir / "2_Normalize").exists()  # listed in modules.json, shipped as no directory
    out = exporter.export(checkpoint, tmp_path / "export", task="feature-extraction", quantization="none", log=None)
    for name in (*ST_FILES, "1_Pooling/config.json"):
        assert (out / name).read_bytes() == (checkpoint / name).read_bytes() and not (out / name).is_symlink()
    # what the copied files describe (mean pooling, then Normalize) is what our pipeline's options give,
    # measured against sentence-transformers itself on the checkpoint
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert modules == ["Transformer", "Pooling", "Normalize"] and pooling["pooling_mode_mean_tokens"]
    expected = sentence_transformers.SentenceTransformer(str(checkpoint), device="cpu").encode(SENTENCES)
    ours = trt_runtime.pipeline("feature-extraction", out, pooling="mean", normalize=True).embed(SENTENCES)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_link_inside_the_checkpoint_is_copied_as_a_file_and_one_leaving_it_is_refused(tmp_path, minilm_dir):
    checkpoint = sentence_transformers_checkpoint(tmp_path / "checkpoint", minilm_dir)
    pooling = checkpoint / "1_Pooling" / "config.json"
    (checkpoint / "pooling.json").write_bytes(pooling.read_bytes())
    pooling.unlink()
    os.symlink("../pooling.json", pooling)
    out = exporter.export(checkpoint, tmp_path / "export", task="feature-extraction", quantization="none", log=None)
    copied = out / "1_Pooling" / "config.json"
    assert not copied.is_symlink() and copied.read_bytes() == (checkpoint / "pooling.json").read_bytes()

    secret = tmp_path / "outside.txt"
    secret.write_text("not part of the model", encoding="utf-8")
    os.symlink(secret, checkpoint / "1_Pooling" / "notes.txt")
    with pytest.raises(ExportError, match="outside the checkpoint .*refusing to copy it"):
        exporter.export(checkpoint, tmp_path / "export2", task="feature-extraction", quantization="none", log=None)
    assert not (tmp_path / "export2").exists()


def test_a_module_path_leaving_the_checkpoint_is_refused(tmp_path, minilm_dir):
    checkpoint = sentence_transformers_checkpoint(tmp_path / "checkpoint", minilm_dir)
    (checkpoint / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "../elsewhere", "type": "x"}]))
    with pytest.raises(ExportError, match="outside the checkpoint; refusing"):
        exporter.export(checkpoint, tmp_path / "export", task="feature-extraction", quantization="none", log=None)
