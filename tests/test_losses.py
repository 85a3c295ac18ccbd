"""alignlib.losses.dpo_loss against TRL 1.16's own code, loss type by loss type.

TRL 1.16 computes the DPO-family losses inline in ``DPOTrainer._compute_loss`` (there is no standalone
``dpo_loss`` method any more), so the reference here *runs that method*: a ``DPOTrainer`` object created with
``__new__`` (no model, tokenizer or dataset) gets exactly the attributes ``_compute_loss`` reads, a stand-in model
returns per-token log-probs that sum to the sequence log-probs we choose, and the reference log-probs go in as
precomputed (``precompute_ref_logps=True``). ``_compute_loss`` returns the batch mean, so per-pair losses and
rewards come from one call per pair (batch of 1); the batch call checks the mean and its gradient. SimPO and ORPO
call ``CPOTrainer.cpo_loss`` / ``ORPOTrainer.odds_ratio_loss`` on ``__new__``-created trainers.
"""

from __future__ import annotations

import importlib
import math
import types
from collections import defaultdict

import pytest
import torch

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
trl_orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")


losses_mod = importlib.import_module("alignlib.losses")
dpo_loss = losses_mod.dpo_loss

SEEDS = [0, 1, 2]
BETAS = [0.1, 0.5]
B = 6


# --------------------------------------------------------------------------------------------------------------
# TRL harness


class _Accelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x


class _Model:
    """Stands in for the policy: returns the per-token log-probs TRL sums into sequence log-probs."""

    training = True

    def __init__(self, per_token_logps):
        self.per_token_logps = per_token_logps

    def __call__(self, **kwargs):
        lp = self.per_token_logps
        return types.SimpleNamespace(
            log_probs=lp,
            entropy=torch.zeros_like(lp).detach(),
            mean_logits=torch.zeros_like(lp).detach(),
            is_top1=torch.zeros(lp.shape, dtype=torch.bool),
        )


def _trl_dpo(pc, pr, rc, rr, lens_c, lens_r, *, loss_types, beta, label_smoothing=0.0, loss_weights=None,
             f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, discopop_tau=0.05):  # fmt: skip
    """Run TRL's DPOTrainer._compute_loss on a batch; returns (mean loss, metrics, per_token_logps leaf)."""
    n = pc.shape[0]
    trainer = trl_dpo.DPOTrainer.__new__(trl_dpo.DPOTrainer)
    seq = int(max(lens_c.max(), lens_r.max())) + 1
    # completion_mask: column 0 is the prompt, then `len` completion tokens (TRL's ipo/sigmoid_norm count these)
    lens = torch.cat([lens_c, lens_r])
    completion_mask = (torch.arange(seq)[None, :] >= 1) & (torch.arange(seq)[None, :] <= lens[:, None])
    # per-token log-probs over the shifted positions; TRL sums them (they are 0 off the completion): put the whole
    # sequence log-prob on the first completion token
    per_token = torch.zeros(2 * n, seq - 1, dtype=pc.dtype)
    per_token[:, 0] = torch.cat([pc, pr])
    per_token.requires_grad_(True)
    model = _Model(per_token)
    attrs = dict(
        model=model, accelerator=_Accelerator(), aux_loss_enabled=False, precompute_ref_logps=True, ld_alpha=None,
        f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
        loss_types=list(loss_types), loss_weights=list(loss_weights or [1.0] * len(loss_types)), beta=beta,
        label_smoothing=label_smoothing, use_weighting=False, args=types.SimpleNamespace(discopop_tau=discopop_tau),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    for k, v in attrs.items():
        setattr(trainer, k, v)
    inputs = dict(
        input_ids=torch.zeros(2 * n, seq, dtype=torch.long),
        attention_mask=torch.ones(2 * n, seq, dtype=torch.long),
        completion_mask=completion_mask.long(),
        ref_chosen_logps=rc,
        ref_rejected_logps=rr,
    )
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, trainer._metrics["train"], per_token


def _trl_per_pair(pc, pr, rc, rr, lens_c, lens_r, **kw):
    """Per-pair TRL losses and rewards, one _compute_loss call per pair."""
    losses, cr, rj = [], [], []
    for i in range(pc.shape[0]):
        s = slice(i, i + 1)
        loss, metrics, _ = _trl_dpo(pc[s], pr[s], rc[s], rr[s], lens_c[s], lens_r[s], **kw)
        losses.append(loss.detach())
        cr.append(metrics["rewards/chosen"][0])
        rj.append(metrics["rewards/rejected"][0])
    return torch.stack(losses), torch.tensor(cr, dtype=pc.dtype), torch.tensor(rj, dtype=pc.dtype)


def _inputs(seed, n=B, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lens_c = torch.randint(1, 40, (n,), generator=g)
    lens_r = torch.randint(1, 40, (n,), generator=g)
    pc = -torch.rand(n, generator=g, dtype=dtype) * lens_c * 2.0
    pr = -torch.rand(n, generator=g, dtype=dtype) * lens_r * 2.0
    rc = pc + torch.randn(n, generator=g, dtype=dtype) * 4.0
    rr = pr + torch.randn(n, generator=g, dtype=dtype) * 4.0
    return pc, pr, rc, rr, lens_c, lens_r


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# Loss types and the label_smoothing values each one is compared at (those that use it get several).
DPO_CASES = {
    "sigmoid": [0.0, 0.2],  # TRL 1.16 "sigmoid" ignores label_smoothing: both must give the same result
    "hinge": [0.0],
    "ipo": [0.0],
    "exo_pair": [1e-3, 0.1],
    "nca_pair": [0.0],
    "robust": [0.0, 0.1, 0.3],
    "bco_pair": [0.0],
    "sppo_hard": [0.0],
    "aot": [0.0, 0.2],
    "aot_unpaired": [0.0, 0.2],
    "apo_zero": [0.0],
    "apo_down": [0.0],
    "discopop": [0.0],
    "sigmoid_norm": [0.0],
}
BATCH_COUPLED = {"aot", "aot_unpaired"}  # sort across the batch: compared on the batch only


def _ours(loss_type, pc, pr, rc, rr, lens_c, lens_r, **kw):
    return dpo_loss(pc, pr, rc, rr, loss_type=loss_type, chosen_lengths=lens_c, rejected_lengths=lens_r, **kw)


def test_every_loss_type_is_covered():
    assert set(DPO_CASES) == set(losses_mod.DPO_LOSS_TYPES)
    assert set(losses_mod.REFERENCE_FREE_LOSS_TYPES) == {"simpo", "orpo"}


@pytest.mark.parametrize("loss_type", sorted(DPO_CASES))
def test_dpo_family_matches_trl(loss_type):
    for seed in SEEDS:
        for beta in BETAS:
            for ls in DPO_CASES[loss_type]:
                pc, pr, rc, rr, lc, lr = _inputs(seed)
                kw = dict(beta=beta, label_smoothing=ls)
                ours, ours_c, ours_r = _ours(loss_type, pc, pr, rc, rr, lc, lr, **kw)
                assert ours.shape == ours_c.shape == ours_r.shape == (B,)

                # batch: mean loss, its gradient w.r.t. the policy log-probs, and the logged reward means
                pc_g, pr_g = pc.clone().requires_grad_(), pr.clone().requires_grad_()
                ours_g, _, _ = _ours(loss_type, pc_g, pr_g, rc, rr, lc, lr, **kw)
                ours_g.mean().backward()
                trl_loss, metrics, per_token = _trl_dpo(pc, pr, rc, rr, lc, lr, loss_types=[loss_type], **kw)
                trl_loss.backward()
                _close(ours.mean(), trl_loss.detach())
                _close(torch.cat([pc_g.grad, pr_g.grad]), per_token.grad[:, 0])
                assert math.isclose(ours_c.mean().item(), metrics["rewards/chosen"][0], rel_tol=1e-6, abs_tol=1e-6)
                assert math.isclose(ours_r.mean().item(), metrics["rewards/rejected"][0], rel_tol=1e-6, abs_tol=1e-6)

                # per pair
                if loss_type not in BATCH_COUPLED:
                    trl_l, trl_c, trl_r = _trl_per_pair(pc, pr, rc, rr, lc, lr, loss_types=[loss_type], **kw)
                    _close(ours, trl_l)
                    _close(ours_c, trl_c)
                    _close(ours_r, trl_r)


def test_sigmoid_ignores_label_smoothing_like_trl_1_16():
    pc, pr, rc, rr, _, _ = _inputs(3)
    a = dpo_loss(pc, pr, rc, rr, beta=0.1)[0]
    b = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.3)[0]
    _close(a, b)
    _close(a, -torch.nn.functional.logsigmoid(0.1 * ((pc - rc) - (pr - rr))))


@pytest.mark.parametrize(
    "f_type,coef",
    [("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.5), ("alpha_divergence", 1.0)],
)
def test_f_divergence_matches_trl(f_type, coef):
    for loss_type, ls in [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.1), ("exo_pair", 1e-3),
                          ("discopop", 0.0), ("sigmoid_norm", 0.0)]:  # fmt: skip
        for seed in SEEDS[:2]:
            pc, pr, rc, rr, lc, lr = _inputs(seed)
            kw = dict(beta=0.1, label_smoothing=ls, f_divergence_type=f_type, f_alpha_divergence_coef=coef)
            ours, oc, orj = _ours(loss_type, pc, pr, rc, rr, lc, lr, **kw)
            trl_l, trl_c, trl_r = _trl_per_pair(pc, pr, rc, rr, lc, lr, loss_types=[loss_type], **kw)
            _close(ours, trl_l)
            _close(oc, trl_c)
            _close(orj, trl_r)


def test_f_divergence_rejected_where_trl_rejects():
    pc, pr, rc, rr, _, _ = _inputs(0)
    with pytest.raises(ValueError, match="f_divergence_type"):
        dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="nca_pair", f_divergence_type="forward_kl")


def test_discopop_tau_matches_trl():
    pc, pr, rc, rr, lc, lr = _inputs(5)
    for tau in (0.05, 0.5):
        ours, _, _ = _ours("discopop", pc, pr, rc, rr, lc, lr, beta=0.1, discopop_tau=tau)
        trl_l, _, _ = _trl_per_pair(pc, pr, rc, rr, lc, lr, loss_types=["discopop"], beta=0.1, discopop_tau=tau)
        _close(ours, trl_l)


def test_weighted_mixture_matches_trl():
    # TRL: loss = sum_k w_k * mean(loss_k); ours is per pair sum_k w_k * loss_k, whose mean is the same.
    types_, weights = ["sigmoid", "bco_pair", "apo_zero"], [0.8, 0.2, 1.0]
    for seed in SEEDS:
        pc, pr, rc, rr, lc, lr = _inputs(seed)
        ours, _, _ = _ours(types_, pc, pr, rc, rr, lc, lr, beta=0.1, loss_weights=weights)
        trl_l, _, _ = _trl_per_pair(pc, pr, rc, rr, lc, lr, loss_types=types_, loss_weights=weights, beta=0.1)
        _close(ours, trl_l)


def test_bco_pair_running_mean_delta():
    # TRL 1.16's bco_pair has no running-mean shift (checked against TRL above with the default bco_delta=0).
    # The shifted variant (older TRL's RunningMoments centering) is not in TRL 1.16, so it is checked against the
    # formula: -log sigmoid(beta*r_c - delta) - log sigmoid(-(beta*r_r - delta)).
    pc, pr, rc, rr, _, _ = _inputs(4)
    beta, delta = 0.2, 0.37
    ours, cr, rj = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="bco_pair", bco_delta=delta)
    rc_, rr_ = beta * (pc - rc), beta * (pr - rr)
    expected = -torch.nn.functional.logsigmoid(rc_ - delta) - torch.nn.functional.logsigmoid(-(rr_ - delta))
    _close(ours, expected)
    _close(cr, rc_)
    assert not torch.allclose(ours, dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="bco_pair")[0])


def _avg_logps(seed, n=B):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(n, generator=g) * 3.0 - 1e-3, -torch.rand(n, generator=g) * 3.0 - 1e-3


@pytest.mark.parametrize("alpha", [0.0, 0.25])
def test_simpo_matches_trl_cpo(alpha):
    for seed in SEEDS:
        for beta in (2.0, 2.5, 0.1):
            for ls in (0.0, 0.1):
                for gamma in (0.5, 1.4):
                    pc, pr = _avg_logps(seed)
                    trainer = trl_cpo.CPOTrainer.__new__(trl_cpo.CPOTrainer)
                    for k, v in dict(beta=beta, label_smoothing=ls, loss_type="simpo", simpo_gamma=gamma, alpha=alpha,
                                     accelerator=_Accelerator()).items():  # fmt: skip
                        setattr(trainer, k, v)
                    ref = trainer.cpo_loss(pc, pr)
                    ours = dpo_loss(pc, pr, None, None, beta=beta, loss_type="simpo", label_smoothing=ls,
                                    simpo_gamma=gamma, alpha=alpha)  # fmt: skip
                    for a, b in zip(ours, ref):
                        _close(a, b)


def test_orpo_matches_trl_odds_ratio_loss():
    for seed in SEEDS:
        for beta in (0.1, 0.25):
            pc, pr = _avg_logps(seed)
            pc[0] = -0.01  # both log1mexp branches (threshold -ln 2)
            trainer = trl_orpo.ORPOTrainer.__new__(trl_orpo.ORPOTrainer)
            trainer.beta, trainer.accelerator = beta, _Accelerator()
            ref_losses, ref_c, ref_r, _, _ = trainer.odds_ratio_loss(pc, pr)
            ours, oc, orj = dpo_loss(pc, pr, None, None, beta=beta, loss_type="orpo")
            _close(ours, -ref_losses)  # sign: ours is the term added to the NLL (TRL subtracts its own)
            _close(oc, ref_c)
            _close(orj, ref_r)


def test_ref_free_losses_ignore_reference():
    pc, pr = _avg_logps(7)
    for lt in ("simpo", "orpo"):
        a = dpo_loss(pc, pr, None, None, beta=0.1, loss_type=lt)
        b = dpo_loss(pc, pr, torch.randn(B), torch.randn(B), beta=0.1, loss_type=lt)
        for x, y in zip(a, b):
            _close(x, y)


def test_losses_differentiable_rewards_detached():
    pc, pr, rc, rr, lc, lr = _inputs(8)
    pc.requires_grad_(True)
    for lt in losses_mod.LOSS_TYPES:
        ls = 1e-3 if lt == "exo_pair" else 0.0
        loss, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=lt, label_smoothing=ls,
                                chosen_lengths=lc, rejected_lengths=lr)  # fmt: skip
        assert loss.requires_grad, lt
        assert not cr.requires_grad and not rj.requires_grad, lt
        (g,) = torch.autograd.grad(loss.sum(), pc)
        assert torch.isfinite(g).all() and g.abs().sum() > 0, lt


def test_invalid_arguments():
    pc, pr, rc, rr, _, _ = _inputs(0)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="kto_pair")
    with pytest.raises(ValueError, match="robust"):
        dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="exo_pair"):
        dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="exo_pair", label_smoothing=0.0)
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo")
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        dpo_loss(pc, pr, None, None, beta=0.1, loss_type="sigmoid")
    with pytest.raises(ValueError, match="mixed"):
        dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=["simpo", "sigmoid"])
    with pytest.raises(TypeError, match="unexpected"):
        dpo_loss(pc, pr, rc, rr, beta=0.1, simpo_gama=0.5)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)
