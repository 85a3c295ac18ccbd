"""alignlib renders, tokenizes and labels exactly as transformers does on the same files.

Every test here is differential: transformers (jinja2 + the `tokenizers` Python package) on one
side, alignlib's Rust core on the other, over thousands of generated conversations — realistic
ones with a long tail, and messy ones (special-token strings in content, whitespace-only turns,
assistant-first, 30 turns, ...).
"""

from __future__ import annotations

import polars as pl
import pytest

import alignlib
from alignlib import synthetic

N_REALISTIC = 1500
N_MESSY = 400


@pytest.fixture(scope="module")
def corpus() -> list[list[dict[str, str]]]:
    realistic = synthetic.conversations(N_REALISTIC, seed=11)["messages"].to_list()
    messy = synthetic.messy_conversations(N_MESSY, seed=12)["messages"].to_list()
    return [c for c in realistic + messy if c]


def hf_ids(hf, messages, add_generation_prompt=False) -> list[int]:
    out = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_rendering_is_byte_identical(tokenizer_pair, corpus):
    hf, ours = tokenizer_pair
    mismatches = []
    for i, messages in enumerate(corpus):
        for gen in (False, True):
            ref = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            if ours.apply_chat_template(messages, add_generation_prompt=gen) != ref:
                mismatches.append((i, gen))
    assert mismatches == []


def test_token_ids_equal_apply_chat_template(tokenizer_pair, corpus):
    """The batch path (Polars in, Arrow out) gives transformers' ids for every conversation."""
    hf, ours = tokenizer_pair
    out = alignlib.prepare_sft(
        pl.DataFrame({"messages": corpus}), ours, max_length=None, packing=None, assistant_only_loss=False
    )
    assert out.table.height == len(corpus)
    got = out.table["input_ids"].to_list()
    bad = [i for i, messages in enumerate(corpus) if got[i] != hf_ids(hf, messages)]
    assert bad == []
    assert out.report.lossless


def test_single_conversation_api_matches_too(tokenizer_pair, corpus):
    hf, ours = tokenizer_pair
    for messages in corpus[:200]:
        assert ours.apply_chat_template(messages, tokenize=True, add_generation_prompt=True) == hf_ids(hf, messages, True)


def test_plain_text_encoding_matches(tokenizer_pair, corpus):
    hf, ours = tokenizer_pair
    texts = [m["content"] for conv in corpus[:300] for m in conv]
    assert ours.encode_batch(texts, add_special_tokens=True) == [hf(t)["input_ids"] for t in texts]
    assert [ours.encode(t, add_special_tokens=False) for t in texts[:200]] == [
        hf(t, add_special_tokens=False)["input_ids"] for t in texts[:200]
    ]


def test_piece_split_is_exact_on_the_mistral_vocabulary(mistral_dir, corpus):
    """The per-piece cache is proven safe at load for Mistral's vocab, and changes no id and no
    offset (offsets decide which tokens an assistant span trains)."""
    fast = alignlib.Tokenizer.from_pretrained(mistral_dir)
    plain = alignlib.Tokenizer.from_pretrained(mistral_dir, piece_split=False)
    assert fast.piece_split and fast.fast_path and not plain.piece_split and not plain.fast_path
    texts = [fast.apply_chat_template(c) for c in corpus]
    assert fast.encode_batch(texts, add_special_tokens=False) == plain.encode_batch(texts, add_special_tokens=False)
    for text in texts[:300]:
        assert fast.encode_with_offsets(text, False) == plain.encode_with_offsets(text, False)


def reference_labels(hf, messages: list[dict[str, str]]) -> list[int]:
    """The assistant-only rule, written independently in Python on transformers' own renders
    and character offsets: a token is trained iff its first character lies in the text that
    render(messages[:i+1]) adds beyond render(messages[:i], add_generation_prompt=True)."""

    def render(msgs, gen):
        return hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) if msgs else ""

    full = render(messages, False)
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        with_turn = render(messages[: i + 1], False)
        prefix = render(messages[:i], True)
        if not with_turn.startswith(prefix):
            prefix = render(messages[:i], False)
        assert with_turn.startswith(prefix)
        generated = with_turn[len(prefix) :]
        at = len(prefix) if full.startswith(with_turn) else full.index(generated, cursor)
        spans.append((at, at + len(generated)))
        cursor = at + len(generated)
    enc = hf(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        tok if any(s <= start < e for s, e in spans) else -100
        for tok, (start, _) in zip(enc["input_ids"], enc["offset_mapping"])
    ]
    return [-100] + labels[1:]


def test_assistant_only_labels_follow_the_rule(tokenizer_pair, corpus):
    hf, ours = tokenizer_pair
    convs = [c for c in corpus[:600] if any(m["role"] == "assistant" for m in c)]
    out = alignlib.prepare_sft(pl.DataFrame({"messages": convs}), ours, max_length=None, packing=None)
    got = out.table["labels"].to_list()
    bad = [i for i, c in enumerate(convs) if got[i] != reference_labels(hf, c)]
    assert bad == []
    # Every assistant turn trains something: its end-of-turn token at least.
    assert all(any(label != -100 for label in row) for row in got)


def test_assistant_spans_include_the_end_of_turn_token(tokenizer_dirs):
    ours = alignlib.Tokenizer.from_pretrained(tokenizer_dirs["chatml-bpe"])
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    out = alignlib.prepare_sft(pl.DataFrame({"messages": [messages]}), ours, max_length=None, packing=None)
    ids, labels = out.table["input_ids"][0].to_list(), out.table["labels"][0].to_list()
    trained = ours.decode([t for t, label in zip(ids, labels) if label != -100])
    assert trained == "Hello<|im_end|>\n"


def reference_pair(hf, prompt, chosen) -> tuple[list[int], list[int], bool]:
    """(prompt ids, completion ids, whether a merge crossed the prompt/completion boundary)."""
    prompt_text = hf.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = hf.apply_chat_template(prompt + chosen, tokenize=False)
    p = hf(prompt_text, add_special_tokens=False)["input_ids"]
    f = hf(full, add_special_tokens=False)["input_ids"]
    if f[: len(p)] == p:
        return p, f[len(p) :], False
    # A merge crossed the boundary: the completion's text is tokenized on its own (as TRL does).
    assert full.startswith(prompt_text)
    return p, hf(full[len(prompt_text) :], add_special_tokens=False)["input_ids"], True


def test_preference_pairs_match_transformers(tokenizer_pair):
    hf, ours = tokenizer_pair
    df = synthetic.preference_pairs(300, seed=5)
    out = alignlib.prepare_preferences(df, ours, max_length=None, max_prompt_length=None)
    assert out.table.columns == ["prompt_ids", "chosen_ids", "rejected_ids"]
    assert out.table.height == df.height and out.report.lossless
    mismatches = 0
    for row, got in zip(df.iter_rows(named=True), out.table.iter_rows(named=True)):
        p, c, m1 = reference_pair(hf, row["prompt"], row["chosen"])
        _, r, m2 = reference_pair(hf, row["prompt"], row["rejected"])
        assert (got["prompt_ids"], got["chosen_ids"], got["rejected_ids"]) == (p, c, r)
        mismatches += m1 or m2
    assert out.report["boundary_mismatches"] == mismatches


def test_implicit_prompt_pairs_equal_explicit_ones(tokenizer_dirs):
    ours = alignlib.Tokenizer.from_pretrained(tokenizer_dirs["zephyr-mistral"])
    explicit = synthetic.preference_pairs(100, seed=9)
    implicit = explicit.select(
        chosen=pl.concat_list("prompt", "chosen"), rejected=pl.concat_list("prompt", "rejected")
    )
    a = alignlib.prepare_preferences(explicit, ours, max_length=None, max_prompt_length=None).table
    b = alignlib.prepare_preferences(implicit, ours, max_length=None, max_prompt_length=None).table
    assert a.equals(b)


def test_trl_chat_templates_render_identically(tokenizer_dirs):
    """Every template TRL ships renders like transformers for plain system/user/assistant chats;
    where transformers raises (e.g. Gemma rejects a system turn), alignlib raises too."""
    from pathlib import Path

    import trl
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tokenizer_dirs["zephyr-mistral"]))
    tokenizer_json = (tokenizer_dirs["zephyr-mistral"] / "tokenizer.json").read_text()
    convs = [c for c in synthetic.conversations(40, seed=3, long_tail=False)["messages"].to_list()]
    convs += [c[:-1] for c in convs[:10] if len(c) > 1]  # ending on a user turn
    templates = sorted((Path(trl.__file__).parent / "chat_templates").glob("*.jinja"))
    assert len(templates) > 50
    for path in templates:
        source = path.read_text()
        ours = alignlib.Tokenizer(tokenizer_json, chat_template=source, special_tokens=hf.special_tokens_map)
        for messages in convs:
            for gen in (False, True):
                try:
                    ref = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, chat_template=source)
                except Exception:
                    with pytest.raises(alignlib.TemplateError):
                        ours.apply_chat_template(messages, add_generation_prompt=gen)
                    continue
                assert ours.apply_chat_template(messages, add_generation_prompt=gen) == ref, (path.name, gen)


def test_prompt_completion_conversations_train_only_the_completion(tokenizer_pair):
    hf, ours = tokenizer_pair
    df = synthetic.prompt_completion(200, seed=13)
    out = alignlib.prepare_sft(df, ours, max_length=None, packing=None)
    for row, got_ids, got_labels in zip(df.iter_rows(named=True), out.table["input_ids"], out.table["labels"]):
        full = hf.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        prompt = hf.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert full.startswith(prompt)
        enc = hf(full, add_special_tokens=False, return_offsets_mapping=True)
        labels = [t if start >= len(prompt) else -100 for t, (start, _) in zip(enc["input_ids"], enc["offset_mapping"])]
        assert got_ids.to_list() == enc["input_ids"]
        assert got_labels.to_list() == [-100] + labels[1:]


def test_plain_text_rows_get_special_tokens_and_eos(tokenizer_pair):
    hf, ours = tokenizer_pair
    df = synthetic.texts(200, seed=14)
    out = alignlib.prepare_sft(df, ours, max_length=None, packing=None)
    for text, got in zip(df["text"], out.table["input_ids"]):
        ids = hf(text)["input_ids"]
        assert got.to_list() == (ids if ids[-1] == hf.eos_token_id else ids + [hf.eos_token_id])
