"""SFT loop: exact packing, exact global token-mean loss, batching plans, and an end-to-end run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers_train import EOS_ID, pack_table, sft_table, tiny_llama, tiny_tokenizer

from alignlib.engines import CausalLMLogprobs
from alignlib.train import SFTConfig, train_sft
from alignlib.train.batching import StepPlan, collate, sft_documents, sft_row_lengths
from alignlib.train.dpo import sequence_logps

torch.set_num_threads(2)


def quick(**overrides) -> SFTConfig:
    base = dict(learning_rate=3e-3, max_steps=3, micro_batch_size=4, progress_bar=False, plots=False,
                lr_scheduler_type="constant")
    return SFTConfig(**{**base, **overrides})


def per_doc_nll(module: CausalLMLogprobs, docs, packing: bool) -> torch.Tensor:
    batch = collate(docs, packing=packing)
    logps, _ = module(batch.input_ids, batch.position_ids, batch.attention_mask, batch.targets)
    return -sequence_logps(logps, batch)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_equals_its_documents_run_separately(attn):
    module = CausalLMLogprobs(tiny_llama(attn=attn)).eval()
    docs = sft_documents(pack_table(sft_table(6, seed=1), max_tokens=200), [0])
    assert len(docs) == 6  # one packed row of six documents
    with torch.no_grad():
        packed = per_doc_nll(module, docs, packing=True)
        alone = torch.cat([per_doc_nll(module, [d], packing=True) for d in docs])
        padded = per_doc_nll(module, docs, packing=False)
        # Same row with positions that do not restart: documents see each other and losses change,
        # which is what the packed layout must prevent.
        leaky = collate(docs, packing=True)
        leaky.position_ids = torch.arange(leaky.input_ids.shape[1]).unsqueeze(0)
        logps, _ = module(leaky.input_ids, leaky.position_ids, None, leaky.targets)
        leaked = -sequence_logps(logps, leaky)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    assert (leaked[1:] - alone[1:]).abs().max() > 1e-3


def test_logprobs_match_full_hf_logits():
    model = tiny_llama().eval()
    docs = sft_documents(sft_table(3, seed=2), [0, 1, 2])
    with torch.no_grad():
        ours = per_doc_nll(CausalLMLogprobs(model), docs, packing=True)
        reference = []
        for d in docs:
            logits = model(torch.from_numpy(d.input_ids)[None]).logits[0, :-1]
            labels = torch.from_numpy(d.labels)[1:]
            reference.append(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
    torch.testing.assert_close(ours, torch.stack(reference), rtol=1e-5, atol=1e-5)


def test_loss_is_token_mean_over_global_batch_not_mean_of_means(tmp_path):
    table = sft_table(8, seed=3)
    model = tiny_llama()
    with torch.no_grad():  # peaked predictions, so per-token losses differ and the two means disagree
        model.lm_head.weight.mul_(30.0)
    config = quick(max_steps=1, micro_batch_size=2, gradient_accumulation_steps=2)
    plan = StepPlan(sft_row_lengths(table), micro_batch_size=2, micro_batch_tokens=None, accumulation=2,
                    world_size=1, seed=config.seed, shuffle=True, packing=True, num_epochs=1, max_steps=1)
    micro = plan.micro_batches(0, 0)
    with torch.no_grad():
        module = CausalLMLogprobs(model).eval()
        nll = [per_doc_nll(module, sft_documents(table, rows), True).sum().item() for rows in micro]
    counts = [collate(sft_documents(table, rows), packing=True).num_targets for rows in micro]
    assert counts[0] != counts[1]  # otherwise both normalizations agree and the test proves nothing
    expected = sum(nll) / sum(counts)
    mean_of_means = np.mean([n / c for n, c in zip(nll, counts)])
    result = train_sft(table, model, config, output_dir=str(tmp_path))
    assert result.train_metrics[0]["loss"] == pytest.approx(expected, rel=1e-6)
    assert abs(expected - mean_of_means) > 1e-3 * expected  # far outside the rel=1e-6 check above


def test_accumulation_and_micro_batch_split_do_not_change_training(tmp_path):
    table = sft_table(16, seed=4)
    one = train_sft(table, tiny_llama(), quick(max_steps=4, micro_batch_size=4), output_dir=str(tmp_path / "a"))
    split = train_sft(table, tiny_llama(), quick(max_steps=4, micro_batch_size=2, gradient_accumulation_steps=2),
                      output_dir=str(tmp_path / "b"))
    padded = train_sft(table, tiny_llama(), quick(max_steps=4, micro_batch_size=4, packing=False),
                       output_dir=str(tmp_path / "c"))
    for other in (split, padded):
        np.testing.assert_allclose([m["loss"] for m in other.train_metrics],
                                   [m["loss"] for m in one.train_metrics], rtol=1e-5)


def test_step_plan_rows_and_token_budget():
    lengths = np.array([5, 9, 3, 12, 7, 4, 8, 6, 10, 2, 11, 1], dtype=np.int64)
    rows = StepPlan(lengths, micro_batch_size=2, micro_batch_tokens=None, accumulation=2, world_size=2, seed=0, shuffle=True, packing=True, num_epochs=2, max_steps=-1)
    assert rows.total_steps == 2 * (12 // (2 * 2 * 2))  # 1 step per epoch, remainder dropped
    batch = rows.global_batch(0)
    assert [len(mb) for mb in batch] == [2, 2, 2, 2]
    assert rows.micro_batches(0, 1) == batch[2:4]  # rank 1 takes the second half
    assert rows.global_batch(1) != batch  # next epoch is reshuffled

    budget = StepPlan(lengths, micro_batch_size=1, micro_batch_tokens=16, accumulation=1, world_size=1, seed=0, shuffle=False, packing=True, num_epochs=1, max_steps=-1)
    micro = [budget.global_batch(s)[0] for s in range(budget.total_steps)]
    assert sorted(i for mb in micro for i in mb) == list(range(12))
    assert all(lengths[mb].sum() <= 16 for mb in micro)
    assert len(micro) < 12  # rows were actually packed together
    padded = StepPlan(lengths, micro_batch_size=1, micro_batch_tokens=16, accumulation=1, world_size=1, seed=0, shuffle=False, packing=False, num_epochs=1, max_steps=-1)
    assert all(len(mb) * lengths[mb].max() <= 16 or len(mb) == 1
               for mb in (padded.global_batch(s)[0] for s in range(padded.total_steps)))


def test_sft_loss_falls_and_run_writes_its_outputs(tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    table = sft_table(8, seed=5)
    out = str(tmp_path / "run")
    model = tiny_llama()
    result = train_sft(
        table, model, quick(max_steps=30, micro_batch_size=4, micro_batch_tokens=None, plots=True,
                                   eval_steps=10, lr_scheduler_type="cosine", warmup_ratio=0.1),
        output_dir=out, tokenizer=tiny_tokenizer(), eval_table=sft_table(4, seed=6), data_report={"rows": 8},
    )
    losses = [m["loss"] for m in result.train_metrics]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert [e["step"] for e in result.eval_metrics] == [10, 20, 30]

    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 31))
    assert all(r["tokens_per_second"] > 0 for r in records if r["split"] == "train")
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["data"] == {"rows": 8}
    assert report["config"]["max_steps"] == 30 and report["throughput"]["tokens_per_second"] > 0
    for name in ("loss.png", "learning_rate.png", "grad_norm.png", "model.safetensors", "tokenizer.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert GenerationConfig.from_pretrained(out).eos_token_id == EOS_ID
    trained = model.state_dict()  # trained in place
    assert not torch.equal(trained["lm_head.weight"], tiny_llama().state_dict()["lm_head.weight"])
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0)


def test_lora_from_a_local_checkpoint_trains_adapters_and_exports_a_merged_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from alignlib.models import LoraSettings, load_model

    base_dir = str(tmp_path / "base")
    tiny_llama().save_pretrained(base_dir)
    model = load_model(base_dir, lora=LoraSettings(r=4, alpha=8, dropout=0.0), gradient_checkpointing=True)
    out = str(tmp_path / "run")
    result = train_sft(sft_table(8), model, quick(max_steps=4, precision="bf16"), output_dir=out)
    assert result.train_metrics[-1]["loss"] < result.train_metrics[0]["loss"]
    assert os.path.exists(os.path.join(out, "adapter", "adapter_model.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    # LoRA leaves embeddings and norms alone and moves the adapted projections (merged at export).
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert (merged["model.layers.0.mlp.down_proj.weight"] - base["model.layers.0.mlp.down_proj.weight"]).abs().max() > 0


def test_rows_an_incomplete_last_global_batch_leaves_out_are_reported(tmp_path):
    """10 rows in global batches of 4: each epoch trains 8 and leaves 2 out — counted, not silent."""
    out = tmp_path / "run"
    result = train_sft(sft_table(10, seed=3), tiny_llama(), quick(max_steps=-1, num_train_epochs=2, micro_batch_size=2,
                                                                   gradient_accumulation_steps=2),
                       output_dir=str(out))
    batching = json.load(open(out / "report.json"))["batching"]
    assert batching == {"rows": 10, "steps": 4, "epochs_touched": 2, "rows_left_out_per_epoch": [2, 2]}
    assert result.global_step == 4 and result.report["batching"] == batching
