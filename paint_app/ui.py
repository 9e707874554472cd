"""The painting app: a Gradio page over one shared engine.

Everything a tab owns (its generation settings, concept layers, images) lives in a ``TabState`` held by
``gr.State``, so tabs never see each other's layers. ``PaintApp`` holds the handlers; each takes the tab state and
plain values and returns a dict of named outputs, so tests can call them without a browser. ``build_app`` wires them
to components. The canvas (``web_canvas``, a small script in a ``gr.HTML``) edits one concept layer at a time: the
app keeps the named layer list and shows the active layer's mask on the canvas, with the other layers tinted into
the background; a stroke or a drag sends that layer's whole mask or offset back as the data of one event.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, UnidentifiedImageError

from sae.errors import SAEError

from . import canvas, web_canvas
from .canvas import CanvasLayer
from .engine import Engine
from .errors import PaintError, as_float, as_int, to_finite
from .explore import (
    ExploreCache,
    FeatureMaps,
    capture_feature_maps,
    heatmap,
    heatmap_overlay,
    region_of,
    top_factors_at,
    top_features_at,
)
from .session import MAX_STRENGTH, Session
from .steering import EXAMPLE_MODES, MODES

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "a red circle on grass"
PALETTE_LIMIT = 200
OUTPUT_TARGET = 320  # the shown image is enlarged to at least this many pixels along its longer side
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
ACTIVE_COLOR = "#ff2d95"
PALETTE_HEADERS = ["kind", "block", "id", "label", "frequency", "paints", "replace", "paste"]
INSPECT_HEADERS = ["block", "feature", "label", "value", "x typical"]
FACTOR_HEADERS = ["block", "factor", "label", "value"]
WEIGHT_HEADERS = ["feature", "label", "weight"]
NO_PROTOTYPE = ("mode 'replace' needs a prototype of the concept ({block}: prototypes.safetensors beside its SAE, "
                "made by `sae prototypes`); it has none.")
NO_EXAMPLE = ("mode 'paste' needs a top example of the concept that can be made again ({block}: top_examples.json "
              "with seeds beside its SAE, made by `sae top-examples`); it has none.")
NEEDS = {"replace": NO_PROTOTYPE, "paste": NO_EXAMPLE, "fill": NO_EXAMPLE.replace("'paste'", "'fill'")}
MISSING = {"replace": "no prototype to replace with (`sae prototypes`)", "paste": "no example to paste",
           "fill": "no example to fill with"}  # what a mode needs of a concept, where it needs something
CSS = """
#output img, #heat img, #preview img, #examples img { image-rendering: pixelated; }
#status { min-height: 1.5em; }
"""
# Run history would re-export the canvas after every stroke to keep a browser copy of each run: costly, unneeded.
LAUNCH_OPTIONS = {"css": CSS, "run_history": False}


@dataclass
class TabState:
    """One browser tab's painting: never shared, never global."""

    tab_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    settings: Session | None = None  # the settings of the last Generate (no layers)
    base: Image.Image | None = None  # the plain image of those settings: the canvas background
    output: Image.Image | None = None  # the last good displayed image
    layers: list[CanvasLayer] = field(default_factory=list)
    active: int = -1
    custom: list[dict] = field(default_factory=list)  # saved concepts: {"name", "block", "features"}
    selected: dict | None = None  # the concept last picked: {"block", "concept", "label", "source"}
    maps_key: str | None = None
    maps: FeatureMaps | None = None
    keep_outside: bool = True  # outside every painted area, keep the plain image's latents

    def active_layer(self) -> CanvasLayer | None:
        return self.layers[self.active] if 0 <= self.active < len(self.layers) else None

    def has_paint(self) -> bool:
        """Whether any enabled layer has something painted (else the image is the plain one)."""
        return any(layer.enabled and not layer.is_empty() for layer in self.layers)


def new_tab_state() -> TabState:
    return TabState()


def trial_cell(row: dict, mode: str) -> str:
    """The palette's ``replace`` or ``paste`` cell of a feature row: "" (the mode cannot paint it), "yes", or
    "yes, 88%" (its measured score)."""
    if not row[mode]:
        return ""
    score = row[f"{mode}_score"]
    return "yes" if score is None else f"yes, {score:.0%}"


class Notes:
    """Warnings of one handler call: shown as gradio toasts and in the page's status line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def warn(self, message: str) -> None:
        self.lines.append(f"⚠️ {message}")
        gr.Warning(message)

    def info(self, message: str) -> None:
        self.lines.append(message)

    def text(self) -> str:
        return "\n\n".join(self.lines)


class PaintApp:
    """The handlers of the page, over one shared engine."""

    def __init__(self, engine: Engine, workdir: str | Path | None = None) -> None:
        self.engine = engine
        self.profile = engine.model.profile
        self.cache = ExploreCache(engine)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="paint-app-"))

    # -- state and views -------------------------------------------------------------------------------------

    def new_state(self) -> TabState:
        return TabState()

    def forget(self, state: Any) -> None:
        """A tab closed: remove its session file."""
        if isinstance(state, TabState):
            shutil.rmtree(self.workdir / state.tab_id, ignore_errors=True)

    def default_settings(self) -> Session:
        prompt = DEFAULT_PROMPT if not self.engine.prompt_report(DEFAULT_PROMPT)["unknown_words"] else ""
        p = self.profile
        return Session(model=self.engine.model.name, prompt=prompt, seed=0, width=p.width, height=p.height,
                       steps=p.steps, guidance=p.guidance)

    def session_of(self, state: TabState) -> Session:
        settings = state.settings or self.default_settings()
        return replace(settings, layers=[layer.to_session_layer() for layer in state.layers], saes=self.sae_sources(),
                       keep_outside=state.keep_outside)

    def sae_sources(self) -> list[str]:
        """The SAE paths a session names, so ``paint-app render`` finds them; none for the model's own SAEs."""
        sae_dir = self.profile.sae_dir
        sources = [entry.source for _, entry in sorted(self.engine.concepts.blocks.items())]

        def shipped(source: str) -> bool:
            if sae_dir is None or "://" in source or "=" in source:
                return False
            return Path(source).resolve().is_relative_to(Path(sae_dir).resolve())

        return [] if all(shipped(source) for source in sources) else sources

    def size(self, state: TabState) -> tuple[int, int]:
        settings = state.settings or self.default_settings()
        return settings.width, settings.height

    def editor(self, state: TabState) -> dict:
        width, height = self.size(state)
        hint = "" if state.active_layer() else "No layer yet: pick a concept in the palette, then paint."
        return web_canvas.canvas_value(state.base, state.layers, state.active, width, height, ACTIVE_COLOR, hint)

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
        info = (f"**{layer.name}** — {canvas.describe_concept(layer.block, layer.concept)}; "
                f"offset ({layer.offset[0]}, {layer.offset[1]}) px"
                + ("; **nothing painted yet**" if layer.is_empty() else "")
                + {"replace": "; replaces its block's activations with the concept's prototype (the strength is "
                              "not used)",
                   "paste": "; pastes the activations of the feature's strongest example, moved onto the painted "
                            "area, where the feature fires in it (the strength is not used)",
                   "fill": "; fills the painted area with the activations of the feature's strongest example, "
                           "averaged over where it fires there (the strength is not used)"}.get(layer.mode, ""))
        return {"layer_select": gr.update(choices=choices, value=state.active), "layer_info": info,
                "mode": layer.mode, "strength": layer.strength, "step_start": start, "step_end": end,
                "enabled": layer.enabled}

    def settings_view(self, settings: Session) -> dict:
        return {"prompt": settings.prompt, "negative": settings.negative_prompt, "seed": settings.seed,
                "steps": settings.steps, "guidance": settings.guidance, "width": settings.width,
                "height": settings.height}

    def whole_view(self, state: TabState, notes: Notes) -> dict:
        return {"state": state, "editor": self.editor(state), "output": state.output, **self.panel(state),
                "status": notes.text(), **self.files(state)}

    def files(self, state: TabState) -> dict:
        """The tab's downloads: its session file and its image at its own size."""
        session = self.session_file(state)
        if session is None or state.output is None:
            return {"download": session}
        image = Path(session).with_name("paint-image.png")
        state.output.save(image)
        return {"download": session, "download_image": str(image)}

    def session_file(self, state: TabState) -> str | None:
        """Write the tab's session for download; one file per tab."""
        if state.settings is None:
            return None
        folder = self.workdir / state.tab_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "paint-session.json"
        self.session_of(state).save(path)
        return str(path)

    # -- generation -----------------------------------------------------------------------------------------

    def start(self, state: TabState) -> dict:
        """On page load: a first image and, when there are concepts, a first layer to paint with."""
        notes = Notes()
        settings = self.default_settings()
        state.settings = settings
        state.base = self.engine.generate(settings)
        state.output = state.base
        first = self.engine.concepts.first_concept(self.profile)
        if first is not None and not state.layers:
            self._add_layer(state, first["block"], dict(first["concept"]), first["label"])
        notes.info("Paint on the canvas: the image on the right follows your strokes.")
        return {**self.whole_view(state, notes), **self.settings_view(settings), "timing": "",
                "prompt_notes": self.prompt_notes(settings.prompt, Notes(), quiet=True),
                "palette_table": self.palette_rows(state, "", None, "features")[:PALETTE_LIMIT]}

    def generate(self, state: TabState, prompt: str, negative: str, seed: Any, steps: Any, guidance: Any,
                 width: Any, height: Any) -> dict:
        notes = Notes()
        try:
            settings = Session.from_dict({"version": 1, "model": self.engine.model.name, "prompt": prompt or "",
                                          "negative_prompt": negative or "", "seed": as_int(seed, "seed"),
                                          "steps": as_int(steps, "steps"), "guidance": as_float(guidance, "guidance"),
                                          "width": as_int(width, "width"), "height": as_int(height, "height")})
        except PaintError as exc:
            notes.warn(f"{exc}. The image and layers are kept.")
            return {"status": notes.text()}
        prompt_notes = self.prompt_notes(settings.prompt, notes)
        if settings.negative_prompt:
            self.prompt_notes(settings.negative_prompt, notes, field_name="negative prompt")
        old_size = self.size(state)
        start = time.perf_counter()
        base = self.engine.generate(settings)
        state.settings, state.base = settings, base
        if (settings.width, settings.height) != old_size:
            for layer in state.layers:
                layer.mask = canvas.resize_mask(layer.mask, settings.width, settings.height)
                layer.offset = canvas.clamp_offset(layer.offset, settings.width, settings.height)
        for layer in state.layers:
            if layer.step_range and layer.step_range[1] > settings.steps:
                layer.step_range = None
                notes.warn(f"layer '{layer.name}': its step range went past the new {settings.steps} steps; "
                           "it now acts on every step")
        timing = self._show(state, notes, started=start)
        return {**self.whole_view(state, notes), "timing": timing, "prompt_notes": prompt_notes}

    def prompt_notes(self, prompt: str, notes: Notes, field_name: str = "prompt", quiet: bool = False) -> str:
        """Say what the text encoder makes of a prompt: cut at its length limit, words it does not know."""
        report = self.engine.prompt_report(prompt)
        tokenizer = self.engine.pipeline.tokenizer
        lines = []
        if report["truncated"]:
            count = len(tokenizer(prompt, truncation=False).input_ids)
            lines.append(f"The {field_name} is {count} tokens; the text encoder takes {tokenizer.model_max_length} "
                         "(with start and end), so it was truncated: shorten it to keep every word.")
        if report["unknown_words"]:
            known = sorted(w for w in tokenizer.get_vocab() if w.isalpha())[:40]
            lines.append(f"Words the model {self.engine.model.name} does not know in the {field_name}: "
                         f"{', '.join(report['unknown_words'])} (they are ignored). Known words include: "
                         f"{', '.join(known)}.")
        if not quiet:
            for line in lines:
                notes.warn(line)
        return "\n\n".join(lines)

    def dice(self) -> dict:
        return {"seed": random.SystemRandom().randrange(0, 2**31 - 1)}

    def _show(self, state: TabState, notes: Notes, started: float | None = None) -> str:
        """Make ``state.output`` the image of the tab's session; returns the timing line."""
        started = time.perf_counter() if started is None else started
        if not state.has_paint():
            state.output = state.base
            return f"Plain image (nothing painted) in {1000 * (time.perf_counter() - started):.0f} ms"
        generation = self.engine.generate_timed(self.session_of(state))
        state.output = generation.image
        total = time.perf_counter() - started
        return f"Repainted in {1000 * total:.0f} ms (generation {1000 * generation.seconds:.0f} ms)"

    def repaint(self, state: TabState, notes: Notes, live: bool = True) -> dict:
        """Regenerate after a change (or only keep the change when painting applies on the button)."""
        if not live:
            notes.info("Apply on button is on: press Apply to see the change.")
            return {"state": state, "status": notes.text(), "layer_info": self.panel(state)["layer_info"]}
        timing = self._show(state, notes)
        return {"state": state, "output": state.output, "timing": timing, "status": notes.text(),
                **self.files(state), "layer_info": self.panel(state)["layer_info"]}

    def apply(self, state: TabState) -> dict:
        notes = Notes()
        if not self._ready(state, notes):
            return {"status": notes.text()}
        if not state.has_paint():
            notes.warn("Nothing is painted on any enabled layer, so there is nothing to apply: paint on the "
                       "canvas first. The image is unchanged.")
            return {"status": notes.text()}
        return self.repaint(state, notes)

    def _ready(self, state: TabState, notes: Notes) -> bool:
        if state.base is None:
            notes.warn("There is no image yet: press Generate first.")
            return False
        return True

    # -- canvas -----------------------------------------------------------------------------------------------

    def canvas_edit(self, state: TabState, data: Any, live: bool = True) -> dict:
        """A stroke, an undo or a drag landed on the canvas: store the layer's new mask or offset and repaint.

        The edit names its layer, so a stroke still in flight when another layer is picked lands where it was
        painted."""
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
        layer = next((layer for layer in state.layers if layer.uid == edit.layer), None)
        if layer is None:
            notes.warn("There is no layer to paint on: click a concept in the palette first (it becomes a "
                       "layer), then paint." if edit.layer is None else
                       "That layer was deleted before the edit arrived; the edit was dropped.")
            return {"status": notes.text(), "editor": self.editor(state)}
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
        state.maps_key = None
        return self.repaint(state, notes, live)

    # -- layers -----------------------------------------------------------------------------------------------

    def _add_layer(self, state: TabState, block: str, concept: dict, label: str = "",
                   mask: np.ndarray | None = None, mode: str = "add") -> CanvasLayer:
        width, height = self.size(state)
        name = _unique_name(label or canvas.describe_concept(block, concept), [layer.name for layer in state.layers])
        step_range = self.profile.layer_step_range  # the model's own defaults (paint_app.json), if they fit
        if step_range and step_range[1] > (state.settings or self.default_settings()).steps:
            step_range = None
        layer = CanvasLayer(name=name, block=block, concept=concept, mode=mode, strength=self.profile.layer_strength,
                            step_range=step_range, mask=mask if mask is not None else canvas.empty_mask(width, height),
                            color=canvas.next_color(state.layers))
        state.layers.append(layer)
        state.active = len(state.layers) - 1
        return layer

    def add_layer(self, state: TabState) -> dict:
        notes = Notes()
        if not self.engine.concepts.blocks:
            notes.warn("No SAEs are loaded, so there are no concepts to paint; start the app with --sae PATH.")
            return {"status": notes.text()}
        chosen = state.selected if state.selected is not None else self.engine.concepts.first_concept(self.profile)
        layer = self._add_layer(state, chosen["block"], dict(chosen["concept"]), chosen.get("label", ""))
        self._follow_recipe(state, layer, chosen, notes)
        notes.info(f"New layer '{layer.name}': paint it on the canvas.")
        return {"state": state, "editor": self.editor(state), **self.panel(state), "status": notes.text()}

    def select_layer(self, state: TabState, index: Any) -> dict:
        notes = Notes()
        if not isinstance(index, int) or not 0 <= index < len(state.layers):
            notes.warn(f"layer is {index!r}; allowed: one of the {len(state.layers)} layers in the list")
            return {"status": notes.text()}
        state.active = index
        return {"state": state, "editor": self.editor(state), **self.panel(state), "status": ""}

    def delete_layer(self, state: TabState, live: bool = True) -> dict:
        notes = Notes()
        layer = state.active_layer()
        if layer is None:
            notes.warn("There is no layer to delete.")
            return {"status": notes.text()}
        had_effect = not layer.is_empty()
        del state.layers[state.active]
        state.active = min(state.active, len(state.layers) - 1)
        notes.info(f"Deleted layer '{layer.name}'.")
        result = self.repaint(state, notes, live) if had_effect and state.base is not None else {}
        return {"state": state, "editor": self.editor(state), **self.panel(state), "status": notes.text(), **result}

    def clear_layer(self, state: TabState, live: bool = True) -> dict:
        notes = Notes()
        layer = state.active_layer()
        if layer is None or layer.is_empty():
            notes.warn("The active layer has nothing painted; there is nothing to clear.")
            return {"status": notes.text()}
        layer.mask = np.zeros_like(layer.mask)
        layer.offset = (0, 0)
        notes.info(f"Cleared layer '{layer.name}'.")
        return {**self.repaint(state, notes, live), "editor": self.editor(state), **self.panel(state)}

    def _change_layer(self, state: TabState, notes: Notes, live: bool, change: Callable[[CanvasLayer], bool],
                      reload_editor: bool = False) -> dict:
        """Apply ``change`` to the active layer (it returns whether anything changed), then repaint."""
        layer = state.active_layer()
        if layer is None:
            notes.warn("There is no active layer: click a concept in the palette to make one.")
            return {"status": notes.text(), **self.panel(state)}
        if not change(layer):
            # a refused value: show the kept one again in the panel
            return {"status": notes.text(), **self.panel(state)} if notes.lines else {}
        state.maps_key = None
        result = {**self.panel(state), "status": notes.text()}
        if reload_editor:
            result["editor"] = self.editor(state)
        if layer.is_empty():
            notes.info(f"Layer '{layer.name}' has nothing painted yet: paint it on the canvas to see the change.")
            return {**result, "state": state, "status": notes.text()}
        if state.base is None:
            return {**result, "state": state}
        return {**result, **self.repaint(state, notes, live)}

    def set_mode(self, state: TabState, mode: Any, live: bool = True) -> dict:
        notes = Notes()

        def change(layer: CanvasLayer) -> bool:
            if mode not in MODES:
                notes.warn(f"mode is {mode!r}; allowed: {', '.join(MODES)}")
                return False
            if not self._paintable({"block": layer.block, "concept": layer.concept}, mode):
                notes.warn(f"{NEEDS[mode].format(block=layer.block)} The layer keeps its mode {layer.mode!r}.")
                return False
            changed, layer.mode = layer.mode != mode, mode
            if mode in NEEDS and layer.step_range is not None and layer.step_range == self.profile.layer_step_range:
                layer.step_range = None  # a prototype or example replays its steps from the first on (README)
                notes.info(f"{mode.capitalize()} acts on every step: the layer's step range is now all steps.")
            return changed

        return self._change_layer(state, notes, live, change)

    def set_strength(self, state: TabState, strength: Any, live: bool = True) -> dict:
        notes = Notes()

        def change(layer: CanvasLayer) -> bool:
            value = to_finite(strength)
            if value is None or not -MAX_STRENGTH <= value <= MAX_STRENGTH:
                notes.warn(f"strength is {strength!r}; allowed: a number from {-MAX_STRENGTH:g} to {MAX_STRENGTH:g}. "
                           f"Kept {layer.strength:g}.")
                return False
            changed, layer.strength = layer.strength != value, value
            return changed

        return self._change_layer(state, notes, live, change)

    def set_step_range(self, state: TabState, start: Any, end: Any, live: bool = True) -> dict:
        notes = Notes()
        steps = (state.settings or self.default_settings()).steps

        def change(layer: CanvasLayer) -> bool:
            if start in (None, "") and end in (None, ""):
                changed, layer.step_range = layer.step_range is not None, None
                return changed
            first, last = to_finite(start if start not in (None, "") else 0), to_finite(end if end not in (None, "") else steps)
            if (first is None or last is None or first != int(first) or last != int(last)
                    or not 0 <= first < last <= steps):
                notes.warn(f"step range is [{start}, {end}]; allowed: whole numbers with 0 <= start < end <= steps "
                           f"({steps}), or both empty for every step. Kept "
                           f"{list(layer.step_range) if layer.step_range else 'every step'}.")
                return False
            value = None if (int(first), int(last)) == (0, steps) else (int(first), int(last))
            changed, layer.step_range = layer.step_range != value, value
            return changed

        return self._change_layer(state, notes, live, change)

    def set_enabled(self, state: TabState, enabled: Any, live: bool = True) -> dict:
        notes = Notes()

        def change(layer: CanvasLayer) -> bool:
            changed, layer.enabled = layer.enabled != bool(enabled), bool(enabled)
            return changed

        return self._change_layer(state, notes, live, change)

    def set_keep_outside(self, state: TabState, keep: Any, live: bool = True) -> dict:
        """Whether the image outside the painted areas stays on the plain image's latents."""
        notes = Notes()
        if state.keep_outside == bool(keep):
            return {}
        state.keep_outside = bool(keep)
        if state.base is None or not state.has_paint():
            return {"state": state, **self.files(state)}
        return self.repaint(state, notes, live)

    def upload_mask(self, state: TabState, path: Any, live: bool = True) -> dict:
        """Fill the active layer's mask from a picture (alpha, else brightness), adapting odd sizes and modes."""
        notes = Notes()
        if path is None:
            return {}
        width, height = self.size(state)
        try:
            with Image.open(_file_path(path)) as picture:
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
            new = canvas.nudge(layer.offset, dx * int(pixels), dy * int(pixels), width, height)
            changed, layer.offset = new != layer.offset, new
            return changed

        return self._change_layer(state, notes, live, change, reload_editor=True)

    def reset_offset(self, state: TabState, live: bool = True) -> dict:
        notes = Notes()

        def change(layer: CanvasLayer) -> bool:
            changed, layer.offset = layer.offset != (0, 0), (0, 0)
            return changed

        return self._change_layer(state, notes, live, change, reload_editor=True)

    def place(self, state: TabState, x: float, y: float, live: bool = True) -> dict:
        notes = Notes()
        width, height = self.size(state)

        def change(layer: CanvasLayer) -> bool:
            try:
                new = canvas.place_at(layer.mask, x, y)
            except PaintError as exc:
                notes.warn(str(exc))
                return False
            new = canvas.clamp_offset(new, width, height)
            changed, layer.offset = new != layer.offset, new
            return changed

        return self._change_layer(state, notes, live, change, reload_editor=True)

    def click_image(self, state: TabState, x: Any, y: Any, click_mode: str, live: bool = True) -> dict:
        if click_mode == "move":
            return self.place(state, float(x), float(y), live)
        return self.inspect(state, float(x), float(y))

    # -- palette ----------------------------------------------------------------------------------------------

    def block_choices(self) -> list[str]:
        return ["all blocks", *sorted(self.engine.concepts.blocks)]

    def search(self, state: TabState, text: Any, block: Any, kind: Any) -> dict:
        notes = Notes()
        words = (text or "").strip()
        if len(words) > 200:
            notes.warn(f"search is {len(words)} characters; allowed: at most 200")
            return {"status": notes.text()}
        block_name = None if block in (None, "", "all blocks") else block
        if block_name is not None and block_name not in self.engine.concepts.blocks:
            notes.warn(f"block is {block_name!r}; allowed: all blocks, {', '.join(sorted(self.engine.concepts.blocks))}")
            return {"status": notes.text()}
        rows = self.palette_rows(state, words, block_name, kind or "features")
        if not rows and kind == "recipes" and not any(self.engine.concepts.blocks[b].recipes
                                                      for b in ([block_name] if block_name else self.engine.concepts.blocks)):
            notes.warn(f"No recipes{' in ' + block_name if block_name else ''}: a recipe is the edit measured to "
                       "paint a concept best (recipes.json beside an SAE; for the toy model made by `python -m "
                       "paint_app.toyworld.saes --recipes-only`). Search features or factors instead.")
            return {"status": notes.text(), "palette_table": []}
        if not rows:
            where = f" in {block_name}" if block_name else ""
            examples = sorted({r["label"] for r in self.engine.concepts.feature_rows() if r["label"]})[:12]
            notes.warn(f"No {kind or 'features'} label{where} holds all of the words {words!r}. "
                       + (f"Labels look like: {', '.join(examples)}." if examples else "No feature has a label yet; "
                          "clear the search to list them by index."))
            return {"status": notes.text(), "palette_table": []}
        shown = rows[:PALETTE_LIMIT]
        notes.info(f"{len(rows)} {kind or 'features'} found" + (f"; showing the first {PALETTE_LIMIT}"
                                                                if len(rows) > PALETTE_LIMIT else "")
                   + ". Click one to paint the active layer with it.")
        return {"palette_table": shown, "status": notes.text()}

    def palette_rows(self, state: TabState, words: str, block: str | None, kind: str) -> list[list]:
        concepts = self.engine.concepts
        if kind == "factors":
            return [["factor", r["block"], r["factor"], r["label"], "", "", "yes" if r["replace"] else "",
                     "yes" if r["paste"] else ""] for r in concepts.factor_rows(block, words)]
        if kind == "recipes":
            # "paints": the share of the recipe's trials judged to show the concept
            return [["recipe", r["block"], self.recipe_index(r["block"], r["concept"]), f"{r['concept']}: {r['edit']}",
                     "", f"{r['score']:.0%}", "yes" if r["mode"] == "replace" else "", "yes" if r["mode"] in EXAMPLE_MODES else ""]
                    for r in concepts.recipe_rows(block, words)]
        if kind == "mine":
            terms = words.lower().split()
            return [["mine", c["block"], i, c["name"], "", "", "", ""] for i, c in enumerate(state.custom)
                    if (block is None or c["block"] == block) and all(t in c["name"].lower() for t in terms)]
        # "paints": the label's write score (how well painting the feature writes its label), where known;
        # "replace" ("paste"): whether it has a prototype (an example), so that a replace (paste) layer can
        # paint it, with its replace (paste) score where measured. A replace (paste) layer's search lists the best replacers (pasters) first.
        layer = state.active_layer()
        rank = layer.mode if layer is not None and layer.mode in ("replace", "paste") else "write"
        return [["feature", r["block"], r["feature"], r["label"], f"{r['frequency']:.4f}",
                 "" if r["write"] is None else f"{r['write']:.2f}", trial_cell(r, "replace"), trial_cell(r, "paste")]
                for r in concepts.feature_rows(block, words, rank)]

    def recipe_index(self, block: str, concept: str) -> int:
        return list(self.engine.concepts.blocks[block].recipes.edits).index(concept)

    def concept_of_row(self, state: TabState, row: Any) -> dict:
        """The concept a palette row names: {"block", "concept", "label"}, and for a recipe row "recipe": the
        edit's {"mode", "strength", "step_range", "score"}."""
        try:
            kind, block, index, label = row[0], row[1], int(float(row[2])), str(row[3])
        except (TypeError, ValueError, IndexError):
            raise PaintError(f"palette row is {row!r}; allowed: a row of the palette table") from None
        entry = self.engine.concepts.get(block, "palette block")
        if kind == "feature":
            entry.sae.check_feature(index, "palette feature")
            return {"block": block, "concept": {"feature": index}, "label": label or f"feature {index}"}
        if kind == "factor":
            if entry.factors is None or not 0 <= index < entry.factors.n_factors:
                raise PaintError(f"factor is {index}; block {block} has no such factor")
            return {"block": block, "concept": {"factor": index}, "label": label}
        if kind == "recipe":
            concepts = list(entry.recipes.edits) if entry.recipes is not None else []
            if not 0 <= index < len(concepts) or entry.recipes.best(concepts[index]) is None:
                raise PaintError(f"recipe is {index}; block {block} has no such recipe")
            edit = entry.recipes.best(concepts[index])
            concept = {"feature": edit.feature} if edit.feature is not None else {"factor": edit.factor}
            return {"block": block, "concept": concept, "label": concepts[index],
                    "recipe": {"mode": edit.mode, "strength": edit.strength, "score": edit.score,
                               "step_range": tuple(edit.step_range) if edit.step_range else None}}
        if kind == "mine" and 0 <= index < len(state.custom):
            custom = state.custom[index]
            return {"block": custom["block"], "concept": {"features": dict(custom["features"])}, "label": custom["name"]}
        raise PaintError(f"palette row kind is {kind!r}; allowed: feature, factor, recipe, mine")

    def pick_concept(self, state: TabState, row: Any, live: bool = True) -> dict:
        """One click on a palette row: the active layer paints with that concept (a new layer if there is none)."""
        notes = Notes()
        try:
            chosen = self.concept_of_row(state, row)
        except (PaintError, SAEError) as exc:
            notes.warn(str(exc))
            return {"status": notes.text()}
        state.selected = chosen
        layer = state.active_layer()
        if layer is None:
            self._add_layer(state, chosen["block"], dict(chosen["concept"]), chosen["label"])
            self._follow_recipe(state, state.active_layer(), chosen, notes)
            notes.info(f"New layer '{state.active_layer().name}': paint it on the canvas.")
            return {"state": state, "editor": self.editor(state), **self.panel(state), "status": notes.text()}
        names = [other.name for i, other in enumerate(state.layers) if i != state.active]

        def change(target: CanvasLayer) -> bool:
            before = (target.block, target.concept, target.mode, target.strength, target.step_range)
            target.block, target.concept = chosen["block"], dict(chosen["concept"])
            target.name = _unique_name(chosen["label"] or canvas.describe_concept(target.block, target.concept), names)
            notes.info(f"Layer {state.active + 1} now paints '{target.name}'.")
            self._follow_recipe(state, target, chosen, notes)
            changed = before != (target.block, target.concept, target.mode, target.strength, target.step_range)
            if not self._paintable(chosen, target.mode):
                notes.info(f"It has {MISSING[target.mode]}, so the layer now adds it.")
                target.mode = "add"
            return changed

        return {"state": state, **self._change_layer(state, notes, live, change)}

    def _follow_recipe(self, state: TabState, layer: CanvasLayer, chosen: dict, notes: Notes) -> None:
        """A recipe row sets the layer's mode, strength and steps to the recipe's (steps that do not fit the
        session's become every step)."""
        recipe = chosen.get("recipe")
        if recipe is None:
            return
        steps = (state.settings or self.default_settings()).steps
        step_range = recipe["step_range"] if recipe["step_range"] and recipe["step_range"][1] <= steps else None
        layer.mode, layer.strength, layer.step_range = recipe["mode"], recipe["strength"], step_range
        shown = "every step" if step_range is None else f"steps {step_range[0]}-{step_range[1]}"
        notes.info(f"Its recipe: {recipe['mode']} {canvas.describe_concept(layer.block, layer.concept)} at strength "
                   f"{recipe['strength']:g}, {shown} (judged right in {recipe['score']:.0%} of its trials, the rest "
                   "of the image kept).")

    def preview(self, state: TabState) -> dict:
        """The selected concept painted everywhere on an empty prompt, and the probe images where it is strongest."""
        notes = Notes()
        chosen = state.selected
        if chosen is None:
            return {}
        try:
            image = self.cache.preview(chosen["block"], chosen["concept"], self.profile.layer_strength)
            weights = self._weights_of(chosen)
            examples = self.cache.top_examples(chosen["block"], weights)
        except (PaintError, SAEError) as exc:
            notes.warn(f"No preview for this concept: {exc}")
            return {"status": notes.text()}
        scale = canvas.display_scale(image.width, image.height, 256)
        info = (f"**{chosen['label']}** ({canvas.describe_concept(chosen['block'], chosen['concept'])}): left the "
                f"empty prompt, right the concept painted everywhere at strength {self.profile.layer_strength:g}.")
        return {"preview": image.resize((image.width * scale, image.height * scale), Image.NEAREST),
                "examples": examples, "palette_info": info}

    def _paintable(self, chosen: dict, mode: str) -> bool:
        """Whether a layer of ``mode`` can paint the concept: replace needs a prototype, paste an example."""
        entry = self.engine.concepts.blocks.get(chosen["block"])
        if mode not in NEEDS:
            return True
        return entry is not None and any(entry.can_paint(f, mode) and w > 0
                                         for f, w in self._weights_of(chosen).items())

    def _weights_of(self, chosen: dict) -> dict[int, float]:
        from .session import Layer, Mask

        layer = Layer(block=chosen["block"], mask=Mask(rects=[]), **_concept_fields(chosen["concept"]))
        features, weights = self.engine.concepts.resolve(layer, "concept")
        return dict(zip(features, weights))

    # -- inspector ------------------------------------------------------------------------------------------

    def feature_maps(self, state: TabState) -> FeatureMaps:
        """Feature maps of the displayed image (re-run with read-only hooks; cached until the painting changes)."""
        session = self.session_of(state)
        key = session.to_json()
        if state.maps_key != key or state.maps is None:
            _, state.maps = capture_feature_maps(self.engine, session)
            state.maps_key = key
        return state.maps

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
        table = [[r["block"], r["feature"], r["label"], round(r["value"], 3), round(r["relative"], 2)] for r in features]
        factor_table = [[r["block"], r["factor"], r["label"], round(r["value"], 3)] for r in factors]
        info = (f"At ({x:.0f}, {y:.0f}): {len(table)} strongest features (value, and as a multiple of the feature's "
                "typical value). Click one for its heatmap.")
        if not table:
            info = f"At ({x:.0f}, {y:.0f}) no feature is active."
        return {"state": state, "inspect_table": table, "factor_table": factor_table, "inspect_info": info,
                "status": ""}

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
        state.selected = {"block": block, "concept": {"feature": feature}, "label": label or f"feature {feature}",
                          "source": "inspector"}
        width, height = self.size(state)
        overlay = heatmap_overlay(state.output, heat, scale=canvas.display_scale(width, height, 256))
        info = f"Heatmap of **{label or 'feature ' + str(feature)}** ({block} feature {feature}), peak {heat.max():.3f}."
        return {"state": state, "heat": overlay, "inspect_info": info, "status": ""}

    def layer_from_selected(self, state: TabState, mode: Any, live: bool = True) -> dict:
        """Turn the inspected feature into a layer painted where it is active (e.g. to erase it there)."""
        notes = Notes()
        chosen = state.selected
        if chosen is None or chosen.get("source") != "inspector" or state.maps is None:
            notes.warn("Click a point of the image and then a feature in the inspector first.")
            return {"status": notes.text()}
        if mode not in MODES:
            notes.warn(f"mode is {mode!r}; allowed: {', '.join(MODES)}")
            return {"status": notes.text()}
        if not self._paintable(chosen, mode):
            notes.warn(NEEDS[mode].format(block=chosen["block"]))
            return {"status": notes.text()}
        try:
            mask = region_of(state.maps, chosen["block"], chosen["concept"]["feature"])
        except PaintError as exc:
            notes.warn(str(exc))
            return {"status": notes.text()}
        layer = self._add_layer(state, chosen["block"], dict(chosen["concept"]), chosen["label"], mask=mask, mode=mode)
        notes.info(f"New layer '{layer.name}' ({mode}) painted where the feature is active.")
        return {**self.repaint(state, notes, live), "editor": self.editor(state), **self.panel(state)}

    # -- factors ----------------------------------------------------------------------------------------------

    def factor_choices(self) -> list[tuple[str, str]]:
        return [(f"{r['block']} · {r['label']}", f"{r['block']}|{r['factor']}")
                for r in self.engine.concepts.factor_rows()]

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

    def save_factor(self, state: TabState, key: Any, rows: Any, name: Any) -> dict:
        """Save edited factor weights as a new concept of the palette (kind 'mine')."""
        notes = Notes()
        try:
            block = str(key).split("|")[0]
            entry = self.engine.concepts.get(block, "factor block")
            features = _parse_weights(rows, entry.sae.n_features)
            title = str(name or "").strip()
            if not title or len(title) > 200:
                raise PaintError(f"concept name is {name!r}; allowed: 1 to 200 characters")
        except (PaintError, SAEError) as exc:
            notes.warn(str(exc))
            return {"status": notes.text()}
        state.custom.append({"name": title, "block": block, "features": features})
        state.selected = {"block": block, "concept": {"features": dict(features)}, "label": title}
        notes.info(f"Saved '{title}' ({len(features)} features) to the palette under 'mine'; New layer paints "
                   "with it.")
        return {"state": state, "status": notes.text()}

    # -- sessions ---------------------------------------------------------------------------------------------

    def load_session_file(self, state: TabState, path: Any) -> dict:
        """Restore settings, layers and image from an uploaded session; a bad file changes nothing."""
        notes = Notes()
        if path is None:
            return {}
        try:
            file = Path(_file_path(path))
            if file.stat().st_size > MAX_UPLOAD_BYTES:
                raise PaintError(f"the session file is {file.stat().st_size} bytes; allowed: at most "
                                 f"{MAX_UPLOAD_BYTES} bytes")
            session = Session.from_json(file.read_bytes())
            if session.model != self.engine.model.name:
                raise PaintError(f"model is {session.model!r}; this app runs {self.engine.model.name!r} "
                                 f"(start it with `paint-app serve --model {session.model}` for this session)")
            self.engine.plan(session).validate()
        except (PaintError, SAEError, OSError) as exc:
            notes.warn(f"Uploaded session not loaded: {exc}. The canvas, layers and image are kept.")
            return {"status": notes.text()}
        self.prompt_notes(session.prompt, notes)
        if session.saes and session.saes != self.sae_sources():
            notes.info(f"The session names the SAEs {', '.join(session.saes)}; this app paints with its own "
                       f"({', '.join(self.sae_sources()) or 'those shipped with the model'}).")
        settings = replace(session, layers=[], saes=[])
        layers = []
        for layer in session.layers:
            layers.append(CanvasLayer.from_session_layer(layer, session.width, session.height,
                                                         canvas.next_color(layers)))
        state.settings, state.layers, state.active = settings, layers, 0 if layers else -1
        state.keep_outside = session.keep_outside
        state.base = self.engine.generate(settings)
        state.maps_key = None
        timing = self._show(state, notes)
        notes.info(f"Loaded a session with {len(layers)} layers.")
        return {**self.whole_view(state, notes), **self.settings_view(settings), "timing": timing,
                "keep_outside": state.keep_outside,
                "prompt_notes": self.prompt_notes(settings.prompt, Notes(), quiet=True)}


# -- helpers ----------------------------------------------------------------------------------------------------


def _unique_name(name: str, taken: list[str]) -> str:
    name = name.strip()[:80] or "layer"
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name} ({n})", n + 1
    return candidate


def _file_path(value: Any) -> str:
    """The path of an uploaded file, whatever gradio hands over (a path, a FileData-like object or a dict)."""
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    return str(getattr(value, "name", value) if not isinstance(value, (str, os.PathLike)) else value)


def _concept_fields(concept: dict) -> dict:
    if "feature" in concept:
        return {"feature": int(concept["feature"])}
    if "factor" in concept:
        return {"factor": int(concept["factor"])}
    return {"features": {int(f): float(w) for f, w in concept["features"].items()}}


def _parse_weights(rows: Any, n_features: int) -> dict[int, float]:
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


# -- the page ---------------------------------------------------------------------------------------------------


def build_app(engine: Engine, gpu: Callable[[Callable], Callable] | None = None,
              workdir: str | Path | None = None) -> gr.Blocks:
    """The Gradio page over ``engine``. ``gpu`` wraps the handlers that run the model (e.g. ``spaces.GPU``)."""
    app = PaintApp(engine, workdir)
    profile = engine.model.profile
    C: dict[str, Any] = {}
    blocks = gr.Blocks(title="paint-app")
    with blocks:
        C["state"] = gr.State(new_tab_state, delete_callback=app.forget)
        gr.Markdown(f"# paint-app · {engine.model.name}\nPick a concept in the palette, paint it on the canvas, "
                    "and the image follows. Click the image to inspect it.")
        with gr.Row():
            C["prompt"] = gr.Textbox(label="Prompt", scale=4, elem_id="prompt")
            C["negative"] = gr.Textbox(label="Negative prompt", scale=2, elem_id="negative")
        with gr.Row():
            C["seed"] = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
            C["dice"] = gr.Button("Random seed", elem_id="dice", scale=0, min_width=100)
            C["steps"] = gr.Number(label="Steps", value=profile.steps, precision=0, elem_id="steps")
            C["guidance"] = gr.Number(label="Guidance", value=profile.guidance, elem_id="guidance")
            C["width"] = gr.Number(label="Width", value=profile.width, precision=0, elem_id="width")
            C["height"] = gr.Number(label="Height", value=profile.height, precision=0, elem_id="height")
            C["generate"] = gr.Button("Generate", variant="primary", elem_id="generate")
        C["prompt_notes"] = gr.Markdown(elem_id="prompt-notes")
        C["status"] = gr.Markdown(elem_id="status")
        with gr.Row():
            with gr.Column(scale=3):
                gr.Markdown("**Canvas**: paint the active layer (brush opacity = mask strength); "
                            "Move drags its region.")
                C["editor"] = gr.HTML(None, html_template=web_canvas.template(), css_template=web_canvas.style(),
                                      js_on_load=web_canvas.script(), elem_id="canvas")
                with gr.Row():
                    C["layer_select"] = gr.Dropdown(label="Active layer", choices=[], elem_id="layer-select",
                                                    scale=3)
                    C["add_layer"] = gr.Button("New layer", elem_id="add-layer", scale=1)
                    C["delete_layer"] = gr.Button("Delete layer", elem_id="delete-layer", scale=1)
                    C["clear_layer"] = gr.Button("Clear layer", elem_id="clear-layer", scale=1)
                C["layer_info"] = gr.Markdown(elem_id="layer-info")
                with gr.Row():
                    C["mode"] = gr.Radio(list(MODES), value="add", label="Mode", elem_id="mode")
                    C["strength"] = gr.Number(label=f"Strength (-{MAX_STRENGTH:g} to {MAX_STRENGTH:g})",
                                              value=profile.layer_strength, elem_id="strength")
                    C["enabled"] = gr.Checkbox(label="On", value=True, elem_id="enabled")
                with gr.Row(visible=profile.steps > 1):
                    C["step_start"] = gr.Number(label="From step", precision=0, elem_id="step-start")
                    C["step_end"] = gr.Number(label="To step (empty: all)", precision=0, elem_id="step-end")
                with gr.Row():
                    C["move_step"] = gr.Number(label="Move by (px)", value=4, precision=0, elem_id="move-step",
                                               min_width=80)
                    for direction, arrow in (("left", "←"), ("up", "↑"), ("down", "↓"), ("right", "→")):
                        C[f"move_{direction}"] = gr.Button(arrow, elem_id=f"move-{direction}", min_width=40)
                    C["move_reset"] = gr.Button("Reset move", elem_id="move-reset")
                C["mask_upload"] = gr.File(label="Mask from a picture (alpha, else brightness)", file_count="single",
                                           type="filepath", elem_id="mask-upload", height=80)
            with gr.Column(scale=3):
                C["output"] = gr.Image(label="Image (click to inspect)", type="pil", format="png", interactive=False,
                                       elem_id="output", buttons=[])
                C["timing"] = gr.Markdown(elem_id="timing")
                with gr.Row():
                    C["manual"] = gr.Checkbox(label="Apply on button (for slow machines)", value=False,
                                              elem_id="manual")
                    C["apply"] = gr.Button("Apply", elem_id="apply")
                C["keep_outside"] = gr.Checkbox(label="Keep the rest of the image (outside the painted areas)",
                                                value=True, elem_id="keep-outside")
                C["click_mode"] = gr.Radio([("inspect", "inspect"), ("move the active layer here", "move")],
                                           value="inspect", label="Clicking the image will", elem_id="click-mode")
                with gr.Row():
                    C["download"] = gr.DownloadButton("Download session", elem_id="download")
                    C["download_image"] = gr.DownloadButton("Download image", elem_id="download-image")
                    C["session_upload"] = gr.File(label="Open a session file", file_types=[".json"],
                                                  type="filepath", elem_id="session-upload", height=80)
        with gr.Tab("Palette"):
            with gr.Row():
                C["search_text"] = gr.Textbox(label="Search concepts by words", elem_id="palette-search", scale=3)
                C["search_block"] = gr.Dropdown(app.block_choices(), value="all blocks", label="Block",
                                                elem_id="palette-block")
                C["search_kind"] = gr.Radio(["features", "factors", "recipes", "mine"], value="features", label="Kind",
                                            elem_id="palette-kind")
                C["search"] = gr.Button("Search", elem_id="palette-go")
            with gr.Row():
                C["palette_table"] = gr.Dataframe(headers=PALETTE_HEADERS, datatype="str", interactive=False,
                                                  elem_id="palette-table", max_height=360, type="array",
                                                  column_widths=["10%", "40%", "7%", "17%", "14%", "12%"])
                with gr.Column():
                    C["palette_info"] = gr.Markdown(elem_id="palette-info")
                    C["preview"] = gr.Image(label="Preview", type="pil", interactive=False, elem_id="preview",
                                            format="png")
                    C["examples"] = gr.Gallery(label="Top examples", elem_id="examples", columns=4, height=200)
        with gr.Tab("Inspector"):
            C["inspect_info"] = gr.Markdown("Click a point of the image.", elem_id="inspect-info")
            with gr.Row():
                C["inspect_table"] = gr.Dataframe(headers=INSPECT_HEADERS, interactive=False, type="array",
                                                  elem_id="inspect-table")
                C["heat"] = gr.Image(label="Heatmap", type="pil", interactive=False, elem_id="heat", format="png")
            C["factor_table"] = gr.Dataframe(headers=FACTOR_HEADERS, interactive=False, type="array",
                                             elem_id="factor-table", label="Strongest factors there")
            with gr.Row():
                C["layer_mode"] = gr.Radio(["erase", *[m for m in MODES if m != "erase"]], value="erase", label="New layer mode",
                                           elem_id="inspect-mode")
                C["layer_from_feature"] = gr.Button("Make a layer of this feature where it is", elem_id="inspect-layer")
        with gr.Tab("Factors"):
            with gr.Row():
                C["factor_pick"] = gr.Dropdown(app.factor_choices(), label="Factor", elem_id="factor-pick")
                C["concept_name"] = gr.Textbox(label="Name of the new concept", elem_id="concept-name")
                C["save_factor"] = gr.Button("Save as a new concept", elem_id="save-factor")
            C["factor_weights"] = gr.Dataframe(headers=WEIGHT_HEADERS, interactive=True, type="array",
                                               elem_id="factor-weights", label="Features and weights (edit the weights)")

        def engine_call(method: Callable) -> Callable:
            return gpu(method) if gpu is not None else method

        def wire(event, method, inputs: list[str], outputs: list[str], uses_engine: bool = True, **kwargs):
            call = engine_call(method) if uses_engine else method

            def handler(*args):
                return _outputs(_guarded(call, *args), outputs)

            options = {"concurrency_id": "engine", "concurrency_limit": 1} if uses_engine else {}
            return event(handler, inputs=[C[n] for n in inputs], outputs=[C[n] for n in outputs],
                         **options, **{"show_progress": "minimal", **kwargs})

        view = ["state", "editor", "output", "layer_select", "layer_info", "mode", "strength", "step_start",
                "step_end", "enabled", "status", "download", "download_image", "timing"]
        settings = ["prompt", "negative", "seed", "steps", "guidance", "width", "height"]
        repaint = ["state", "output", "timing", "status", "download", "download_image", "layer_info"]
        panel = ["state", "editor", "layer_select", "layer_info", "mode", "strength", "step_start", "step_end",
                 "enabled", "status"]
        changed = [*panel, "output", "timing", "download", "download_image"]

        wire(blocks.load, app.start, ["state"], [*view, *settings, "prompt_notes", "palette_table"])
        for trigger in (C["generate"].click, C["prompt"].submit):
            wire(trigger, app.generate, ["state", *settings], [*view, "prompt_notes"])
        wire(C["dice"].click, lambda: app.dice(), [], ["seed"], uses_engine=False)
        canvas_edit = engine_call(app.canvas_edit)
        edit_outputs = [*repaint, "editor"]

        def on_canvas_edit(state, manual, evt: gr.EventData):
            return _outputs(_guarded(canvas_edit, state, evt._data, not manual), edit_outputs)

        # latest edit wins: each one carries the layer's whole mask, so skipping a queued one loses nothing
        C["editor"].input(on_canvas_edit, [C["state"], C["manual"]], [C[n] for n in edit_outputs],
                          concurrency_id="engine", concurrency_limit=1, trigger_mode="always_last",
                          show_progress="hidden")
        wire(C["apply"].click, app.apply, ["state"], repaint)
        wire(C["layer_select"].input, app.select_layer, ["state", "layer_select"], panel, uses_engine=False)
        wire(C["add_layer"].click, app.add_layer, ["state"], panel, uses_engine=False)
        wire(C["delete_layer"].click, _with_live(app.delete_layer), ["state", "manual"], changed)
        wire(C["clear_layer"].click, _with_live(app.clear_layer), ["state", "manual"], changed)
        wire(C["mode"].input, _with_live(app.set_mode), ["state", "mode", "manual"], changed)
        for trigger in (C["strength"].submit, C["strength"].blur):
            wire(trigger, _with_live(app.set_strength), ["state", "strength", "manual"], changed,
                 trigger_mode="always_last")
        for field_name in ("step_start", "step_end"):
            for trigger in (C[field_name].submit, C[field_name].blur):
                wire(trigger, _with_live(app.set_step_range), ["state", "step_start", "step_end", "manual"], changed,
                     trigger_mode="always_last")
        wire(C["enabled"].input, _with_live(app.set_enabled), ["state", "enabled", "manual"], changed)
        wire(C["keep_outside"].input, _with_live(app.set_keep_outside), ["state", "keep_outside", "manual"], repaint)
        wire(C["mask_upload"].upload, _cleared(_with_live(app.upload_mask), "mask_upload"),
             ["state", "mask_upload", "manual"], [*changed, "mask_upload"])
        for direction in ("left", "up", "down", "right"):
            wire(C[f"move_{direction}"].click, _with_live(_bind(app.nudge, direction)),
                 ["state", "move_step", "manual"], changed, trigger_mode="always_last")
        wire(C["move_reset"].click, _with_live(app.reset_offset), ["state", "manual"], changed)

        click = engine_call(app.click_image)
        click_outputs = [*changed, "inspect_table", "factor_table", "inspect_info"]

        def on_image_click(state, click_mode, manual, evt: gr.SelectData):
            x, y = evt.index if isinstance(evt.index, (list, tuple)) else (None, None)
            if x is not None and state.output is not None:  # the page shows the image enlarged
                scale = canvas.display_scale(*state.output.size, OUTPUT_TARGET)
                x, y = (x + 0.5) / scale, (y + 0.5) / scale
            return _outputs(_guarded(click, state, x, y, click_mode, not manual), click_outputs)

        C["output"].select(on_image_click, [C["state"], C["click_mode"], C["manual"]], [C[n] for n in click_outputs],
                           concurrency_id="engine", concurrency_limit=1, show_progress="minimal")

        for trigger in (C["search"].click, C["search_text"].submit):
            wire(trigger, app.search, ["state", "search_text", "search_block", "search_kind"],
                 ["palette_table", "status"], uses_engine=False)

        pick_concept = engine_call(app.pick_concept)

        def on_palette_pick(state, manual, evt: gr.SelectData):
            return _outputs(_guarded(pick_concept, state, evt.row_value, not manual), changed)

        pick = C["palette_table"].select(on_palette_pick, [C["state"], C["manual"]], [C[n] for n in changed],
                                         concurrency_id="engine", concurrency_limit=1, show_progress="minimal")
        wire(pick.then, app.preview, ["state"], ["preview", "examples", "palette_info", "status"])
        heat_outputs = ["state", "heat", "inspect_info", "status"]
        show_heat = engine_call(app.show_heat)

        def on_inspect_pick(state, evt: gr.SelectData):
            return _outputs(_guarded(show_heat, state, evt.row_value), heat_outputs)

        C["inspect_table"].select(on_inspect_pick, [C["state"]], [C[n] for n in heat_outputs],
                                  concurrency_id="engine", concurrency_limit=1, show_progress="minimal")
        wire(C["layer_from_feature"].click, _with_live(app.layer_from_selected), ["state", "layer_mode", "manual"],
             changed)
        wire(C["factor_pick"].input, app.pick_factor, ["state", "factor_pick"],
             ["factor_weights", "concept_name", "status"], uses_engine=False)
        wire(C["save_factor"].click, app.save_factor, ["state", "factor_pick", "factor_weights", "concept_name"],
             ["state", "status"], uses_engine=False)
        wire(C["session_upload"].upload, _cleared(app.load_session_file, "session_upload"),
             ["state", "session_upload"], [*view, *settings, "prompt_notes", "keep_outside", "session_upload"])
    blocks.paint_app = app  # for tests and the benchmark: the handlers behind the page
    return blocks


def _with_live(method: Callable) -> Callable:
    """Adapt a handler taking ``live`` to the page's "apply on button" checkbox (its last input)."""

    def call(*args):
        *rest, manual = args
        return method(*rest, not manual)

    return call


def _cleared(method: Callable, upload: str) -> Callable:
    """Empty the upload box after its file is read, so the next file can be dropped there."""

    def call(*args):
        return {**(_guarded(method, *args)), upload: None}

    return call


def _bind(method: Callable, direction: str) -> Callable:
    def call(state, step, live=True):
        return method(state, direction, step, live)

    return call


def _outputs(result: dict, names: list[str]) -> list:
    """A handler's named results in the order of ``names``; what it did not return stays as it is. The image is
    shown enlarged (nearest neighbour) so small images are visible and clicks land on whole pixels."""
    if isinstance(result.get("output"), Image.Image):
        result = {**result, "output": for_display(result["output"])}
    return [result.get(name, gr.skip()) for name in names]


def for_display(image: Image.Image) -> Image.Image:
    scale = canvas.display_scale(image.width, image.height, OUTPUT_TARGET)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def _guarded(method: Callable, *args) -> dict:
    """Run a handler; user errors become warnings, anything else a warning too: the server never dies of input."""
    try:
        return method(*args) or {}
    except (PaintError, SAEError) as exc:
        gr.Warning(str(exc))
        return {"status": f"⚠️ {exc}"}
    except Exception as exc:  # noqa: BLE001 - a handler bug must not take the page down
        log.exception("handler %s failed", getattr(method, "__name__", method))
        message = f"Something went wrong ({type(exc).__name__}: {exc}); the canvas and layers are kept."
        gr.Warning(message)
        return {"status": f"⚠️ {message}"}


def serve(model: str = "toy", sae_paths: list[str] | None = None, device: str = "auto", host: str = "127.0.0.1",
          port: int = 7860, share: bool = False) -> None:
    """Load the model and its concepts, and serve the page until interrupted."""
    from .engine import load_engine

    engine = load_engine(model, list(sae_paths or []), device)
    demo = build_app(engine)
    try:
        demo.queue(default_concurrency_limit=4).launch(server_name=host, server_port=port, share=share,
                                                       **LAUNCH_OPTIONS)
    finally:
        shutil.rmtree(demo.paint_app.workdir, ignore_errors=True)


__all__ = ["CSS", "LAUNCH_OPTIONS", "PaintApp", "TabState", "build_app", "serve"]
