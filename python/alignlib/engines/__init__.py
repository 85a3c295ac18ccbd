"""Training engines behind one small interface (`Engine`): plain PyTorch (single process or DDP)
and DeepSpeed (ZeRO 0-3). DeepSpeed is imported only when its engine is built."""

from __future__ import annotations

from torch import nn

from alignlib.engines.base import CausalLMLogprobs, Engine, dist_env
from alignlib.train.config import TrainConfig


def build_engine(model: nn.Module, config: TrainConfig, total_steps: int) -> Engine:
    if config.engine == "deepspeed":
        from alignlib.engines.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, config, total_steps)
    from alignlib.engines.torch_engine import TorchEngine

    return TorchEngine(model, config, total_steps)


__all__ = ["CausalLMLogprobs", "Engine", "build_engine", "dist_env"]
