"""``add``: h_out += m * s * sum_f w_f sigma_f d_f, the concept's direction scaled by its typical value."""

from __future__ import annotations

from .base import EditMode


class Add(EditMode):
    name = "add"
    summary = "adds the concept's direction to its block's activations, scaled by the strength"

    def constant(self, edit, weights, sigmas, directions):
        return edit.strength * (weights * sigmas) @ directions


MODE = Add()
