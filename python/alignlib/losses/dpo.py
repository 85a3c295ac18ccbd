"""Preference losses on sequence log-probabilities, matching TRL 1.16 formula for formula.

:func:`dpo_loss` takes per-sequence log-probs (``[B]`` each) and returns ``(losses [B], chosen_rewards [B],
rejected_rewards [B])``; the training loss is ``losses.mean()``. The rewards are detached, for logging.

Sources (TRL 1.16.0):

* DPO family — ``trl/trainer/dpo_trainer.py``, ``DPOTrainer._compute_loss`` (the loss is computed inline there):
  ``sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down,
  discopop, sigmoid_norm``, the ``f_divergence_type`` reparameterisations, and ``loss_weights`` for mixtures.
  Rewards are ``beta * (policy_logps - ref_logps)``.
* ``simpo`` — ``trl/experimental/cpo/cpo_trainer.py``, ``CPOTrainer.cpo_loss`` with ``loss_type="simpo"``
  (``simpo_gamma``, ``label_smoothing``, optional AlphaPO ``alpha``). Rewards are ``beta * policy_logps``.
* ``orpo`` — ``trl/experimental/orpo/orpo_trainer.py``, ``ORPOTrainer.odds_ratio_loss``. Rewards are
  ``beta * policy_logps``.

What the inputs mean per loss type:

* DPO family: *summed* completion log-probs of policy and reference (what ``DPOTrainer`` uses). ``ipo`` and
  ``sigmoid_norm`` divide the log-ratios by the completion lengths, so they need ``chosen_lengths`` and
  ``rejected_lengths`` (token counts; TRL clamps them to >= 1). Pass ones if your log-probs are already averaged.
* ``simpo`` and ``orpo`` are reference-free: ``ref_chosen_logps`` / ``ref_rejected_logps`` are ignored (pass
  ``None``). They expect *length-normalised* (average per-token) log-probs, as TRL computes them
  (``average_log_prob=True``); ``orpo`` additionally needs them < 0 (it uses ``log(1 - exp(logp))``).
* ``orpo`` sign convention: TRL's ``odds_ratio_loss`` returns ``beta * log sigmoid(log_odds)`` and the trainer
  *subtracts* its mean from the NLL. Here ``losses`` is the term to *add*: ``-beta * log sigmoid(log_odds)``
  (so ``loss = nll + losses.mean()`` reproduces ``ORPOTrainer``). The SFT/NLL term itself (ORPO's, CPO's
  ``cpo_alpha``) is not part of this function.
* ``bco_pair``: TRL 1.16 uses ``-log sigmoid(beta * r_c) - log sigmoid(-beta * r_r)`` with no reward shift.
  Older TRL subtracted a running mean of the rewards (``RunningMoments``); pass it as ``bco_delta`` to get that
  variant (maintaining the running mean is the caller's job). The default ``0.0`` is TRL 1.16.

Extra keyword arguments (``**extra``):

``chosen_lengths``, ``rejected_lengths`` (ipo, sigmoid_norm); ``discopop_tau`` (0.05); ``simpo_gamma`` (0.5);
``alpha`` (AlphaPO reward shape for simpo, 0.0); ``bco_delta`` (0.0); ``f_divergence_type`` ("reverse_kl"),
``f_alpha_divergence_coef`` (0.5); ``loss_weights`` (for a list of DPO-family loss types; TRL's MPO-style mix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["DPO_LOSS_TYPES", "LOSS_TYPES", "REFERENCE_FREE_LOSS_TYPES", "dpo_loss"]

Tensor = torch.Tensor


@dataclass
class _Pair:
    """Everything a DPO-family loss is a function of."""

    chosen_logps: Tensor
    rejected_logps: Tensor
    ref_chosen_logps: Tensor
    ref_rejected_logps: Tensor
    chosen_logratios: Tensor  # policy - ref
    rejected_logratios: Tensor
    chosen_scores: Tensor  # f'(ratio) of the f-divergence; the log-ratios for reverse KL
    rejected_scores: Tensor
    beta: float
    label_smoothing: float
    opts: dict

    @property
    def delta(self) -> Tensor:
        return self.chosen_scores - self.rejected_scores

    def lengths(self) -> tuple[Tensor, Tensor]:
        cl, rl = self.opts.get("chosen_lengths"), self.opts.get("rejected_lengths")
        if cl is None or rl is None:
            raise ValueError(
                "this loss type normalises by completion length (as TRL does): pass chosen_lengths= and "
                "rejected_lengths= (token counts), or tensors of ones if the log-probs are already averaged"
            )
        ref = self.chosen_scores
        return (
            torch.as_tensor(cl, device=ref.device).to(ref.dtype).clamp(min=1.0),
            torch.as_tensor(rl, device=ref.device).to(ref.dtype).clamp(min=1.0),
        )


def _smoothed_sigmoid(x: Tensor, eps: float) -> Tensor:
    return -F.logsigmoid(x) * (1 - eps) - F.logsigmoid(-x) * eps


# --- DPO family (DPOTrainer._compute_loss) -------------------------------------------------------------------


def _sigmoid(p: _Pair) -> Tensor:
    # TRL 1.16 "sigmoid" has no label smoothing (that lives in "robust" / "exo_pair" / the aot losses).
    return -F.logsigmoid(p.beta * p.delta)


def _hinge(p: _Pair) -> Tensor:
    return torch.relu(1 - p.beta * p.delta)


def _ipo(p: _Pair) -> Tensor:
    cl, rl = p.lengths()
    return (p.chosen_scores / cl - p.rejected_scores / rl - 1 / (2 * p.beta)) ** 2


def _exo_pair(p: _Pair) -> Tensor:
    eps = p.label_smoothing
    x = p.beta * p.delta
    return torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps)) + torch.sigmoid(-x) * (
        F.logsigmoid(-x) - math.log(eps)
    )


def _nca_pair(p: _Pair) -> Tensor:
    rc, rr = p.beta * p.chosen_logratios, p.beta * p.rejected_logratios
    return -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)


def _robust(p: _Pair) -> Tensor:
    eps = p.label_smoothing
    x = p.beta * p.delta
    return (-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps)


def _bco_pair(p: _Pair) -> Tensor:
    delta = p.opts.get("bco_delta", 0.0)
    return -F.logsigmoid(p.beta * p.chosen_logratios - delta) - F.logsigmoid(-(p.beta * p.rejected_logratios - delta))


def _sppo_hard(p: _Pair) -> Tensor:
    return (p.chosen_logratios - 0.5 / p.beta) ** 2 + (p.rejected_logratios + 0.5 / p.beta) ** 2


def _aot(p: _Pair) -> Tensor:
    # Sorts across the batch: the i-th loss belongs to the i-th smallest margin, not to pair i.
    logratios = torch.sort(p.chosen_logps - p.rejected_logps, dim=0).values
    ref_logratios = torch.sort(p.ref_chosen_logps - p.ref_rejected_logps, dim=0).values
    return _smoothed_sigmoid(p.beta * (logratios - ref_logratios), p.label_smoothing)


def _aot_unpaired(p: _Pair) -> Tensor:
    chosen = torch.sort(p.chosen_logratios, dim=0).values
    rejected = torch.sort(p.rejected_logratios, dim=0).values
    return _smoothed_sigmoid(p.beta * (chosen - rejected), p.label_smoothing)


def _apo_zero(p: _Pair) -> Tensor:
    return (1 - torch.sigmoid(p.beta * p.chosen_logratios)) + torch.sigmoid(p.beta * p.rejected_logratios)


def _apo_down(p: _Pair) -> Tensor:
    return torch.sigmoid(p.beta * p.chosen_logratios) + (
        1 - torch.sigmoid(p.beta * (p.chosen_logratios - p.rejected_logratios))
    )


def _discopop(p: _Pair) -> Tensor:
    logits = p.delta * p.beta
    mix = torch.sigmoid(logits / p.opts.get("discopop_tau", 0.05))
    return -F.logsigmoid(logits) * (1 - mix) + torch.exp(-logits) * mix


def _sigmoid_norm(p: _Pair) -> Tensor:
    cl, rl = p.lengths()
    return -F.logsigmoid(p.beta * (p.chosen_scores / cl - p.rejected_scores / rl))


_DPO: dict[str, Callable[[_Pair], Tensor]] = {
    "sigmoid": _sigmoid,
    "hinge": _hinge,
    "ipo": _ipo,
    "exo_pair": _exo_pair,
    "nca_pair": _nca_pair,
    "robust": _robust,
    "bco_pair": _bco_pair,
    "sppo_hard": _sppo_hard,
    "aot": _aot,
    "aot_unpaired": _aot_unpaired,
    "apo_zero": _apo_zero,
    "apo_down": _apo_down,
    "discopop": _discopop,
    "sigmoid_norm": _sigmoid_norm,
}

# Loss types whose f-divergence generalisation is valid (TRL's f_divergence_loss_types, minus "sft").
_F_DIVERGENCE_OK = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop"}


def _scores(logratios: Tensor, kind: str, alpha_coef: float) -> Tensor:
    """f'(policy/ref ratio) for the f-DPO reparameterisation (``f_divergence_type`` in DPOConfig)."""
    if kind == "reverse_kl":
        return logratios
    if kind == "forward_kl":
        return 1 - torch.exp(-logratios)
    if kind == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    if kind == "alpha_divergence":
        if abs(alpha_coef - 1.0) < 1e-6:
            return logratios
        t = (alpha_coef - 1.0) * logratios
        clamp_max = {torch.float16: 11.0}.get(t.dtype, 80.0)
        return (torch.exp(torch.clamp(t.float(), max=clamp_max)) - 1.0).to(t.dtype) / (alpha_coef - 1.0)
    raise ValueError(f"unknown f_divergence_type {kind!r}")


# --- reference-free ----------------------------------------------------------------------------------------------


def _simpo(chosen: Tensor, rejected: Tensor, beta: float, label_smoothing: float, opts: dict):
    """CPOTrainer.cpo_loss with loss_type="simpo" (inputs: average per-token log-probs)."""
    alpha = float(opts.get("alpha", 0.0))
    if alpha != 0.0:  # AlphaPO: r = (1 - p^-alpha) / alpha
        chosen_r = (1 - torch.exp(chosen).pow(-alpha)) / alpha
        rejected_r = (1 - torch.exp(rejected).pow(-alpha)) / alpha
    else:
        chosen_r, rejected_r = chosen, rejected
    logits = chosen_r - rejected_r - opts.get("simpo_gamma", 0.5) / beta
    losses = _smoothed_sigmoid(beta * logits, label_smoothing)
    return losses, beta * chosen_r.detach(), beta * rejected_r.detach()


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, branching at -ln 2 (same as TRL's ORPO helper)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _orpo(chosen: Tensor, rejected: Tensor, beta: float, label_smoothing: float, opts: dict):
    """ORPOTrainer.odds_ratio_loss, negated (see module docstring). Inputs: average per-token log-probs < 0."""
    chosen, rejected = chosen.float(), rejected.float()
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    return -beta * F.logsigmoid(log_odds), beta * chosen.detach(), beta * rejected.detach()


_REF_FREE = {"simpo": _simpo, "orpo": _orpo}

DPO_LOSS_TYPES = tuple(_DPO)
REFERENCE_FREE_LOSS_TYPES = tuple(_REF_FREE)
LOSS_TYPES = DPO_LOSS_TYPES + REFERENCE_FREE_LOSS_TYPES

_KNOWN_EXTRA = {
    "chosen_lengths",
    "rejected_lengths",
    "discopop_tau",
    "simpo_gamma",
    "alpha",
    "bco_delta",
    "f_divergence_type",
    "f_alpha_divergence_coef",
    "loss_weights",
}


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    loss_type: str | Sequence[str] = "sigmoid",
    label_smoothing: float = 0.0,
    **extra,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair preference loss and (detached) rewards, as TRL 1.16 computes them.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``[B]`` policy log-probs of the chosen / rejected completions
            (summed over completion tokens for the DPO family; averaged for ``simpo`` / ``orpo``).
        ref_chosen_logps, ref_rejected_logps: ``[B]`` reference-model log-probs; ignored (may be ``None``) for
            ``simpo`` and ``orpo``.
        beta: temperature (DPO's beta, IPO's tau, SimPO's beta, ORPO's lambda).
        loss_type: one of :data:`LOSS_TYPES`, or a list of DPO-family types combined with ``loss_weights``
            (per-pair ``sum_k w_k * loss_k``, whose mean is TRL's ``sum_k w_k * mean(loss_k)``).
        label_smoothing: used by ``robust`` (flip probability, in [0, 0.5)), ``exo_pair`` (epsilon, > 0),
            ``aot``/``aot_unpaired`` and ``simpo``; ignored by the others (as in TRL 1.16, including ``sigmoid``).
        **extra: see the module docstring.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``[B]``.
    """
    unknown = set(extra) - _KNOWN_EXTRA
    if unknown:
        raise TypeError(f"dpo_loss got unexpected keyword arguments {sorted(unknown)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if not types:
        raise ValueError("loss_type must name at least one loss")
    for t in types:
        if t not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {t!r}; expected one of {list(LOSS_TYPES)}")
    weights = extra.get("loss_weights")
    weights = [1.0] * len(types) if weights is None else list(weights)
    if len(weights) != len(types):
        raise ValueError(f"loss_weights has {len(weights)} entries for {len(types)} loss types")
    if policy_chosen_logps.shape != policy_rejected_logps.shape:
        raise ValueError("policy_chosen_logps and policy_rejected_logps must have the same shape")

    ref_free = [t for t in types if t in _REF_FREE]
    if ref_free:
        if len(types) != 1:
            raise ValueError(f"{ref_free[0]!r} cannot be mixed with other loss types")
        losses, cr, rr = _REF_FREE[types[0]](
            policy_chosen_logps, policy_rejected_logps, float(beta), float(label_smoothing), extra
        )
        return losses * weights[0], cr, rr

    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"loss_type {types} needs ref_chosen_logps and ref_rejected_logps")
    if "robust" in types and not (0.0 <= label_smoothing < 0.5):
        raise ValueError(f"'robust' needs label_smoothing in [0, 0.5), got {label_smoothing}")
    if "exo_pair" in types and not (0.0 < label_smoothing < 1.0):
        raise ValueError(f"'exo_pair' needs label_smoothing in (0, 1) (the EXO paper uses 1e-3), got {label_smoothing}")
    f_type = extra.get("f_divergence_type", "reverse_kl")
    if f_type != "reverse_kl" and not set(types) <= _F_DIVERGENCE_OK:
        raise ValueError(f"f_divergence_type={f_type!r} is only valid for {sorted(_F_DIVERGENCE_OK)}")
    f_coef = float(extra.get("f_alpha_divergence_coef", 0.5))

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    pair = _Pair(
        chosen_logps=policy_chosen_logps,
        rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
        chosen_logratios=chosen_logratios,
        rejected_logratios=rejected_logratios,
        chosen_scores=_scores(chosen_logratios, f_type, f_coef),
        rejected_scores=_scores(rejected_logratios, f_type, f_coef),
        beta=float(beta),
        label_smoothing=float(label_smoothing),
        opts=extra,
    )
    losses = sum(w * _DPO[t](pair) for t, w in zip(types, weights))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
