"""fill-mask: the likeliest tokens for each mask, as transformers' FillMaskPipeline returns them.

Each input needs at least one mask token (the tokenizer's, e.g. [MASK] or <mask>). Per mask, the
`top_k` (default 5) tokens by softmax probability as {"score", "token", "token_str", "sequence"}, where
`sequence` is the input with that token in place of the mask (decoded without special tokens when the
input has one mask). `targets` (a str or list of str) restricts the candidates to those tokens (a word
missing from the vocabulary stands for its first token, with a warning).
Shapes: one input with one mask -> a list of dicts; with several masks -> a list per mask; a list of
inputs -> a list of those (a list of one input gives that input's result, as transformers does).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from trt_runtime.pipelines.base import CALL, Pipeline, softmax, top_k_option
from trt_runtime.validation import InputError

logger = logging.getLogger(__name__)


class FillMaskPipeline(Pipeline):
    task = "fill-mask"
    options = {"top_k": 5, "targets": None}
    tokenizer_keywords = "tokenizer_kwargs"

    def _target_ids(self, targets: Any) -> np.ndarray | None:
        if targets is None:
            return None
        if isinstance(targets, str):
            targets = [targets]
        ids: set[int] = set()
        for target in targets:
            token_id = self.tokenizer.token_to_id(target)
            if token_id is None:
                encoded = self.tokenizer.tokenizer.encode(target, add_special_tokens=False).ids
                if not encoded:
                    logger.warning(
                        "target %r is not in the vocabulary and has no tokens; ignoring it", target
                    )
                    continue
                token_id = encoded[0]
                logger.warning(
                    "target %r is not in the vocabulary; using its first token %r",
                    target,
                    self.tokenizer.id_to_token(token_id),
                )
            ids.add(token_id)
        if not ids:
            raise ValueError("none of the targets is usable; pass at least one token of the vocabulary")
        return np.array(sorted(ids), dtype=np.int64)

    def _run(self, items: list[Any], options: dict[str, Any]) -> list[Any]:
        mask_id = self.tokenizer.mask_token_id
        if mask_id is None:
            raise ValueError("the tokenizer of this export has no mask token, so it cannot fill masks")
        top_k = top_k_option(options["top_k"]) or 5
        target_ids = self._target_ids(options["targets"])
        if target_ids is not None:
            top_k = min(top_k, len(target_ids))
        encodings = self.encode(items, call=options[CALL])
        for i, encoding in enumerate(encodings):
            if mask_id not in encoding.ids:
                raise InputError(
                    f"input {i} has no mask token ({self.tokenizer.mask_token}) within the first "
                    f"{self.max_length} tokens; put {self.tokenizer.mask_token} at the word to predict"
                )
        results = []
        for encoding, row in zip(encodings, self.run_rows(encodings, options[CALL])):
            ids = np.array(encoding.ids, dtype=np.int64)
            positions = np.flatnonzero(ids == mask_id)
            single_mask = len(positions) == 1
            per_mask = []
            for position in positions:
                probs = softmax(row["logits"][position].astype(np.float32))
                if target_ids is not None:
                    probs = probs[target_ids]
                k = min(top_k, len(probs))
                best = np.argsort(-probs, kind="stable")[:k]
                predictions = []
                for candidate in best:
                    token = int(target_ids[candidate]) if target_ids is not None else int(candidate)
                    filled = ids.copy()
                    filled[position] = token
                    filled = filled[filled != self.tokenizer.pad_token_id]
                    predictions.append(
                        {
                            "score": float(probs[candidate]),
                            "token": token,
                            "token_str": self.tokenizer.decode([token]),
                            # several masks: the other masks stay visible in the sequence, as in transformers
                            "sequence": self.tokenizer.decode(
                                filled.tolist(), skip_special_tokens=single_mask
                            ),
                        }
                    )
                per_mask.append(predictions)
            results.append(per_mask[0] if single_mask else per_mask)
        return results

    def _shape(self, results: list[Any], single: Any, call_options: dict[str, Any]) -> Any:
        return results[0] if single or len(results) == 1 else results
