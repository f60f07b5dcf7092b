"""token-classification: entities with character offsets, as transformers' TokenClassificationPipeline gives.

aggregation_strategy:
- "none": one {"entity", "score", "index", "word", "start", "end"} per token (special tokens left out);
- "simple": adjacent tokens with the same tag (B-/I- prefixes understood) grouped into
  {"entity_group", "score" (mean), "word", "start", "end"};
- "first" / "average" / "max": tokens first grouped into words, the word taking the tag of its first
  token / of its averaged scores / of its most confident token, then grouped as "simple" does.
Words are known from "##" continuations for WordPiece tokenizers; for others (byte-level BPE) a token
continues a word when no space precedes it (transformers' fallback, with the same warning).
ignore_labels (default ["O"]) drops those tags. A str gives a list of entities, a list of str a list of lists.
Inputs longer than the model's limit are truncated (with a warning), as transformers does.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from tokenizers import Encoding

from trt_runtime.pipelines.base import CALL, Pipeline, labels_of, softmax

STRATEGIES = ("none", "simple", "first", "average", "max")


def split_tag(entity: str) -> tuple[str, str]:
    """("B" | "I", tag): B-/I- prefixes read, anything else counts as a continuation (I)."""
    if entity.startswith("B-"):
        return "B", entity[2:]
    if entity.startswith("I-"):
        return "I", entity[2:]
    return "I", entity


class TokenClassificationPipeline(Pipeline):
    task = "token-classification"
    options = {"aggregation_strategy": "none", "ignore_labels": None}

    def _run(self, items: list[Any], options: dict[str, Any]) -> list[Any]:
        strategy = str(options["aggregation_strategy"]).lower()
        if strategy not in STRATEGIES:
            raise ValueError(
                f"aggregation_strategy={options['aggregation_strategy']!r}; "
                f"choose one of {', '.join(STRATEGIES)}"
            )
        ignore = ["O"] if options["ignore_labels"] is None else list(options["ignore_labels"])
        encodings = self.encode(items, call=options[CALL])
        results = []
        for sentence, encoding, row in zip(items, encodings, self.run_rows(encodings, options[CALL])):
            scores = softmax(row["logits"].astype(np.float32))
            labels = labels_of(self.info, scores.shape[-1])
            tokens = self._pre_entities(sentence, encoding, scores, strategy)
            entities = self._aggregate(tokens, strategy, labels)
            results.append(
                [e for e in entities if e.get("entity") not in ignore and e.get("entity_group") not in ignore]
            )
        return results

    def _pre_entities(
        self, sentence: str, encoding: Encoding, scores: np.ndarray, strategy: str
    ) -> list[dict]:
        """One record per non-special token: token string, scores, offsets, whether it continues a word."""
        word_aware = self.tokenizer.word_aware
        if not word_aware and strategy in ("first", "average", "max"):
            warnings.warn(
                "Tokenizer does not support real words, using fallback heuristic", UserWarning, stacklevel=4
            )
        unk = self.tokenizer.unk_token_id
        records = []
        for index, (token_id, special) in enumerate(zip(encoding.ids, encoding.special_tokens_mask)):
            if special:
                continue
            start, end = encoding.offsets[index]
            word = self.tokenizer.id_to_token(token_id)
            text = sentence[start:end]
            if word_aware:
                is_subword = len(word) != len(text)  # "##ing" is longer than the "ing" it covers
            else:
                is_subword = start > 0 and " " not in sentence[start - 1 : start + 1]
            if token_id == unk:
                word, is_subword = text, False
            records.append(
                {
                    "word": word,
                    "scores": scores[index],
                    "start": start,
                    "end": end,
                    "index": index,
                    "is_subword": is_subword,
                }
            )
        return records

    def _aggregate(self, tokens: list[dict], strategy: str, labels: list[str]) -> list[dict]:
        if strategy in ("none", "simple"):
            entities = []
            for token in tokens:
                best = int(np.argmax(token["scores"]))
                entities.append(
                    {
                        "entity": labels[best],
                        "score": float(token["scores"][best]),
                        "index": token["index"],
                        "word": token["word"],
                        "start": token["start"],
                        "end": token["end"],
                    }
                )
            if strategy == "none":
                return entities
        else:
            entities = [self._aggregate_word(group, strategy, labels) for group in self._words(tokens)]
        return self._group(entities)

    @staticmethod
    def _words(tokens: list[dict]) -> list[list[dict]]:
        words: list[list[dict]] = []
        for token in tokens:
            if words and token["is_subword"]:
                words[-1].append(token)
            else:
                words.append([token])
        return words

    def _aggregate_word(self, tokens: list[dict], strategy: str, labels: list[str]) -> dict:
        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:  # average
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        best = int(np.argmax(scores))
        return {
            "entity": labels[best],
            "score": float(scores[best]),
            "word": self.tokenizer.tokens_to_string([t["word"] for t in tokens]),
            "start": tokens[0]["start"],
            "end": tokens[-1]["end"],
        }

    def _group(self, entities: list[dict]) -> list[dict]:
        """Adjacent entities of one tag become one group; a B- tag always starts a new group."""
        groups: list[list[dict]] = []
        for entity in entities:
            bi, tag = split_tag(entity["entity"])
            if groups and bi != "B" and split_tag(groups[-1][-1]["entity"])[1] == tag:
                groups[-1].append(entity)
            else:
                groups.append([entity])
        return [
            {
                "entity_group": group[0]["entity"].split("-", 1)[-1],
                "score": float(np.nanmean([e["score"] for e in group])),
                "word": self.tokenizer.tokens_to_string([e["word"] for e in group]),
                "start": group[0]["start"],
                "end": group[-1]["end"],
            }
            for group in groups
        ]
