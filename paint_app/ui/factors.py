"""Factors: a factor's feature weights, edited and saved as the user's own concept (the palette's 'mine')."""

from __future__ import annotations

from typing import Any

from sae.errors import SAEError

from ..errors import PaintError, to_finite
from ..painting import Choice, Concept
from ..session import MAX_STRENGTH
from .outputs import Notes, outputs
from .state import TabState
from .views import Views

WEIGHT_HEADERS = ["feature", "label", "weight"]


def parse_weights(rows: Any, n_features: int) -> dict[int, float]:
    """Edited factor weights (rows of feature, label, weight) -> {feature: weight} without zeros."""
    if hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas DataFrame
        rows = rows.values.tolist()
    if not isinstance(rows, list) or not rows:
        raise PaintError("the weights table is empty; pick a factor first")
    features: dict[int, float] = {}
    for i, row in enumerate(rows):
        feature, weight = to_finite(row[0]) if len(row) > 0 else None, to_finite(row[2]) if len(row) > 2 else None
        if feature is None or feature != int(feature) or not 0 <= feature < n_features:
            raise PaintError(f"weights row {i + 1}: feature is {row[0]!r}; allowed: an index from 0 to {n_features - 1}")
        if weight is None or not 0 <= weight <= MAX_STRENGTH:
            raise PaintError(f"weights row {i + 1}: weight is {row[2] if len(row) > 2 else None!r}; allowed: a "
                             f"number from 0 to {MAX_STRENGTH:g}")
        if weight > 0:
            features[int(feature)] = float(weight)
    if not features:
        raise PaintError("every weight is 0; allowed: at least one weight above 0")
    return features


class FactorHandlers(Views):
    def factor_choices(self) -> list[tuple[str, str]]:
        return [(f"{r['block']} · {r['label']}", f"{r['block']}|{r['factor']}")
                for r in self.engine.concepts.factor_rows()]

    @outputs("factor_weights", "concept_name", "status")
    def pick_factor(self, state: TabState, key: Any) -> dict:
        notes = Notes()
        try:
            block, index = str(key).split("|")
            entry = self.engine.concepts.get(block)
            weights = entry.factors.features_of(int(index))
        except (ValueError, AttributeError, PaintError, SAEError):
            notes.warn(f"factor is {key!r}; allowed: one of the factors in the list")
            return {"status": notes.text()}
        rows = [[f, entry.label(f), round(w, 4)] for f, w in weights.items()]
        label = entry.factors.labels[int(index)]
        return {"factor_weights": rows, "concept_name": f"{label} (edited)", "status": ""}

    @outputs("state", "tiles", "tile_search", "status")
    def save_factor(self, state: TabState, key: Any, rows: Any, name: Any) -> dict:
        """Save edited factor weights as a new concept of the palette (kind 'mine')."""
        notes = Notes()
        try:
            block = str(key).split("|")[0]
            entry = self.engine.concepts.get(block, "factor block")
            features = parse_weights(rows, entry.sae.n_features)
            title = str(name or "").strip()
            if not title or len(title) > 200:
                raise PaintError(f"concept name is {name!r}; allowed: 1 to 200 characters")
        except (PaintError, SAEError) as exc:
            notes.warn(str(exc))
            return {"status": notes.text()}
        state.selected = Choice(Concept.of_mix(block, features), title, source="mine")
        state.custom.append(state.selected)
        self.find_tiles_for(state, title)  # the tiles for its name: the new one among them
        notes.info(f"Saved '{title}' ({len(features)} features) as a concept tile of your own (and in the table "
                   "under 'mine'); New layer paints with it.")
        return {"state": state, "tiles": self.tile_grid(state), "tile_search": title, "status": notes.text()}


__all__ = ["FactorHandlers", "WEIGHT_HEADERS", "parse_weights"]
