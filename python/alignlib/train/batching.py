"""Micro-batches from the data engine's tables.

Two layouts, both exact:

* packed (padding-free): every document of the micro-batch is concatenated into one [1, T] row
  whose position_ids restart at 0 at each document. transformers 5 derives a block-diagonal
  causal mask from restarting position_ids when no attention_mask is given
  (`masking_utils.find_packed_sequence_indices`, used by sdpa/eager/flex mask builders, and the
  varlen path of flash-attention), so documents never attend to each other. tests/test_train_sft.py
  checks that a packed row gives the same per-document losses as running each document alone.
* padded: one document per row, right-padded to [B, L] with a 2D attention_mask.

Targets are shifted inside the batch: ``targets[t] = labels[t + 1]`` is the token predicted from
position t. The first label of every document is forced to -100, so the last position of a
document never predicts the first token of the next one.

Which rows go into which micro-batch is decided by `StepPlan`, a pure function of (table lengths,
config, world size, seed, epoch): every rank computes the same plan and takes its own share, and
a resumed run lands on exactly the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl
import torch

IGNORE = -100


@dataclass
class Document:
    input_ids: np.ndarray  # int64 [n]
    labels: np.ndarray  # int64 [n], unshifted, -100 = not trained
    position_ids: np.ndarray  # int64 [n]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor | None  # [B, T] for padded batches, None when packed
    targets: torch.Tensor  # [B, T] shifted labels, -100 = ignored
    doc_ids: torch.Tensor  # [B, T] document index of each target, -1 where ignored
    num_docs: int
    num_tokens: int  # real (non-pad) tokens
    num_targets: int

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(
            move(self.input_ids), move(self.position_ids), move(self.attention_mask),
            move(self.targets), move(self.doc_ids), self.num_docs, self.num_tokens, self.num_targets,
        )


def _lists(table: pl.DataFrame, column: str, rows: list[int] | np.ndarray) -> list[np.ndarray]:
    series = table.get_column(column).gather(np.asarray(rows, dtype=np.int64))
    lengths = series.list.len().to_numpy()
    values = series.explode().to_numpy().astype(np.int64) if lengths.sum() else np.zeros(0, np.int64)
    return np.split(values, np.cumsum(lengths)[:-1])


def sft_documents(table: pl.DataFrame, rows: list[int] | np.ndarray) -> list[Document]:
    """Documents of the given SFT rows, in order; packed rows are split at `seq_lengths`."""
    ids = _lists(table, "input_ids", rows)
    labels = _lists(table, "labels", rows)
    seq_lengths = _lists(table, "seq_lengths", rows) if "seq_lengths" in table.columns else None
    docs: list[Document] = []
    for i in range(len(ids)):
        splits = seq_lengths[i] if seq_lengths is not None else np.array([len(ids[i])])
        if splits.sum() != len(ids[i]):
            raise ValueError(f"row {rows[i]}: seq_lengths sum {splits.sum()} != row length {len(ids[i])}")
        bounds = np.cumsum(splits)[:-1]
        for d_ids, d_labels in zip(np.split(ids[i], bounds), np.split(labels[i], bounds)):
            if len(d_ids):
                docs.append(Document(d_ids, d_labels, np.arange(len(d_ids), dtype=np.int64)))
    return docs


def dpo_documents(table: pl.DataFrame, rows: list[int] | np.ndarray) -> list[Document]:
    """2B documents: prompt+chosen for each pair, then prompt+rejected for each pair.

    Only completion tokens carry labels, so per-document sums of target log-probs are the
    sequence log-probs DPO needs.
    """
    prompts = _lists(table, "prompt_ids", rows)
    docs: list[Document] = []
    for column in ("chosen_ids", "rejected_ids"):
        for prompt, completion in zip(prompts, _lists(table, column, rows)):
            ids = np.concatenate([prompt, completion])
            labels = np.concatenate([np.full(len(prompt), IGNORE, np.int64), completion])
            docs.append(Document(ids, labels, np.arange(len(ids), dtype=np.int64)))
    return docs


def collate(docs: list[Document], *, packing: bool) -> Batch:
    """Packed [1, T] or right-padded [B, L] batch with shifted targets and per-target doc ids."""
    if not docs:
        raise ValueError("empty micro-batch")
    targets, doc_ids = [], []
    for d, doc in enumerate(docs):
        labels = doc.labels.copy()
        labels[0] = IGNORE  # nothing predicts the first token of a document
        shifted = np.append(labels[1:], IGNORE)
        targets.append(shifted)
        doc_ids.append(np.where(shifted != IGNORE, d, -1))
    lengths = [len(doc.input_ids) for doc in docs]
    num_targets = int(sum((t != IGNORE).sum() for t in targets))
    if packing:
        cat = lambda parts: torch.from_numpy(np.concatenate(parts)).unsqueeze(0)  # noqa: E731
        return Batch(
            input_ids=cat([doc.input_ids for doc in docs]),
            position_ids=cat([doc.position_ids for doc in docs]),
            attention_mask=None,
            targets=cat(targets),
            doc_ids=cat(doc_ids),
            num_docs=len(docs),
            num_tokens=sum(lengths),
            num_targets=num_targets,
        )
    width = max(lengths)

    def pad(parts: list[np.ndarray], value: int) -> torch.Tensor:
        out = np.full((len(parts), width), value, dtype=np.int64)
        for i, p in enumerate(parts):
            out[i, : len(p)] = p
        return torch.from_numpy(out)

    mask = pad([np.ones(n, np.int64) for n in lengths], 0)
    return Batch(
        input_ids=pad([doc.input_ids for doc in docs], 0),
        position_ids=pad([np.arange(n, dtype=np.int64) for n in lengths], 0),
        attention_mask=mask,
        targets=pad(targets, IGNORE),
        doc_ids=pad(doc_ids, -1),
        num_docs=len(docs),
        num_tokens=sum(lengths),
        num_targets=num_targets,
    )


def sft_row_lengths(table: pl.DataFrame) -> np.ndarray:
    return table.get_column("input_ids").list.len().to_numpy().astype(np.int64)


def dpo_row_lengths(table: pl.DataFrame) -> np.ndarray:
    length = lambda c: table.get_column(c).list.len().to_numpy().astype(np.int64)  # noqa: E731
    return 2 * length("prompt_ids") + length("chosen_ids") + length("rejected_ids")


@dataclass
class StepPlan:
    """Row indices of every micro-batch of every optimizer step.

    Each step holds ``gradient_accumulation_steps × world_size`` micro-batches; rank r takes the
    contiguous slice [r·A, (r+1)·A), so the same global batch is split the same way whatever the
    world size. Rows: ``micro_batch_size`` rows per micro-batch. Tokens: rows are added greedily
    (in shuffled order) while the micro-batch stays within ``micro_batch_tokens`` (packed: sum of
    lengths; padded: rows × longest row); a longer row travels alone. The incomplete last global
    batch of an epoch is left out (every rank must run the same number of micro-batches); how many
    rows that leaves out is counted in ``summary()``, which goes into the run report.
    """

    lengths: np.ndarray
    micro_batch_size: int
    micro_batch_tokens: int | None
    accumulation: int
    world_size: int
    seed: int
    shuffle: bool
    packing: bool
    num_epochs: int
    max_steps: int

    def __post_init__(self) -> None:
        self._epochs: dict[int, list[list[list[int]]]] = {}
        if self.steps_in_epoch(0) == 0:
            raise ValueError(
                f"{len(self.lengths)} rows do not fill one global batch of {self.micro_per_step} micro-batches"
            )

    @property
    def micro_per_step(self) -> int:
        return self.accumulation * self.world_size

    def _epoch(self, epoch: int) -> list[list[list[int]]]:
        if epoch not in self._epochs:
            order = np.arange(len(self.lengths))
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.lengths))
            micro: list[list[int]] = []
            if self.micro_batch_tokens is None:
                usable = len(order) - len(order) % self.micro_batch_size
                micro = [order[i : i + self.micro_batch_size].tolist() for i in range(0, usable, self.micro_batch_size)]
            else:
                current: list[int] = []
                longest = total = 0
                for row in order.tolist():
                    n = int(self.lengths[row])
                    cost = (len(current) + 1) * max(longest, n) if not self.packing else total + n
                    if current and cost > self.micro_batch_tokens:
                        micro.append(current)
                        current, longest, total = [], 0, 0
                    current.append(row)
                    longest, total = max(longest, n), total + n
                if current:
                    micro.append(current)
            k = self.micro_per_step
            self._epochs[epoch] = [micro[i : i + k] for i in range(0, len(micro) - len(micro) % k, k)]
        return self._epochs[epoch]

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self._epoch(epoch))

    def rows_left_out(self, epoch: int) -> int:
        """Rows of `epoch` that are in no global batch (the incomplete last one)."""
        used = sum(len(micro) for step in self._epoch(epoch) for micro in step)
        return len(self.lengths) - used

    def summary(self) -> dict[str, Any]:
        """For the run report: steps, and the rows each epoch that training touches left out."""
        last_epoch = self.locate(self.total_steps - 1)[0] if self.total_steps > 0 else 0
        left_out = [self.rows_left_out(e) for e in range(last_epoch + 1)]
        return {"rows": len(self.lengths), "steps": self.total_steps, "epochs_touched": last_epoch + 1,
                "rows_left_out_per_epoch": left_out}

    @cached_property
    def total_steps(self) -> int:
        if self.max_steps > 0:
            return self.max_steps
        return sum(self.steps_in_epoch(e) for e in range(self.num_epochs))

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, step within epoch) of a global step; epochs repeat past num_train_epochs."""
        epoch = 0
        while step >= self.steps_in_epoch(epoch):
            step -= self.steps_in_epoch(epoch)
            epoch += 1
        return epoch, step

    def global_batch(self, step: int) -> list[list[int]]:
        epoch, index = self.locate(step)
        return self._epoch(epoch)[index]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        return self.global_batch(step)[rank * self.accumulation : (rank + 1) * self.accumulation]


def eval_shards(num_rows: int, rows_per_batch: int, world_size: int, rank: int) -> list[list[int] | None]:
    """This rank's evaluation micro-batches; None pads ranks to the same count, because ZeRO-3
    forwards are collective and every rank must run the same number of them."""
    chunks = [list(range(i, min(i + rows_per_batch, num_rows))) for i in range(0, num_rows, rows_per_batch)]
    per_rank = -(-len(chunks) // world_size)
    mine: list[list[int] | None] = chunks[rank::world_size]
    return mine + [None] * (per_rank - len(mine))
