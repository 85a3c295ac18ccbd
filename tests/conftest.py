"""Shared fixtures: real tokenizers saved the way transformers saves them, and the seed models'
chat templates. Nothing here is downloaded: the Mistral-7B SentencePiece model ships in the
`mistral_common` package, and the byte-level BPE is trained here on synthetic text."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# The Alignment Handbook's Zephyr template (zephyr-7b-alpha/beta, mistral-7b-sft-beta, smol-7b,
# and with eos <|endoftext|>, stablelm-zephyr-3b).
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
# SmolLM-360M-Instruct's ChatML.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

BPE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>"]


def _mistral_base(root: Path) -> Path:
    """Mistral-7B-v0.1's tokenizer, converted to a fast tokenizer by transformers and saved."""
    import mistral_common
    from transformers import AutoTokenizer

    src = root / "mistral-src"
    src.mkdir()
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", src / "tokenizer.model")
    out = root / "mistral"
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    return out


def _bpe_base(root: Path) -> Path:
    """A GPT-2 style byte-level BPE (like SmolLM's and StableLM's), trained on synthetic chats."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from alignlib import synthetic

    texts = [m["content"] for conv in synthetic.conversations(400, seed=7)["messages"].to_list() for m in conv]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=3000, special_tokens=BPE_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    out = root / "bpe"
    hf.save_pretrained(str(out))
    return out


def _with_template(base: Path, dest: Path, template: str, **special: str) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    tok.chat_template = template
    for name, value in special.items():
        setattr(tok, name, value)
    tok.save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> a saved tokenizer directory with a seed model's chat template."""
    root = tmp_path_factory.mktemp("tokenizers")
    mistral = _mistral_base(root)
    bpe = _bpe_base(root)
    return {
        "zephyr-mistral": _with_template(mistral, root / "zephyr-mistral", ZEPHYR),
        "stablelm-zephyr-bpe": _with_template(bpe, root / "stablelm-zephyr-bpe", ZEPHYR),
        "chatml-bpe": _with_template(bpe, root / "chatml-bpe", CHATML, eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    }


@pytest.fixture(scope="session", params=["zephyr-mistral", "stablelm-zephyr-bpe", "chatml-bpe"])
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
