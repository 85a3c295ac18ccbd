"""Training: SFT and DPO loops over the data engine's tables, on the torch or DeepSpeed engine.

The loops load on first use: the engines import `alignlib.train.batching`/`config`, and those
must not pull the loops (and so the engines) back in while they are being imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from alignlib.train.config import DPOConfig, SFTConfig, TrainConfig

_LAZY = {"train_sft": "alignlib.train.sft", "train_dpo": "alignlib.train.dpo", "TrainResult": "alignlib.train.session"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'alignlib.train' has no attribute {name!r}")


__all__ = ["DPOConfig", "SFTConfig", "TrainConfig", "TrainResult", "train_dpo", "train_sft"]
