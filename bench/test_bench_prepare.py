"""Data preparation throughput, alignlib vs TRL 1.16 and HF tokenizers, on one synthetic
UltraChat-like corpus (multi-turn, long tail past 4k tokens, code, Unicode, system prompts),
Mistral-7B's tokenizer, max_length 2048, the machine's cores for both sides.

Throughput counts input tokens (before any truncation) per second of wall time. TRL runs once
(it is slow and deterministic enough); alignlib runs 3 times and keeps the best, each time with
a freshly loaded tokenizer, so its piece cache starts cold as on a first run over new data. The
corpus is deliberately diverse (~280k distinct word forms in 2M words): a harder case for that
cache than real chat data.

    pytest bench/ --benchmark-only            # ALIGNLIB_BENCH_N=4000 conversations by default
"""

from __future__ import annotations

import os

import polars as pl
import pytest

import alignlib
from alignlib import synthetic
from alignlib.testing import ZEPHYR, ZEPHYR_GENERATION, mistral_tokenizer, with_template

from conftest import record, timed

N = int(os.environ.get("ALIGNLIB_BENCH_N", "4000"))
MAX_LENGTH = 2048
THREADS = os.cpu_count() or 1


def _cpu_only() -> dict:
    import torch

    return {} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False}


CPU = _cpu_only()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-tokenizers")
    base = mistral_tokenizer(root)
    return {
        "ours": with_template(base, root / "zephyr", ZEPHYR),
        "trl": with_template(base, root / "zephyr-generation", ZEPHYR_GENERATION),
    }


@pytest.fixture(scope="module")
def tok(dirs):
    return alignlib.Tokenizer.from_pretrained(dirs["ours"])


@pytest.fixture(scope="module")
def fresh_tok(dirs):
    """A new tokenizer (cold cache) for each timed round; loading it is not timed."""
    return lambda: alignlib.Tokenizer.from_pretrained(dirs["ours"])


@pytest.fixture(scope="module")
def hf(dirs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(dirs["trl"]))


@pytest.fixture(scope="module")
def convs() -> pl.DataFrame:
    return synthetic.conversations(N, seed=0)


@pytest.fixture(scope="module")
def unpacked(convs, tok) -> pl.DataFrame:
    return alignlib.prepare_sft(convs, tok, max_length=None, packing=None).table


@pytest.fixture(scope="module")
def pairs() -> pl.DataFrame:
    return synthetic.preference_pairs(N, seed=0)


def tiny_model(vocab_size: int, path) -> str:
    """A saved tiny model: the trainers only need one to exist (TRL builds its reference from the path)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    return str(path)


def test_sft_prep_trl(benchmark, hf, convs, unpacked, tmp_path):
    import datasets
    from trl import SFTConfig, SFTTrainer

    datasets.disable_caching()
    args = SFTConfig(output_dir=str(tmp_path), max_length=MAX_LENGTH, packing=True, packing_strategy="bfd",
                     assistant_only_loss=True, dataset_num_proc=THREADS, report_to=[], **CPU)
    small = datasets.Dataset.from_polars(convs.head(8))
    trainer = SFTTrainer(model=tiny_model(len(hf), tmp_path / "model"), args=args, train_dataset=small, processing_class=hf)
    data = datasets.Dataset.from_polars(convs)
    out, seconds = timed(benchmark, lambda: trainer._prepare_dataset(data, hf, args, True, None, "train"), rounds=1)
    kept = sum(len(r) for r in out["input_ids"])
    tokens = int(unpacked["input_ids"].list.len().sum())
    record("sft_prep", "peer", seconds, tokens, tokens_kept=kept, kept_fraction=kept / tokens)


def test_sft_prep_alignlib(benchmark, fresh_tok, convs):
    out, seconds = timed(
        benchmark, lambda tok: alignlib.prepare_sft(convs, tok, max_length=MAX_LENGTH, packing="bfd"), rounds=3, setup=fresh_tok
    )
    r = out.report
    record("sft_prep", "alignlib", seconds, r["tokens_in"], tokens_kept=r["tokens"], kept_fraction=r["tokens"] / r["tokens_in"],
           fill=r["fill"])
    assert r.lossless


def test_dpo_prep_trl(benchmark, hf, pairs, tok, tmp_path):
    import datasets
    from trl import DPOConfig, DPOTrainer

    datasets.disable_caching()
    args = DPOConfig(output_dir=str(tmp_path), max_length=MAX_LENGTH, dataset_num_proc=THREADS, report_to=[], **CPU)
    small = datasets.Dataset.from_polars(pairs.head(8))
    trainer = DPOTrainer(model=tiny_model(len(hf), tmp_path / "model"), args=args, train_dataset=small, processing_class=hf)
    data = datasets.Dataset.from_polars(pairs)
    out, seconds = timed(benchmark, lambda: trainer._prepare_dataset(data, hf, args, "train"), rounds=1)
    ours = alignlib.prepare_preferences(pairs, tok, max_length=None, max_prompt_length=None).report
    record("dpo_prep", "peer", seconds, ours["tokens_in"], pairs_kept=len(out), pairs_in=pairs.height)


def test_dpo_prep_alignlib(benchmark, fresh_tok, pairs):
    out, seconds = timed(
        benchmark,
        lambda tok: alignlib.prepare_preferences(pairs, tok, max_length=MAX_LENGTH, max_prompt_length=MAX_LENGTH // 2),
        rounds=3,
        setup=fresh_tok,
    )
    r = out.report
    record("dpo_prep", "alignlib", seconds, r["tokens_in"], pairs_kept=r["rows_out"], pairs_in=r["rows_in"],
           tokens_truncated=r["tokens_truncated"])
    assert r["rows_out"] == pairs.height


def test_packing_trl(benchmark, unpacked):
    import datasets
    from trl.data_utils import pack_dataset

    datasets.disable_caching()
    data = datasets.Dataset.from_polars(unpacked.select("input_ids"))
    out, seconds = timed(benchmark, lambda: pack_dataset(data, MAX_LENGTH, strategy="bfd"), rounds=3)
    tokens = int(unpacked["input_ids"].list.len().sum())
    record("packing", "peer", seconds, tokens, tokens_kept=sum(len(r) for r in out["input_ids"]))


def test_packing_alignlib(benchmark, unpacked):
    out, seconds = timed(benchmark, lambda: alignlib.pack(unpacked, MAX_LENGTH), rounds=5)
    record("packing", "alignlib", seconds, out.report["tokens_in"], tokens_kept=out.report["tokens"], fill=out.report["fill"])
    if N >= 2000:  # BFD needs enough small documents to fill the last rows
        assert out.report["fill"] >= 0.995


@pytest.fixture(scope="module")
def rendered(tok, convs) -> list[str]:
    return [tok.apply_chat_template(c) for c in convs["messages"].to_list()]


def test_tokenize_hf(benchmark, dirs, rendered):
    from tokenizers import Tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    os.environ["RAYON_NUM_THREADS"] = str(THREADS)
    hf_tok = Tokenizer.from_file(str(dirs["ours"] / "tokenizer.json"))
    out, seconds = timed(benchmark, lambda: hf_tok.encode_batch_fast(rendered, add_special_tokens=False), rounds=3)
    record("tokenize", "peer", seconds, sum(len(e.ids) for e in out))


def test_tokenize_alignlib(benchmark, fresh_tok, rendered):
    (values, _), seconds = timed(benchmark, lambda tok: tok._native.encode_batch(rendered, False), rounds=3, setup=fresh_tok)
    record("tokenize", "alignlib", seconds, len(values) // 4)
