"""Shared helpers for the training tests: tiny random-init models, a tiny tokenizer, and SFT/DPO
tables in the data engine's layout built from random ids."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import polars as pl
import torch

VOCAB = 128
EOS_ID = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_llama(seed: int = 0, attn: str = "sdpa", vocab: int = VOCAB, attention_dropout: float = 0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=EOS_ID, bos_token_id=1,
        tie_word_embeddings=False, attention_dropout=attention_dropout,
    )
    config._attn_implementation = attn
    return LlamaForCausalLM(config).float()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": EOS_ID, **{f"t{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def sft_table(n_rows: int, *, seed: int = 0, min_len: int = 6, max_len: int = 24) -> pl.DataFrame:
    """Unpacked SFT rows: a random 'prompt' prefix with labels -100, then a trained completion."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for _ in range(n_rows):
        n = int(rng.integers(min_len, max_len + 1))
        row = rng.integers(3, VOCAB, n).tolist()
        prompt = int(rng.integers(1, n - 1))
        ids.append(row)
        labels.append([-100] * prompt + row[prompt:])
    return pl.DataFrame(
        {"input_ids": ids, "labels": labels},
        schema={"input_ids": pl.List(pl.UInt32), "labels": pl.List(pl.Int32)},
    )


def pack_table(table: pl.DataFrame, max_tokens: int) -> pl.DataFrame:
    """Greedy packing in order, as the data engine lays packed rows out."""
    rows: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": [], "seq_lengths": []}
    for ids, labels in zip(table["input_ids"].to_list(), table["labels"].to_list()):
        if current["input_ids"] and len(current["input_ids"]) + len(ids) > max_tokens:
            rows.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": [], "seq_lengths": []}
        current["input_ids"] += ids
        current["labels"] += [-100] + labels[1:]
        current["position_ids"] += list(range(len(ids)))
        current["seq_lengths"].append(len(ids))
    rows.append(current)
    return pl.DataFrame(
        rows,
        schema={"input_ids": pl.List(pl.UInt32), "labels": pl.List(pl.Int32),
                "position_ids": pl.List(pl.Int32), "seq_lengths": pl.List(pl.Int32)},
    )


def dpo_table(n_rows: int, *, seed: int = 0) -> pl.DataFrame:
    """Learnable preferences: chosen answers use tokens 3..64, rejected answers 65..127."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list[list[int]]] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for _ in range(n_rows):
        cols["prompt_ids"].append(rng.integers(3, VOCAB, int(rng.integers(3, 10))).tolist())
        cols["chosen_ids"].append(rng.integers(3, 65, int(rng.integers(2, 8))).tolist() + [EOS_ID])
        cols["rejected_ids"].append(rng.integers(65, VOCAB, int(rng.integers(2, 8))).tolist() + [EOS_ID])
    return pl.DataFrame(cols, schema={k: pl.List(pl.UInt32) for k in cols})


def losses_of(metrics: list[dict], key: str = "loss") -> list[float]:
    return [m[key] for m in metrics]


def run_distributed(args: list[str], *, nproc: int = 2, launcher: str = "torchrun", timeout: int = 150,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs tests/_dist_worker.py in `nproc` processes on CPU (gloo)."""
    worker = os.path.join(REPO, "tests", "_dist_worker.py")
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.environ.get("PYTHONPATH", ""), os.path.join(REPO, "python")]), "DS_ACCELERATOR": "cpu",
                "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
                # the CPU accelerator JIT-builds a small op with the venv's ninja
                "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]), **(env or {})}
    if launcher == "deepspeed":
        cmd = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", str(nproc),
               "--no_local_rank", "--master_port", str(29500 + os.getpid() % 1000), worker, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + os.getpid() % 1000), worker, *args]
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc
