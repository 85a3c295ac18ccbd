"""The one small interface every training engine implements, and the module engines wrap.

The training loops only ever talk to an `Engine`:

    with engine.accumulating(final=is_last_micro_batch):
        logps, _ = engine.forward(batch)
        engine.backward(share_of_global_loss)
    grad_norm = engine.step()

`backward` takes the micro-batch's share of the *global* loss (its sum divided by the global
normalizer, all-reduced beforehand), so the sum over micro-batches and ranks is exactly the loss
of the global batch; each engine undoes its own gradient averaging (DDP's mean over ranks,
DeepSpeed's mean over ranks and accumulation steps) to keep that exact.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from alignlib.train.batching import IGNORE, Batch


class CausalLMLogprobs(nn.Module):
    """Per-target log-probs of a causal LM without materializing [T, V] logits.

    Runs the decoder for final hidden states, then `alignlib.kernels.linear_logprobs` against the
    lm_head weight. The lm_head weight is read inside this module's forward, which is what lets
    DeepSpeed ZeRO-3 gather it (it registers parameters read in a forward as external parameters
    of the running module).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config = getattr(model, "config", None)
        for attr in ("final_logit_softcapping", "logit_scale"):
            if getattr(config, attr, None) not in (None, 1.0):
                raise NotImplementedError(f"models with {attr} are not supported by linear_logprobs")
        if getattr(model.get_output_embeddings(), "bias", None) is not None:
            raise NotImplementedError("lm_head with bias is not supported by linear_logprobs")

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        targets: torch.Tensor,
        mean_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (log p(target) [B, T] with 0 where ignored, mean logit over the vocabulary
        [B, T] (detached) when asked: mean_v(h·W_v) = h·mean_v(W_v), so it costs one dot product)."""
        from alignlib.kernels import linear_logprobs

        hidden = self.model.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        weight = self.model.get_output_embeddings().weight
        selected = targets != IGNORE
        h = hidden[selected].to(weight.dtype)
        if h.shape[0] == 0:
            # Keep every parameter in the graph so DDP/ZeRO reductions still line up.
            zero = (hidden.sum() + weight.sum()) * 0.0
            return zero.expand(targets.shape).to(torch.float32), (
                torch.zeros(targets.shape, device=targets.device) if mean_logits else None
            )
        logp = linear_logprobs(h, weight, targets[selected]).float()
        out = torch.zeros(targets.shape, dtype=logp.dtype, device=logp.device).masked_scatter(selected, logp)
        mean = None
        if mean_logits:
            with torch.no_grad():
                m = h.float() @ weight.float().mean(0)
                mean = torch.zeros(targets.shape, device=m.device).masked_scatter(selected, m)
        return out, mean


class Engine(ABC):
    rank: int
    world_size: int
    device: torch.device
    module: CausalLMLogprobs  # unwrapped

    @property
    def model(self) -> nn.Module:
        """The Hugging Face model being trained (unwrapped; ZeRO-3 parameters stay partitioned)."""
        return self.module.model

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def forward(self, batch: Batch, *, mean_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs of the batch's targets, [B, T] (0 where ignored)."""

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of this micro-batch's share of the global loss."""

    @abstractmethod
    def step(self) -> float:
        """Clip, optimizer step, scheduler step, zero grads. Returns the grad norm before clipping."""

    @contextlib.contextmanager
    def accumulating(self, *, final: bool) -> Iterator[None]:
        """Wraps forward+backward of one micro-batch; gradients are synchronized only when final."""
        yield

    @abstractmethod
    def learning_rate(self) -> float: ...

    @abstractmethod
    def save_state(self, path: str) -> None:
        """Model, optimizer and scheduler state for resuming (collective: every rank calls it)."""

    @abstractmethod
    def load_state(self, path: str) -> None: ...

    @abstractmethod
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full model weights on rank 0 (gathered from shards when sharded), None elsewhere.
        Collective."""

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def all_reduce_sum(self, value: torch.Tensor | float) -> torch.Tensor:
        tensor = torch.as_tensor(value, dtype=torch.float64).to(self.device).clone()
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor.cpu()

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def resolved_config(self) -> dict[str, Any]:
        return {}


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment (torchrun or deepspeed)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")
