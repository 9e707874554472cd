"""Errors raised by the app for bad user input, and the number checks that raise them."""

from __future__ import annotations

import math
from typing import Any


class PaintError(ValueError):
    """A user-facing error: the message names the field, the value and what is allowed."""


class SessionError(PaintError):
    """A session file or one of its fields is invalid."""


class ModelError(PaintError):
    """A model, block or SAE cannot be used as asked."""


def to_finite(value: Any) -> float | None:
    """``value`` as a finite float (numbers and numeric strings), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_int(value: Any, name: str) -> int:
    number = to_finite(value)
    if number is None or number != int(number):
        raise PaintError(f"{name} is {value!r}; allowed: a whole number")
    return int(number)


def as_float(value: Any, name: str) -> float:
    number = to_finite(value)
    if number is None:
        raise PaintError(f"{name} is {value!r}; allowed: a finite number")
    return number
