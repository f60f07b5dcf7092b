"""What counts as text a model can be given: one rule for the pipelines' inputs and for calibration data.

A text is refused (with the reason `text_problem` gives) when the model would see nothing of it, or when it is
not valid Unicode:

- empty, or only whitespace;
- only whitespace, control characters (Unicode category Cc: NUL, ESC, ...) and format characters (Cf: zero-width
  space and joiners, the byte-order mark, soft hyphens, bidirectional marks). BERT's normalizer removes the
  controls and WordPiece drops the rest, so such a text encodes as [CLS] [SEP], the empty text, whose answer
  says nothing about the input; transformers' pipelines return that answer without a word (checked: a text of
  U+200B, U+0001, U+FEFF gives the empty text's embedding);
- holding an unpaired surrogate (U+D800-U+DFFF alone: what `bytes.decode("utf-8", "surrogateescape")` makes of
  undecodable bytes), which is not Unicode text and cannot be encoded as UTF-8 for the tokenizer.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories of characters that carry no text: controls, format characters (zero-width ones
#: included) and separators (whitespace)
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _code_point(character: str) -> str:
    return f"U+{ord(character):04X}"


def text_problem(text: str) -> str | None:
    """Why `text` cannot be given to a model (see the module docstring), or None where it can."""
    if not text.strip():
        return "is empty or only whitespace; pass some text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # only surrogates fail to encode
        return (
            f"holds the unpaired surrogate {_code_point(text[e.start])} at position {e.start}, which is not valid "
            f"Unicode text (undecodable bytes?); decode its source with the right encoding, or with errors='replace'"
        )
    if all(unicodedata.category(character) in INVISIBLE_CATEGORIES for character in text):
        shown = ", ".join(dict.fromkeys(_code_point(c) for c in text if not c.isspace()))
        return f"holds only control or zero-width characters ({shown}), which the model does not see; pass some text"
    return None
