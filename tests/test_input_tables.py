"""Any table layout gives the same result: sliced frames, several chunks, list of dicts, Arrow,
LazyFrame, datasets.Dataset (offsets into shared Arrow buffers must be honoured)."""

from __future__ import annotations

import polars as pl
import pytest

import alignlib
from alignlib import synthetic
from alignlib.assets import TINY_CHAT_TOKENIZER


@pytest.fixture(scope="module")
def tok() -> alignlib.Tokenizer:
    return alignlib.Tokenizer.from_pretrained(TINY_CHAT_TOKENIZER)


@pytest.fixture(scope="module")
def convs() -> pl.DataFrame:
    return synthetic.conversations(60, seed=3, long_tail=False)


def sft(data, tok) -> pl.DataFrame:
    return alignlib.prepare_sft(data, tok, max_length=None, packing=None).table


def test_layouts_agree(tok, convs):
    import datasets

    expected = sft(convs, tok)
    layouts = {
        "chunked": pl.concat([convs[:20], convs[20:]], rechunk=False),
        "dicts": convs.to_dicts(),
        "arrow": convs.to_arrow(),
        "lazy": convs.lazy(),
        "dataset": datasets.Dataset.from_polars(convs),
    }
    for name, data in layouts.items():
        assert sft(data, tok).equals(expected), name


def test_a_slice_equals_the_same_rows_copied(tok, convs):
    part = convs[17:41]
    assert sft(part, tok).equals(sft(pl.DataFrame(part.to_dicts()), tok))
    pairs = synthetic.preference_pairs(30, seed=1)[5:25]
    a = alignlib.prepare_preferences(pairs, tok).table
    assert a.equals(alignlib.prepare_preferences(pl.DataFrame(pairs.to_dicts()), tok).table)
