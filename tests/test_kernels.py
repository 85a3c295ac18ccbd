"""alignlib.kernels.linear_logprobs: values and both gradients against a float64 reference, memory, dispatch.

* torch backend: in process, random shapes (ignored labels, N not a multiple of the chunk, chunk < N, temperature).
* memory: a fresh subprocess measures the peak resident-set growth of one fwd+bwd; the naive path must show an
  [N, V] buffer (so the probe works) and the chunked path must stay far below one.
* triton backend: a subprocess with TRITON_INTERPRET=1 set before triton is imported runs the kernels on CPU on
  tiny fp32 shapes (the interpreter has no bf16 and is slow).
* GPU (bf16 triton vs reference, memory): skipped without CUDA.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


kernels = importlib.import_module("alignlib.kernels")
linear_logprobs = kernels.linear_logprobs

# Same loader for subprocesses (prepended to their scripts).
# Subprocess scripts (fresh interpreters, e.g. with TRITON_INTERPRET=1) load modules with `_load`.
_LOADER_SRC = "import importlib\ndef _load(sub):\n    return importlib.import_module('alignlib.' + sub)\n"


def _run_py(script: str, env_extra: dict | None = None, timeout: float = 300, args: tuple = ()) -> dict:
    """Run ``script`` in a fresh interpreter; its last stdout line is JSON."""
    env = dict(os.environ)
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER_SRC + textwrap.dedent(script), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=str(ROOT),
    )  # fmt: skip
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reference(hidden, weight, labels, temperature=1.0):
    """float64, materialises [N, V]: log_softmax(h @ W.T / T)[label], 0 at ignored labels."""
    logp = torch.log_softmax(hidden.double() @ weight.double().t() / temperature, dim=-1)
    valid = labels != -100
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, picked, torch.zeros_like(picked))


def _case(n, h, v, seed, ignore_frac=0.25, scale=1.0, dtype=torch.float32, lead=None):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) * scale).to(dtype)
    weight = (torch.randn(v, h, generator=g) / h**0.5 * 4).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore_frac] = -100
    grad_out = torch.randn(n, generator=g, dtype=torch.float64)
    if lead is not None:
        hidden, labels, grad_out = hidden.reshape(*lead, h), labels.reshape(lead), grad_out.reshape(lead)
    return hidden, weight, labels, grad_out


def _check(backend, hidden, weight, labels, grad_out, *, atol, rtol=1e-4, **kw):
    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    ref = reference(h64, w64, labels, kw.get("temperature", 1.0))
    gh_ref, gw_ref = torch.autograd.grad((ref * grad_out).sum(), (h64, w64))

    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    out = linear_logprobs(h, w, labels, backend=backend, **kw)
    assert out.dtype == torch.float32 and out.shape == labels.shape
    (out.double() * grad_out).sum().backward()
    assert h.grad.dtype == hidden.dtype and w.grad.dtype == weight.dtype
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(h.grad.double(), gh_ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(w.grad.double(), gw_ref, atol=atol, rtol=rtol)
    assert (out[labels == -100] == 0).all()


# ---------------------------------------------------------------------------------------------------------------
# torch backend


@pytest.mark.parametrize(
    "n,h,v,chunk",
    [
        (1, 8, 5, None),  # single token
        (64, 32, 100, 64),  # N == chunk
        (100, 32, 257, 16),  # N not a multiple of chunk, chunk < N
        (257, 48, 1000, 100),
        (300, 16, 3000, 1),  # one row per chunk
        (50, 64, 2048, 10_000),  # chunk > N
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_torch_backend_matches_float64_reference(n, h, v, chunk, seed):
    hidden, weight, labels, grad_out = _case(n, h, v, seed)
    _check("torch", hidden, weight, labels, grad_out, atol=1e-5, chunk_size=chunk)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_torch_backend_temperature(temperature):
    hidden, weight, labels, grad_out = _case(77, 24, 300, 3)
    _check("torch", hidden, weight, labels, grad_out, atol=1e-5, chunk_size=20, temperature=temperature)


def test_torch_backend_large_logits_are_stable():
    # logits of magnitude ~1e3: a naive exp would overflow
    hidden, weight, labels, grad_out = _case(40, 16, 200, 4, scale=150.0)
    _check("torch", hidden, weight, labels, grad_out, atol=5e-3, rtol=1e-4, chunk_size=16)


def test_torch_backend_leading_dims_and_bf16():
    hidden, weight, labels, grad_out = _case(24, 32, 120, 5, lead=(4, 6))
    _check("torch", hidden, weight, labels, grad_out, atol=1e-5, chunk_size=7)
    # bf16 inputs: fp32 compute, fp32 output, grads in bf16; the reference uses the same bf16-rounded inputs
    hb, wb = hidden.bfloat16(), weight.bfloat16()
    h = hb.clone().requires_grad_(True)
    w = wb.clone().requires_grad_(True)
    out = linear_logprobs(h, w, labels, backend="torch", chunk_size=5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(hb, wb, labels), atol=1e-5, rtol=1e-5)
    (out.double() * grad_out).sum().backward()
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16


def test_all_labels_ignored_gives_zeros_and_zero_grads():
    hidden, weight, labels, _ = _case(10, 8, 20, 6)
    labels[:] = -100
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    out = linear_logprobs(h, w, labels, backend="torch")
    out.sum().backward()
    assert (out == 0).all() and (h.grad == 0).all() and (w.grad == 0).all()


def test_only_hidden_needs_grad():
    hidden, weight, labels, grad_out = _case(30, 8, 50, 7)
    h = hidden.clone().requires_grad_(True)
    out = linear_logprobs(h, weight, labels, backend="torch", chunk_size=8)
    (out.double() * grad_out).sum().backward()
    h64 = hidden.double().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((reference(h64, weight.double(), labels) * grad_out).sum(), h64)
    torch.testing.assert_close(h.grad.double(), g_ref, atol=1e-5, rtol=1e-4)


def test_default_chunk_size():
    tc = importlib.import_module("alignlib.kernels.torch_chunked")
    assert tc.default_chunk_size(32000) == 1024
    assert tc.default_chunk_size(128256) == 256
    assert tc.default_chunk_size(10**7) == 64


# ---------------------------------------------------------------------------------------------------------------
# validation and dispatch


def test_input_validation():
    hidden, weight, labels, _ = _case(8, 4, 10, 0)
    with pytest.raises(IndexError):
        linear_logprobs(hidden, weight, torch.full((8,), 10))
    with pytest.raises(IndexError):
        linear_logprobs(hidden, weight, torch.full((8,), -5))
    with pytest.raises(ValueError, match="hidden size"):
        linear_logprobs(hidden, weight[:, :3], labels)
    with pytest.raises(ValueError, match="labels shape"):
        linear_logprobs(hidden, weight, labels[:4])
    with pytest.raises(ValueError, match="unknown backend"):
        linear_logprobs(hidden, weight, labels, backend="cuda")
    with pytest.raises(ValueError, match="temperature"):
        linear_logprobs(hidden, weight, labels, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_logprobs(hidden, weight, labels, chunk_size=0)


def test_auto_dispatch():
    assert kernels.resolve_backend("auto", torch.device("cpu")) == "torch"
    has_triton = importlib.util.find_spec("triton") is not None
    assert kernels.resolve_backend("auto", torch.device("cuda")) == ("triton" if has_triton else "torch")
    assert kernels.resolve_backend("torch", torch.device("cuda")) == "torch"
    hidden, weight, labels, grad_out = _case(33, 16, 70, 8)
    _check("auto", hidden, weight, labels, grad_out, atol=1e-5, chunk_size=10)


def test_register_backend_is_used():
    calls = []

    def loader():
        def fn(hidden, weight, labels, valid_idx, *, chunk_size, temperature):
            calls.append(valid_idx.tolist())
            return torch.zeros(labels.shape, dtype=torch.float32)

        return fn

    kernels.register_backend("dummy", loader)
    hidden, weight, labels, _ = _case(6, 4, 10, 0, ignore_frac=0.0)
    labels[2] = -100
    linear_logprobs(hidden, weight, labels, backend="dummy")
    assert calls == [[0, 1, 3, 4, 5]]


# One fresh subprocess (torch import is the slow part) answers two questions:
#  * does importing alignlib.kernels (and running the torch backend) import triton?
#  * peak resident-set growth of one fwd+bwd, chunked then naive (the peak is reset in between).

_PROBE_SCRIPT = """
import json, resource, sys, torch
torch.set_num_threads(2)
K = _load("kernels")
triton_after_import = "triton" in sys.modules
n, h, v, chunk = (int(a) for a in sys.argv[1:5])

def naive(hidden, weight, labels):
    logp = torch.log_softmax(hidden @ weight.t(), dim=-1)
    return logp.gather(1, labels.clamp(min=0)[:, None]).squeeze(1) * (labels != -100)

def step(mode, hidden, weight, labels):
    if mode == "naive":
        out = naive(hidden, weight, labels)
    else:
        out = K.linear_logprobs(hidden, weight, labels, backend="torch", chunk_size=chunk)
    out.sum().backward()

def rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False

g = torch.Generator().manual_seed(0)
hidden = torch.randn(n, h, generator=g).requires_grad_(True)
weight = torch.randn(v, h, generator=g).requires_grad_(True)
labels = torch.randint(0, v, (n,), generator=g)
extra = {}
for mode in ("chunked", "naive"):  # chunked first: the ru_maxrss fallback can only measure increasing peaks
    step(mode, hidden[:64].detach().requires_grad_(True), weight, labels[:64])  # warm-up: lazy init
    weight.grad = hidden.grad = None
    if reset_peak():
        base = rss_kb("VmRSS")
        step(mode, hidden, weight, labels)
        peak = rss_kb("VmHWM")
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step(mode, hidden, weight, labels)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra[mode] = (peak - base) * 1024
    weight.grad = hidden.grad = None
print(json.dumps({"triton_after_import": triton_after_import, "triton_after_torch_backend": "triton" in sys.modules,
                  "extra_bytes": extra}))
"""

MEM_SHAPE = dict(n=4096, h=64, v=16384, chunk=256)  # one fp32 [N, V] = 256 MiB; one [chunk, V] = 16 MiB


@pytest.fixture(scope="module")
def probe():
    s = MEM_SHAPE
    return _run_py(_PROBE_SCRIPT, {"OMP_NUM_THREADS": "2"}, timeout=240, args=(s["n"], s["h"], s["v"], s["chunk"]))


def test_importing_kernels_does_not_import_triton(probe):
    assert probe["triton_after_import"] is False
    assert probe["triton_after_torch_backend"] is False


def test_torch_chunked_never_allocates_n_by_v(probe):
    nv_bytes = MEM_SHAPE["n"] * MEM_SHAPE["v"] * 4
    naive, chunked = probe["extra_bytes"]["naive"], probe["extra_bytes"]["chunked"]
    # the probe sees [N, V] buffers when they exist (naive holds logits and log-softmax, then their grads) ...
    assert naive > 1.5 * nv_bytes, (naive, nv_bytes)
    # ... and the chunked path holds one [chunk, V] buffer (16 MiB) plus grad_weight (4 MiB) and small change
    assert chunked < 0.2 * nv_bytes, (chunked, nv_bytes)


# ---------------------------------------------------------------------------------------------------------------
# triton backend under the interpreter (CPU)

_TRITON_SCRIPT = """
import json, torch
K = _load("kernels")
from alignlib.kernels.triton_logprobs import linear_logprobs_triton

def reference(hidden, weight, labels, temperature=1.0):
    logp = torch.log_softmax(hidden.double() @ weight.double().t() / temperature, dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(labels != -100, picked, torch.zeros_like(picked))

def run(n, h, v, seed, *, chunk=None, splits=None, temperature=1.0, ignore=0.25, public=False, lead=None):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) / h ** 0.5 * 4
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore] = -100
    grad_out = torch.randn(n, generator=g, dtype=torch.float64)
    if lead is not None:
        hidden, labels, grad_out = hidden.reshape(*lead, h), labels.reshape(lead), grad_out.reshape(lead)
    h64 = hidden.double().requires_grad_(True)
    w64 = weight.double().requires_grad_(True)
    ref = reference(h64, w64, labels, temperature)
    gh, gw = torch.autograd.grad((ref * grad_out).sum(), (h64, w64))
    hh = hidden.clone().requires_grad_(True)
    ww = weight.clone().requires_grad_(True)
    if public:
        out = K.linear_logprobs(hh, ww, labels, backend="triton", chunk_size=chunk, temperature=temperature)
    else:
        flat = labels.reshape(-1)
        valid = (flat != -100).nonzero().squeeze(1)
        out = linear_logprobs_triton(hh, ww, flat, valid, chunk_size=chunk, temperature=temperature,
                                     num_splits=splits)
    (out.double() * grad_out.reshape(out.shape)).sum().backward()
    err = lambda a, b: ((a.double() - b).abs().max() / (1 + b.abs().max())).item()
    return {"shape": [n, h, v], "dtype": str(out.dtype), "value": err(out.reshape(ref.shape), ref),
            "grad_hidden": err(hh.grad, gh), "grad_weight": err(ww.grad, gw),
            "ignored_zero": bool((out.reshape(labels.shape)[labels == -100] == 0).all())}

results = [
    run(16, 32, 64, 0),                                      # one tile everywhere
    run(16, 32, 200, 1, chunk=5),                            # V not a multiple of BLOCK_V; 4 backward chunks
    run(19, 48, 130, 2, chunk=7, temperature=0.7),           # N, H, V all ragged (H > BLOCK_K, not a multiple)
    run(16, 32, 600, 3, splits=3, chunk=16),                 # 3 vocab splits merged (split size 256)
    run(12, 16, 90, 4, public=True, lead=(3, 4), chunk=4),   # public API, [B, T, H] input
    run(8, 16, 70, 5, ignore=1.0),                           # every label ignored
]
print(json.dumps({"results": results}))
"""


def test_triton_backend_interpreted_matches_float64_reference():
    pytest.importorskip("triton")
    results = _run_py(_TRITON_SCRIPT, {"TRITON_INTERPRET": "1"}, timeout=240)["results"]
    assert len(results) == 6
    for r in results:
        assert r["dtype"] == "torch.float32", r
        assert r["ignored_zero"], r
        for key in ("value", "grad_hidden", "grad_weight"):
            assert r[key] < 2e-5, (key, r)


# ---------------------------------------------------------------------------------------------------------------
# GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("n,h,v,chunk", [(1000, 256, 5000, 384), (4096, 512, 32000, None)])
def test_triton_bf16_gpu_matches_reference(n, h, v, chunk):
    pytest.importorskip("triton")
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g).to(dev, torch.bfloat16)
    weight = (torch.randn(v, h, generator=g) / h**0.5 * 4).to(dev, torch.bfloat16)
    labels = torch.randint(0, v, (n,), generator=g).to(dev)
    labels[:: 5] = -100
    grad_out = torch.randn(n, generator=g, dtype=torch.float64).to(dev)

    h64 = hidden.double().requires_grad_(True)
    w64 = weight.double().requires_grad_(True)
    ref = reference(h64, w64, labels)
    gh_ref, gw_ref = torch.autograd.grad((ref * grad_out).sum(), (h64, w64))

    hh = hidden.clone().requires_grad_(True)
    ww = weight.clone().requires_grad_(True)
    out = linear_logprobs(hh, ww, labels, backend="auto", chunk_size=chunk)
    assert out.dtype == torch.float32
    (out.double() * grad_out).sum().backward()
    # exact bf16 products, fp32 accumulation: values are fp32-accurate
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=1e-3)
    # the logits gradient is rounded to bf16 before the two GEMMs
    for got, want in ((hh.grad, gh_ref), (ww.grad, gw_ref)):
        assert got.dtype == torch.bfloat16
        rel = (got.double() - want).norm() / want.norm()
        assert rel < 1e-2, rel.item()


@pytest.mark.gpu
@cuda
def test_triton_fp32_gpu_matches_torch_backend_and_splits():
    pytest.importorskip("triton")
    hidden, weight, labels, grad_out = _case(777, 128, 3000, 9)
    dev = torch.device("cuda")
    _check("triton", hidden.to(dev), weight.to(dev), labels.to(dev), grad_out.to(dev), atol=1e-4, chunk_size=200)


@pytest.mark.gpu
@cuda
def test_triton_gpu_memory_below_n_by_v():
    pytest.importorskip("triton")
    dev = torch.device("cuda")
    n, h, v = 16384, 1024, 65536
    hidden = torch.randn(n, h, device=dev, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(v, h, device=dev, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, v, (n,), device=dev)
    linear_logprobs(hidden[:128], weight, labels[:128]).sum().backward()  # compile / autotune
    hidden.grad = weight.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    linear_logprobs(hidden, weight, labels, chunk_size=1024).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # grads (h: 32 MiB, W: 128 MiB + 256 MiB fp32 accumulator) + one [1024, V] bf16 buffer (128 MiB) ~ 0.55 GiB,
    # against 2 GiB for a single bf16 [N, V] tensor
    assert extra < 0.5 * n * v * 2, extra
