"""Shared fixtures: real tokenizers saved the way transformers saves them, with the seed models'
chat templates (see alignlib.testing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alignlib.testing import CHATML, ZEPHYR, byte_level_bpe, mistral_hub_tokenizer, mistral_tokenizer, with_template


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> a saved tokenizer directory with a seed model's chat template."""
    root = tmp_path_factory.mktemp("tokenizers")
    mistral = mistral_tokenizer(root)
    bpe = byte_level_bpe(root)
    return {
        "zephyr-mistral": with_template(mistral, root / "zephyr-mistral", ZEPHYR),
        # zephyr-7b-alpha's own files: a legacy LlamaTokenizer config that transformers rebuilds
        "zephyr-7b-alpha-files": mistral_hub_tokenizer(root),
        "stablelm-zephyr-bpe": with_template(bpe, root / "stablelm-zephyr-bpe", ZEPHYR),
        "chatml-bpe": with_template(bpe, root / "chatml-bpe", CHATML, eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    }


@pytest.fixture(scope="session", params=["zephyr-mistral", "zephyr-7b-alpha-files", "stablelm-zephyr-bpe", "chatml-bpe"])
def tokenizer_pair(request: pytest.FixtureRequest, tokenizer_dirs: dict[str, Path]):
    """(transformers tokenizer, alignlib tokenizer) loaded from the same files."""
    from transformers import AutoTokenizer

    import alignlib

    path = tokenizer_dirs[request.param]
    return AutoTokenizer.from_pretrained(str(path)), alignlib.Tokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def mistral_dir(tokenizer_dirs: dict[str, Path]) -> Path:
    return tokenizer_dirs["zephyr-mistral"]


def pytest_configure(config: pytest.Config) -> None:
    # Tests compare outputs across thread counts themselves; the default is all cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
