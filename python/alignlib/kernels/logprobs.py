"""Per-token label log-probabilities straight from the last hidden states, without the ``[N, V]`` logits.

Public entry point: :func:`linear_logprobs`. It validates and flattens the inputs, finds the rows whose label is
not ignored, and hands them to a backend:

* ``"torch"`` (:mod:`alignlib.kernels.torch_chunked`): a ``torch.autograd.Function`` chunked over tokens; the CPU
  path and the fallback everywhere.
* ``"triton"`` (:mod:`alignlib.kernels.triton_logprobs`): fused Triton kernels (matmul + online logsumexp + label
  gather); CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (how it is tested without a GPU).
* ``"auto"``: ``"triton"`` for CUDA tensors when Triton can be imported, else ``"torch"``.

Backends are looked up in a registry of *loaders* (zero-argument callables returning the backend function), so
importing :mod:`alignlib.kernels` never imports Triton; it is imported the first time the triton backend is used.
A backend function has the signature::

    fn(hidden [N, H], weight [V, H], labels [N] int64, valid_idx [M] int64, *, chunk_size: int | None,
       temperature: float) -> Tensor [N] float32

and must return 0 (with zero gradient) for rows not listed in ``valid_idx``.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Protocol

import torch

__all__ = [
    "IGNORE_INDEX",
    "LogprobsBackend",
    "available_backends",
    "linear_logprobs",
    "register_backend",
    "resolve_backend",
]

IGNORE_INDEX = -100


class LogprobsBackend(Protocol):
    def __call__(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        valid_idx: torch.Tensor,
        *,
        chunk_size: int | None,
        temperature: float,
    ) -> torch.Tensor: ...


def _load_torch() -> LogprobsBackend:
    from .torch_chunked import linear_logprobs_torch

    return linear_logprobs_torch


def _load_triton() -> LogprobsBackend:
    from .triton_logprobs import linear_logprobs_triton  # imports triton

    return linear_logprobs_triton


_LOADERS: dict[str, Callable[[], LogprobsBackend]] = {"torch": _load_torch, "triton": _load_triton}
_LOADED: dict[str, LogprobsBackend] = {}


def register_backend(name: str, loader: Callable[[], LogprobsBackend]) -> None:
    """Register (or replace) a backend; ``loader`` is called lazily on first use."""
    if name == "auto":
        raise ValueError("'auto' is reserved")
    _LOADERS[name] = loader
    _LOADED.pop(name, None)


def available_backends() -> list[str]:
    return sorted(_LOADERS)


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend name ``backend`` stands for on ``device``."""
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_importable() else "torch"
    if backend not in _LOADERS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {available_backends()}")
    return backend


def _get(name: str) -> LogprobsBackend:
    fn = _LOADED.get(name)
    if fn is None:
        fn = _LOADED[name] = _LOADERS[name]()
    return fn


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    backend: str = "auto",
    chunk_size: int | None = None,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``log softmax(hidden @ weight.T / temperature)[i, labels[i]]`` for every token, as fp32.

    Args:
        hidden: ``[N, H]`` (or ``[..., H]``) final hidden states, any float dtype.
        weight: ``[V, H]`` bias-free ``lm_head`` weight.
        labels: ``[N]`` (or ``[...]``, matching ``hidden``'s leading dims) int64 target ids; ``ignore_index``
            rows get log-prob 0 and no gradient (and cost no compute).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see module docstring).
        chunk_size: tokens per chunk; ``None`` lets the backend choose (torch: ~128 MiB fp32 ``[chunk, V]``
            buffer, i.e. 1024 rows at V=32k).
        temperature: logits are divided by it before the softmax.
        ignore_index: label value meaning "no target here".

    Returns:
        fp32 tensor with ``labels``' shape. Differentiable w.r.t. ``hidden`` and ``weight``; computation is fp32
        (fp32 accumulation for low-precision inputs) and never allocates an ``[N, V]`` tensor.
    """
    if hidden.dim() < 1 or weight.dim() != 2:
        raise ValueError(
            f"expected hidden [..., H] and weight [V, H]; got {tuple(hidden.shape)}, {tuple(weight.shape)}"
        )
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden size mismatch: hidden {tuple(hidden.shape)} vs weight {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal hidden.shape[:-1] = {tuple(hidden.shape[:-1])}"
        )
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise TypeError("hidden and weight must be floating point")
    if hidden.device != weight.device or labels.device != hidden.device:
        raise ValueError("hidden, weight and labels must be on the same device")
    if not (temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    out_shape = labels.shape
    h2 = hidden.reshape(-1, hidden.shape[-1])
    lab = labels.reshape(-1).to(torch.int64)
    vocab = weight.shape[0]

    valid = lab != ignore_index
    bad = valid & ((lab < 0) | (lab >= vocab))
    if bool(bad.any()):  # one host sync; out-of-range ids would otherwise read garbage in the fused kernel
        raise IndexError(f"labels must be in [0, {vocab}) or equal ignore_index={ignore_index}")
    valid_idx = valid.nonzero().squeeze(1)

    name = resolve_backend(backend, hidden.device)
    out = _get(name)(h2, weight, lab, valid_idx, chunk_size=chunk_size, temperature=float(temperature))
    return out.reshape(out_shape)
