"""``erase``: ``set`` with strength 0, so the concept's features go to zero where painted."""

from __future__ import annotations

from .base import EditMode


class Erase(EditMode):
    name = "erase"
    summary = "sets the concept's features to zero where painted (the strength is not used)"
    uses_strength = False

    def target(self, edit, weights, sigmas):
        return 0.0 * weights * sigmas


MODE = Erase()
