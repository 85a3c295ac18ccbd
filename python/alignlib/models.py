"""Load any Hugging Face causal LM for training: local directory or hub id, dtype, attention
implementation, gradient checkpointing, and LoRA through peft."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] = field(default_factory=list)


_DTYPES = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def load_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = "sdpa",
    gradient_checkpointing: bool = False,
    lora: LoraSettings | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """`dtype` is the storage dtype of the weights; keep float32 for the torch engine with
    precision="bf16" (autocast on fp32 master weights), DeepSpeed casts for its bf16/fp16 modes."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        dtype=_DTYPES[dtype] if isinstance(dtype, str) else dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        **kwargs,
    )
    return prepare_model(model, gradient_checkpointing=gradient_checkpointing, lora=lora)


def prepare_model(model: nn.Module, *, gradient_checkpointing: bool = False, lora: LoraSettings | None = None) -> nn.Module:
    if gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) and with ZeRO-3 hooks.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    if lora is not None:
        import peft

        model = peft.get_peft_model(
            model,
            peft.LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                modules_to_save=lora.modules_to_save or None, task_type="CAUSAL_LM",
            ),
        )
    return model


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")
