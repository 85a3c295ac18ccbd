"""Side-by-side benchmarks: each group times the peer (TRL / HF tokenizers) and alignlib on the
same data in the same run; the summary prints their throughput ratio against the target and
writes bench/results/latest.json."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pytest

# group -> (what is compared, target ratio alignlib/peer)
TARGETS = {
    "sft_prep": ("template + tokenize + masks + BFD pack, vs TRL SFTTrainer", 10.0),
    "dpo_prep": ("preference pairs, vs TRL DPOTrainer", 10.0),
    "packing": ("BFD packing of pre-tokenized rows, vs TRL pack_dataset", 20.0),
    "tokenize": ("encode rendered chats, vs HF encode_batch_fast (same threads)", 1.0),
}
RESULTS: dict[str, dict[str, dict[str, float]]] = {}


def record(group: str, who: str, seconds: float, tokens: int, **extra: float) -> None:
    """Stores one side's best time; `tokens` counts the input tokens the side had to process."""
    RESULTS.setdefault(group, {})[who] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, **extra}


def timed(benchmark, fn, rounds: int, setup=None):
    """Runs `fn` `rounds` times under pytest-benchmark and returns (last result, best seconds).
    With `setup`, each round calls `fn(setup())` and only `fn` is timed (e.g. a fresh tokenizer
    per round, so no round profits from a cache an earlier one filled)."""
    best = [float("inf")]
    result = [None]

    def run(*args):
        start = time.perf_counter()
        result[0] = fn(*args)
        best[0] = min(best[0], time.perf_counter() - start)

    pedantic_setup = (lambda: ((setup(),), {})) if setup is not None else None
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0, setup=pedantic_setup)
    return result[0], best[0]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    rows = []
    tr = terminalreporter
    tr.section("alignlib vs peers (tokens/s, same data, same run)")
    for group, sides in RESULTS.items():
        what, target = TARGETS.get(group, (group, None))
        ours, peer = sides.get("alignlib"), sides.get("peer")
        ratio = ours["tokens_per_s"] / peer["tokens_per_s"] if ours and peer else None
        row = {"group": group, "what": what, "target": target, "ratio": ratio, **{k: v for k, v in sides.items()}}
        rows.append(row)
        verdict = "" if ratio is None or target is None else ("meets" if ratio >= target else "MISSES") + f" {target:g}x"
        tr.write_line(
            f"{group:<10} alignlib {ours['tokens_per_s'] / 1e3 if ours else float('nan'):>9,.0f}k/s  "
            f"peer {peer['tokens_per_s'] / 1e3 if peer else float('nan'):>8,.0f}k/s  "
            f"ratio {ratio if ratio else float('nan'):6.1f}x  {verdict}   ({what})"
        )
    out = Path(__file__).parent / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    tr.write_line(f"written to {out}")
