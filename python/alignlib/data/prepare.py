"""Training tables from conversations: ``prepare_sft``, ``prepare_preferences`` and ``pack``.

The work runs in the Rust core with the GIL released on ``ALIGNLIB_NUM_THREADS`` threads.
Nothing is dropped silently: every split, truncation and skipped row is counted in the
``Report`` returned with the table.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from alignlib import _native
from alignlib.data.arrow import is_chat_dtype, list_series, offsets, raw_column, to_arrow
from alignlib.data.report import Prepared, Report
from alignlib.errors import ConfigError, DataError
from alignlib.tokenizer import Tokenizer

Packing = Literal["bfd", "wrapped"] | None
Overflow = Literal["split", "truncate"]
OnError = Literal["raise", "skip"]

SKIPPED_EXAMPLES = 20


def _frame(data: Any) -> pl.DataFrame:
    if isinstance(data, pl.DataFrame):
        return data
    if isinstance(data, pl.LazyFrame):
        return data.collect()
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return pl.from_arrow(data)  # type: ignore[return-value]
    if isinstance(data, list):
        return pl.DataFrame(data)
    if callable(getattr(data, "to_polars", None)):  # datasets.Dataset, pandas-likes
        return data.to_polars()
    if callable(getattr(data, "to_arrow", None)):
        return pl.from_arrow(data.to_arrow())  # type: ignore[return-value]
    try:
        return pl.DataFrame(data)
    except Exception as exc:
        raise ConfigError(f"cannot read a table from {type(data).__name__}: {exc}") from exc


def _check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _check_length(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive integer or None; got {value!r}")


def _skipped(items: list[tuple[int, str, str, str]]) -> tuple[dict[str, int], list[dict[str, Any]]]:
    counts: dict[str, int] = {}
    for _, _, reason, _ in items:
        counts[reason] = counts.get(reason, 0) + 1
    examples = [{"row": r, "field": f, "reason": k, "message": m} for r, f, k, m in items[:SKIPPED_EXAMPLES]]
    return counts, examples


def _sft_table(out: dict[str, Any], packed: bool) -> pl.DataFrame:
    cols = [
        list_series("input_ids", out["input_ids"], out["row_offsets"], pa.uint32()),
        list_series("labels", out["labels"], out["row_offsets"], pa.int32()),
    ]
    if packed:
        cols.append(list_series("position_ids", out["position_ids"], out["row_offsets"], pa.int32()))
        cols.append(list_series("seq_lengths", out["seq_lengths"], out["seq_offsets"], pa.int32()))
    return pl.DataFrame(cols)


def _pack_counts(stats: dict[str, int], rows_in: int, seconds: float) -> dict[str, Any]:
    counts: dict[str, Any] = {"rows_in": rows_in, "rows_out": stats["rows"]}
    counts.update({k: v for k, v in stats.items() if k != "rows"})
    counts["tokens_in"] = stats["tokens"] + stats["tokens_truncated"]
    if stats["capacity"]:
        counts["fill"] = stats["tokens"] / stats["capacity"]
    counts["tokens_per_second"] = counts["tokens_in"] / seconds if seconds > 0 else 0.0
    return counts


def prepare_sft(
    data: Any,
    tokenizer: Tokenizer,
    *,
    max_length: int | None = 2048,
    packing: Packing = "bfd",
    assistant_only_loss: bool = True,
    overflow: Overflow = "split",
    on_error: OnError = "raise",
) -> Prepared:
    """Tokenizes, labels and packs an SFT table.

    Input columns, by priority: ``messages`` (list of {role, content}); ``prompt`` and
    ``completion`` (both conversations or both strings); ``text``. Output columns:
    ``input_ids`` List[UInt32], ``labels`` List[Int32] (-100 = not trained), plus
    ``position_ids`` and ``seq_lengths`` (List[Int32]) when packing.

    - ``assistant_only_loss``: train only on what assistant turns generate (for
      prompt/completion: only the completion); otherwise on every token but the first.
    - ``overflow``: a document longer than ``max_length`` is ``"split"`` into pieces (the
      default; lossless) or ``"truncate"``-d (the cut is counted in the report).
    - ``packing``: ``"bfd"`` (best-fit-decreasing over the whole table), ``"wrapped"``, or None
      for one row per document. ``packing=None, max_length=None`` gives one row per input row,
      in order.
    - ``on_error``: ``"raise"`` a DataError/TemplateError naming the row and field, or
      ``"skip"`` the row and count it in the report.
    """
    _check_choice("packing", packing, ("bfd", "wrapped", None))
    _check_choice("overflow", overflow, ("split", "truncate"))
    _check_choice("on_error", on_error, ("raise", "skip"))
    _check_length("max_length", max_length)
    if packing is not None and max_length is None:
        raise ConfigError(f"packing={packing!r} needs a max_length")
    df = _frame(data)
    if "messages" in df.columns:
        kind, names = "messages", ["messages"]
    elif "prompt" in df.columns and "completion" in df.columns:
        kind, names = "prompt_completion", ["prompt", "completion"]
    elif "text" in df.columns:
        kind, names = "text", ["text"]
    else:
        raise DataError(
            f"no SFT columns in {df.columns}: expected `messages`, or `prompt` and `completion`, or `text`",
            None,
            None,
            "invalid_value",
        )
    if kind == "messages" and not is_chat_dtype(df.schema["messages"]):
        raise DataError(
            f"column `messages` has type {df.schema['messages']}; expected a list of {{role, content}} structs",
            None,
            "messages",
            "invalid_value",
        )
    columns = [raw_column(df.get_column(n), n) for n in names]
    start = time.perf_counter()
    out = _native.prepare_sft(
        tokenizer._native,
        kind,
        columns,
        assistant_only_loss=assistant_only_loss,
        max_length=max_length,
        packing=packing,
        overflow=overflow,
        skip_invalid=on_error == "skip",
    )
    seconds = time.perf_counter() - start
    table = _sft_table(out, packed=packing is not None)
    skipped, examples = _skipped(out["skipped"])
    counts = _pack_counts(out["stats"], df.height, seconds)
    counts["rows_skipped"] = len(out["skipped"])
    report = Report(
        kind="sft",
        settings={
            "input": kind,
            "tokenizer": tokenizer.name,
            "max_length": max_length,
            "packing": packing,
            "assistant_only_loss": assistant_only_loss,
            "overflow": overflow,
            "on_error": on_error,
        },
        counts=counts,
        skipped=skipped,
        skipped_examples=examples,
        seconds=seconds,
    )
    return Prepared(table=table, report=report)


def pack(
    data: Any,
    max_length: int,
    *,
    strategy: Literal["bfd", "wrapped"] = "bfd",
    overflow: Overflow = "split",
) -> Prepared:
    """Packs a pre-tokenized table (``input_ids``, optional ``labels``) into rows of at most
    ``max_length`` tokens. Without ``labels``, every token but each document's first is trained."""
    _check_choice("strategy", strategy, ("bfd", "wrapped"))
    _check_choice("overflow", overflow, ("split", "truncate"))
    _check_length("max_length", max_length)
    df = _frame(data)
    if "input_ids" not in df.columns:
        raise DataError(f"no `input_ids` column in {df.columns}", None, "input_ids", "invalid_value")

    def flat(name: str, dtype: pa.DataType) -> tuple[bytes, bytes]:
        arr = to_arrow(df.get_column(name))
        if arr.null_count:
            raise DataError(f"column `{name}` has null rows", None, name, "missing_value")
        arr = arr.cast(pa.large_list(dtype))
        bounds = offsets(arr)
        values = np.asarray(arr.values.to_numpy(zero_copy_only=False), dtype=dtype.to_pandas_dtype())
        return values[bounds[0] : bounds[-1]].tobytes(), (bounds - bounds[0]).tobytes()

    ids, id_offsets = flat("input_ids", pa.uint32())
    labels = None
    if "labels" in df.columns:
        labels, label_offsets = flat("labels", pa.int32())
        if label_offsets != id_offsets:
            raise DataError("`labels` and `input_ids` differ in length in some row", None, "labels", "invalid_value")
    start = time.perf_counter()
    out = _native.pack(ids, id_offsets, labels, max_length=max_length, packing=strategy, overflow=overflow)
    seconds = time.perf_counter() - start
    report = Report(
        kind="pack",
        settings={"max_length": max_length, "packing": strategy, "overflow": overflow},
        counts=_pack_counts(out["stats"], df.height, seconds),
        seconds=seconds,
    )
    return Prepared(table=_sft_table(out, packed=True), report=report)


def prepare_preferences(
    data: Any,
    tokenizer: Tokenizer,
    *,
    max_length: int | None = 1024,
    max_prompt_length: int | None = 512,
    on_error: OnError = "raise",
) -> Prepared:
    """Tokenizes preference pairs into ``prompt_ids``, ``chosen_ids``, ``rejected_ids``
    (List[UInt32]).

    Input: ``prompt``/``chosen``/``rejected`` (conversations or plain strings), or only
    ``chosen``/``rejected`` (the prompt is their longest common message prefix). Conversational
    prompts are rendered with the generation prompt; chosen/rejected are the tokens that
    prompt+completion adds. No pair is dropped for length: when a pair exceeds ``max_length``
    the prompt is shortened from the left to ``max_prompt_length`` (to half of ``max_length``
    if it alone would fill it), then the completions from the right; all cuts are counted.
    """
    _check_choice("on_error", on_error, ("raise", "skip"))
    _check_length("max_length", max_length)
    _check_length("max_prompt_length", max_prompt_length)
    df = _frame(data)
    missing = [c for c in ("chosen", "rejected") if c not in df.columns]
    if missing:
        raise DataError(
            f"no `{'`, `'.join(missing)}` column in {df.columns}: expected prompt/chosen/rejected or chosen/rejected",
            None,
            missing[0],
            "invalid_value",
        )
    prompt = raw_column(df.get_column("prompt"), "prompt") if "prompt" in df.columns else None
    chosen = raw_column(df.get_column("chosen"), "chosen")
    rejected = raw_column(df.get_column("rejected"), "rejected")
    start = time.perf_counter()
    out = _native.prepare_preferences(
        tokenizer._native,
        prompt,
        chosen,
        rejected,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        skip_invalid=on_error == "skip",
    )
    seconds = time.perf_counter() - start
    table = pl.DataFrame(
        [
            list_series(f"{name}_ids", out[f"{name}_ids"], out[f"{name}_offsets"], pa.uint32())
            for name in ("prompt", "chosen", "rejected")
        ]
    )
    skipped, examples = _skipped(out["skipped"])
    stats = out["stats"]
    counts: dict[str, Any] = {"rows_in": df.height, "rows_out": stats["pairs"], "rows_skipped": len(out["skipped"])}
    counts.update({k: v for k, v in stats.items() if k != "pairs"})
    tokens = stats["prompt_tokens"] + stats["chosen_tokens"] + stats["rejected_tokens"]
    truncated = stats["prompt_tokens_truncated"] + stats["chosen_tokens_truncated"] + stats["rejected_tokens_truncated"]
    counts["tokens_truncated"] = truncated
    counts["tokens_in"] = tokens + truncated
    counts["tokens_per_second"] = counts["tokens_in"] / seconds if seconds > 0 else 0.0
    report = Report(
        kind="preferences",
        settings={
            "input": "explicit_prompt" if prompt is not None else "implicit_prompt",
            "tokenizer": tokenizer.name,
            "max_length": max_length,
            "max_prompt_length": max_prompt_length,
            "on_error": on_error,
        },
        counts=counts,
        skipped=skipped,
        skipped_examples=examples,
        seconds=seconds,
    )
    return Prepared(table=table, report=report)
