"""The edit modes, one object per mode in one module each; ``MODES`` is the registry.

A new mode is a module in this package defining ``MODE``, an ``EditMode``: validation, the page's text, the
palette's ranking and the CLI's choices all read it from here. The order of ``ORDER`` is the order the page lists
them in; a module not named there comes after, by name.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import PaintError
from .base import EditMode

ORDER = ("add", "set", "erase", "replace", "paste", "fill")


def _discover() -> dict[str, EditMode]:
    found: dict[str, EditMode] = {}
    for info in pkgutil.iter_modules(__path__):
        mode = getattr(importlib.import_module(f"{__name__}.{info.name}"), "MODE", None)
        if isinstance(mode, EditMode):
            found[mode.name] = mode
    return {name: found[name] for name in sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))}


MODES: dict[str, EditMode] = _discover()
NAMES: tuple[str, ...] = tuple(MODES)
RANKS: tuple[str, ...] = tuple(dict.fromkeys(mode.rank for mode in MODES.values()))


def get_mode(name: str, field: str = "mode") -> EditMode:
    """The mode called ``name``; an error naming ``field`` and the modes there are otherwise."""
    if name not in MODES:
        raise PaintError(f"{field} is {name!r}; allowed: {', '.join(NAMES)}")
    return MODES[name]


__all__ = ["MODES", "NAMES", "RANKS", "EditMode", "get_mode"]
