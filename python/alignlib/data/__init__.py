"""Data preparation: conversations in, training tables and reports out."""

from alignlib.data.prepare import pack, prepare_preferences, prepare_sft
from alignlib.data.report import Prepared, Report

__all__ = ["Prepared", "Report", "pack", "prepare_preferences", "prepare_sft"]
