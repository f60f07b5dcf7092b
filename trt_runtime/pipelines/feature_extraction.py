"""feature-extraction: token embeddings like transformers' FeatureExtractionPipeline, or sentence embeddings.

pooling=None (default): `last_hidden_state` as nested lists [1][tokens][hidden] per input, exactly like
transformers (return_tensors=True: NumPy arrays of that shape).
pooling="mean": the mean of the token embeddings over the attention mask (sentence-transformers' mean
pooling, the pooling of all-MiniLM-L6-v2); pooling="cls": the first token's embedding. Either gives a
list of `hidden` floats per input (return_tensors=True: a [hidden] array). normalize=True scales each
sentence embedding to unit L2 norm (cosine similarity is then a dot product).
A str gives one result, a list of str a list of results.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trt_runtime.pipelines.base import CALL, Pipeline
from trt_runtime.validation import InputError

POOLINGS = (None, "mean", "cls")


class FeatureExtractionPipeline(Pipeline):
    task = "feature-extraction"
    options = {"pooling": None, "normalize": False, "return_tensors": False}
    tokenizer_keywords = "tokenize_kwargs"

    def _items(self, inputs: Any, options: dict[str, Any]) -> tuple[list[Any], Any]:
        # transformers' FeatureExtractionPipeline has no text pairs: only a list is a batch
        # (pipelines/base.py Pipeline.__call__), and a tuple reaches the tokenizer whole, which reads it as a
        # batch of texts (checked, transformers 5: two texts of different lengths fail with "Unable to create
        # tensor"). Neither one pair nor two results would be what was meant: refuse it.
        if isinstance(inputs, tuple):
            raise InputError(
                f"the input is a tuple of {len(inputs)}; feature-extraction embeds single texts and has no text "
                f"pairs (as transformers' pipeline): pass a list of texts [a, b] for one embedding each"
            )
        return super()._items(inputs, options)

    def _run(self, items: list[Any], options: dict[str, Any]) -> list[Any]:
        pooling, normalize = options["pooling"], bool(options["normalize"])
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; choose None, 'mean' or 'cls'")
        if normalize and pooling is None:
            raise ValueError(
                "normalize=True needs a sentence embedding: pass pooling='mean' or pooling='cls'"
            )
        results = []
        encodings = self.encode(items, call=options[CALL])
        for encoding, row in zip(encodings, self.run_rows(encodings, options[CALL])):
            hidden = row["last_hidden_state"].astype(
                np.float32
            )  # [tokens, hidden]: this row only, no padding
            if pooling is None:
                result: np.ndarray = hidden[None]
            else:
                real = hidden[: sum(encoding.attention_mask)]  # padding="max_length" rows: pads left out
                result = real.mean(axis=0) if pooling == "mean" else hidden[0]
                if normalize:
                    result = result / max(float(np.linalg.norm(result)), 1e-12)
            results.append(result if options["return_tensors"] else result.tolist())
        return results

    def embed(self, texts: list[str], **options: Any) -> np.ndarray:
        """Sentence embeddings of `texts` as one [len(texts), hidden] float32 array.

        Pooling and normalization as the pipeline was made with (or given here); mean pooling where none.
        """
        options = {**self.defaults, **options, "return_tensors": True}
        if options["pooling"] is None:
            options["pooling"] = "mean"
        return np.stack(self(texts, **options))
