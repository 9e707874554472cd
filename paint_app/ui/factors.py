"""Factors: a factor's feature weights, edited and saved as the user's own concept (the palette's 'mine'); and a
part of the image's features, re-weighted by their gains (what the part is made of)."""

from __future__ import annotations

from typing import Any

from sae.errors import SAEError

from ..errors import PaintError, to_finite
from ..painting import Choice, Concept
from ..session import MAX_STRENGTH
from . import state as tab
from .outputs import CHANGED, Notes, outputs
from .state import TabState
from .views import Views, is_part

WEIGHT_HEADERS = ["feature", "label", "weight"]


def parse_weights(rows: Any, n_features: int, keep_zeros: bool = False) -> dict[int, float]:
    """Edited factor weights (rows of feature, label, weight) -> {feature: weight}, without zeros unless
    ``keep_zeros`` (a part's gain of 0 leaves its feature out)."""
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
        if weight > 0 or keep_zeros:
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


class PartGainHandlers(Views):
    """A part's features in the weights table, each with its gain (1 as drawn), applied back to its layer."""

    @outputs("factor_weights", "concept_name", "status")
    def edit_part(self, state: TabState) -> dict:
        notes = Notes()
        layer = state.active_layer()
        if layer is None or not is_part(layer):
            notes.warn("the selected layer is not a part of the image; allowed: a part's layer (pick one under "
                       "Concepts in this image)")
            return {"status": notes.text()}
        entry = self.engine.concepts.get(layer.block)
        rows = [[f, entry.label(f), round(w, 4)] for f, w in layer.concept.weights.items()]
        notes.info(f"Part '{layer.name}': set its features' gains (1 as drawn, 2 twice as much, 0 without it), then "
                   "Apply to the part.")
        return {"factor_weights": rows, "concept_name": layer.name, "status": notes.text()}

    @outputs(*CHANGED)
    def apply_gains(self, state: TabState, rows: Any, live: bool = True) -> dict:
        notes = Notes()
        layer = state.active_layer()
        try:
            if layer is None or not is_part(layer):
                raise PaintError("the selected layer is not a part of the image; allowed: a part's layer")
            gains = parse_weights(rows, self.engine.concepts.get(layer.block).sae.n_features, keep_zeros=True)
            own = layer.concept.weights
            foreign = [f for f in gains if f not in own]
            if foreign:
                raise PaintError(f"weights: feature {foreign[0]} is not one of part '{layer.name}''s features; "
                                 f"allowed: {', '.join(map(str, own))}")
        except PaintError as exc:
            notes.warn(f"{exc}. The layers are kept.")
            return {"status": notes.text()}
        concept = Concept.of_mix(layer.block, {**own, **gains})
        notes.info(f"Part '{layer.name}': gains " + ", ".join(f"{f} {g:g}" for f, g in concept.weights.items()) + ".")
        return self._change_layer(state, notes, live, lambda target: tab.set_field(target, "concept", concept),
                                  layer=layer)


__all__ = ["FactorHandlers", "PartGainHandlers", "WEIGHT_HEADERS", "parse_weights"]
