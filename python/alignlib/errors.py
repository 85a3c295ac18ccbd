"""Exceptions raised by alignlib.

Errors about a row of input data carry ``row`` (0-based index in the input table), ``field``
(e.g. ``messages[2].role``) and ``reason`` (a stable key such as ``unknown_role``, the same key
under which skipped rows are counted in a run report).
"""

from __future__ import annotations


class AlignlibError(Exception):
    """Base class of every alignlib error."""


class RowError(AlignlibError, ValueError):
    """A row of the input cannot be used as it is."""

    def __init__(self, message: str, row: int | None = None, field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.row = row
        self.field = field
        self.reason = reason

    def __reduce__(self):  # keeps the attributes across pickling (DataLoader workers, multiprocessing)
        return (type(self), (str(self), self.row, self.field, self.reason))


class DataError(RowError):
    """Missing or null values, unknown roles, empty conversations, wrong column types."""


class TemplateError(RowError):
    """The chat template raised, ran out of fuel, or cannot delimit assistant turns."""


class TokenizerError(RowError):
    """The tokenizer failed on a row's text."""


class ConfigError(AlignlibError, ValueError):
    """An invalid argument, option or recipe value."""
