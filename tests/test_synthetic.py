"""alignlib.synthetic (the seeded corpus generator), the embedded tiny-chat tokenizer and the shipped samples.

Lengths are checked in tokens of the real Mistral-7B tokenizer (shipped inside ``mistral_common``), rendered with
the Zephyr template, against the public data sets the generator models (UltraChat-200k, UltraFeedback)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import polars as pl
import pytest

PKG = Path(__file__).resolve().parents[1] / "python" / "alignlib"
MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


def _load(name: str, path: Path):
    """``alignlib.<name>``, or the same file loaded on its own while the native extension is unavailable."""
    try:
        return importlib.import_module(f"alignlib.{name}")
    except ImportError:
        spec = importlib.util.spec_from_file_location(f"_alignlib_{name.replace('.', '_')}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod


synthetic = _load("synthetic", PKG / "synthetic.py")
assets = _load("assets", PKG / "assets" / "__init__.py")
build = _load("assets.build_tiny_chat", PKG / "assets" / "build_tiny_chat.py")


def zephyr(messages: list[dict], eos: str) -> str:
    return "".join(f"<|{m['role']}|>\n{m['content']}{eos}\n" for m in messages)


@pytest.fixture(scope="session")
def mistral(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Mistral-7B-v0.1's tokenizer (converted from SentencePiece once per session), with the Zephyr template."""
    from transformers import AutoTokenizer

    try:  # the conftest's shared copy, when there is one
        path = request.getfixturevalue("mistral_dir")
    except Exception:
        import mistral_common

        path = tmp_path_factory.mktemp("mistral")
        shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", path / "tokenizer.model")
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.chat_template = build.ZEPHYR_CHAT_TEMPLATE
    return tok


def _lengths(tok, conversations: list[list[dict]]) -> list[int]:
    texts = [zephyr(m, tok.eos_token) for m in conversations]
    return sorted(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])


# ---- determinism and schema ---------------------------------------------------------------------------------
GENERATORS = {
    "conversations": lambda seed: synthetic.conversations(40, seed),
    "conversations-capped": lambda seed: synthetic.conversations(40, seed, long_tail=False),
    "preference_pairs": lambda seed: synthetic.preference_pairs(40, seed),
    "preference_pairs-implicit": lambda seed: synthetic.preference_pairs(40, seed, implicit=True),
    "prompt_completion": lambda seed: synthetic.prompt_completion(40, seed),
    "texts": lambda seed: synthetic.texts(40, seed),
    "messy_conversations": lambda seed: synthetic.messy_conversations(40, seed),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_deterministic(name: str) -> None:
    make = GENERATORS[name]
    assert make(3).equals(make(3))
    assert not make(3).equals(make(4))
    assert make(3).height == 40


def test_schemas() -> None:
    assert synthetic.conversations(5).schema == pl.Schema({"messages": MESSAGES})
    assert synthetic.messy_conversations(5).schema == pl.Schema({"messages": MESSAGES})
    assert synthetic.preference_pairs(5).schema == pl.Schema({"prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES})
    assert synthetic.preference_pairs(5, implicit=True).schema == pl.Schema({"chosen": MESSAGES, "rejected": MESSAGES})
    assert synthetic.prompt_completion(5).schema == pl.Schema({"prompt": MESSAGES, "completion": MESSAGES})
    assert synthetic.texts(5).schema == pl.Schema({"text": pl.String})
    assert synthetic.conversations(0).height == 0


def test_conversation_structure() -> None:
    convs = synthetic.conversations(500, seed=0)["messages"].to_list()
    with_system = 0
    for msgs in convs:
        roles = [m["role"] for m in msgs]
        if roles[0] == "system":
            with_system += 1
            roles = roles[1:]
        assert 1 <= len(roles) // 2 <= 8 and roles == ["user", "assistant"] * (len(roles) // 2)
    assert 0.22 < with_system / len(convs) < 0.38
    exchanges = [len([m for m in c if m["role"] == "user"]) for c in convs]
    assert sum(k <= 3 for k in exchanges) / len(exchanges) > 0.6
    contents = [m["content"] for c in convs for m in c]
    text = "\n".join(contents)
    for pattern in ["```python\n", "```javascript\n", "```sql\n", r"^#{1,3} ", r"^- ", r"^1\. ", r"^\|.*\|$",
                    "https://", r"[\u4e00-\u9fff]", r"[\u0600-\u06ff]", r"[\u0590-\u05ff]", r"[\u0400-\u04ff]",
                    "[éèüöñç]", "[😀🎉👍🚀🔥]", "[∑∫≤≥αβπ]", r"\d+\.\d+", r"\b[a-z]+_[a-z]+\b", r"\b[a-z]+[A-Z][a-z]+\b",
                    "\n\n\n", "\t", "  ", "\n    "]:
        assert re.search(pattern, text, re.M), pattern
    assert any(c != c.lstrip() for c in contents) and any(c != c.rstrip() for c in contents)
    assert any(c in ("ok", "Thanks!", "thanks", "yes", "Continue") for c in contents)
    # A large vocabulary, so tokenizer word caches are not trivially hit.
    assert len(set(text.split())) > 30_000


def test_preference_structure() -> None:
    explicit = synthetic.preference_pairs(200, seed=5)
    implicit = synthetic.preference_pairs(200, seed=5, implicit=True)
    for prompt, chosen, rejected, ichosen, irejected in zip(
        *(explicit[c].to_list() for c in ("prompt", "chosen", "rejected")), implicit["chosen"].to_list(),
        implicit["rejected"].to_list(),
    ):
        roles = [m["role"] for m in prompt if m["role"] != "system"]
        assert roles[-1] == "user" and 1 <= len(roles) <= 5 and roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        assert [m["role"] for m in chosen] == [m["role"] for m in rejected] == ["assistant"]
        assert ichosen == prompt + chosen and irejected == prompt + rejected
    completion = synthetic.prompt_completion(50, seed=5)["completion"].to_list()
    assert all([m["role"] for m in c] == ["assistant"] for c in completion)


def test_messy_covers_every_quirk() -> None:
    convs = synthetic.messy_conversations(48, seed=0)["messages"].to_list()
    contents = [m["content"] for c in convs for m in c]
    roles = [[m["role"] for m in c] for c in convs]
    assert all(set(r) <= {"system", "user", "assistant"} for r in roles)
    assert "" in contents
    assert any(c and not c.strip() for c in contents)
    joined = "\n".join(contents)
    for s in ["</s>", "<|user|>", "<|im_end|>", "<|endoftext|>", "{{", "{%", "\\", '"', "'", "\r\n", "\t",
              "\u200d", "\u0301"]:
        assert s in joined, repr(s)
    assert any(len(w) >= 500 for w in joined.split())
    assert any(r[0] == "assistant" for r in roles)
    assert any(a == b == "assistant" for r in roles for a, b in zip(r, r[1:]))
    assert any("system" in r[1:] for r in roles)
    assert max(len(r) for r in roles) >= 30


# ---- lengths in Mistral tokens ------------------------------------------------------------------------------
def test_conversation_lengths(mistral) -> None:
    convs = synthetic.conversations(500, seed=0)["messages"].to_list()
    assert mistral.apply_chat_template(convs[:3], tokenize=False) == [zephyr(c, "</s>") for c in convs[:3]]
    lens = _lengths(mistral, convs)
    assert 1000 <= statistics.median(lens) <= 1400
    assert 1300 <= statistics.mean(lens) <= 1800
    long = sum(n > 4000 for n in lens) / len(lens)
    assert 0.015 <= long <= 0.08 and lens[-1] > 6000
    capped = _lengths(mistral, synthetic.conversations(100, seed=0, long_tail=False)["messages"].to_list())
    assert capped[-1] < 4500


def test_preference_lengths(mistral) -> None:
    pairs = synthetic.preference_pairs(300, seed=0)
    prompt = _lengths(mistral, pairs["prompt"].to_list())
    chosen = _lengths(mistral, pairs["chosen"].to_list())
    assert 150 <= statistics.median(prompt) <= 320 and prompt[-1] > 1500
    assert 230 <= statistics.median(chosen) <= 450 and chosen[-1] < 3000


# ---- the embedded tokenizer and samples ---------------------------------------------------------------------
def test_tiny_chat_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = assets.TINY_CHAT_TOKENIZER
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {p.name for p in path.iterdir()}
    assert (path / "tokenizer.json").stat().st_size < 1_000_000
    assert (path / "chat_template.jinja").read_text(encoding="utf-8") == build.ZEPHYR_CHAT_TEMPLATE
    tok = AutoTokenizer.from_pretrained(str(path))
    assert len(tok) == 4096 and tok.bos_token is None
    assert tok.eos_token == tok.pad_token == tok.unk_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"]) == [0, 1, 2, 3]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi\tthere 中文 🎉 "},
            {"role": "assistant", "content": "Hello!\n"}]
    expected = "<|system|>\nBe brief.<|endoftext|>\n<|user|>\n Hi\tthere 中文 🎉 <|endoftext|>\n"
    assert tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True) == expected + "<|assistant|>\n"
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert rendered == expected + "<|assistant|>\nHello!\n<|endoftext|>\n"
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert ids[0] == 3 and ids.count(0) == 3 and tok.decode(ids) == rendered
    for text in synthetic.messy_conversations(12, seed=0)["messages"].explode().struct.field("content").to_list():
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: lossless


def test_samples_match_generator() -> None:
    assert assets.asset_path("samples/sft.jsonl") == assets.SAMPLE_SFT
    with pytest.raises(FileNotFoundError):
        assets.asset_path("samples/nope.jsonl")
    assert assets.SAMPLE_SFT.stat().st_size < 1_500_000 and assets.SAMPLE_PREFERENCES.stat().st_size < 1_000_000
    sft = [json.loads(line) for line in assets.SAMPLE_SFT.read_text(encoding="utf-8").splitlines()]
    pref = [json.loads(line) for line in assets.SAMPLE_PREFERENCES.read_text(encoding="utf-8").splitlines()]
    assert [r["messages"] for r in sft] == synthetic.conversations(
        300, seed=build.SFT_SEED, long_tail=False)["messages"].to_list()
    assert pref == synthetic.preference_pairs(200, seed=build.PREF_SEED).to_dicts()
