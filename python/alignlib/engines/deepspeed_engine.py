"""DeepSpeed engine: ZeRO stages 0-3, optimizer/parameter offload, bf16/fp16/fp32.

The user's DeepSpeed config (JSON path or dict) passes through unchanged except that "auto"
values are filled from the training config the way Hugging Face's integration does, and the
batch keys are added when missing. Without an "optimizer"/"scheduler" section, alignlib's own
AdamW/RMSprop and schedule are handed to DeepSpeed as client objects, so the torch and DeepSpeed
engines run the same update. Launch multi-node runs with the `deepspeed` launcher (or torchrun).

This module is the only place that imports deepspeed, and only when the engine is built.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import torch
from torch import nn

from alignlib.engines.base import CausalLMLogprobs, Engine, dist_env
from alignlib.train.batching import Batch
from alignlib.train.config import TrainConfig
from alignlib.train.optim import build_optimizer, build_scheduler, warmup_steps


def resolve_deepspeed_config(
    user: dict[str, Any] | str | None, config: TrainConfig, *, hidden_size: int | None, world_size: int, total_steps: int
) -> dict[str, Any]:
    """The DeepSpeed config to run: the user's, with "auto" filled and batch keys added."""
    if isinstance(user, str):
        with open(user) as f:
            user = json.load(f)
    ds = copy.deepcopy(user) if user is not None else {"zero_optimization": {"stage": 0}}
    micro = config.micro_batch_size if config.micro_batch_tokens is None else 1  # token budget: one packed row
    ours: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "train_batch_size": micro * config.gradient_accumulation_steps * world_size,
    }
    for key, value in ours.items():
        current = ds.setdefault(key, value)
        if current == "auto":
            ds[key] = value
        elif current != value:
            # The loop, not DeepSpeed, decides the batch; a different value would silently change it.
            raise ValueError(f"deepspeed config {key}={current} conflicts with the training config ({value})")
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = config.max_grad_norm or 0.0
    for section, enabled in (("bf16", config.precision == "bf16"), ("fp16", config.precision == "fp16")):
        if section in ds or enabled:
            ds.setdefault(section, {})
            if ds[section].get("enabled", "auto") == "auto":
                ds[section]["enabled"] = enabled
    optimizer_params = {
        "lr": config.learning_rate, "betas": [config.adam_beta1, config.adam_beta2],
        "eps": config.adam_epsilon, "weight_decay": config.weight_decay,
    }
    _fill(ds.get("optimizer", {}).get("params", {}), optimizer_params)
    warmup = warmup_steps(config, total_steps)
    _fill(ds.get("scheduler", {}).get("params", {}), {
        "warmup_min_lr": 0.0, "warmup_max_lr": config.learning_rate, "warmup_num_steps": warmup,
        "total_num_steps": total_steps,
    })
    zero = ds.get("zero_optimization", {})
    if hidden_size:
        _fill(zero, {
            "reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 10 * hidden_size,
        })
    offloads_optimizer = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    if offloads_optimizer and "optimizer" not in ds:
        # Our client torch optimizer is allowed to run on offloaded (CPU) fp32 weights.
        ds.setdefault("zero_force_ds_cpu_optimizer", False)
    left = _autos(ds)
    if left:
        raise ValueError(f"deepspeed config has 'auto' values alignlib cannot fill: {left}")
    return ds


def _fill(section: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if section.get(key) == "auto":
            section[key] = value


def _autos(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _autos(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


class DeepSpeedEngine(Engine):
    def __init__(self, model: nn.Module, config: TrainConfig, total_steps: int) -> None:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        self.rank, self.world_size, local_rank = dist_env()
        accelerator = get_accelerator()
        on_cpu = accelerator.device_name() == "cpu"
        deepspeed.init_distributed(dist_backend="gloo" if on_cpu else accelerator.communication_backend_name())
        self.device = torch.device("cpu") if on_cpu else torch.device(accelerator.device_name(local_rank))
        self.config = config
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        self.ds_config = resolve_deepspeed_config(
            config.deepspeed, config, hidden_size=hidden, world_size=self.world_size, total_steps=total_steps
        )
        self.module = CausalLMLogprobs(model)
        optimizer = None if "optimizer" in self.ds_config else build_optimizer(self.module, config)
        scheduler = None if "scheduler" in self.ds_config else (lambda opt: build_scheduler(opt, config, total_steps))
        self.ds, _, _, _ = deepspeed.initialize(
            model=self.module, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            model_parameters=[p for p in self.module.parameters() if p.requires_grad] if optimizer is None else None,
        )
        self.stage = self.ds.zero_optimization_stage()

    def forward(self, batch: Batch, *, mean_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = batch.to(self.device)
        return self.ds(b.input_ids, b.position_ids, b.attention_mask, b.targets, mean_logits)

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed averages gradients over ranks; the loss is already a share of the global sum,
        # so undo the mean and skip its 1/accumulation scaling.
        self.ds.backward(loss * self.world_size, scale_wrt_gas=False)
        self.ds.step()  # only updates at the accumulation boundary; counts micro-steps otherwise

    def step(self) -> float:
        # Clipping and the update already ran inside the last micro-batch's ds.step().
        norm = self.ds.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def learning_rate(self) -> float:
        return float(self.ds.get_lr()[0])

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    def save_state(self, path: str) -> None:
        self.ds.save_checkpoint(path, tag="deepspeed")

    def load_state(self, path: str) -> None:
        self.ds.load_checkpoint(path, tag="deepspeed", load_optimizer_states=True, load_lr_scheduler_states=True)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.stage == 3:
            state = self.ds._zero3_consolidated_16bit_state_dict()  # collective; full tensors on rank 0
        else:
            state = self.module.state_dict() if self.is_main else None
        if not self.is_main or state is None:
            return None
        return {k.removeprefix("model."): v for k, v in state.items()}

    def resolved_config(self) -> dict[str, Any]:
        return {"deepspeed": self.ds_config, "zero_stage": self.stage}
