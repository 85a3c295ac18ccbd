"""Memory-lean kernels for alignment training.

``linear_logprobs(hidden, weight, labels)`` gives per-token label log-probs of a bias-free ``lm_head`` without the
``[N, V]`` logits. Importing this package does not import Triton (the triton backend is loaded on first use).
"""

from .logprobs import (
    IGNORE_INDEX,
    LogprobsBackend,
    available_backends,
    linear_logprobs,
    register_backend,
    resolve_backend,
)

__all__ = [
    "IGNORE_INDEX",
    "LogprobsBackend",
    "available_backends",
    "linear_logprobs",
    "register_backend",
    "resolve_backend",
]
