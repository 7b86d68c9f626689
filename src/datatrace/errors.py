"""Exceptions and warnings raised by datatrace.

Every error a user can trigger is a :class:`DatatraceError` whose message says what to change.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DatatraceError(Exception):
    """Base class of all datatrace errors."""


class InputError(DatatraceError, ValueError):
    """Invalid user input: shapes, lengths, option values."""


class UnknownOptionError(InputError):
    """An option or method name that datatrace does not know."""

    def __init__(self, kind: str, value: object, valid: Iterable[str]):
        valid = sorted(str(v) for v in valid)
        close = difflib.get_close_matches(str(value), valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(f"Unknown {kind} {value!r}; valid: {', '.join(valid)}.{hint}")


class NotFittedError(DatatraceError, RuntimeError):
    """A method that needs fitted state was called before ``fit``."""


class ModelModeError(DatatraceError):
    """The model is in a mode (e.g. ``train()`` with dropout) that would make attribution random."""


class NonFiniteError(DatatraceError, FloatingPointError):
    """A loss, gradient or measurement is NaN or infinite."""


class StoreMismatchError(DatatraceError):
    """An on-disk store was written by a different run (model, data, seed or settings)."""


class DatatraceWarning(UserWarning):
    """Warnings about settings that are legal but likely to give poor attributions."""


def check_choice(kind: str, value: str, valid: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``valid``, else raise :class:`UnknownOptionError`."""
    valid = list(valid)
    if value not in valid:
        raise UnknownOptionError(kind, value, valid)
    return value
