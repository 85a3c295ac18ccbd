"""alignlib: exact, lossless and fast SFT and DPO for open chat models.

Data preparation (chat templates, tokenization, loss masks, packing, preference pairs) runs in
a Rust core over Polars tables; training runs on DeepSpeed or plain torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from alignlib._native import num_threads, set_num_threads
from alignlib.data import Prepared, Report, pack, prepare_preferences, prepare_sft
from alignlib.errors import AlignlibError, ConfigError, DataError, RowError, TemplateError, TokenizerError
from alignlib.tokenizer import Tokenizer

__version__ = "0.1.0"

# Subpackages that import torch load on first use, so `import alignlib` stays light.
_LAZY = {"kernels", "losses", "train", "engines", "models", "synthetic", "assets"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"alignlib.{name}")
    raise AttributeError(f"module 'alignlib' has no attribute {name!r}")


__all__ = [
    "AlignlibError",
    "ConfigError",
    "DataError",
    "Prepared",
    "Report",
    "RowError",
    "TemplateError",
    "Tokenizer",
    "TokenizerError",
    "num_threads",
    "pack",
    "prepare_preferences",
    "prepare_sft",
    "set_num_threads",
]
