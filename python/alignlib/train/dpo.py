"""Direct Preference Optimization: one short loop.

Each micro-batch packs 2B documents, [prompt+chosen]×B then [prompt+rejected]×B, into one
padding-free forward; sequence log-probs are per-document sums of completion-token log-probs.
The loss is the mean of `alignlib.losses.dpo_loss` over the pairs of the global batch. What each loss
type is given follows TRL 1.16:

* DPO family: summed log-probs of policy and reference, and the completion token counts (``ipo`` and
  ``sigmoid_norm`` divide by them);
* ``simpo`` and ``orpo``: reference-free, so no reference model runs and nothing is precomputed; they
  get length-averaged log-probs (TRL's ``average_log_prob=True``).

Some losses add an NLL term: ORPO's (weight 1, over the chosen prompt and completion tokens, as
``ORPOTrainer`` computes it), CPO's ``cpo_alpha`` (simpo) or RPO's ``rpo_alpha`` (DPO family), both over
the chosen completion tokens. TRL averages it over the tokens of a device micro-batch; here it is
averaged over those of the global batch (the same with one micro-batch per step).

Reference log-probs come from the initial policy (or `ref_model`) and are, by default,
precomputed once before training and cached on disk under
``<ref_cache_dir>/<data fingerprint>-<reference fingerprint>.pt``, so a resumed or repeated run
reuses them; with ``precompute_ref_log_probs=False`` a frozen copy runs next to the policy.

Metrics are those of the Zephyr model cards (TRL names). ``logits/chosen`` is the mean logit over
the completion tokens of the chosen answers and over the vocabulary, computed without [T, V]
logits: mean_v(h·W_v) = h·mean_v(W_v).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from alignlib.engines import CausalLMLogprobs, Engine, build_engine
from alignlib.losses import REFERENCE_FREE_LOSS_TYPES, dpo_loss
from alignlib.train.batching import IGNORE, Batch, collate, dpo_documents, dpo_row_lengths, eval_shards
from alignlib.train.config import DPOConfig
from alignlib.train.session import Session, StepCallback, TrainResult
from alignlib.train.sft import as_trainable_model, make_plan

STAT_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
             "logps/chosen", "logps/rejected")


def train_dpo(
    table: pl.DataFrame,
    model: nn.Module | str,
    config: DPOConfig | None = None,
    *,
    output_dir: str,
    ref_model: nn.Module | None = None,
    tokenizer: Any = None,
    eval_table: pl.DataFrame | None = None,
    data_report: dict[str, Any] | None = None,
    callbacks: Sequence[StepCallback] = (),
) -> TrainResult:
    config = config or DPOConfig()
    config.validate()
    torch.manual_seed(config.seed)
    model = as_trainable_model(model, config)
    reference = None
    if config.loss_type in REFERENCE_FREE_LOSS_TYPES:
        if ref_model is not None:
            raise ValueError(f"loss_type={config.loss_type!r} is reference-free: it does not use ref_model")
    else:
        reference = Reference(model if ref_model is None else ref_model, config,
                              policy_is_reference=ref_model is None)
    plan = make_plan(dpo_row_lengths(table), config)
    engine = build_engine(model, config, plan.total_steps)
    if reference is not None:  # before the session resumes: the reference is the *initial* policy
        reference.prepare(engine, table, eval_table)
    session = Session(method="dpo", engine=engine, config=config, output_dir=output_dir,
                      total_steps=plan.total_steps, callbacks=callbacks)
    engine.train()

    for step in session.steps:
        micro = plan.micro_batches(step, engine.rank)
        batches = [collate_pairs(table, rows, config) for rows in micro]
        num_pairs, num_tokens, num_nll_tokens = engine.all_reduce_sum(
            [sum(len(rows) for rows in micro), sum(b.num_tokens for b in batches),
             sum(nll_targets(b).sum().item() for b in batches)]).tolist()
        learning_rate = engine.learning_rate()
        stats = Stats()
        for i, (rows, batch) in enumerate(zip(micro, batches)):
            with engine.accumulating(final=i == len(batches) - 1):
                ref = reference.logps(engine, table, rows, batch) if reference else None
                losses = pair_losses(engine, batch, ref, config, stats, num_pairs / max(num_nll_tokens, 1.0))
                engine.backward(losses.sum() / num_pairs)
        grad_norm = engine.step()
        values = stats.reduce(engine, num_pairs)
        session.end_step(step + 1, {**values, "grad_norm": grad_norm, "learning_rate": learning_rate,
                                    "num_tokens": num_tokens}, tokens=int(num_tokens))
        if eval_table is not None and session.eval_due(step + 1):
            session.log_eval(step + 1, evaluate_dpo(engine, eval_table, reference, config))

    return session.finish(tokenizer=tokenizer, data_report=data_report,
                          extra={"batching": plan.summary(), "reference": None if reference is None else {
                              "precomputed": config.precompute_ref_log_probs, "cache_files": reference.cache_files}})


def collate_pairs(table: pl.DataFrame, rows: list[int], config: DPOConfig) -> Batch:
    """The micro-batch of pairs ``rows``; ``doc_ids`` mark completion targets.

    For ORPO the chosen documents also carry targets on their prompt tokens, with ``doc_ids`` -1: its NLL
    term covers them (TRL: "orpo chosen nll loss is computed over the full prompt and response").
    """
    docs = dpo_documents(table, rows)
    batch = collate(docs, packing=config.packing)
    if config.loss_type != "orpo":
        return batch
    for doc in docs[: len(docs) // 2]:
        doc.labels = doc.input_ids.copy()
    return dataclasses.replace(collate(docs, packing=config.packing), doc_ids=batch.doc_ids)


def nll_targets(batch: Batch) -> torch.Tensor:
    """Mask of the targets an NLL term trains: chosen completions (and, for ORPO, chosen prompts)."""
    return (batch.targets != IGNORE) & (batch.doc_ids < batch.num_docs // 2)  # rejected docs: >= B


def nll_weight(config: DPOConfig) -> float:
    return {"orpo": 1.0, "simpo": config.cpo_alpha}.get(config.loss_type, config.rpo_alpha)


def sequence_logps(logps: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per-document sums of target log-probs, [num_docs] (differentiable)."""
    valid = batch.doc_ids >= 0
    doc = batch.doc_ids[valid].to(logps.device)
    return torch.zeros(batch.num_docs, dtype=logps.dtype, device=logps.device).index_add(0, doc, logps[valid])


class Stats:
    """Sums over the pairs (and completion tokens) of a global batch, reduced across ranks once."""

    def __init__(self) -> None:
        self.sums = torch.zeros(len(STAT_KEYS) + 4, dtype=torch.float64)

    def add(self, losses, chosen_r, rejected_r, policy_c, policy_r, logits: torch.Tensor) -> None:
        per_pair = [losses, chosen_r, rejected_r, (chosen_r > rejected_r).double(), chosen_r - rejected_r,
                    policy_c, policy_r]
        self.sums[: len(per_pair)] += torch.stack([t.detach().double().sum().cpu() for t in per_pair])
        self.sums[len(per_pair):] += logits.double().cpu()

    def reduce(self, engine: Engine, num_pairs: float) -> dict[str, float]:
        sums = engine.all_reduce_sum(self.sums)
        values = {key: (sums[i] / num_pairs).item() for i, key in enumerate(STAT_KEYS)}
        logit_c, count_c, logit_r, count_r = sums[len(STAT_KEYS):].tolist()
        values["logits/chosen"] = logit_c / max(count_c, 1.0)
        values["logits/rejected"] = logit_r / max(count_r, 1.0)
        return values


def pair_losses(engine: Engine, batch: Batch, ref: tuple[torch.Tensor, torch.Tensor] | None, config: DPOConfig,
                stats: Stats, pairs_per_nll_token: float) -> torch.Tensor:
    """Per-pair losses [B] of a micro-batch; only their sum matters (the loop divides it by the global pair
    count). ``pairs_per_nll_token`` (global pairs / global NLL tokens) turns the NLL sum into such units."""
    logps, mean_logits = engine.forward(batch, mean_logits=True)
    valid = batch.doc_ids >= 0
    is_chosen = (batch.doc_ids < batch.num_docs // 2) & valid
    is_rejected = valid & ~is_chosen
    policy = sequence_logps(logps, batch)
    lengths = torch.bincount(batch.doc_ids[valid], minlength=batch.num_docs).to(policy)
    if config.loss_type in REFERENCE_FREE_LOSS_TYPES:  # simpo, orpo: average per-token log-probs
        policy = policy / lengths.clamp(min=1.0)
    (policy_c, policy_r), (length_c, length_r) = policy.chunk(2), lengths.chunk(2)
    ref_c, ref_r = (None, None) if ref is None else (r.to(policy.device, policy.dtype) for r in ref)
    losses, chosen_r, rejected_r = dpo_loss(
        policy_c, policy_r, ref_c, ref_r, beta=config.beta, loss_type=config.loss_type,
        label_smoothing=config.label_smoothing, chosen_lengths=length_c, rejected_lengths=length_r,
        simpo_gamma=config.simpo_gamma)
    if weight := nll_weight(config):  # spread evenly over the pairs
        nll = -logps[nll_targets(batch).to(logps.device)].sum()
        losses = losses + weight * pairs_per_nll_token * nll / len(losses)
    # Completion-token logit sums and counts, chosen then rejected (docs < B are chosen).
    m = mean_logits.cpu()
    logits = torch.stack([m[is_chosen].sum(), is_chosen.sum(), m[is_rejected].sum(), is_rejected.sum()])
    stats.add(losses, chosen_r, rejected_r, policy_c, policy_r, logits)
    return losses


@torch.no_grad()
def evaluate_dpo(engine: Engine, table: pl.DataFrame, reference: Reference | None,
                 config: DPOConfig) -> dict[str, float]:
    engine.train(False)
    stats = Stats()
    shards = eval_shards(len(table), config.micro_batch_size, engine.world_size, engine.rank)
    batches = [collate_pairs(table, rows or [0], config) for rows in shards]
    num_nll_tokens = engine.all_reduce_sum(
        float(sum(nll_targets(b).sum().item() for rows, b in zip(shards, batches) if rows is not None))).item()
    for rows, batch in zip(shards, batches):
        scratch = Stats() if rows is None else stats  # padding forward for collective gathers: dropped
        ref = reference.logps(engine, table, rows or [0], batch) if reference else None
        pair_losses(engine, batch, ref, config, scratch, len(table) / max(num_nll_tokens, 1.0))
    engine.train(True)
    return stats.reduce(engine, float(len(table)))


class Reference:
    """Reference sequence log-probs: precomputed and cached on disk, or a frozen model per step."""

    def __init__(self, model: nn.Module, config: DPOConfig, *, policy_is_reference: bool) -> None:
        self.config = config
        self.policy_is_reference = policy_is_reference
        self.cache_files: list[str] = []
        self._tables: dict[int, torch.Tensor] = {}  # id(table) -> [rows, 2] (chosen, rejected)
        self._frozen: CausalLMLogprobs | None = None
        if config.precompute_ref_log_probs:
            # Fingerprint now, before an engine shards or updates the weights.
            self.model_fingerprint = model_fingerprint(model)
            self._model = None if policy_is_reference else model
        else:
            # A frozen copy taken before the engine wraps (and, under ZeRO-3, partitions) the policy.
            frozen = copy.deepcopy(model) if policy_is_reference else model
            self._frozen = CausalLMLogprobs(frozen.requires_grad_(False)).eval()

    def prepare(self, engine: Engine, *tables: pl.DataFrame | None) -> None:
        if self._frozen is not None:
            self._frozen.to(engine.device)
            return
        for table in tables:
            if table is not None:
                self._tables[id(table)] = self._precompute(engine, table)

    def logps(self, engine: Engine, table: pl.DataFrame, rows: list[int], batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self._frozen is None:
            ref = self._tables[id(table)][rows]
            return ref[:, 0], ref[:, 1]
        with torch.no_grad():
            b = batch.to(engine.device)
            logps, _ = self._frozen(b.input_ids, b.position_ids, b.attention_mask, b.targets)
            return sequence_logps(logps, b).chunk(2)

    def _precompute(self, engine: Engine, table: pl.DataFrame) -> torch.Tensor:
        cache_dir = self.config.ref_cache_dir or os.path.join(
            os.environ.get("ALIGNLIB_CACHE", os.path.expanduser("~/.cache/alignlib")), "ref_logps")
        path = os.path.join(cache_dir, f"{table_fingerprint(table)}-{self.model_fingerprint}.pt")
        self.cache_files.append(path)
        # Every rank must agree on hit/miss, or the collective computation below would deadlock.
        if engine.all_reduce_sum(float(os.path.exists(path))).item() == engine.world_size:
            return torch.load(path, weights_only=True)
        module = CausalLMLogprobs(self._model).to(engine.device).eval() if self._model is not None else None
        engine.train(False)
        out = torch.zeros(len(table), 2, dtype=torch.float64)
        with torch.no_grad():
            for rows in eval_shards(len(table), self.config.micro_batch_size, engine.world_size, engine.rank):
                batch = collate(dpo_documents(table, rows or [0]), packing=self.config.packing)
                if module is None:
                    logps, _ = engine.forward(batch)
                else:
                    b = batch.to(engine.device)
                    logps, _ = module(b.input_ids, b.position_ids, b.attention_mask, b.targets)
                if rows is not None:
                    chosen, rejected = sequence_logps(logps, batch).double().cpu().chunk(2)
                    out[rows] = torch.stack([chosen, rejected], dim=1)
        engine.train(True)
        out = engine.all_reduce_sum(out).float()
        if engine.is_main:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            torch.save(out, tmp)
            os.replace(tmp, path)
        engine.barrier()
        return out


def table_fingerprint(table: pl.DataFrame, columns: Sequence[str] = ("prompt_ids", "chosen_ids", "rejected_ids")) -> str:
    h = hashlib.blake2b(digest_size=12)
    for column in columns:
        series = table.get_column(column)
        h.update(column.encode())
        h.update(series.list.len().to_numpy().astype(np.int64).tobytes())
        h.update(series.explode().drop_nulls().to_numpy().astype(np.int64).tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """Hash of every weight (names, dtypes, bytes): the reference's identity for the cache."""
    h = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
