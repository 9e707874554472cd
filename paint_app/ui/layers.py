"""Editing layers: canvas strokes and drags, the layer list, a layer's settings, moving its region, mask uploads.

Each handler validates the user's value (an error names the field, the value and what is allowed; the layers
and the image are kept), changes the tab through ``state``'s operations and repaints when the image may change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from PIL import Image, UnidentifiedImageError

from .. import canvas, web_canvas
from ..canvas import CanvasLayer
from ..errors import PaintError, to_finite
from ..modes import MODES, NAMES
from ..session import MAX_STRENGTH
from . import state as tab
from .outputs import CHANGED, EDITED, REPAINTED, Notes, outputs
from .parts import PART_ACTIONS, scale_of
from .state import TabState
from .views import Views, is_part
from .widgets import STACK_ACTIONS, amount_of, parse_action


def file_path(value: Any) -> str:
    """The path of an uploaded file, whatever gradio hands over (a path, a FileData-like object or a dict)."""
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    return str(getattr(value, "name", value) if not isinstance(value, (str, os.PathLike)) else value)


class LayerHandlers(Views):
    @outputs(*REPAINTED, "editor", "stack")
    def canvas_edit(self, state: TabState, data: Any, live: bool = True) -> dict:
        """A stroke, an undo or a drag landed on the canvas: store the layer's new mask or offset and repaint.

        The edit names its layer, so a stroke still in flight when another layer is picked lands where it was
        painted. The canvas is not sent back: it already shows the edit."""
        notes = Notes()
        if state.base is None:
            return {}
        width, height = self.size(state)
        try:
            edit = web_canvas.parse_edit(data, width, height)
        except PaintError as exc:
            notes.warn(f"{exc}. The layers are kept.")
            return {"status": notes.text()}
        if (edit.width, edit.height) != (width, height):
            notes.warn(f"The canvas showed a {edit.width}x{edit.height} image but the image is now {width}x{height}; "
                       "that edit was dropped. Paint again.")
            return {"status": notes.text(), "editor": self.editor(state)}
        layer = state.layer_by_uid(edit.layer)
        if layer is None:
            notes.warn("There is no layer to paint on: click a concept tile first (it becomes a "
                       "layer), then paint." if edit.layer is None else
                       "That layer was deleted before the edit arrived; the edit was dropped.")
            return {"status": notes.text(), "editor": self.editor(state)}
        was_empty = layer.is_empty()
        if edit.kind == "move":
            if tuple(edit.offset) == tuple(layer.offset):
                return {}
            layer.offset = edit.offset
        else:
            if not canvas.masks_differ(edit.mask, layer.mask):
                return {}
            layer.mask = edit.mask
            if layer.is_empty():
                notes.warn(f"Layer '{layer.name}' has nothing painted now, so it acts nowhere.")
        state.changed()
        result = self.repaint(state, notes, live)
        # the stack says which layers have nothing painted: sent again only when that changed
        return {**result, "stack": self.stack(state)} if layer.is_empty() != was_empty else result

    @outputs(*EDITED)
    def add_layer(self, state: TabState) -> dict:
        notes = Notes()
        if not self.engine.concepts.blocks:
            notes.warn("No SAEs are loaded, so there are no concepts to paint; start the app with --sae PATH.")
            return {"status": notes.text()}
        chosen = state.selected if state.selected is not None else self.engine.concepts.first_concept(self.profile)
        layer = self.new_layer(state, chosen.concept, chosen.label)
        self._follow_recipe(state, layer, chosen, notes)
        notes.info(f"New layer '{layer.name}': paint it on the canvas.")
        return self.edited(state, notes)

    @outputs(*EDITED)
    def select_layer(self, state: TabState, index: Any) -> dict:
        notes = Notes()
        if not tab.select_layer(state, index):
            notes.warn(f"layer is {index!r}; allowed: one of the {len(state.layers)} layers in the list")
            return {"status": notes.text()}
        return self.edited(state, notes)

    @outputs(*CHANGED)
    def stack_action(self, state: TabState, data: Any, live: bool = True) -> dict:
        """A click in the layer stack: select a layer, switch it on or off (its eye), set how much of it acts
        (its amount, 0..100%), or delete it; on a part of the image, set its scale (0 erases) or its copy."""
        notes = Notes()
        try:
            data = parse_action(data, "layer stack", (*STACK_ACTIONS, *PART_ACTIONS))
            uid = data.get("layer")
            layer = state.layer_by_uid(uid) if isinstance(uid, str) else None
            if layer is None:
                raise PaintError(f"layer stack: 'layer' is {uid!r}; allowed: the id of one of the "
                                 f"{len(state.layers)} layers shown (it may have been deleted meanwhile)")
            action = data["action"]
            if action in ("eye", "copy") and not isinstance(data.get("on"), bool):
                raise PaintError(f"layer stack: 'on' is {data.get('on')!r}; allowed: true or false")
            if action in PART_ACTIONS and not is_part(layer):
                raise PaintError(f"layer stack: 'action' is {action!r} but layer '{layer.name}' is not a part of the "
                                 f"image (mode {layer.mode!r}); allowed on it: {', '.join(STACK_ACTIONS)}")
            scale = scale_of(data) if action == "scale" else None
            amount = amount_of(data, "layer stack") if action == "amount" else None
        except PaintError as exc:
            notes.warn(f"{exc}. The layers are kept.")
            return {"status": notes.text(), "stack": self.stack(state)}
        index = next(i for i, other in enumerate(state.layers) if other is layer)
        if action == "select":
            return self.select_layer(state, index)
        if action == "delete":
            return self.delete_layer(state, live, index)
        if action == "eye":
            notes.info(f"Layer '{layer.name}' is {'on' if data['on'] else 'off'}.")
            return self._change_layer(state, notes, live, lambda target: tab.set_field(target, "enabled", data["on"]),
                                      reload_editor=True, layer=layer)
        if action == "scale":
            notes.info(f"Part '{layer.name}' at scale {scale:g}" + (" (erased)." if scale == 0 else "."))
            return self._change_layer(state, notes, live, lambda target: tab.set_field(target, "strength", scale),
                                      layer=layer)
        if action == "copy":
            notes.info(f"Part '{layer.name}': " + ("a copy, kept where it was too." if data["on"] else "moved."))
            return self._change_layer(state, notes, live, lambda target: tab.set_field(target, "copy", data["on"]),
                                      layer=layer)
        notes.info(f"Layer '{layer.name}' acts at {100 * amount:.0f}%.")
        return self._change_layer(state, notes, live, lambda target: tab.set_field(target, "amount", amount),
                                  layer=layer)

    @outputs(*CHANGED)
    def delete_layer(self, state: TabState, live: bool = True, index: int | None = None) -> dict:
        """Delete layer ``index`` (default the active one)."""
        notes = Notes()
        layer = tab.delete_layer(state, state.active if index is None else index)
        if layer is None:
            notes.warn("There is no layer to delete.")
            return {"status": notes.text()}
        notes.info(f"Deleted layer '{layer.name}'.")
        result = self.repaint(state, notes, live) if not layer.is_empty() and state.base is not None else {}
        return {**self.edited(state, notes), **result}

    @outputs(*CHANGED)
    def clear_layer(self, state: TabState, live: bool = True) -> dict:
        notes = Notes()
        layer = state.active_layer()
        if layer is None or layer.is_empty():
            notes.warn("The active layer has nothing painted; there is nothing to clear.")
            return {"status": notes.text()}
        tab.clear_layer(layer)
        notes.info(f"Cleared layer '{layer.name}'.")
        return {**self.repaint(state, notes, live), "editor": self.editor(state), **self.panel(state)}

    @outputs(*CHANGED)
    def _change_layer(self, state: TabState, notes: Notes, live: bool, change: Callable[[CanvasLayer], bool],
                      reload_editor: bool = False, layer: CanvasLayer | None = None) -> dict:
        """Apply ``change`` to ``layer`` (default the active one; it returns whether anything changed), then
        repaint."""
        layer = layer if layer is not None else state.active_layer()
        if layer is None:
            notes.warn("There is no active layer: click a concept tile to make one.")
            return {"status": notes.text(), **self.panel(state)}
        if not change(layer):
            # a refused value: show the kept one again in the panel
            return {"status": notes.text(), **self.panel(state)} if notes.lines else {}
        state.changed()
        result = {**self.panel(state), "status": notes.text()}
        if reload_editor:
            result["editor"] = self.editor(state)
        if layer.is_empty():
            notes.info(f"Layer '{layer.name}' has nothing painted yet: paint it on the canvas to see the change.")
            return {**result, "state": state, "status": notes.text()}
        if state.base is None:
            return {**result, "state": state}
        return {**result, **self.repaint(state, notes, live)}

    @outputs(*CHANGED)
    def set_mode(self, state: TabState, mode: Any, live: bool = True) -> dict:
        notes = Notes()

        def change(layer: CanvasLayer) -> bool:
            if mode not in MODES:
                notes.warn(f"mode is {mode!r}; allowed: {', '.join(NAMES)}")
                return False
            if not self._paintable(layer.concept, mode):
                notes.warn(f"{MODES[mode].needs_text(layer.block)} The layer keeps its mode {layer.mode!r}.")
                return False
            changed = tab.set_field(layer, "mode", mode)
            if MODES[mode].every_step and layer.step_range is not None and layer.step_range == self.profile.layer_step_range:
                layer.step_range = None  # a prototype or example replays its steps from the first on (README)
                notes.info(f"{mode.capitalize()} acts on every step: the layer's step range is now all steps.")
            return changed

        return self._change_layer(state, notes, live, change)

    @outputs(*CHANGED)
    def set_strength(self, state: TabState, strength: Any, live: bool = True) -> dict:
        notes = Notes()

        def change(layer: CanvasLayer) -> bool:
            value = to_finite(strength)
            if value is None or not -MAX_STRENGTH <= value <= MAX_STRENGTH:
                notes.warn(f"strength is {strength!r}; allowed: a number from {-MAX_STRENGTH:g} to {MAX_STRENGTH:g}. "
                           f"Kept {layer.strength:g}.")
                return False
            return tab.set_field(layer, "strength", value)

        return self._change_layer(state, notes, live, change)

    @outputs(*CHANGED)
    def set_step_range(self, state: TabState, start: Any, end: Any, live: bool = True) -> dict:
        notes = Notes()
        steps = self.settings_of(state).steps

        def change(layer: CanvasLayer) -> bool:
            if start in (None, "") and end in (None, ""):
                return tab.set_field(layer, "step_range", None)
            first = to_finite(start if start not in (None, "") else 0)
            last = to_finite(end if end not in (None, "") else steps)
            if (first is None or last is None or first != int(first) or last != int(last)
                    or not 0 <= first < last <= steps):
                notes.warn(f"step range is [{start}, {end}]; allowed: whole numbers with 0 <= start < end <= steps "
                           f"({steps}), or both empty for every step. Kept "
                           f"{list(layer.step_range) if layer.step_range else 'every step'}.")
                return False
            return tab.set_field(layer, "step_range", None if (int(first), int(last)) == (0, steps)
                                 else (int(first), int(last)))

        return self._change_layer(state, notes, live, change)

    @outputs(*CHANGED)
    def set_enabled(self, state: TabState, enabled: Any, live: bool = True) -> dict:
        return self._change_layer(state, Notes(), live, lambda layer: tab.set_field(layer, "enabled", bool(enabled)))

    @outputs(*REPAINTED)
    def set_keep_outside(self, state: TabState, keep: Any, live: bool = True) -> dict:
        """Whether the image outside the painted areas stays on the plain image's latents."""
        if state.keep_outside == bool(keep):
            return {}
        state.keep_outside = bool(keep)
        if state.base is None or not state.has_paint():
            return {"state": state}
        return self.repaint(state, Notes(), live)

    @outputs(*CHANGED)
    def upload_mask(self, state: TabState, path: Any, live: bool = True) -> dict:
        """Fill the active layer's mask from a picture (alpha, else brightness), adapting odd sizes and modes."""
        notes = Notes()
        if path is None:
            return {}
        width, height = self.size(state)
        try:
            with Image.open(file_path(path)) as picture:
                picture.load()
                mask, adapted = canvas.mask_from_image(picture, width, height)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            notes.warn(f"the uploaded mask is not a readable image ({exc}); allowed: a PNG, JPEG or WebP picture. "
                       "The layer is kept.")
            return {"status": notes.text()}
        for line in adapted:
            notes.warn(f"Mask upload: {line}.")

        def change(layer: CanvasLayer) -> bool:
            layer.mask, layer.offset = mask, (0, 0)
            return True

        return self._change_layer(state, notes, live, change, reload_editor=True)

    # -- moving a region ------------------------------------------------------------------------------------

    @outputs(*CHANGED)
    def nudge(self, state: TabState, direction: str, step: Any, live: bool = True) -> dict:
        notes = Notes()
        width, height = self.size(state)
        pixels = to_finite(step)
        if pixels is None or pixels != int(pixels) or not 1 <= pixels <= max(width, height):
            notes.warn(f"move step is {step!r}; allowed: whole pixels from 1 to {max(width, height)}")
            return {"status": notes.text()}
        dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]

        def change(layer: CanvasLayer) -> bool:
            if not layer.mask.any():
                notes.warn(f"Layer '{layer.name}' has nothing painted, so there is no region to move.")
                return False
            return tab.nudge_layer(layer, dx * int(pixels), dy * int(pixels), width, height)

        return self._change_layer(state, notes, live, change, reload_editor=True)

    @outputs(*CHANGED)
    def reset_offset(self, state: TabState, live: bool = True) -> dict:
        return self._change_layer(state, Notes(), live, tab.reset_offset, reload_editor=True)

    @outputs(*CHANGED)
    def place(self, state: TabState, x: float, y: float, live: bool = True) -> dict:
        notes = Notes()
        width, height = self.size(state)

        def change(layer: CanvasLayer) -> bool:
            try:
                return tab.place_layer(layer, x, y, width, height)
            except PaintError as exc:
                notes.warn(str(exc))
                return False

        return self._change_layer(state, notes, live, change, reload_editor=True)


__all__ = ["LayerHandlers", "file_path"]
