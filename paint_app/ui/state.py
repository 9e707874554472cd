"""One browser tab's painting and the pure operations on its layers: no Gradio, no engine, no files.

A ``TabState`` is what ``gr.State`` holds for a tab: its settings, images and named concept layers (the active one
is the one the canvas edits). The functions here change a state and return what changed; the handlers
(``generate``, ``layers``, ``palette`` …) validate the user's values, call them and say what happened.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .. import canvas
from ..canvas import CanvasLayer
from ..explore import FeatureMaps
from ..painting import Choice, Concept, Painting, quantize_mask
from ..session import Session


@dataclass(eq=False)
class Found:
    """A concept the inspector found at a point: erasing it erases ``erase`` (the feature there), painting more
    of it paints ``more`` (its tile's edit), both over ``region`` (where it is active)."""

    name: str
    value: float  # its value at the point, as a multiple of its typical value
    erase: Choice
    more: Choice
    region: np.ndarray
    tile: Any = None  # the concept's tile (``concepts.Tile``), if it has one


@dataclass
class TabState:
    """One browser tab's painting: never shared, never global."""

    tab_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    settings: Session | None = None  # the settings of the last Generate (no layers)
    base: Image.Image | None = None  # the plain image of those settings: the canvas background
    output: Image.Image | None = None  # the last good displayed image
    layers: list[CanvasLayer] = field(default_factory=list)
    active: int = -1
    custom: list[Choice] = field(default_factory=list)  # the user's own concepts (edited factors)
    selected: Choice | None = None  # the concept last picked (palette, inspector or the user's own)
    maps_key: str | None = None
    maps: FeatureMaps | None = None
    keep_outside: bool = True  # outside every painted area, keep the plain image's latents
    tiles: list[Any] = field(default_factory=list)  # the concept tiles shown (``concepts.Tile``), in their order
    tiles_query: str = ""  # the words they were found by
    tiles_token: int = 0  # names the tiles shown: a click on tiles replaced since is refused
    found: list[Found] = field(default_factory=list)  # the inspector's concepts at the last point clicked
    found_token: int = 0
    parts: list[Any] = field(default_factory=list)  # the parts of the image shown (``decompose.Part``), largest first
    parts_token: int = 0
    parts_key: tuple | None = None  # what they are the parts of: (the plain image's fingerprint, block, how many)
    parts_maps: tuple[str, FeatureMaps] | None = None  # the plain image's feature maps, by its fingerprint
    part_pictures: list[Image.Image] = field(default_factory=list)  # each part shown, as a picture
    part_layers: dict[tuple, str] = field(default_factory=dict)  # (parts_key, index) -> the id of its layer
    layer_pictures: dict[str, Image.Image] = field(default_factory=dict)  # a layer's picture by its id (parts)

    def active_layer(self) -> CanvasLayer | None:
        return self.layers[self.active] if 0 <= self.active < len(self.layers) else None

    def has_paint(self) -> bool:
        """Whether any enabled layer has something painted (else the image is the plain one)."""
        return any(layer.enabled and not layer.is_empty() for layer in self.layers)

    def layer_by_uid(self, uid: str | None) -> CanvasLayer | None:
        """The layer a canvas edit names (None if it was deleted meanwhile, or names none)."""
        return next((layer for layer in self.layers if layer.uid == uid), None)

    def changed(self) -> None:
        """The painting changed: the inspector's feature maps are stale."""
        self.maps_key = None


def painting(state: TabState, settings: Session) -> Painting:
    """The tab's painting as the engine takes it: ``settings`` (of the tab) with its layers as they are (masks
    shared, not copied: the engine only reads them)."""
    return Painting(**settings.settings(), layers=list(state.layers), keep_outside=state.keep_outside)


def new_tab_state() -> TabState:
    return TabState()


def unique_name(name: str, taken: list[str]) -> str:
    """``name`` (trimmed to 80 characters), numbered "name (2)", "name (3)" … if a layer already has it."""
    name = name.strip()[:80] or "layer"
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name} ({n})", n + 1
    return candidate


def add_layer(state: TabState, concept: Concept, *, label: str = "", width: int, height: int,
              strength: float, step_range: tuple[int, int] | None, mask: np.ndarray | None = None,
              mode: str = "add") -> CanvasLayer:
    """Append a layer painting ``concept`` (named after ``label`` or the concept) and make it the active one."""
    name = unique_name(label or concept.describe(), [layer.name for layer in state.layers])
    layer = CanvasLayer(concept=concept, name=name, mode=mode, strength=strength,
                        step_range=step_range, mask=mask if mask is not None else canvas.empty_mask(width, height),
                        color=canvas.next_color(state.layers))
    state.layers.append(layer)
    state.active = len(state.layers) - 1
    return layer


def select_layer(state: TabState, index: object) -> bool:
    """Make layer ``index`` the active one; False (nothing changed) if there is no such layer."""
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(state.layers):
        return False
    state.active = index
    return True


def delete_active(state: TabState) -> CanvasLayer | None:
    """Remove the active layer (the next one, else the one before, becomes active); returns it, or None."""
    return delete_layer(state, state.active)


def delete_layer(state: TabState, index: int) -> CanvasLayer | None:
    """Remove layer ``index``; the active layer stays active (if it was this one: the next, else the one before).
    Returns the layer, or None if there is no such layer."""
    if not 0 <= index < len(state.layers):
        return None
    layer = state.layers.pop(index)
    if index < state.active or state.active >= len(state.layers):
        state.active -= 1
    return layer


def clear_layer(layer: CanvasLayer) -> None:
    """Nothing painted, nothing moved."""
    layer.mask = np.zeros_like(layer.mask)
    layer.offset = (0, 0)


def rename_layer(state: TabState, layer: CanvasLayer, name: str) -> None:
    """Name ``layer`` ``name``, numbered if another layer has that name."""
    layer.name = unique_name(name, [other.name for other in state.layers if other is not layer])


def resize_layers(state: TabState, width: int, height: int) -> None:
    """Masks for a new image size (area-averaged down, bilinear up), offsets kept within it."""
    for layer in state.layers:
        layer.mask = quantize_mask(canvas.resize_mask(layer.mask, width, height))
        layer.offset = canvas.clamp_offset(layer.offset, width, height)


def drop_step_ranges_past(state: TabState, steps: int) -> list[CanvasLayer]:
    """Layers whose step range ends after ``steps`` act on every step instead; returns those layers."""
    dropped = [layer for layer in state.layers if layer.step_range and layer.step_range[1] > steps]
    for layer in dropped:
        layer.step_range = None
    return dropped


def fitting_step_range(step_range: tuple[int, int] | None, steps: int) -> tuple[int, int] | None:
    """``step_range`` if it fits in ``steps`` steps, else None (every step)."""
    return step_range if step_range and step_range[1] <= steps else None


def nudge_layer(layer: CanvasLayer, dx: int, dy: int, width: int, height: int) -> bool:
    """Move the layer's region by (dx, dy) pixels (kept within the image); whether the offset changed."""
    new = canvas.nudge(layer.offset, dx, dy, width, height)
    changed, layer.offset = new != layer.offset, new
    return changed


def place_layer(layer: CanvasLayer, x: float, y: float, width: int, height: int) -> bool:
    """Move the layer's region so its centre of mass is at (x, y) (raises ``PaintError`` if nothing is painted);
    whether the offset changed."""
    new = canvas.clamp_offset(canvas.place_at(layer.mask, x, y), width, height)
    changed, layer.offset = new != layer.offset, new
    return changed


def reset_offset(layer: CanvasLayer) -> bool:
    changed, layer.offset = layer.offset != (0, 0), (0, 0)
    return changed


def set_field(layer: CanvasLayer, name: str, value: object) -> bool:
    """Set one of the layer's settings (mode, strength, step_range, enabled, amount); whether it changed."""
    changed = getattr(layer, name) != value
    setattr(layer, name, value)
    return changed


__all__ = ["Found", "TabState", "add_layer", "clear_layer", "delete_active", "delete_layer", "drop_step_ranges_past", "fitting_step_range",
           "new_tab_state", "nudge_layer", "painting", "place_layer", "rename_layer", "reset_offset", "resize_layers",
           "select_layer", "set_field", "unique_name"]
