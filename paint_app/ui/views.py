"""What every handler group shares: the engine, a tab's settings, and the views of its painting (canvas, panel)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
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

DEFAULT_PROMPT = "a red circle on grass"
ACTIVE_COLOR = "#ff2d95"


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

    def editor(self, state: TabState) -> dict:
        """The canvas's value: sent only when the canvas must change (a layer switch, a new image, a move)."""
        width, height = self.size(state)
        hint = "" if state.active_layer() else "No layer yet: pick a concept in the palette, then paint."
        return web_canvas.canvas_value(state.base, state.layers, state.active, width, height, ACTIVE_COLOR, hint)

    @outputs(*PANEL)
    def panel(self, state: TabState) -> dict:
        """The layer panel: the layer list and the active layer's settings."""
        choices = [(f"{i + 1}. {layer.name}", i) for i, layer in enumerate(state.layers)]
        layer = state.active_layer()
        if layer is None:
            return {"layer_select": gr.update(choices=choices, value=None),
                    "layer_info": "No layer yet: click a concept in the palette to paint with it.",
                    "mode": "add", "strength": self.profile.layer_strength, "step_start": None, "step_end": None,
                    "enabled": True}
        start, end = layer.step_range or (None, None)
        how = MODES.get(layer.mode)  # the panel says what a mode that does not use the strength does instead
        info = (f"**{layer.name}** — {layer.concept.describe()}; "
                f"offset ({layer.offset[0]}, {layer.offset[1]}) px"
                + ("; **nothing painted yet**" if layer.is_empty() else "")
                + (f"; {how.summary}" if how is not None and not how.uses_strength else ""))
        return {"layer_select": gr.update(choices=choices, value=state.active), "layer_info": info,
                "mode": layer.mode, "strength": layer.strength, "step_start": start, "step_end": end,
                "enabled": layer.enabled}

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


__all__ = ["ACTIVE_COLOR", "DEFAULT_PROMPT", "Views"]
