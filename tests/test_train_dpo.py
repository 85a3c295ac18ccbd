"""DPO loop: one packed forward for chosen+rejected, exact metrics, reference caching, learning."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers_train import dpo_table, tiny_llama

from alignlib.engines import CausalLMLogprobs
from alignlib.losses import LOSS_TYPES
from alignlib.train import DPOConfig, train_dpo
from alignlib.train.batching import collate, dpo_documents
from alignlib.train.dpo import model_fingerprint, sequence_logps, table_fingerprint

torch.set_num_threads(2)


def quick(tmp_path, **overrides) -> DPOConfig:
    base = dict(learning_rate=2e-3, beta=0.5, max_steps=2, micro_batch_size=4, progress_bar=False, plots=False,
                lr_scheduler_type="constant", ref_cache_dir=str(tmp_path / "ref_cache"))
    return DPOConfig(**{**base, **overrides})


def hf_sequence_logps_and_logits(model, table, rows):
    """Reference values from full HF logits, one sequence at a time."""
    out = {"chosen": [], "rejected": [], "logit_sum": {"chosen": 0.0, "rejected": 0.0}, "n": {"chosen": 0, "rejected": 0}}
    for row in rows:
        prompt = table["prompt_ids"][row].to_list()
        for side in ("chosen", "rejected"):
            completion = table[f"{side}_ids"][row].to_list()
            ids = torch.tensor([prompt + completion])
            logits = model(ids).logits[0, len(prompt) - 1 : -1]
            out[side].append(-F.cross_entropy(logits, torch.tensor(completion), reduction="sum"))
            out["logit_sum"][side] += logits.mean(-1).sum().item()
            out["n"][side] += len(completion)
    return out


def test_chosen_and_rejected_in_one_packed_forward_match_separate_sequences():
    model = tiny_llama().eval()
    table = dpo_table(5, seed=1)
    batch = collate(dpo_documents(table, [0, 1, 2, 3, 4]), packing=True)
    assert batch.input_ids.shape[0] == 1 and batch.num_docs == 10
    with torch.no_grad():
        logps, mean_logits = CausalLMLogprobs(model)(batch.input_ids, batch.position_ids, None, batch.targets, True)
        chosen, rejected = sequence_logps(logps, batch).chunk(2)
        ref = hf_sequence_logps_and_logits(model, table, range(5))
    torch.testing.assert_close(chosen, torch.stack(ref["chosen"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rejected, torch.stack(ref["rejected"]), rtol=1e-5, atol=1e-5)
    chosen_tokens = (batch.doc_ids >= 0) & (batch.doc_ids < 5)
    assert mean_logits[chosen_tokens].sum().item() == pytest.approx(ref["logit_sum"]["chosen"], rel=1e-4, abs=1e-4)


def test_first_step_metrics_equal_a_direct_computation(tmp_path):
    from alignlib.losses import dpo_loss

    table = dpo_table(4, seed=2)
    model = tiny_llama()
    with torch.no_grad():
        ref = hf_sequence_logps_and_logits(model.eval(), table, range(4))
    result = train_dpo(table, model, quick(tmp_path, max_steps=1, micro_batch_size=2, gradient_accumulation_steps=2),
                       output_dir=str(tmp_path / "run"))
    m = result.train_metrics[0]
    chosen, rejected = torch.stack(ref["chosen"]), torch.stack(ref["rejected"])
    losses, _, _ = dpo_loss(chosen, rejected, chosen, rejected, beta=0.5)
    # Policy == reference at step 1: rewards 0, loss log 2, no pair strictly preferred.
    assert m["loss"] == pytest.approx(losses.mean().item(), abs=1e-6) and m["loss"] == pytest.approx(np.log(2), abs=1e-5)
    assert m["rewards/chosen"] == pytest.approx(0.0, abs=1e-5) and m["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert m["logps/chosen"] == pytest.approx(chosen.mean().item(), rel=1e-5)
    assert m["logps/rejected"] == pytest.approx(rejected.mean().item(), rel=1e-5)
    assert m["logits/chosen"] == pytest.approx(ref["logit_sum"]["chosen"] / ref["n"]["chosen"], rel=1e-4, abs=1e-5)
    assert m["logits/rejected"] == pytest.approx(ref["logit_sum"]["rejected"] / ref["n"]["rejected"], rel=1e-4, abs=1e-5)


def test_reward_accuracy_rises_and_reference_cache_is_reused(tmp_path):
    table, held_out = dpo_table(32, seed=3), dpo_table(8, seed=4)
    config = quick(tmp_path, max_steps=24, micro_batch_size=8, eval_steps=12, plots=True, num_train_epochs=1)
    out = tmp_path / "run"
    result = train_dpo(table, tiny_llama(), config, output_dir=str(out), eval_table=held_out)
    acc = [m["rewards/accuracies"] for m in result.train_metrics]
    margins = [m["rewards/margins"] for m in result.train_metrics]
    assert np.mean(acc[:3]) <= 0.7 and np.mean(acc[-4:]) >= 0.9
    assert np.mean(margins[-4:]) > np.mean(margins[:3]) + 0.5
    assert result.eval_metrics[-1]["rewards/accuracies"] >= 0.85  # held-out pairs too
    for name in ("rewards.png", "margins.png", "accuracies.png", "loss.png"):
        assert os.path.getsize(out / name) > 0

    cache = result.report["reference"]["cache_files"]
    initial = tiny_llama()
    assert os.path.basename(cache[0]) == f"{table_fingerprint(table)}-{model_fingerprint(initial)}.pt"
    stamps = [os.stat(p).st_mtime_ns for p in cache]
    again = train_dpo(table, initial, quick(tmp_path, max_steps=2, micro_batch_size=8),
                      output_dir=str(tmp_path / "again"))
    assert [os.stat(p).st_mtime_ns for p in again.report["reference"]["cache_files"][:1]] == stamps[:1]
    np.testing.assert_allclose([m["loss"] for m in again.train_metrics],
                               [m["loss"] for m in result.train_metrics[:2]], rtol=1e-6)


def test_frozen_reference_gives_the_same_training_as_precomputed(tmp_path):
    table = dpo_table(8, seed=5)
    pre = train_dpo(table, tiny_llama(), quick(tmp_path, max_steps=3), output_dir=str(tmp_path / "a"))
    frozen = train_dpo(table, tiny_llama(), quick(tmp_path, max_steps=3, precompute_ref_log_probs=False),
                       output_dir=str(tmp_path / "b"))
    for key in ("loss", "rewards/chosen", "rewards/margins"):
        np.testing.assert_allclose([m[key] for m in frozen.train_metrics], [m[key] for m in pre.train_metrics],
                                   rtol=1e-4, atol=1e-5)
    assert abs(pre.train_metrics[-1]["rewards/margins"]) > 1e-3  # the policy moved away from the reference


# --- every loss type of alignlib.losses, with the inputs TRL gives it ------------------------------------------


def hf_pair_logps(model, table, rows):
    """From full HF logits, one sequence at a time: per-pair completion log-prob sums and token counts
    (chosen, rejected), and the token log-probs of the chosen completions and of the whole chosen sequences
    (prompt and completion, as ORPO's NLL sees them)."""
    sums, counts = {"chosen": [], "rejected": []}, {"chosen": [], "rejected": []}
    completion_tokens, sequence_tokens = [], []
    with torch.no_grad():
        for row in rows:
            prompt = table["prompt_ids"][row].to_list()
            for side in ("chosen", "rejected"):
                completion = table[f"{side}_ids"][row].to_list()
                ids = torch.tensor(prompt + completion)
                token_logps = model(ids[None]).logits[0, :-1].double().log_softmax(-1).gather(-1, ids[1:, None])[:, 0]
                sums[side].append(token_logps[len(prompt) - 1 :].sum())
                counts[side].append(len(completion))
                if side == "chosen":
                    completion_tokens.append(token_logps[len(prompt) - 1 :])
                    sequence_tokens.append(token_logps)
    return ({side: torch.stack(v) for side, v in sums.items()},
            {side: torch.tensor(v, dtype=torch.float64) for side, v in counts.items()},
            torch.cat(completion_tokens), torch.cat(sequence_tokens))


def expected_first_loss(config: DPOConfig, policy, counts, completion_tokens, sequence_tokens,
                        ref=None) -> tuple[float, float]:
    """(loss, logps/chosen) of TRL 1.16's formulas, written out: DPOTrainer (sigmoid, ipo, + rpo_alpha NLL),
    CPOTrainer (simpo, + cpo_alpha NLL) and ORPOTrainer (NLL over prompt+completion minus beta·log σ(log-odds))."""
    beta, t = config.beta, config.loss_type
    if t in ("sigmoid", "ipo"):
        c, r = policy["chosen"] - ref["chosen"], policy["rejected"] - ref["rejected"]
        if t == "sigmoid":
            losses = -F.logsigmoid(beta * (c - r))
        else:
            losses = (c / counts["chosen"] - r / counts["rejected"] - 1 / (2 * beta)) ** 2
        return (losses.mean() - config.rpo_alpha * completion_tokens.mean()).item(), policy["chosen"].mean().item()
    c, r = policy["chosen"] / counts["chosen"], policy["rejected"] / counts["rejected"]
    if t == "simpo":
        x, eps = beta * (c - r) - config.simpo_gamma, config.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(x) - eps * F.logsigmoid(-x)
        return (losses.mean() - config.cpo_alpha * completion_tokens.mean()).item(), c.mean().item()
    assert t == "orpo"
    log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
    return (-sequence_tokens.mean() - (beta * F.logsigmoid(log_odds)).mean()).item(), c.mean().item()


@pytest.mark.parametrize("loss_type,extra", [
    ("sigmoid", {}), ("sigmoid", {"rpo_alpha": 0.5}), ("ipo", {}),
    ("simpo", {"simpo_gamma": 0.3, "label_smoothing": 0.1, "cpo_alpha": 0.5}), ("simpo", {"packing": False}),
    ("orpo", {}), ("orpo", {"packing": False}),
])
def test_first_step_loss_matches_trl_formulas_on_independent_logps(tmp_path, loss_type, extra):
    # 4 pairs as 2 micro-batches of 2: per-pair means and token-pooled NLLs span the whole global batch.
    table = dpo_table(4, seed=6)
    config = quick(tmp_path, loss_type=loss_type, max_steps=1, micro_batch_size=2, gradient_accumulation_steps=2,
                   **extra)
    model = tiny_llama()
    policy, counts, completion_tokens, sequence_tokens = hf_pair_logps(model.eval(), table, range(4))
    ref = ref_model = None
    if loss_type in ("sigmoid", "ipo"):  # a reference unlike the policy, so the log-ratios are not all 0
        ref_model = tiny_llama(seed=1)
        ref = hf_pair_logps(ref_model.eval(), table, range(4))[0]
    loss, logps_chosen = expected_first_loss(config, policy, counts, completion_tokens, sequence_tokens, ref)
    m = train_dpo(table, model, config, ref_model=ref_model, output_dir=str(tmp_path / "run")).train_metrics[0]
    assert m["loss"] == pytest.approx(loss, abs=1e-5)
    assert m["logps/chosen"] == pytest.approx(logps_chosen, abs=1e-5)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_trains_with_a_finite_loss(tmp_path, loss_type):
    config = quick(tmp_path, loss_type=loss_type, max_steps=3, label_smoothing=1e-3 if loss_type == "exo_pair" else 0.0)
    result = train_dpo(dpo_table(12, seed=7), tiny_llama(), config, output_dir=str(tmp_path / "run"),
                       eval_table=dpo_table(3, seed=8))
    assert len(result.train_metrics) == 3
    for m in result.train_metrics + result.eval_metrics:
        assert np.isfinite([m["loss"], m["rewards/margins"], m["logps/chosen"]]).all(), m
    assert all(np.isfinite(m["grad_norm"]) for m in result.train_metrics)
    if loss_type in ("simpo", "orpo"):  # reference-free: nothing precomputed, no reference at all
        assert result.report["reference"] is None and not (tmp_path / "ref_cache").exists()
        assert all(m["logps/chosen"] < 0 for m in result.train_metrics)


def test_reference_free_losses_build_no_reference_and_reject_a_ref_model(tmp_path, monkeypatch):
    import alignlib.train.dpo as dpo

    monkeypatch.setattr(dpo, "Reference", lambda *a, **k: pytest.fail("a reference-free loss built a reference"))
    for precompute in (True, False):
        train_dpo(dpo_table(4), tiny_llama(), quick(tmp_path, loss_type="orpo", max_steps=1,
                                                    precompute_ref_log_probs=precompute),
                  output_dir=str(tmp_path / f"run-{precompute}"))
    with pytest.raises(ValueError, match="reference-free"):
        train_dpo(dpo_table(4), tiny_llama(), quick(tmp_path, loss_type="simpo"), ref_model=tiny_llama(1),
                  output_dir=str(tmp_path / "b"))


@pytest.mark.parametrize("overrides,match", [
    ({"loss_type": "dpo"}, "unknown loss_type"),
    ({"loss_type": "exo_pair"}, "label_smoothing > 0"),
    ({"loss_type": "robust", "label_smoothing": 0.5}, r"\[0, 0.5\)"),
    ({"loss_type": "sigmoid", "cpo_alpha": 1.0}, "cpo_alpha"),
    ({"loss_type": "orpo", "rpo_alpha": 1.0}, "rpo_alpha"),
    ({"loss_type": "simpo", "simpo_gamma": -1.0}, "simpo_gamma"),
])
def test_dpo_config_rejects_inconsistent_loss_settings(overrides, match):
    with pytest.raises(ValueError, match=match):
        DPOConfig(**overrides).validate()
