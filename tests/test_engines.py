"""Engines: DDP and DeepSpeed ZeRO-2/3 in two processes train exactly like one process on the same
global batch; DeepSpeed configs pass through with "auto" filled; optimizers and schedules."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch

from _dist_worker import config_for
from helpers_train import dpo_table, run_distributed, sft_table, tiny_llama

from alignlib.engines.deepspeed_engine import resolve_deepspeed_config
from alignlib.train import SFTConfig, train_dpo, train_sft
from alignlib.train.optim import build_optimizer, build_scheduler

torch.set_num_threads(2)
KEYS = {"sft": ("loss", "grad_norm", "learning_rate"),
        "dpo": ("loss", "rewards/chosen", "rewards/margins", "logps/chosen", "grad_norm")}


def records(path: str) -> list[dict]:
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"train"' in line]


def one_process_reference(method: str, out: str, tmp_path) -> tuple[list[dict], torch.nn.Module]:
    """The same global batch (2 micro-batches) in one process with the torch engine."""
    config = dataclasses.replace(config_for("torch", None, method), gradient_accumulation_steps=2)
    model = tiny_llama()
    if method == "dpo":
        config.ref_cache_dir = str(tmp_path / "ref_cache_single")
        train_dpo(dpo_table(16), model, config, output_dir=out)
    else:
        train_sft(sft_table(16), model, config, output_dir=out)
    return records(out), model


def assert_same_training(got: list[dict], want: list[dict], keys, rtol: float) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4]
    for key in keys:
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=rtol, atol=1e-7, err_msg=key)
    assert got[-1]["loss"] != got[0]["loss"]  # training moved


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path):
    run_distributed([str(tmp_path), "torch", "--methods", "sft,dpo"])
    for method in ("sft", "dpo"):
        want, _ = one_process_reference(method, str(tmp_path / f"single-{method}"), tmp_path)
        assert_same_training(records(str(tmp_path / f"{method}-torch")), want, KEYS[method], rtol=1e-5)


@pytest.mark.slow
def test_deepspeed_zero2_and_zero3_two_processes_match_one_process(tmp_path):
    from transformers import AutoModelForCausalLM

    run_distributed([str(tmp_path), "deepspeed", "2,3"], launcher="deepspeed")
    want, model = one_process_reference("sft", str(tmp_path / "single"), tmp_path)
    for stage in (2, 3):
        out = str(tmp_path / f"sft-zero{stage}")
        assert_same_training(records(out), want, KEYS["sft"], rtol=1e-4)
        report = json.load(open(os.path.join(out, "report.json")))
        assert report["engine"]["zero_stage"] == stage and report["world_size"] == 2
        assert report["engine"]["deepspeed"]["zero_optimization"]["reduce_bucket_size"] == 64 * 64
        # The export is gathered from the ZeRO shards and equals the one-process weights.
        exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(exported[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_deepspeed_config_passes_through_with_auto_filled():
    user = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                   "weight_decay": "auto", "torch_adam": True}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                           "warmup_num_steps": "auto", "total_num_steps": "auto"}},
        "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}, "reduce_bucket_size": "auto",
                              "stage3_prefetch_bucket_size": "auto", "custom_key": 7},
        "steps_per_print": 123,
    }
    config = SFTConfig(learning_rate=1e-4, micro_batch_size=3, gradient_accumulation_steps=4, precision="bf16",
                       max_grad_norm=0.5, warmup_ratio=0.1, weight_decay=0.05, adam_beta2=0.95, engine="deepspeed")
    ds = resolve_deepspeed_config(user, config, hidden_size=64, world_size=2, total_steps=100)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 24 and ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True
    assert ds["optimizer"]["params"] == {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.05,
                                         "torch_adam": True}
    assert ds["scheduler"]["params"] == {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-4, "warmup_num_steps": 10,
                                         "total_num_steps": 100}
    assert ds["zero_optimization"] == {"stage": 3, "offload_param": {"device": "cpu"}, "reduce_bucket_size": 4096,
                                       "stage3_prefetch_bucket_size": 3686, "custom_key": 7}
    assert ds["steps_per_print"] == 123 and user["train_micro_batch_size_per_gpu"] == "auto"  # input untouched
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        resolve_deepspeed_config({"gradient_accumulation_steps": 8}, config, hidden_size=64, world_size=2, total_steps=1)
    with pytest.raises(ValueError, match="zero_optimization.foo"):
        resolve_deepspeed_config({"zero_optimization": {"foo": "auto"}}, config, hidden_size=64, world_size=2,
                                 total_steps=1)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedules_match_transformers(kind):
    import transformers

    hf = {"cosine": transformers.get_cosine_schedule_with_warmup,
          "linear": transformers.get_linear_schedule_with_warmup,
          "constant": transformers.get_constant_schedule_with_warmup}[kind]
    total, config = 50, SFTConfig(learning_rate=1.0, lr_scheduler_type=kind, warmup_ratio=0.1)
    param = torch.nn.Parameter(torch.zeros(1))
    ours = build_scheduler(torch.optim.SGD([param], lr=1.0), config, total)
    theirs = hf(torch.optim.SGD([param], lr=1.0), math.ceil(0.1 * total), **({} if kind == "constant" else {"num_training_steps": total}))
    for _ in range(total):
        assert ours.get_last_lr()[0] == pytest.approx(theirs.get_last_lr()[0], abs=1e-12)
        for schedule in (ours, theirs):
            schedule.optimizer.step()
            schedule.step()


def test_optimizers_and_weight_decay_groups():
    model = tiny_llama()
    adamw = build_optimizer(model, SFTConfig(weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6))
    assert isinstance(adamw, torch.optim.AdamW)
    decay, no_decay = adamw.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0 and decay["betas"] == (0.8, 0.95)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    rms = build_optimizer(model, SFTConfig(optimizer="rmsprop", rmsprop_alpha=0.9))
    assert isinstance(rms, torch.optim.RMSprop) and rms.param_groups[0]["alpha"] == 0.9


def test_rmsprop_and_token_budget_batches_train(tmp_path):
    config = SFTConfig(optimizer="rmsprop", learning_rate=1e-3, micro_batch_tokens=64, gradient_accumulation_steps=2,
                       max_steps=8, progress_bar=False, plots=False, lr_scheduler_type="linear", warmup_ratio=0.25)
    result = train_sft(sft_table(24, seed=7), tiny_llama(), config, output_dir=str(tmp_path))
    assert all(m["num_tokens"] <= 2 * 64 for m in result.train_metrics)
    assert result.train_metrics[0]["learning_rate"] == 0.0 and result.train_metrics[2]["learning_rate"] == 1e-3
    assert result.train_metrics[-1]["loss"] < result.train_metrics[0]["loss"]
