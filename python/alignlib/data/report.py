"""What a data preparation kept, split, truncated and skipped, with counts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl


@dataclass
class Report:
    """Counts of one preparation run. ``report["tokens_truncated"]`` reads a count.

    ``lossless`` is true when no token was truncated and no row skipped: every input token is
    somewhere in the output table (splits keep all tokens).
    """

    kind: str
    settings: dict[str, Any]
    counts: dict[str, Any]
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def __getitem__(self, key: str) -> Any:
        return self.counts[key]

    @property
    def lossless(self) -> bool:
        return self.counts.get("tokens_truncated", 0) == 0 and self.counts.get("rows_skipped", 0) == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lossless": self.lossless}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def __str__(self) -> str:
        lines = [f"alignlib {self.kind} report ({self.seconds:.2f} s)"]
        lines += [f"  {k:<26} {_fmt(v)}" for k, v in self.counts.items()]
        if self.skipped:
            lines.append("  skipped rows by reason:")
            lines += [f"    {k:<24} {v}" for k, v in sorted(self.skipped.items())]
            for ex in self.skipped_examples[:5]:
                lines.append(f"    e.g. row {ex['row']}, {ex['field']}: {ex['message']}")
        lines.append(f"  {'lossless':<26} {self.lossless}")
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if v < 10 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


@dataclass
class Prepared:
    """A prepared table and the report of how it was made."""

    table: pl.DataFrame
    report: Report

    def __iter__(self):  # allows `table, report = prepare_sft(...)`
        return iter((self.table, self.report))
