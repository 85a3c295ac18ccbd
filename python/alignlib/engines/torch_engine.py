"""Plain PyTorch engine: one process, or DDP when launched by torchrun (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from alignlib.engines.base import CausalLMLogprobs, Engine, dist_env, pick_device
from alignlib.train.batching import Batch
from alignlib.train.config import TrainConfig
from alignlib.train.optim import build_optimizer, build_scheduler


class TorchEngine(Engine):
    def __init__(self, model: nn.Module, config: TrainConfig, total_steps: int) -> None:
        self.rank, self.world_size, local_rank = dist_env()
        self.device = pick_device(local_rank)
        if self.world_size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.config = config
        self.module = CausalLMLogprobs(model).to(self.device)
        # broadcast_buffers=False: the only buffers are deterministic (rotary tables), and a
        # broadcast in every forward would make eval forwards collective.
        self.wrapped: nn.Module = (
            DistributedDataParallel(self.module, broadcast_buffers=False) if self.world_size > 1 else self.module
        )
        self.optimizer = build_optimizer(self.module, config)
        self.scheduler = build_scheduler(self.optimizer, config, total_steps)
        self._sync = True
        self._autocast_dtype = torch.bfloat16 if config.precision == "bf16" else None

    @contextlib.contextmanager
    def accumulating(self, *, final: bool) -> Iterator[None]:
        if self.world_size > 1 and not final:
            with self.wrapped.no_sync():  # type: ignore[operator]
                yield
        else:
            yield

    def forward(self, batch: Batch, *, mean_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = batch.to(self.device)
        with torch.autocast(self.device.type, dtype=self._autocast_dtype, enabled=self._autocast_dtype is not None):
            return self.wrapped(b.input_ids, b.position_ids, b.attention_mask, b.targets, mean_logits)

    def backward(self, loss: torch.Tensor) -> None:
        # DDP averages gradients over ranks; the loss is already a share of the global sum.
        (loss * self.world_size).backward()

    def step(self) -> float:
        params = [p for p in self.module.parameters() if p.requires_grad]
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save_state(self, path: str) -> None:
        if self.is_main:
            trainable = {n: p.detach().cpu() for n, p in self.module.named_parameters() if p.requires_grad}
            torch.save(
                {"trainable": trainable, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                f"{path}/engine_state.pt",
            )

    def load_state(self, path: str) -> None:
        state = torch.load(f"{path}/engine_state.pt", map_location=self.device, weights_only=False)
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.model.state_dict() if self.is_main else None
