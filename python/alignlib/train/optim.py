"""Optimizers and learning-rate schedules, matching Hugging Face Trainer's definitions.

Weight decay applies to matrices only: biases and norm weights (every parameter with fewer than
two dimensions) are excluded, as the Trainer does for biases and LayerNorm/RMSNorm weights.
Schedules are the `transformers.get_*_schedule_with_warmup` formulas with
``warmup_steps = ceil(warmup_ratio × total_steps)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from alignlib.train.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon, foreach=False,
        )
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            groups, lr=config.learning_rate, alpha=config.rmsprop_alpha, eps=config.adam_epsilon,
            momentum=config.rmsprop_momentum, foreach=False,
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    return math.ceil(config.warmup_ratio * total_steps)


def lr_lambda(kind: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        raise ValueError(f"unknown lr_scheduler_type {kind!r}")

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lr_lambda(config.lr_scheduler_type, warmup_steps(config, total_steps), total_steps))
