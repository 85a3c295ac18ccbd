"""Checkpoints: atomic writes, rotation, and a SIGKILLed run that resumes exactly where it was."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers_train import REPO, sft_table, tiny_llama

from alignlib.train import SFTConfig, train_sft
from alignlib.train.checkpoint import latest_checkpoint, list_checkpoints

WORKER = os.path.join(REPO, "tests", "_resume_worker.py")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([os.environ.get("PYTHONPATH", ""), os.path.join(REPO, "python")]),
       "OMP_NUM_THREADS": "1"}


def train_records(out) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == "train"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(out, hang_at: int = 0, *extra: str) -> subprocess.Popen:
    env = ENV
    if "--deepspeed" in extra:  # one rank, started directly (no launcher), so SIGKILL hits the trainer itself
        env = {**ENV, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "RANK": "0", "LOCAL_RANK": "0",
               "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(free_port()),
               # the CPU accelerator JIT-builds a small op with the venv's ninja
               "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    return subprocess.Popen([sys.executable, WORKER, str(out), str(hang_at), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
def test_sigkill_after_checkpoint_then_resume_equals_uninterrupted_run(tmp_path, engine):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    flags = ("--deepspeed",) if engine == "deepspeed" else ()
    uninterrupted = run_worker(full, 0, *flags)

    victim = run_worker(crashed, 6, *flags)  # checkpoint at step 4, killed while inside step 6
    # DeepSpeed also prints to stdout: wait for the marker line (or EOF, if the worker died).
    assert next((line.strip() for line in victim.stdout if line.strip() == "HANGING"), None) == "HANGING"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert [step for step, _ in list_checkpoints(crashed)] == [4]
    assert [r["step"] for r in train_records(crashed)] == [1, 2, 3, 4, 5, 6]
    # A save torn by a crash leaves only a .tmp directory, which resume must ignore.
    torn = crashed / "checkpoints" / ".tmp-step-00000008"
    torn.mkdir()
    (torn / "engine_state.pt").write_bytes(b"\0garbage")
    assert latest_checkpoint(crashed).endswith("step-00000004")

    resumed = run_worker(crashed, 0, "--resume", *flags)
    assert resumed.wait(timeout=240) == 0 and uninterrupted.wait(timeout=240) == 0

    want, got = train_records(full), train_records(crashed)
    assert [r["step"] for r in got] == list(range(1, 11))  # steps 5-6 of the killed run were replaced
    for key in ("loss", "grad_norm", "learning_rate"):
        assert [r[key] for r in got] == [r[key] for r in want], key
    final_full, final_resumed = load_file(full / "model.safetensors"), load_file(crashed / "model.safetensors")
    for name, tensor in final_full.items():
        assert torch.equal(final_resumed[name], tensor), name
    report = json.load(open(crashed / "report.json"))
    assert report["resumed_from_step"] == 4
    if engine == "deepspeed":
        assert report["engine"]["zero_stage"] == 2
    assert not torn.exists() and [s for s, _ in list_checkpoints(crashed)] == [4, 8]


def test_checkpoints_rotate_and_hold_no_partial_state(tmp_path):
    config = SFTConfig(max_steps=7, micro_batch_size=4, save_steps=2, save_total_limit=2, progress_bar=False,
                       plots=False)
    train_sft(sft_table(12), tiny_llama(), config, output_dir=str(tmp_path))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000004", "step-00000006"]
    state = json.load(open(tmp_path / "checkpoints" / "step-00000006" / "trainer_state.json"))
    assert state["step"] == 6 and state["method"] == "sft"
    assert os.path.exists(tmp_path / "checkpoints" / "step-00000006" / "rng-rank0.pt")
