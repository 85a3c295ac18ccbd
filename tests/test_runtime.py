"""The engine runs on a configurable number of threads with the GIL released, gives the same
result on any number of threads, and keeps working in a forked child process."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time

import pytest

import alignlib
from alignlib import synthetic
from alignlib.assets import TINY_CHAT_TOKENIZER


@pytest.fixture(scope="module")
def tok() -> alignlib.Tokenizer:
    return alignlib.Tokenizer.from_pretrained(TINY_CHAT_TOKENIZER)


@pytest.fixture(scope="module")
def convs():
    return synthetic.conversations(300, seed=4)


def test_same_result_on_one_or_many_threads(tok, convs):
    try:
        alignlib.set_num_threads(1)
        assert alignlib.num_threads() == 1
        one = alignlib.prepare_sft(convs, tok).table
        alignlib.set_num_threads(4)
        many = alignlib.prepare_sft(convs, tok).table
    finally:
        alignlib.set_num_threads(None)
    assert one.equals(many)


def test_thread_count_comes_from_the_environment():
    code = "import alignlib; print(alignlib.num_threads())"
    env = {**os.environ, "ALIGNLIB_NUM_THREADS": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


def _prepare_in_child(queue) -> None:
    tok = alignlib.Tokenizer.from_pretrained(TINY_CHAT_TOKENIZER)
    table = alignlib.prepare_sft(synthetic.conversations(50, seed=4), tok).table
    queue.put(table["input_ids"].to_list())


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_works_after_fork(tok):
    """A DataLoader-style forked worker gets a fresh thread pool instead of deadlocking on the
    parent's (whose threads do not exist in the child)."""
    parent = alignlib.prepare_sft(synthetic.conversations(50, seed=4), tok).table  # pool is live now
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_prepare_in_child, args=(queue,))
    child.start()
    child_ids = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert child_ids == parent["input_ids"].to_list()


def test_the_gil_is_released_while_preparing(tok):
    from alignlib import _native
    from alignlib.data.arrow import raw_column

    column = raw_column(synthetic.conversations(1500, seed=8)["messages"], "messages")
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        before = ticks
        start = time.perf_counter()
        _native.prepare_sft(
            tok._native, "messages", [column], assistant_only_loss=True, max_length=2048,
            packing="bfd", overflow="split", skip_invalid=False,
        )
        elapsed = time.perf_counter() - start
        during = ticks - before
    finally:
        stop.set()
        counter.join()
    # Only the native call is timed: with the GIL held throughout, the counter could not move.
    assert elapsed > 0.05
    assert during >= 10
