"""Preference-optimisation losses (plain torch), formula-for-formula with TRL 1.16."""

from .dpo import DPO_LOSS_TYPES, LOSS_TYPES, REFERENCE_FREE_LOSS_TYPES, dpo_loss

__all__ = ["DPO_LOSS_TYPES", "LOSS_TYPES", "REFERENCE_FREE_LOSS_TYPES", "dpo_loss"]
