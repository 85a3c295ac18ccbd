"""Triton backend for :func:`alignlib.kernels.linear_logprobs` (imported lazily; this module imports triton).

Forward — one fused kernel, no logits buffer at all:
    grid = (row blocks of BLOCK_N tokens, vocab splits). Each program walks its vocab range in BLOCK_V tiles; per
    tile it computes ``z = h_rows @ W_tile.T`` with ``tl.dot`` (fp32 accumulation over the hidden dim in BLOCK_K
    steps), scales by 1/T and folds the tile into an online logsumexp ``(m, s)`` and the label logit ``t``.
    Splitting the vocabulary across programs (flash-decoding style) keeps the GPU busy when there are few row
    blocks; the ``[splits, M]`` partials are merged with a few tiny torch ops: ``lse = logsumexp_j(m_j + log s_j)``,
    ``logp = sum_j t_j - lse``.

Backward — chunked over tokens, ``[chunk, V]`` at most:
    for each chunk of ``chunk_size`` tokens, one fused kernel (grid = row blocks x vocab tiles) recomputes the
    logits tile and writes the logits gradient ``G = (softmax(z) - onehot(y)) * (-g / T)`` directly (using the
    forward's saved lse), in the input dtype (bf16 on GPU). The two contractions over the vocabulary,
    ``grad_hidden[chunk] = G @ W`` and ``grad_weight += G.T @ h_chunk``, are plain GEMMs and go to cuBLAS via
    torch (``grad_weight`` accumulates in fp32 across chunks). Fusing those into the kernel would need a
    ``[BLOCK_N, H]`` accumulator per program (H = 4096) or atomics over ``[V, H]``, both slower than cuBLAS.

Rows whose label is ignored are never computed (the kernels take the list of valid row indices).

Testing without a GPU: set ``TRITON_INTERPRET=1`` before importing triton / this module, use fp32 CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["linear_logprobs_triton", "default_chunk_size"]

_SPLIT_ALIGN = 256  # vocab split sizes are a multiple of every BLOCK_V used below


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _fwd_kernel(
    h_ptr, w_ptr, labels_ptr, rows_ptr, part_m_ptr, part_s_ptr, part_t_ptr,
    M, V, K,
    stride_hn, stride_hk, stride_wv, stride_wk,
    v_per_split, inv_t,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < M
    rows = tl.load(rows_ptr + offs_n, mask=mask_n, other=0).to(tl.int64)
    label = tl.load(labels_ptr + rows, mask=mask_n, other=-1)
    v_lo = pid_s * v_per_split
    v_hi = tl.minimum(v_lo + v_per_split, V)

    m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s_i = tl.zeros([BLOCK_N], tl.float32)
    t_i = tl.zeros([BLOCK_N], tl.float32)
    offs_k0 = tl.arange(0, BLOCK_K)
    h_rows = h_ptr + rows[:, None] * stride_hn
    for v0 in range(v_lo, v_hi, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        mask_v = offs_v < v_hi
        w_cols = w_ptr + offs_v.to(tl.int64)[None, :] * stride_wv
        acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + offs_k0
            mask_k = offs_k < K
            a = tl.load(h_rows + offs_k[None, :] * stride_hk, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(w_cols + offs_k[:, None] * stride_wk, mask=mask_k[:, None] & mask_v[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        z = tl.where(mask_v[None, :], acc * inv_t, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, axis=1))
        s_i = s_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m_i = m_new
        hit = (offs_v[None, :] == label[:, None]) & mask_v[None, :]
        t_i += tl.sum(tl.where(hit, z, 0.0), axis=1)

    out = pid_s * M + offs_n
    tl.store(part_m_ptr + out, m_i, mask=mask_n)
    tl.store(part_s_ptr + out, s_i, mask=mask_n)
    tl.store(part_t_ptr + out, t_i, mask=mask_n)


@triton.jit
def _grad_logits_kernel(
    h_ptr, w_ptr, labels_ptr, rows_ptr, lse_ptr, coef_ptr, g_ptr,
    M, V, K,
    stride_hn, stride_hk, stride_wv, stride_wk, stride_gn, stride_gv,
    inv_t,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # program_id(0) (rows) varies fastest: programs running together share a W tile, the chunk's rows stay in L2.
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < M
    rows = tl.load(rows_ptr + offs_n, mask=mask_n, other=0).to(tl.int64)
    label = tl.load(labels_ptr + rows, mask=mask_n, other=-1)
    lse = tl.load(lse_ptr + offs_n, mask=mask_n, other=0.0)
    coef = tl.load(coef_ptr + offs_n, mask=mask_n, other=0.0)  # -grad_out / T
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = offs_v < V

    offs_k0 = tl.arange(0, BLOCK_K)
    h_rows = h_ptr + rows[:, None] * stride_hn
    w_cols = w_ptr + offs_v.to(tl.int64)[None, :] * stride_wv
    acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_k0
        mask_k = offs_k < K
        a = tl.load(h_rows + offs_k[None, :] * stride_hk, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(w_cols + offs_k[:, None] * stride_wk, mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    p = tl.exp(acc * inv_t - lse[:, None])
    p = tl.where(offs_v[None, :] == label[:, None], p - 1.0, p)
    mask = mask_n[:, None] & mask_v[None, :]
    grad = tl.where(mask, p * coef[:, None], 0.0)
    g_ptrs = g_ptr + offs_n.to(tl.int64)[:, None] * stride_gn + offs_v.to(tl.int64)[None, :] * stride_gv
    tl.store(g_ptrs, grad.to(g_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------------
# launch configuration

_INTERPRET_CONFIG = {"BLOCK_N": 16, "BLOCK_V": 64, "BLOCK_K": 32}

_GPU_CONFIGS = [
    triton.Config({"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_N": 128, "BLOCK_V": 256, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_N": 128, "BLOCK_V": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_N": 64, "BLOCK_V": 256, "BLOCK_K": 32}, num_warps=8, num_stages=4),
]

_tuned: dict[str, object] = {}


def _kernel(name: str):
    """The raw kernel under the interpreter (fixed small blocks), an autotuned one on GPU."""
    raw = {"fwd": _fwd_kernel, "bwd": _grad_logits_kernel}[name]
    if _interpreting():
        return raw, dict(_INTERPRET_CONFIG)
    if name not in _tuned:
        _tuned[name] = triton.autotune(configs=_GPU_CONFIGS, key=["V", "K", "DOT_PRECISION"])(raw)
    return _tuned[name], {}


def default_chunk_size(vocab_size: int) -> int:
    """Backward rows per chunk: a ``[chunk, V]`` gradient buffer of ~2**27 elements (256 MiB in bf16)."""
    rows = (1 << 27) // max(int(vocab_size), 1)
    return int(min(16384, max(128, rows // 128 * 128)))


def _num_splits(m: int, vocab: int, device: torch.device, requested: int | None) -> tuple[int, int]:
    """(splits, vocab per split) for the forward grid; the split size is a multiple of ``_SPLIT_ALIGN``."""
    max_splits = triton.cdiv(vocab, _SPLIT_ALIGN)
    if requested is None:
        if device.type == "cuda":
            target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
            requested = triton.cdiv(target, max(1, triton.cdiv(m, 128)))
        else:
            requested = 1
    splits = max(1, min(int(requested), max_splits))
    per_split = triton.cdiv(triton.cdiv(vocab, splits), _SPLIT_ALIGN) * _SPLIT_ALIGN
    return triton.cdiv(vocab, per_split), per_split


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products (no TF32 truncation); ignored by Triton for bf16/fp16 inputs.
    return "ieee" if dtype == torch.float32 else "tf32"


def _accumulate_grad_weight(grad_w32: torch.Tensor, g_t: torch.Tensor, h_c: torch.Tensor) -> None:
    """``grad_w32 += g_t @ h_c`` with an fp32 accumulator and (possibly) bf16 operands."""
    if g_t.dtype == torch.float32:
        grad_w32.addmm_(g_t, h_c)
        return
    try:  # cuBLAS bf16 x bf16 -> fp32 with beta=1: no [V, H] temporary
        torch.addmm(grad_w32, g_t, h_c, out_dtype=torch.float32, out=grad_w32)
    except (RuntimeError, TypeError, NotImplementedError):
        grad_w32.add_(torch.mm(g_t, h_c))


# ---------------------------------------------------------------------------------------------------------------
# autograd


class _TritonLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, valid_idx, chunk_size, inv_t, num_splits):
        n, k = hidden.shape
        vocab = weight.shape[0]
        m = valid_idx.numel()
        out = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(m, dtype=torch.float32, device=hidden.device)
        prec = _dot_precision(hidden.dtype)
        if m > 0:
            splits, per_split = _num_splits(m, vocab, hidden.device, num_splits)
            part = torch.empty(3, splits, m, dtype=torch.float32, device=hidden.device)
            kernel, cfg = _kernel("fwd")

            def grid(meta):
                return (triton.cdiv(m, meta["BLOCK_N"]), splits)

            kernel[grid](
                hidden, weight, labels, valid_idx, part[0], part[1], part[2],
                m, vocab, k,
                hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
                per_split, inv_t,
                DOT_PRECISION=prec, **cfg,
            )  # fmt: skip
            part_m, part_s, part_t = part[0], part[1], part[2]
            m_max = part_m.amax(dim=0)
            lse = m_max + (part_s * torch.exp(part_m - m_max)).sum(dim=0).log()
            out.index_copy_(0, valid_idx, part_t.sum(dim=0) - lse)
        ctx.save_for_backward(hidden, weight, labels, valid_idx, lse)
        ctx.chunk_size = chunk_size
        ctx.inv_t = inv_t
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        hidden, weight, labels, valid_idx, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, k = hidden.shape
        vocab = weight.shape[0]
        m = valid_idx.numel()
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = None
        if not (need_h or need_w) or m == 0:
            if need_w:
                grad_w = torch.zeros_like(weight)
            return grad_h, grad_w, None, None, None, None, None

        chunk = min(ctx.chunk_size, m)
        n_chunks = triton.cdiv(m, chunk)
        coef = grad_out.to(torch.float32).index_select(0, valid_idx).mul_(-ctx.inv_t)
        g_buf = torch.empty(chunk, vocab, dtype=hidden.dtype, device=hidden.device)
        grad_w32 = None
        if need_w and n_chunks > 1:
            grad_w32 = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        kernel, cfg = _kernel("bwd")
        prec = _dot_precision(hidden.dtype)
        for s in range(0, m, chunk):
            mc = min(chunk, m - s)
            rows = valid_idx[s : s + mc]
            g_c = g_buf[:mc]

            def grid(meta, mc=mc):
                return (triton.cdiv(mc, meta["BLOCK_N"]), triton.cdiv(vocab, meta["BLOCK_V"]))

            kernel[grid](
                hidden, weight, labels, rows, lse[s : s + mc], coef[s : s + mc], g_c,
                mc, vocab, k,
                hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
                g_c.stride(0), g_c.stride(1),
                ctx.inv_t,
                DOT_PRECISION=prec, **cfg,
            )  # fmt: skip
            if need_h:
                grad_h.index_copy_(0, rows, torch.mm(g_c, weight))
            if need_w:
                h_c = hidden.index_select(0, rows)
                if grad_w32 is None:
                    grad_w = torch.mm(g_c.t(), h_c)
                else:
                    _accumulate_grad_weight(grad_w32, g_c.t(), h_c)
        del g_buf, g_c
        if grad_w32 is not None:
            grad_w = grad_w32.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None, None


def linear_logprobs_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    valid_idx: torch.Tensor,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Backend entry point (inputs validated by :func:`alignlib.kernels.linear_logprobs`).

    ``chunk_size`` is the backward's rows per chunk (``None``: :func:`default_chunk_size`); ``num_splits`` forces
    the number of vocabulary splits of the forward grid (``None``: enough programs for the GPU, 1 elsewhere).
    """
    if hidden.device.type != "cuda" and not _interpreting():
        raise RuntimeError("the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 set before importing triton)")
    # One compute dtype for the dot operands (bf16 x bf16 or fp32 x fp32); accumulation is always fp32.
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        dtype = torch.float32
    hidden = hidden.to(dtype)
    weight = weight.to(dtype)
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    return _TritonLinearLogprobs.apply(
        hidden, weight, labels.contiguous(), valid_idx.contiguous(),
        int(chunk_size), 1.0 / float(temperature), num_splits,
    )
