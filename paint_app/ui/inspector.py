"""The inspector: clicking the image lists the strongest features there; a feature's heatmap; a layer of it."""

from __future__ import annotations

from typing import Any

from sae.errors import SAEError

from .. import canvas
from ..errors import PaintError
from ..explore import (
    HEAT_COLOR,
    FeatureMaps,
    capture_feature_maps,
    heatmap,
    heatmap_overlay,
    region_of,
    top_factors_at,
    top_features_at,
)
from ..modes import MODES, NAMES
from ..painting import Choice, Concept, Recipe, quantize_mask
from .outputs import CHANGED, Notes, outputs
from .state import Found, TabState
from .views import Views
from .widgets import FOUND_ACTIONS, clicked, found_value

INSPECT_HEADERS = ["block", "feature", "label", "value", "x typical"]
FACTOR_HEADERS = ["block", "factor", "label", "value"]
INSPECTED = ("state", "found", "inspect_table", "factor_table", "inspect_info", "status")
FOUND_LIMIT = 6  # concepts shown at a point


class InspectorHandlers(Views):
    def feature_maps(self, state: TabState) -> FeatureMaps:
        """Feature maps of the displayed image (re-run with read-only hooks; cached until the painting changes)."""
        painting = self.painting_of(state)
        key = painting.fingerprint()
        if state.maps_key != key or state.maps is None:
            _, state.maps = capture_feature_maps(self.engine, painting)
            state.maps_key = key
        return state.maps

    @outputs(*CHANGED, *INSPECTED)
    def click_image(self, state: TabState, x: Any, y: Any, click_mode: str, live: bool = True) -> dict:
        """A click on the image (in image pixels): inspect there, or move the active layer's region there."""
        if click_mode == "move":
            return self.place(state, float(x), float(y), live)
        return self.inspect(state, float(x), float(y))

    @outputs(*INSPECTED)
    def inspect(self, state: TabState, x: float, y: float) -> dict:
        notes = Notes()
        if not self._ready(state, notes):
            return {"status": notes.text()}
        if not self.engine.concepts.blocks:
            notes.warn("No SAEs are loaded, so there is nothing to inspect; start the app with --sae PATH.")
            return {"status": notes.text()}
        try:
            maps = self.feature_maps(state)
            features = top_features_at(self.engine, maps, x, y)
            factors = top_factors_at(self.engine, maps, x, y)
        except PaintError as exc:
            notes.warn(str(exc))
            return {"state": state, "status": notes.text()}
        state.found, state.found_token = self.found_at(state, maps, features), state.found_token + 1
        head = (f"At ({x:.0f}, {y:.0f}): the concepts strongest there (value as a multiple of its typical value)."
                if state.found else f"At ({x:.0f}, {y:.0f}) no concept is active.")
        found = found_value([self.found_item(item) for item in state.found], state.found_token, head)
        table = [[r["block"], r["feature"], r["label"], round(r["value"], 3), round(r["relative"], 2)] for r in features]
        factor_table = [[r["block"], r["factor"], r["label"], round(r["value"], 3)] for r in factors]
        info = (f"At ({x:.0f}, {y:.0f}): {len(table)} strongest features (value, and as a multiple of the feature's "
                "typical value). Click one for its heatmap.")
        if not table:
            info = f"At ({x:.0f}, {y:.0f}) no feature is active."
        return {"state": state, "found": found, "inspect_table": table, "factor_table": factor_table,
                "inspect_info": info, "status": ""}

    def found_at(self, state: TabState, maps: FeatureMaps, features: list[dict]) -> list[Found]:
        """The concepts among ``features``, one per name, labelled features first (strongest first), then unlabelled
        ones: each with the feature to erase, the edit that paints more of it (its tile's, else the feature added
        with the model's defaults) and its region."""
        found: list[Found] = []
        names: set[str] = set()
        for row in sorted(features, key=lambda r: not r["label"]):  # stable: strongest first within each
            name = row["label"] or f"feature {row['feature']}"
            if name in names or len(found) >= FOUND_LIMIT:
                continue
            names.add(name)
            concept = Concept(row["block"], feature=row["feature"])
            try:
                region = quantize_mask(region_of(maps, row["block"], row["feature"]))
            except PaintError:
                continue
            tile = next((t for t in self.engine.concepts.tiles(name, custom=state.custom, profile=self.profile)
                         if t.name == name and t.paintable), None) if row["label"] else None
            more = tile.choice if tile is not None else Choice(
                concept, name, Recipe("add", self.profile.layer_strength, self.profile.layer_step_range), "inspector")
            found.append(Found(name, row["relative"], Choice(concept, name, source="inspector"), more, region, tile))
        return found

    def found_item(self, item: Found) -> dict:
        """How the inspector shows a found concept: its tile's picture (else its colour), name and value."""
        icon = self.cache.cached_icon(item.tile) if item.tile is not None else None
        return {"name": item.name, "value": f"{item.value:.1f}× typical", "icon": icon,
                "detail": f"{item.erase.concept.describe()}; paints more with {item.more.concept.describe()}",
                "color": "#{:02x}{:02x}{:02x}".format(*HEAT_COLOR)}

    @outputs(*CHANGED)
    def found_action(self, state: TabState, data: Any, live: bool = True) -> dict:
        """One click on a concept the inspector found: ``erase`` adds a layer erasing it where it is active,
        ``more`` a layer painting more of it (its tile's edit) there."""
        notes = Notes()
        try:
            action, item = clicked(data, "inspector", FOUND_ACTIONS, state.found_token, state.found, "concepts",
                                   "click the image again")
        except PaintError as exc:
            notes.warn(f"{exc}. The layers are kept.")
            return {"status": notes.text()}
        if action == "erase":
            layer = self.new_layer(state, item.erase.concept, f"erase {item.name}", mask=item.region, mode="erase")
            notes.info(f"New layer '{layer.name}': {item.name} erased where it is active.")
        else:
            layer = self.new_layer(state, item.more.concept, f"more {item.name}", mask=item.region)
            notes.info(f"New layer '{layer.name}': more {item.name} where it is active.")
            self._follow_recipe(state, layer, item.more, notes)
        state.changed()
        return {**self.repaint(state, notes, live), "editor": self.editor(state), **self.panel(state)}

    @outputs("state", "heat", "inspect_info", "status")
    def show_heat(self, state: TabState, row: Any) -> dict:
        """The heatmap of an inspector row's feature over the displayed image; it becomes the selected concept."""
        notes = Notes()
        try:
            block, feature = str(row[0]), int(float(row[1]))
            self.engine.concepts.get(block).sae.check_feature(feature)
            maps = self.feature_maps(state) if state.output is not None else None
            if maps is None:
                raise PaintError("there is no image yet: press Generate first")
            heat = heatmap(maps, block, feature)
        except (TypeError, ValueError, IndexError):
            notes.warn(f"inspector row is {row!r}; allowed: a row of the inspector table")
            return {"status": notes.text()}
        except (PaintError, SAEError) as exc:
            notes.warn(str(exc))
            return {"status": notes.text()}
        label = self.engine.concepts.get(block).label(feature)
        state.selected = Choice(Concept(block, feature=feature), label or f"feature {feature}", source="inspector")
        width, height = self.size(state)
        overlay = heatmap_overlay(state.output, heat, scale=canvas.display_scale(width, height, 256))
        info = f"Heatmap of **{label or 'feature ' + str(feature)}** ({block} feature {feature}), peak {heat.max():.3f}."
        return {"state": state, "heat": overlay, "inspect_info": info, "status": ""}

    @outputs(*CHANGED)
    def layer_from_selected(self, state: TabState, mode: Any, live: bool = True) -> dict:
        """Turn the inspected feature into a layer painted where it is active (e.g. to erase it there)."""
        notes = Notes()
        chosen = state.selected
        if chosen is None or chosen.source != "inspector" or state.maps is None:
            notes.warn("Click a point of the image and then a feature in the inspector first.")
            return {"status": notes.text()}
        if mode not in MODES:
            notes.warn(f"mode is {mode!r}; allowed: {', '.join(NAMES)}")
            return {"status": notes.text()}
        if not self._paintable(chosen.concept, mode):
            notes.warn(MODES[mode].needs_text(chosen.concept.block))
            return {"status": notes.text()}
        try:
            mask = quantize_mask(region_of(state.maps, chosen.concept.block, chosen.concept.feature))
        except PaintError as exc:
            notes.warn(str(exc))
            return {"status": notes.text()}
        layer = self.new_layer(state, chosen.concept, chosen.label, mask=mask, mode=mode)
        notes.info(f"New layer '{layer.name}' ({mode}) painted where the feature is active.")
        return {**self.repaint(state, notes, live), "editor": self.editor(state), **self.panel(state)}


__all__ = ["FACTOR_HEADERS", "INSPECT_HEADERS", "InspectorHandlers"]
