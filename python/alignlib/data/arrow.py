"""Polars/Arrow columns to the raw buffers the Rust core reads, and back.

Text is handed over as Arrow's own offsets and data buffers; results come back as flat
buffers that become Arrow list arrays without per-element Python work.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from alignlib.errors import DataError

MESSAGE_FIELDS = ("role", "content")


def _validity(arr: pa.Array) -> bytes | None:
    """One byte per element (1 = valid), or None when nothing is null."""
    if arr.null_count == 0:
        return None
    bitmap = arr.buffers()[0]
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + len(arr)].tobytes()


def offsets(arr: pa.Array) -> np.ndarray:
    """The int64 offsets of a large_string or large_list array, honouring its slice offset."""
    return np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]


def _strings(arr: pa.Array) -> tuple[bytes, bytes, bytes | None]:
    """(int64 offsets, utf-8 data, validity) of a string array."""
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    data_buf = arr.buffers()[2]
    data = data_buf.to_pybytes() if data_buf is not None else b""
    return offsets(arr).tobytes(), data, _validity(arr)


def to_arrow(series: pl.Series) -> pa.Array:
    """One contiguous Arrow array (large types) for a polars series."""
    arr = series.to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr


def is_chat_dtype(dtype: pl.DataType) -> bool:
    return (
        isinstance(dtype, pl.List)
        and isinstance(dtype.inner, pl.Struct)
        and {f.name for f in dtype.inner.fields} >= set(MESSAGE_FIELDS)
    )


def raw_column(series: pl.Series, field: str) -> tuple[Any, ...]:
    """("text", strings) for a string column, ("chat", ...) for a list of {role, content}."""
    dtype = series.dtype
    if dtype == pl.String:
        return ("text", _strings(to_arrow(series)))
    if is_chat_dtype(dtype):
        for f in dtype.inner.fields:
            if f.name in MESSAGE_FIELDS and f.dtype not in (pl.String, pl.Null):
                row = _first_row_with_value(series, f.name)
                raise DataError(
                    f"row {row}, field `{field}[].{f.name}`: messages' {f.name} has type {f.dtype}; expected a string",
                    row,
                    f"{field}[].{f.name}",
                    "invalid_value",
                )
        extra = [f.name for f in dtype.inner.fields if f.name not in MESSAGE_FIELDS]
        messages = series.explode().struct
        for name in extra:
            values = messages.field(name)
            if values.null_count() < len(values):
                row = _first_row_with_value(series, name)
                raise DataError(
                    f"row {row}, field `{field}[].{name}`: message field {name!r} is not supported "
                    f"(only role and content are rendered; drop or merge it to keep its data)",
                    row,
                    f"{field}[].{name}",
                    "invalid_value",
                )
        arr = to_arrow(series)
        if not pa.types.is_large_list(arr.type):
            arr = arr.cast(pa.large_list(arr.type.value_type))
        structs: pa.StructArray = arr.values
        children = dict(zip([f.name for f in structs.type], structs.flatten()))
        return (
            "chat",
            offsets(arr).tobytes(),
            _validity(arr),
            _validity(structs),
            _strings(children["role"]),
            _strings(children["content"]),
        )
    raise DataError(
        f"column `{field}` has type {dtype}; expected a string, or a list of {{role, content}} messages",
        None,
        field,
        "invalid_value",
    )


def _first_row_with_value(series: pl.Series, name: str) -> int:
    has = series.list.eval(pl.element().struct.field(name).is_not_null().any()).list.first()
    idx = has.arg_true()
    return int(idx[0]) if len(idx) else 0


def buffer_array(data: bytes, dtype: pa.DataType) -> pa.Array:
    """A zero-copy Arrow array over a little-endian buffer."""
    width = dtype.bit_width // 8
    return pa.Array.from_buffers(dtype, len(data) // width, [None, pa.py_buffer(data)])


def list_series(name: str, values: bytes, offsets: bytes, dtype: pa.DataType) -> pl.Series:
    """A polars List series from flat values and int64 offsets."""
    arr = pa.LargeListArray.from_arrays(buffer_array(offsets, pa.int64()), buffer_array(values, dtype))
    return pl.Series(name, arr)
