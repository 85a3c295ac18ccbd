"""Supervised fine-tuning: one short loop.

Loss = sum of token NLL over the global batch / number of trained tokens in the global batch
(all micro-batches of all ranks; the count is all-reduced first), i.e. a token mean, not a mean
of per-micro-batch means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import torch
from torch import nn

from alignlib.engines import Engine, build_engine, dist_env
from alignlib.models import load_model, prepare_model
from alignlib.train.batching import StepPlan, collate, eval_shards, sft_documents, sft_row_lengths
from alignlib.train.config import SFTConfig, TrainConfig
from alignlib.train.session import Session, StepCallback, TrainResult


def train_sft(
    table: pl.DataFrame,
    model: nn.Module | str,
    config: SFTConfig | None = None,
    *,
    output_dir: str,
    tokenizer: Any = None,
    eval_table: pl.DataFrame | None = None,
    data_report: dict[str, Any] | None = None,
    callbacks: Sequence[StepCallback] = (),
) -> TrainResult:
    config = config or SFTConfig()
    config.validate()
    torch.manual_seed(config.seed)
    model = as_trainable_model(model, config)
    plan = make_plan(sft_row_lengths(table), config)
    engine = build_engine(model, config, plan.total_steps)
    session = Session(method="sft", engine=engine, config=config, output_dir=output_dir,
                      total_steps=plan.total_steps, callbacks=callbacks)
    engine.train()

    for step in session.steps:
        batches = [collate(sft_documents(table, rows), packing=config.packing)
                   for rows in plan.micro_batches(step, engine.rank)]
        num_targets, num_tokens = engine.all_reduce_sum(
            [sum(b.num_targets for b in batches), sum(b.num_tokens for b in batches)]).tolist()
        learning_rate = engine.learning_rate()
        nll = torch.zeros((), dtype=torch.float64)
        for i, batch in enumerate(batches):
            with engine.accumulating(final=i == len(batches) - 1):
                logps, _ = engine.forward(batch)
                engine.backward(-logps.sum() / num_targets)
            nll += -logps.detach().sum().double().cpu()
        grad_norm = engine.step()
        loss = engine.all_reduce_sum(nll).item() / num_targets
        session.end_step(step + 1, {"loss": loss, "grad_norm": grad_norm, "learning_rate": learning_rate,
                                    "num_tokens": num_tokens, "num_trained_tokens": num_targets},
                         tokens=int(num_tokens))
        if eval_table is not None and session.eval_due(step + 1):
            session.log_eval(step + 1, evaluate_sft(engine, eval_table, config))

    return session.finish(tokenizer=tokenizer, data_report=data_report, extra={"batching": plan.summary()})


@torch.no_grad()
def evaluate_sft(engine: Engine, table: pl.DataFrame, config: TrainConfig) -> dict[str, float]:
    """Token-mean NLL over the whole held-out table."""
    engine.train(False)
    nll = targets = 0.0
    for rows in eval_shards(len(table), config.micro_batch_size, engine.world_size, engine.rank):
        batch = collate(sft_documents(table, rows if rows is not None else [0]), packing=config.packing)
        logps, _ = engine.forward(batch)
        if rows is not None:  # padding forward for collective ZeRO-3 gathers: result unused
            nll += -logps.sum().item()
            targets += batch.num_targets
    engine.train(True)
    nll, targets = engine.all_reduce_sum([nll, targets]).tolist()
    return {"loss": nll / max(targets, 1.0)}


def as_trainable_model(model: nn.Module | str, config: TrainConfig) -> nn.Module:
    if isinstance(model, str):
        return load_model(model, gradient_checkpointing=config.gradient_checkpointing)
    return prepare_model(model, gradient_checkpointing=config.gradient_checkpointing)


def make_plan(lengths, config: TrainConfig) -> StepPlan:
    return StepPlan(
        lengths=lengths, micro_batch_size=config.micro_batch_size, micro_batch_tokens=config.micro_batch_tokens,
        accumulation=config.gradient_accumulation_steps, world_size=dist_env()[1], seed=config.seed,
        shuffle=config.shuffle, packing=config.packing, num_epochs=config.num_train_epochs, max_steps=config.max_steps,
    )
