"""Typed training hyperparameters.

One dataclass per method. Field names follow Hugging Face `TrainingArguments` / TRL where an
equivalent exists, so an Alignment Handbook recipe maps field for field.

Batch sizes are per rank: the global batch of one optimizer step is
``micro_batch_size × gradient_accumulation_steps × world_size`` rows (pairs for DPO), or, with
``micro_batch_tokens`` set, ``gradient_accumulation_steps × world_size`` micro-batches that each
hold at most that many tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Optimizer = Literal["adamw", "rmsprop"]
Schedule = Literal["cosine", "linear", "constant"]
EngineKind = Literal["torch", "deepspeed"]
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class TrainConfig:
    # Optimization
    learning_rate: float = 2e-5
    optimizer: Optimizer = "adamw"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    rmsprop_alpha: float = 0.99
    rmsprop_momentum: float = 0.0
    lr_scheduler_type: Schedule = "cosine"
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0

    # Length of training: max_steps > 0 wins over num_train_epochs.
    num_train_epochs: int = 1
    max_steps: int = -1

    # Batching (per rank)
    micro_batch_size: int = 4
    micro_batch_tokens: int | None = None
    gradient_accumulation_steps: int = 1
    packing: bool = True  # padding-free [1, T] micro-batches; False = right-padded [B, L]
    shuffle: bool = True
    seed: int = 42

    # Numerics and memory
    precision: Precision = "fp32"  # torch engine: autocast dtype; deepspeed: bf16/fp16 sections
    gradient_checkpointing: bool = False

    # Engine
    engine: EngineKind = "torch"
    deepspeed: dict[str, Any] | str | None = None  # DeepSpeed JSON path or dict, "auto" values filled

    # Logging, evaluation, checkpoints
    logging_steps: int = 1
    eval_steps: int | None = None  # None: evaluate once at the end when an eval table is given
    save_steps: int | None = None
    save_total_limit: int | None = 2
    resume_from_checkpoint: bool | str = False  # True: latest checkpoint in output_dir
    report_to: tuple[str, ...] | Literal["auto"] = "auto"  # subset of {"tensorboard", "wandb"}
    progress_bar: bool = True
    plots: bool = True
    run_name: str | None = None

    def validate(self) -> None:
        if self.learning_rate < 0:
            raise ValueError("learning_rate must be >= 0")
        if self.micro_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("micro_batch_size and gradient_accumulation_steps must be >= 1")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 1:
            raise ValueError("micro_batch_tokens must be >= 1")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError("warmup_ratio must be in [0, 1]")
        if self.max_steps <= 0 and self.num_train_epochs < 1:
            raise ValueError("set max_steps > 0 or num_train_epochs >= 1")
        if self.optimizer not in ("adamw", "rmsprop"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        if self.lr_scheduler_type not in ("cosine", "linear", "constant"):
            raise ValueError(f"unknown lr_scheduler_type {self.lr_scheduler_type!r}")
        if self.engine not in ("torch", "deepspeed"):
            raise ValueError(f"unknown engine {self.engine!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"unknown precision {self.precision!r}")
        if self.engine == "torch" and self.precision == "fp16":
            raise ValueError("fp16 needs loss scaling: use precision='bf16' or engine='deepspeed'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SFTConfig(TrainConfig):
    pass


@dataclass
class DPOConfig(TrainConfig):
    learning_rate: float = 5e-7
    beta: float = 0.1  # DPO's beta, IPO's tau, SimPO's beta, ORPO's lambda
    loss_type: str = "sigmoid"  # one of alignlib.losses.LOSS_TYPES; "simpo" and "orpo" are reference-free
    label_smoothing: float = 0.0  # robust, exo_pair (needs > 0), aot, aot_unpaired, simpo; ignored by the others
    simpo_gamma: float = 0.5  # SimPO target reward margin (TRL CPOConfig.simpo_gamma)
    # Weights of an NLL term on the chosen completions (mean over their tokens in the global batch), added to
    # the preference loss. cpo_alpha: simpo only, CPO-SimPO (TRL CPOConfig.cpo_alpha, whose default is 1.0;
    # 0.0 here is plain SimPO). rpo_alpha: DPO-family losses only, RPO (TRL 1.16 spells it
    # loss_type=["sigmoid", "sft"], loss_weights=[1, rpo_alpha]). ORPO always adds its NLL, with weight 1,
    # over the chosen prompt *and* completion tokens, as TRL's ORPOTrainer does.
    cpo_alpha: float = 0.0
    rpo_alpha: float = 0.0
    # True: reference log-probs computed once before training (from ref_model, or from the
    # initial policy when ref_model is None) and cached on disk; False: a frozen copy runs each step.
    precompute_ref_log_probs: bool = True
    ref_cache_dir: str | None = None  # default: $ALIGNLIB_CACHE/ref_logps or ~/.cache/alignlib/ref_logps

    def validate(self) -> None:
        super().validate()
        from alignlib.losses import LOSS_TYPES

        if self.beta <= 0:
            raise ValueError("beta must be > 0")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; expected one of {list(LOSS_TYPES)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.loss_type == "robust" and self.label_smoothing >= 0.5:
            raise ValueError("loss_type='robust' needs label_smoothing in [0, 0.5)")
        if self.loss_type == "exo_pair" and self.label_smoothing == 0.0:
            raise ValueError("loss_type='exo_pair' needs label_smoothing > 0 (the EXO paper uses 1e-3)")
        if self.simpo_gamma < 0:
            raise ValueError("simpo_gamma must be >= 0")
        if self.cpo_alpha < 0 or self.rpo_alpha < 0:
            raise ValueError("cpo_alpha and rpo_alpha must be >= 0")
        if self.cpo_alpha and self.loss_type != "simpo":
            raise ValueError("cpo_alpha applies to loss_type='simpo' only")
        if self.rpo_alpha and self.loss_type in ("simpo", "orpo"):
            raise ValueError("rpo_alpha applies to the DPO-family (reference-based) loss types only")


__all__ = ["TrainConfig", "SFTConfig", "DPOConfig"]
