"""Real tokenizers and seed chat templates for tests and benchmarks, built offline.

Nothing is downloaded: the Mistral-7B SentencePiece model ships in the `mistral_common`
package (transformers converts it to a fast tokenizer), and the byte-level BPE is trained here
on synthetic chats. Needs the `test` extra (mistral-common, sentencepiece, protobuf).
"""

from __future__ import annotations

import shutil
from pathlib import Path

# The Alignment Handbook's Zephyr template (zephyr-7b-alpha/beta, mistral-7b-sft-beta, smol-7b;
# with eos <|endoftext|>, stablelm-zephyr-3b).
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
# The same with {% generation %} tags, for peers (TRL) that need them for assistant-only loss.
ZEPHYR_GENERATION = ZEPHYR.replace(
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}",
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}\n{% endgeneration %}",
)
# SmolLM-360M-Instruct's ChatML.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BPE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>"]


def mistral_tokenizer(root: Path) -> Path:
    """Mistral-7B-v0.1's tokenizer (zephyr-7b-alpha, mistral-7b-sft-beta), saved by transformers."""
    import mistral_common
    from transformers import AutoTokenizer

    out = root / "mistral"
    if (out / "tokenizer.json").is_file():
        return out
    src = root / "mistral-src"
    src.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", src / "tokenizer.model")
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    return out


def mistral_hub_tokenizer(root: Path) -> Path:
    """Mistral-7B-v0.1's tokenizer as its hub repo (and zephyr-7b-alpha's) ships it: a
    `LlamaTokenizer` config with `legacy: true` and `add_bos_token: true`, and a tokenizer.json
    whose normalizer prepends and replaces `▁`. transformers rebuilds that pipeline at load (a
    Metaspace pre-tokenizer), which is what alignlib must match."""
    import json

    out = root / "mistral-hub"
    if (out / "tokenizer.json").is_file():
        return out
    base = json.loads((mistral_tokenizer(root) / "tokenizer.json").read_text(encoding="utf-8"))
    base["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    base["pre_tokenizer"] = None
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    base["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<s>", "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    base["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    config = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "</s>", "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 32768,
        "sp_model_kwargs": {}, "spaces_between_special_tokens": False, "tokenizer_class": "LlamaTokenizer",
        "chat_template": ZEPHYR,
    }
    out.mkdir(parents=True)
    (out / "tokenizer.json").write_text(json.dumps(base, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


def byte_level_bpe(root: Path, vocab_size: int = 3000) -> Path:
    """A GPT-2 style byte-level BPE (like SmolLM's and StableLM's), trained on synthetic chats."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from alignlib import synthetic

    out = root / "bpe"
    if (out / "tokenizer.json").is_file():
        return out
    texts = [m["content"] for conv in synthetic.conversations(400, seed=7)["messages"].to_list() for m in conv]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=BPE_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    hf.save_pretrained(str(out))
    return out


def with_template(base: Path, dest: Path, template: str, **special_tokens: str) -> Path:
    """A copy of the tokenizer at `base` with a chat template (and special tokens) set."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    tok.chat_template = template
    for name, value in special_tokens.items():
        setattr(tok, name, value)
    tok.save_pretrained(str(dest))
    return dest
