"""``set``: h_out += m * (s * w_f * sigma_f - z_f) d_f, feature by feature; the SAE's error stays in h_out."""

from __future__ import annotations

from .base import EditMode


class Set(EditMode):
    name = "set"
    summary = "sets the concept's features to the strength times their typical value, keeping the rest of the block"

    def target(self, edit, weights, sigmas):
        return edit.strength * weights * sigmas


MODE = Set()
