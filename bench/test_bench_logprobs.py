"""Benchmarks for alignlib.kernels.linear_logprobs (pytest-benchmark).

Run: ``PYTHONPATH=python python -m pytest bench/test_bench_logprobs.py --benchmark-only -q``

CPU (always): N=8192 tokens, H=256, V=32000, fp32, forward + backward w.r.t. hidden and weight.
    * ``naive``: full logits, ``log_softmax``, gather (materialises several [N, V] fp32 tensors).
    * ``chunked``: the torch backend (default chunk: 1024 rows = one 131 MB [chunk, V] buffer).
    H=256 keeps CPU time sane (6*N*H*V = 0.4 TFLOP per step); memory does not depend on H beyond the
    [V, H] / [N, H] gradients. Peak memory is measured in a fresh subprocess per method: the resident-set
    high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident set just before the
    step, after a small warm-up. ``extra_info`` gets ``peak_extra_mb``, ``gflops`` and, for the chunked path,
    ``peak_extra_ratio_vs_naive``, asserted <= 0.10 (memory is deterministic; time is not asserted).

GPU (skipped without CUDA): H=4096, V in {32000, 128256}, N in {4096, 16384}, bf16, forward + backward.
    triton backend vs naive torch vs Liger-Kernel's fused linear cross entropy (if importable). ``extra_info``:
    ``tflops`` (6*N*H*V / time; the recomputation in backward is not counted) and ``peak_extra_mb``
    (``torch.cuda.max_memory_allocated`` above the inputs).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Subprocess scripts (fresh interpreters for clean peak-memory readings) load modules with `_load`.
_LOADER_SRC = "import importlib\ndef _load(sub):\n    return importlib.import_module('alignlib.' + sub)\n"
from alignlib import kernels  # noqa: E402

CPU_N, CPU_H, CPU_V = 8192, 256, 32000
MEMORY_GOAL = 0.10  # chunked peak extra memory / naive peak extra memory


def naive_logprobs(hidden, weight, labels):
    logits = hidden @ weight.t()
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1) * (labels != -100)


def _cpu_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(CPU_N, CPU_H, generator=g).requires_grad_(True)
    weight = (torch.randn(CPU_V, CPU_H, generator=g) / CPU_H**0.5).requires_grad_(True)
    labels = torch.randint(0, CPU_V, (CPU_N,), generator=g)
    return hidden, weight, labels


# ---------------------------------------------------------------------------------------------------------------
# CPU peak memory, one fresh process per method

_MEM_SCRIPT = """
import json, resource, sys, torch
K = _load("kernels")
mode, n, h, v = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def naive(hidden, weight, labels):
    logp = torch.log_softmax(hidden @ weight.t(), dim=-1)
    return logp.gather(1, labels.clamp(min=0)[:, None]).squeeze(1) * (labels != -100)

def step(hidden, weight, labels):
    if mode == "naive":
        out = naive(hidden, weight, labels)
    else:
        out = K.linear_logprobs(hidden, weight, labels, backend="torch")
    out.sum().backward()

def rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

g = torch.Generator().manual_seed(0)
hidden = torch.randn(n, h, generator=g).requires_grad_(True)
weight = (torch.randn(v, h, generator=g) / h ** 0.5).requires_grad_(True)
labels = torch.randint(0, v, (n,), generator=g)
step(hidden[:64].detach().requires_grad_(True), weight, labels[:64])  # warm-up (lazy init)
weight.grad = None
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = rss_kb("VmRSS")
    step(hidden, weight, labels)
    peak = rss_kb("VmHWM")
except OSError:  # no clear_refs: lifetime peak (everything before the step is far smaller)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(hidden, weight, labels)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_bytes": (peak - base) * 1024}))
"""


def _measure_cpu_peak(mode: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER_SRC + textwrap.dedent(_MEM_SCRIPT), mode, str(CPU_N), str(CPU_H), str(CPU_V)],
        capture_output=True, text=True, timeout=600, cwd=str(ROOT), env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["extra_bytes"]


@pytest.fixture(scope="module")
def cpu_peak():
    return {mode: _measure_cpu_peak(mode) for mode in ("naive", "chunked")}


def _run_cpu(benchmark, fn):
    hidden, weight, labels = _cpu_inputs()

    def step():
        hidden.grad = weight.grad = None
        fn(hidden, weight, labels).sum().backward()

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    flops = 6 * CPU_N * CPU_H * CPU_V
    benchmark.extra_info.update(
        {"N": CPU_N, "H": CPU_H, "V": CPU_V, "dtype": "float32", "gflops": flops / benchmark.stats.stats.mean / 1e9}
    )


@pytest.mark.benchmark(group="logprobs-cpu")
def test_cpu_naive(benchmark, cpu_peak):
    _run_cpu(benchmark, naive_logprobs)
    benchmark.extra_info["peak_extra_mb"] = cpu_peak["naive"] / 2**20


@pytest.mark.benchmark(group="logprobs-cpu")
def test_cpu_chunked(benchmark, cpu_peak):
    _run_cpu(benchmark, lambda h, w, y: kernels.linear_logprobs(h, w, y, backend="torch"))
    ratio = cpu_peak["chunked"] / cpu_peak["naive"]
    benchmark.extra_info["peak_extra_mb"] = cpu_peak["chunked"] / 2**20
    benchmark.extra_info["peak_extra_ratio_vs_naive"] = ratio
    assert ratio <= MEMORY_GOAL, f"chunked peak {cpu_peak['chunked']} B is {ratio:.1%} of naive {cpu_peak['naive']} B"


# ---------------------------------------------------------------------------------------------------------------
# GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
GPU_H = 4096


def _liger():
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")
    # Liger returns the summed cross entropy (= -sum of label log-probs), not per-token log-probs
    return lambda h, w, y: -loss(w, h, y)


def _gpu_methods():
    return {
        "triton": lambda h, w, y: kernels.linear_logprobs(h, w, y, backend="triton").sum(),
        "naive": lambda h, w, y: naive_logprobs(h, w, y).sum(),
        "liger": _liger(),
    }


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("method", ["triton", "naive", "liger"])
@pytest.mark.parametrize("n", [4096, 16384])
@pytest.mark.parametrize("v", [32000, 128256])
def test_gpu_fwd_bwd(benchmark, method, n, v):
    fn = _gpu_methods()[method]
    if fn is None:
        pytest.skip("liger_kernel not importable")
    if method == "triton":
        pytest.importorskip("triton")
    dev = torch.device("cuda")
    benchmark.group = f"logprobs-gpu-V{v}-N{n}"
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(n, GPU_H, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_(True)
    weight = (torch.randn(v, GPU_H, device=dev, dtype=torch.bfloat16, generator=g) * 0.02).requires_grad_(True)
    labels = torch.randint(0, v, (n,), device=dev, generator=g)

    def step():
        hidden.grad = weight.grad = None
        fn(hidden, weight, labels).backward()
        torch.cuda.synchronize()

    try:
        step()  # compile / autotune outside the measurement
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak_extra = torch.cuda.max_memory_allocated() - base
    except torch.OutOfMemoryError:
        pytest.skip(f"{method} does not fit at N={n}, V={v}")
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        {
            "N": n, "H": GPU_H, "V": v, "dtype": "bfloat16",
            "tflops": 6 * n * GPU_H * v / benchmark.stats.stats.mean / 1e12,
            "peak_extra_mb": peak_extra / 2**20,
        }
    )  # fmt: skip
