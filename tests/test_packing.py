"""Packing keeps every token, keeps documents apart, and fills rows."""

from __future__ import annotations

from collections import Counter

import polars as pl
import pytest

import alignlib
from alignlib import synthetic

MAX = 2048


@pytest.fixture(scope="module")
def tok(mistral_dir) -> alignlib.Tokenizer:
    return alignlib.Tokenizer.from_pretrained(mistral_dir)


@pytest.fixture(scope="module")
def convs() -> pl.DataFrame:
    return synthetic.conversations(1200, seed=21)


@pytest.fixture(scope="module")
def unpacked(convs, tok) -> pl.DataFrame:
    return alignlib.prepare_sft(convs, tok, max_length=None, packing=None).table


def documents(table: pl.DataFrame) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(ids, labels, positions) of every document in a packed table, cut by seq_lengths."""
    docs = []
    for ids, labels, pos, lengths in table.select("input_ids", "labels", "position_ids", "seq_lengths").iter_rows():
        start = 0
        for n in lengths:
            docs.append((tuple(ids[start : start + n]), tuple(labels[start : start + n]), tuple(pos[start : start + n])))
            start += n
        assert start == len(ids)
    return docs


def pieces(table: pl.DataFrame, max_length: int) -> Counter:
    """The documents of an unpacked table split into max_length pieces, as a multiset."""
    out = Counter()
    for ids, labels in table.select("input_ids", "labels").iter_rows():
        for s in range(0, len(ids), max_length):
            piece_labels = [-100, *labels[s + 1 : s + max_length]]
            out[(tuple(ids[s : s + max_length]), tuple(piece_labels))] += 1
    return out


def test_bfd_is_lossless_and_keeps_documents_apart(convs, tok, unpacked):
    out = alignlib.prepare_sft(convs, tok, max_length=MAX, packing="bfd")
    table, report = out
    assert table.columns == ["input_ids", "labels", "position_ids", "seq_lengths"]
    assert table["input_ids"].list.len().max() <= MAX
    docs = documents(table)
    # Each document restarts its positions and predicts nothing from the document before it.
    assert all(pos == tuple(range(len(ids))) and labels[0] == -100 for ids, labels, pos in docs)
    assert Counter((ids, labels) for ids, labels, _ in docs) == pieces(unpacked, MAX)
    long_docs = int((unpacked["input_ids"].list.len().cast(pl.Int64) > MAX).sum())
    assert long_docs > 0
    assert report["documents_split"] == long_docs and report["tokens_truncated"] == 0
    assert report["tokens"] == unpacked["input_ids"].list.len().cast(pl.Int64).sum() and report.lossless


def test_bfd_fills_rows(convs, tok):
    report = alignlib.prepare_sft(convs, tok, max_length=MAX, packing="bfd").report
    assert report["fill"] >= 0.995
    assert report["fill"] == report["tokens"] / (report["rows_out"] * MAX)


def test_truncation_happens_only_when_asked_and_is_counted(convs, tok, unpacked):
    out = alignlib.prepare_sft(convs, tok, max_length=MAX, packing="bfd", overflow="truncate")
    lengths = unpacked["input_ids"].list.len().cast(pl.Int64)
    assert out.report["tokens_truncated"] == int((lengths - MAX).clip(lower_bound=0).sum()) > 0
    assert out.report["documents_truncated"] == int((lengths > MAX).sum())
    assert not out.report.lossless


def test_wrapped_rows_are_full_except_the_last(convs, tok, unpacked):
    table = alignlib.prepare_sft(convs, tok, max_length=MAX, packing="wrapped").table
    lengths = table["input_ids"].list.len().to_list()
    assert set(lengths[:-1]) == {MAX} and 0 < lengths[-1] <= MAX
    flat_in = [t for row in unpacked["input_ids"].to_list() for t in row]
    assert [t for row in table["input_ids"].to_list() for t in row] == flat_in


def test_no_packing_splits_long_documents_into_rows(convs, tok, unpacked):
    out = alignlib.prepare_sft(convs, tok, max_length=MAX, packing=None)
    assert out.table.columns == ["input_ids", "labels"]
    lengths = unpacked["input_ids"].list.len().cast(pl.Int64)
    extra_rows = int(((lengths - 1) // MAX).sum())
    assert out.table.height == convs.height + extra_rows
    assert out.report["tokens"] == lengths.sum()


def test_pack_alone_matches_packing_inside_prepare(convs, tok, unpacked):
    packed = alignlib.pack(unpacked, MAX)
    assert packed.table.equals(alignlib.prepare_sft(convs, tok, max_length=MAX, packing="bfd").table)
    # Without labels every token but a document's first is trained.
    bare = alignlib.pack(unpacked.select("input_ids"), MAX).table
    assert all(labels[0] == -100 for _, labels, _ in documents(bare))


def test_trl_bfd_drops_tokens_that_alignlib_keeps(unpacked):
    """TRL's pack_dataset(strategy="bfd") truncates every document at max_length; we split."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    trl_packed = pack_dataset(Dataset.from_polars(unpacked.select("input_ids")), MAX, strategy="bfd")
    trl_tokens = sum(len(r) for r in trl_packed["input_ids"])
    ours = alignlib.pack(unpacked, MAX).report
    total = int(unpacked["input_ids"].list.len().cast(pl.Int64).sum())
    assert ours["tokens"] == total
    assert trl_tokens == total - int((unpacked["input_ids"].list.len().cast(pl.Int64) - MAX).clip(lower_bound=0).sum()) < total
