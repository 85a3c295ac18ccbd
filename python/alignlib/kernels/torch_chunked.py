"""Pure-PyTorch chunked ``lm_head`` + log-softmax + label gather (the CPU / fallback backend).

``linear_logprobs_torch(hidden, weight, labels)`` returns ``log softmax(hidden @ weight.T / T)[i, labels[i]]``
for every row ``i`` without ever holding the ``[N, V]`` logits: rows are processed in chunks of ``chunk_size``
tokens, so the largest temporary is one ``[chunk_size, V]`` fp32 buffer.

Forward, per chunk of (non-ignored) rows::

    z   = (h_c @ W.T) / T                  # [C, V] fp32, one buffer, reused in place below
    t   = z[r, y_r]                        # label logit, gathered before z is overwritten
    lse = m + log(sum(exp(z - m)))         # in place: z <- exp(z - m)
    out = t - lse

Only ``hidden``, ``weight``, ``labels`` and the per-row ``lse`` are saved for backward; the logits are not.

Backward recomputes each chunk's logits and turns the buffer, in place, into the gradient w.r.t. the raw logits
``x = h @ W.T``::

    d out_r / d x_rj = (onehot(y_r)_j - softmax(z_r)_j) / T
    G = (softmax(z) - onehot(y)) * (-g / T)[:, None]          # g = grad_output rows
    grad_hidden[c] = G @ W          grad_weight += G.T @ h_c

Rows whose label is ``ignore_index`` get log-prob 0 and zero gradient; they are skipped entirely (no matmul work),
which matters for SFT/DPO batches where prompt tokens are masked.
"""

from __future__ import annotations

import torch

__all__ = ["linear_logprobs_torch", "default_chunk_size"]

# One [chunk, V] fp32 buffer of at most this many elements (2**25 elements = 128 MiB).
_CHUNK_ELEMENTS = 1 << 25


def default_chunk_size(vocab_size: int) -> int:
    """Rows per chunk so that one ``[chunk, V]`` fp32 buffer stays around 128 MiB (1024 rows at V=32k)."""
    rows = _CHUNK_ELEMENTS // max(int(vocab_size), 1)
    return max(64, (rows // 64) * 64)


def _chunk_logits(h_c: torch.Tensor, w32: torch.Tensor, inv_t: float, buf: torch.Tensor) -> torch.Tensor:
    """fp32 ``h_c @ W.T * inv_t`` written into the leading rows of ``buf`` (one buffer reused by every chunk, so
    the allocator sees one large allocation per pass rather than one per chunk)."""
    z = torch.mm(h_c.to(torch.float32), w32.t(), out=buf[: h_c.shape[0]])
    if inv_t != 1.0:
        z.mul_(inv_t)
    return z


def _buffer(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    return torch.empty(rows, vocab, dtype=torch.float32, device=device)


class _ChunkedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, valid_idx, chunk_size: int, inv_t: float):
        # hidden [N, H], weight [V, H], labels [N] int64, valid_idx [M] int64 (rows whose label is not ignored)
        n = hidden.shape[0]
        out = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(valid_idx.numel(), dtype=torch.float32, device=hidden.device)
        w32 = weight.to(torch.float32)  # no copy when weight is already fp32
        buf = _buffer(min(chunk_size, valid_idx.numel()), weight.shape[0], hidden.device)
        for s in range(0, valid_idx.numel(), chunk_size):
            rows = valid_idx[s : s + chunk_size]
            lab = labels.index_select(0, rows)
            z = _chunk_logits(hidden.index_select(0, rows), w32, inv_t, buf)
            target = z.gather(1, lab.unsqueeze(1)).squeeze(1)
            m = z.amax(dim=1, keepdim=True)
            z.sub_(m).exp_()
            lse_c = z.sum(dim=1).log_().add_(m.squeeze(1))
            lse[s : s + rows.numel()] = lse_c
            out.index_copy_(0, rows, target - lse_c)
        del buf
        ctx.save_for_backward(hidden, weight, labels, valid_idx, lse)
        ctx.chunk_size = chunk_size
        ctx.inv_t = inv_t
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        hidden, weight, labels, valid_idx, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        inv_t = ctx.inv_t
        w32 = weight.to(torch.float32)
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        if need_h or need_w:
            grad_out = grad_out.to(torch.float32)
            buf = _buffer(min(ctx.chunk_size, valid_idx.numel()), weight.shape[0], hidden.device)
            for s in range(0, valid_idx.numel(), ctx.chunk_size):
                rows = valid_idx[s : s + ctx.chunk_size]
                lab = labels.index_select(0, rows)
                h_c = hidden.index_select(0, rows).to(torch.float32)
                z = _chunk_logits(h_c, w32, inv_t, buf)
                # z <- softmax(z) - onehot(y), then scaled by -g/T: the gradient w.r.t. the raw logits h_c @ W.T
                z.sub_(lse[s : s + rows.numel()].unsqueeze(1)).exp_()
                z.scatter_add_(1, lab.unsqueeze(1), torch.full_like(lab, -1, dtype=z.dtype).unsqueeze(1))
                z.mul_(grad_out.index_select(0, rows).mul(-inv_t).unsqueeze(1))
                if need_h:
                    grad_h.index_copy_(0, rows, torch.mm(z, w32))
                if need_w:
                    grad_w.addmm_(z.t(), h_c)
            del buf
        if grad_h is not None:
            grad_h = grad_h.to(hidden.dtype)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


def linear_logprobs_torch(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    valid_idx: torch.Tensor,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Backend entry point; inputs are already validated and flattened by :func:`alignlib.kernels.linear_logprobs`.

    ``valid_idx`` holds the indices of the rows whose label is not ignored (sorted, int64).
    """
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    return _ChunkedLinearLogprobs.apply(hidden, weight, labels, valid_idx, int(chunk_size), 1.0 / float(temperature))
