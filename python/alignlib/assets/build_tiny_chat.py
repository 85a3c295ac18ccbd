"""Rebuild the embedded ``tiny-chat`` tokenizer and the sample data sets shipped in this folder.

    PYTHONPATH=python python python/alignlib/assets/build_tiny_chat.py            # tokenizer + samples
    PYTHONPATH=python python python/alignlib/assets/build_tiny_chat.py --samples  # samples only

Deterministic: a fixed synthetic corpus (``alignlib.synthetic``, fixed seeds) and the ``tokenizers`` BPE trainer,
which breaks ties in pair counts deterministically, so the same package versions give byte-identical files.
Needs ``tokenizers`` and ``transformers`` (not the native extension): ``alignlib.synthetic`` is loaded from
its file when ``import alignlib`` is not possible.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOKENIZER_DIR = HERE / "tiny-chat"
SAMPLES_DIR = HERE / "samples"
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"]  # ids 0..3
CORPUS_SEED, SFT_SEED, PREF_SEED = 1234, 1, 2
# The Zephyr / StableLM-Zephyr template exactly as the Alignment Handbook writes it (DEFAULT_CHAT_TEMPLATE).
# Rendered with transformers' trim_blocks: every turn is "<|role|>\n{content}<|endoftext|>\n" and the
# generation prompt is "<|assistant|>\n" (the newline after the last ``}}`` survives trim_blocks).
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


def _synthetic():
    try:
        from alignlib import synthetic
        return synthetic
    except ImportError:  # native extension not built: load the pure-Python module from its file
        spec = importlib.util.spec_from_file_location("alignlib_synthetic", HERE.parent / "synthetic.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod


def corpus() -> list[str]:
    """The fixed training corpus: message contents of synthetic chats + plain documents (~10 MB)."""
    syn = _synthetic()
    out = [m["content"] for conv in syn.conversations(2000, seed=CORPUS_SEED)["messages"].to_list() for m in conv]
    out += syn.texts(1000, seed=CORPUS_SEED)["text"].to_list()
    out += [m["content"] for conv in syn.messy_conversations(200, seed=CORPUS_SEED)["messages"].to_list()
            for m in conv]
    return out


def build_tokenizer(out_dir: Path = TOKENIZER_DIR) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = ZEPHYR_CHAT_TEMPLATE
    fast.model_max_length = 16384
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    # transformers 5 writes its own class name ("TokenizersBackend"), which transformers 4 cannot resolve; the
    # generic name loads the same class in 5 (alias) and PreTrainedTokenizerFast in 4.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_samples(out_dir: Path = SAMPLES_DIR) -> None:
    syn = _synthetic()
    out_dir.mkdir(parents=True, exist_ok=True)
    sft = syn.conversations(300, seed=SFT_SEED, long_tail=False)["messages"].to_list()  # totals capped ~3k tokens
    with open(out_dir / "sft.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for msgs in sft:
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    pairs = syn.preference_pairs(200, seed=PREF_SEED).to_dicts()
    with open(out_dir / "preferences.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for row in pairs:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if "--samples" not in sys.argv:
        build_tokenizer()
    build_samples()
    for p in sorted(list(TOKENIZER_DIR.iterdir()) + list(SAMPLES_DIR.glob("*.jsonl"))):
        print(f"{p.relative_to(HERE)}: {p.stat().st_size:,} bytes")
