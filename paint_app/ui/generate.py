"""Making the image: the first image on page load, Generate, repaints after a change, Apply, the prompt's notes.

``painting_of`` builds what the engine renders, and ``_show`` is the one place that asks the engine for a
painted image; a repaint neither encodes nor decodes a picture nor writes a file (downloads are built when asked
for, in ``sessions``).
"""

from __future__ import annotations

import random
import time
from typing import Any

from ..errors import PaintError, as_float, as_int
from ..painting import Painting
from ..prepare import prepare_hint
from ..session import Session
from . import state as tab
from .outputs import CHANGED, REPAINTED, SETTINGS, Notes, outputs
from .palette import PALETTE_LIMIT
from .state import TabState
from .views import Views


class GenerateHandlers(Views):
    @outputs(*CHANGED, *SETTINGS, "prompt_notes", "palette_table", "tiles")
    def start(self, state: TabState) -> dict:
        """On page load: a first image, the concept tiles and, when there are concepts, a first layer to paint
        with."""
        notes = Notes()
        settings = self.default_settings()
        state.settings = settings
        state.base = self.engine.generate(settings)
        state.output = state.base
        first = self.engine.concepts.first_concept(self.profile)
        if first is not None and not state.layers:
            self.new_layer(state, first.concept, first.label)
        self.find_tiles_for(state, "")
        notes.info(prepare_hint(self.engine) or
                   "Click a concept tile, paint on the canvas: the image beside it follows your strokes.")
        return {**self.whole_view(state, notes), **self.settings_view(settings), "timing": "",
                "tiles": self.tile_grid(state),
                "prompt_notes": self.prompt_notes(settings.prompt, Notes(), quiet=True),
                "palette_table": self.palette_rows(state, "", None, "features")[:PALETTE_LIMIT]}

    @outputs(*CHANGED, "prompt_notes")
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
            tab.resize_layers(state, settings.width, settings.height)
        for layer in tab.drop_step_ranges_past(state, settings.steps):
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

    @outputs("seed")
    def dice(self) -> dict:
        return {"seed": random.SystemRandom().randrange(0, 2**31 - 1)}

    def painting_of(self, state: TabState) -> Painting:
        """What the engine renders for the tab: its settings and its layers, masks in memory (the one place that
        builds it; no PNG, no file)."""
        return tab.painting(state, self.settings_of(state))

    def _show(self, state: TabState, notes: Notes, started: float | None = None) -> str:
        """Make ``state.output`` the image of the tab's painting; returns the timing line."""
        started = time.perf_counter() if started is None else started
        if not state.has_paint():
            state.output = state.base
            return f"Plain image (nothing painted) in {1000 * (time.perf_counter() - started):.0f} ms"
        generation = self.engine.generate_timed(self.painting_of(state))
        state.output = generation.image
        total = time.perf_counter() - started
        return f"Repainted in {1000 * total:.0f} ms (generation {1000 * generation.seconds:.0f} ms)"

    @outputs(*REPAINTED)
    def repaint(self, state: TabState, notes: Notes, live: bool = True) -> dict:
        """Regenerate after a change (or only keep the change when painting applies on the button)."""
        if not live:
            notes.info("Apply on button is on: press Apply to see the change.")
            return {"state": state, "status": notes.text(), "layer_info": self.layer_info(state)}
        timing = self._show(state, notes)
        return {"state": state, "output": state.output, "timing": timing, "status": notes.text(),
                "layer_info": self.layer_info(state)}

    @outputs(*REPAINTED)
    def apply(self, state: TabState) -> dict:
        notes = Notes()
        if not self._ready(state, notes):
            return {"status": notes.text()}
        if not state.has_paint():
            notes.warn("Nothing is painted on any enabled layer, so there is nothing to apply: paint on the "
                       "canvas first. The image is unchanged.")
            return {"status": notes.text()}
        return self.repaint(state, notes)


__all__ = ["GenerateHandlers"]
