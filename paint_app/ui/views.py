"""What every handler group shares: the engine, a tab's settings, and the views of its painting (canvas, panel)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import web_canvas
from ..canvas import CanvasLayer
from ..engine import Engine
from ..explore import ExploreCache
from ..modes import MODES
from ..painting import Concept
from ..session import Session
from . import state as tab
from .outputs import CHANGED, EDITED, PANEL, SETTINGS, Notes, outputs
from .state import TabState
from .widgets import stack_value, tile_grid_value

DEFAULT_PROMPT = "a red circle on grass"
ACTIVE_COLOR = "#ff2d95"


def is_part(layer: CanvasLayer) -> bool:
    """Whether ``layer`` is a part of the image (``parts``): its mode can copy, and its strength is its scale."""
    return bool(getattr(MODES.get(layer.mode), "copyable", False))


class Views:
    """The engine a page runs on and the views of a tab's painting; the handler groups build on it."""

    def __init__(self, engine: Engine, workdir: str | Path | None = None) -> None:
        self.engine = engine
        self.profile = engine.model.profile
        self.cache = ExploreCache(engine)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="paint-app-"))

    def new_state(self) -> TabState:
        return TabState()

    def forget(self, state: Any) -> None:
        """A tab closed: remove its download files."""
        if isinstance(state, TabState):
            shutil.rmtree(self.workdir / state.tab_id, ignore_errors=True)

    def default_settings(self) -> Session:
        prompt = DEFAULT_PROMPT if not self.engine.prompt_report(DEFAULT_PROMPT)["unknown_words"] else ""
        p = self.profile
        return Session(model=self.engine.model.name, prompt=prompt, seed=0, width=p.width, height=p.height,
                       steps=p.steps, guidance=p.guidance)

    def settings_of(self, state: TabState) -> Session:
        return state.settings or self.default_settings()

    def size(self, state: TabState) -> tuple[int, int]:
        settings = self.settings_of(state)
        return settings.width, settings.height

    def new_layer(self, state: TabState, concept: Concept, label: str = "",
                  mask: np.ndarray | None = None, mode: str = "add") -> CanvasLayer:
        """A new active layer with the model's layer defaults (paint_app.json): its strength, and its step range
        where it fits the tab's steps."""
        width, height = self.size(state)
        step_range = tab.fitting_step_range(self.profile.layer_step_range, self.settings_of(state).steps)
        return tab.add_layer(state, concept, label=label, width=width, height=height,
                             strength=self.profile.layer_strength, step_range=step_range, mask=mask, mode=mode)

    def editor(self, state: TabState, tool: str | None = None) -> dict:
        """The canvas's value: sent only when the canvas must change (a layer switch, a new image, a move). With
        ``tool`` ("brush", "eraser", "move"), the canvas switches to that tool."""
        width, height = self.size(state)
        hint = "" if state.active_layer() else "No layer yet: click a concept tile, then paint."
        value = web_canvas.canvas_value(state.base, state.layers, state.active, width, height, ACTIVE_COLOR, hint)
        return {**value, "tool": tool} if tool else value

    def stack(self, state: TabState) -> dict:
        """The layer stack's value: each layer with its own picture (a part's) or its concept's where one was made,
        else its colour; a layer whose strength is a scale (a part of the image) with its scale and copy."""
        icons = [state.layer_pictures.get(layer.uid) or self.cache.icon_of(layer.concept) for layer in state.layers]
        value = stack_value(state.layers, state.active, icons)
        for row, layer in zip(value["layers"], state.layers):
            if is_part(layer):
                row.update(scale=float(layer.strength), copy=bool(getattr(layer, "copy", False)),
                           summary=MODES[layer.mode].summary)
        return value

    def tile_grid(self, state: TabState, empty: str = "") -> dict:
        """The tile grid's value: the tiles shown, with the pictures made so far."""
        icons = [self.cache.cached_icon(tile) if tile.paintable else None for tile in state.tiles]
        return tile_grid_value(state.tiles, icons, state.tiles_token, state.tiles_query, empty)

    def find_tiles_for(self, state: TabState, words: str) -> list:
        """The concept tiles for ``words`` (all with none), the user's own concepts among them; they become the
        tiles shown."""
        tiles = list(self.engine.concepts.tiles(words, custom=state.custom, profile=self.profile))
        state.tiles, state.tiles_query, state.tiles_token = tiles, words, state.tiles_token + 1
        return tiles

    def layer_info(self, state: TabState) -> str:
        """One line on the active layer: its name, concept (block and feature or factor), offset and state."""
        layer = state.active_layer()
        if layer is None:
            return "No layer yet: click a concept tile to paint with it."
        how = MODES.get(layer.mode)  # the line says what a mode that does not use the strength does instead
        return (f"**{layer.name}** — {layer.concept.describe()}; "
                f"offset ({layer.offset[0]}, {layer.offset[1]}) px"
                + ("; **nothing painted yet**" if layer.is_empty() else "")
                + (f"; scale {layer.strength:g} (0 erases, 1 as drawn)" + ("; a copy" if layer.copy else "")
                   if is_part(layer) else "")
                + (f"; {how.summary}" if how is not None and not how.uses_strength else ""))

    @outputs(*PANEL)
    def panel(self, state: TabState) -> dict:
        """The layer panel: the layer stack and the active layer's settings (under Advanced)."""
        layer = state.active_layer()
        if layer is None:
            return {"stack": self.stack(state), "layer_info": self.layer_info(state), "mode": "add",
                    "strength": self.profile.layer_strength, "step_start": None, "step_end": None}
        start, end = layer.step_range or (None, None)
        return {"stack": self.stack(state), "layer_info": self.layer_info(state), "mode": layer.mode,
                "strength": layer.strength, "step_start": start, "step_end": end}

    @outputs(*EDITED)
    def edited(self, state: TabState, notes: Notes) -> dict:
        """The layer list or the active layer changed: the canvas, the panel and the notes."""
        return {"state": state, "editor": self.editor(state), **self.panel(state), "status": notes.text()}

    @outputs(*SETTINGS)
    def settings_view(self, settings: Session) -> dict:
        return {"prompt": settings.prompt, "negative": settings.negative_prompt, "seed": settings.seed,
                "steps": settings.steps, "guidance": settings.guidance, "width": settings.width,
                "height": settings.height}

    @outputs(*CHANGED)
    def whole_view(self, state: TabState, notes: Notes) -> dict:
        return {**self.edited(state, notes), "output": state.output}

    def _ready(self, state: TabState, notes: Notes) -> bool:
        if state.base is None:
            notes.warn("There is no image yet: press Generate first.")
            return False
        return True


__all__ = ["ACTIVE_COLOR", "DEFAULT_PROMPT", "Views", "is_part"]
