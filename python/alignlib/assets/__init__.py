"""Data files shipped inside the package: the demo tokenizer and small synthetic sample sets.

``TINY_CHAT_TOKENIZER`` is a 4,096-token byte-level BPE with the Zephyr chat template (a Hugging Face tokenizer
directory, loadable offline with ``AutoTokenizer.from_pretrained``); ``SAMPLE_SFT`` / ``SAMPLE_PREFERENCES`` are
JSONL files of synthetic conversations / preference pairs. ``build_tiny_chat.py`` regenerates all three.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["asset_path", "TINY_CHAT_TOKENIZER", "SAMPLE_SFT", "SAMPLE_PREFERENCES"]

_ROOT = Path(__file__).resolve().parent  # assets are plain files in the installed package (wheel and sdist)


def asset_path(name: str) -> Path:
    """Filesystem path of a shipped asset, e.g. ``asset_path("tiny-chat")`` or ``asset_path("samples/sft.jsonl")``.

    Raises FileNotFoundError if there is no such asset."""
    path = _ROOT.joinpath(*name.split("/"))
    if not path.exists():
        raise FileNotFoundError(f"alignlib asset not found: {name!r} (looked in {_ROOT})")
    return path


TINY_CHAT_TOKENIZER: Path = _ROOT / "tiny-chat"
SAMPLE_SFT: Path = _ROOT / "samples" / "sft.jsonl"
SAMPLE_PREFERENCES: Path = _ROOT / "samples" / "preferences.jsonl"
