"""Atomic checkpoints, resume, and the final Hugging Face export.

A checkpoint is written into ``checkpoints/.tmp-step-N``, every file is fsynced, and only then is
the directory renamed to ``checkpoints/step-N`` (rename is atomic on POSIX) and the parent
fsynced. A directory named ``step-N`` is therefore always complete; a crash mid-save leaves at
worst a ``.tmp-*`` directory, which resume ignores and the next save removes.

What a checkpoint holds: the engine's state (model, optimizer, scheduler; DeepSpeed's own format
under ZeRO), every rank's RNG states, and ``trainer_state.json`` (the global step, which is also
the data position, because the step plan is a pure function of the seed).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch

from alignlib.engines.base import Engine

_STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_tree(path: str) -> None:
    for root, dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _STEP_DIR.match(name)
        if match and os.path.exists(os.path.join(root, name, "trainer_state.json")):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def save_checkpoint(
    engine: Engine, output_dir: str, step: int, trainer_state: dict[str, Any], save_total_limit: int | None
) -> str:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    root = checkpoints_dir(output_dir)
    final = os.path.join(root, f"step-{step:08d}")
    tmp = os.path.join(root, f".tmp-step-{step:08d}")
    if engine.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    engine.barrier()
    engine.save_state(tmp)
    torch.save(rng_state(), os.path.join(tmp, f"rng-rank{engine.rank}.pt"))
    engine.barrier()
    if engine.is_main:
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump({**trainer_state, "step": step, "world_size": engine.world_size}, f, indent=1)
        _fsync_tree(tmp)
        if os.path.exists(final):  # only when re-saving a step after an odd resume
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        for stale in os.listdir(root):
            if stale.startswith(".tmp-"):
                shutil.rmtree(os.path.join(root, stale), ignore_errors=True)
        if save_total_limit:
            for _, old in list_checkpoints(output_dir)[:-save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    engine.barrier()
    return final


def load_checkpoint(engine: Engine, path: str) -> dict[str, Any]:
    """Restores engine state and this rank's RNG; returns trainer_state (with "step")."""
    with open(os.path.join(path, "trainer_state.json")) as f:
        state = json.load(f)
    if state["world_size"] != engine.world_size:
        raise ValueError(f"checkpoint written by {state['world_size']} ranks, resuming on {engine.world_size}")
    engine.load_state(path)
    set_rng_state(torch.load(os.path.join(path, f"rng-rank{engine.rank}.pt"), weights_only=False))
    return state


def resolve_resume(output_dir: str, resume_from_checkpoint: bool | str) -> str | None:
    if resume_from_checkpoint is True:
        return latest_checkpoint(output_dir)
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint:
        return resume_from_checkpoint
    return None


def export_hf(engine: Engine, output_dir: str, *, tokenizer: Any = None) -> None:
    """Saves the trained model in Hugging Face format (safetensors, config, generation_config,
    tokenizer) into output_dir; gathered from ZeRO-3 shards. LoRA runs also get the adapter
    alone under output_dir/adapter, and the merged model at the top level (the adapters are
    merged into the trained model object in place, as training is over). Collective."""
    state_dict = engine.full_state_dict()
    if not engine.is_main:
        engine.barrier()
        return
    model = engine.model
    staging = os.path.join(output_dir, ".tmp-export")
    shutil.rmtree(staging, ignore_errors=True)
    if tokenizer is not None:
        # The end of an assistant turn is the tokenizer's eos; generation must stop there.
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        if tokenizer.pad_token_id is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        tokenizer.save_pretrained(staging)
    if hasattr(model, "merge_and_unload"):  # peft
        model.save_pretrained(os.path.join(staging, "adapter"))
        model = model.merge_and_unload()
        state_dict = None
    model.save_pretrained(staging, state_dict=state_dict)
    _fsync_tree(staging)
    for name in os.listdir(staging):
        target = os.path.join(output_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    os.rmdir(staging)
    _fsync_dir(output_dir)
    engine.barrier()
