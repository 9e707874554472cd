"""The palette: searching concepts (features, factors, recipes, the user's own), picking one, its preview."""

from __future__ import annotations

from typing import Any

from PIL import Image

from sae.errors import SAEError

from .. import canvas
from ..canvas import CanvasLayer
from ..errors import PaintError
from ..modes import MODES
from ..painting import Choice, Concept
from . import state as tab
from .outputs import CHANGED, Notes, outputs
from .state import TabState
from .views import Views

PALETTE_LIMIT = 200
NEEDING = tuple(name for name, mode in MODES.items() if mode.needs)  # modes that need something of a concept
# "paints": how well the concept paints; one column per mode in NEEDING: whether (and how well) it can paint it
PALETTE_HEADERS = ["kind", "block", "id", "label", "frequency", "paints", *NEEDING]


def trial_cell(row: dict, mode: str) -> str:
    """The palette's ``replace`` or ``paste`` cell of a feature row: "" (the mode cannot paint it), "yes", or
    "yes, 88%" (its measured score)."""
    if not row[mode]:
        return ""
    score = row[f"{mode}_score"]
    return "yes" if score is None else f"yes, {score:.0%}"


class PaletteHandlers(Views):
    def block_choices(self) -> list[str]:
        return ["all blocks", *sorted(self.engine.concepts.blocks)]

    @outputs("palette_table", "status")
    def search(self, state: TabState, text: Any, block: Any, kind: Any) -> dict:
        notes = Notes()
        words = (text or "").strip()
        if len(words) > 200:
            notes.warn(f"search is {len(words)} characters; allowed: at most 200")
            return {"status": notes.text()}
        blocks = self.engine.concepts.blocks
        block_name = None if block in (None, "", "all blocks") else block
        if block_name is not None and block_name not in blocks:
            notes.warn(f"block is {block_name!r}; allowed: all blocks, {', '.join(sorted(blocks))}")
            return {"status": notes.text()}
        rows = self.palette_rows(state, words, block_name, kind or "features")
        if not rows and kind == "recipes" and not any(blocks[b].recipes for b in ([block_name] if block_name
                                                                                   else blocks)):
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
            return [["factor", r["block"], r["factor"], r["label"], "", "", *("yes" if r[m] else "" for m in NEEDING)]
                    for r in concepts.factor_rows(block, words)]
        if kind == "recipes":
            # "paints": the share of the recipe's trials judged to show the concept
            return [["recipe", r["block"], self.recipe_index(r["block"], r["concept"]), f"{r['concept']}: {r['edit']}",
                     "", f"{r['score']:.0%}", *("yes" if r["mode"] == m else "" for m in NEEDING)]
                    for r in concepts.recipe_rows(block, words)]
        if kind == "mine":
            terms = words.lower().split()
            return [["mine", c.concept.block, i, c.label, "", "", *("" for _ in NEEDING)]
                    for i, c in enumerate(state.custom)
                    if (block is None or c.concept.block == block) and all(t in c.label.lower() for t in terms)]
        # "paints": the label's write score (how well painting the feature writes its label), where known;
        # "replace", "paste", "fill": whether the mode can paint it (a prototype, an example), with the mode's
        # score where measured. A search lists the best concepts for the active layer's mode first (its rank).
        layer = state.active_layer()
        rank = MODES[layer.mode].rank if layer is not None and layer.mode in MODES else "write"
        return [["feature", r["block"], r["feature"], r["label"], f"{r['frequency']:.4f}",
                 "" if r["write"] is None else f"{r['write']:.2f}", *(trial_cell(r, m) for m in NEEDING)]
                for r in concepts.feature_rows(block, words, rank)]

    def recipe_index(self, block: str, concept: str) -> int:
        return list(self.engine.concepts.blocks[block].recipes.edits).index(concept)

    def concept_of_row(self, state: TabState, row: Any) -> Choice:
        """The concept a palette row names, with its recipe for a recipe row."""
        try:
            kind, block, index, label = row[0], row[1], int(float(row[2])), str(row[3])
        except (TypeError, ValueError, IndexError):
            raise PaintError(f"palette row is {row!r}; allowed: a row of the palette table") from None
        entry = self.engine.concepts.get(block, "palette block")
        if kind == "feature":
            entry.sae.check_feature(index, "palette feature")
            return Choice(Concept(block, feature=index), label or f"feature {index}")
        if kind == "factor":
            if entry.factors is None or not 0 <= index < entry.factors.n_factors:
                raise PaintError(f"factor is {index}; block {block} has no such factor")
            return Choice(Concept(block, factor=index), label)
        if kind == "recipe":
            concepts = list(entry.recipes.edits) if entry.recipes is not None else []
            if not 0 <= index < len(concepts) or entry.recipes.best(concepts[index]) is None:
                raise PaintError(f"recipe is {index}; block {block} has no such recipe")
            return self.engine.concepts.recipe_choice(block, concepts[index])
        if kind == "mine" and 0 <= index < len(state.custom):
            return state.custom[index]
        raise PaintError(f"palette row kind is {kind!r}; allowed: feature, factor, recipe, mine")

    @outputs(*CHANGED)
    def pick_concept(self, state: TabState, row: Any, live: bool = True) -> dict:
        """One click on a palette row: the active layer paints with that concept (a new layer if there is none)."""
        notes = Notes()
        try:
            chosen = self.concept_of_row(state, row)
        except (PaintError, SAEError) as exc:
            notes.warn(str(exc))
            return {"status": notes.text()}
        return self.paint_choice(state, chosen, notes, live)

    @outputs(*CHANGED)
    def paint_choice(self, state: TabState, chosen: Choice, notes: Notes, live: bool = True) -> dict:
        """The active layer paints ``chosen`` with its recipe (mode, strength, steps) where it has one; a new layer
        if there is none."""
        state.selected = chosen
        if state.active_layer() is None:
            layer = self.new_layer(state, chosen.concept, chosen.label)
            self._follow_recipe(state, layer, chosen, notes)
            notes.info(f"New layer '{layer.name}': paint it on the canvas.")
            return self.edited(state, notes)

        def change(target: CanvasLayer) -> bool:
            before = (target.concept, target.mode, target.strength, target.step_range)
            target.concept = chosen.concept
            tab.rename_layer(state, target, chosen.label or target.concept.describe())
            notes.info(f"Layer {state.active + 1} now paints '{target.name}'.")
            self._follow_recipe(state, target, chosen, notes)
            changed = before != (target.concept, target.mode, target.strength, target.step_range)
            if not self._paintable(chosen.concept, target.mode):
                notes.info(f"It has {MODES[target.mode].lacks()}, so the layer now adds it.")
                target.mode = "add"
            return changed

        return {"state": state, **self._change_layer(state, notes, live, change)}

    def _follow_recipe(self, state: TabState, layer: CanvasLayer, chosen: Choice, notes: Notes) -> None:
        """A recipe row sets the layer's mode, strength and steps to the recipe's (steps that do not fit the
        session's become every step)."""
        recipe = chosen.recipe
        if recipe is None:
            return
        step_range = tab.fitting_step_range(recipe.step_range, self.settings_of(state).steps)
        layer.mode, layer.strength, layer.step_range = recipe.mode, recipe.strength, step_range
        shown = "every step" if step_range is None else f"steps {step_range[0]}-{step_range[1]}"
        measured = ("" if recipe.score is None else
                    f" (judged right in {recipe.score:.0%} of its trials, the rest of the image kept)")
        notes.info(f"Its recipe: {recipe.mode} {layer.concept.describe()} at strength {recipe.strength:g}, {shown}"
                   f"{measured}.")

    @outputs("preview", "examples", "palette_info", "status")
    def preview(self, state: TabState) -> dict:
        """The selected concept painted everywhere on an empty prompt, and the probe images where it is strongest."""
        notes = Notes()
        chosen = state.selected
        if chosen is None:
            return {}
        try:
            image = self.cache.preview(chosen.concept, self.profile.layer_strength)
            examples = self.cache.top_examples(chosen.concept.block, self.engine.concepts.weights(chosen.concept))
        except (PaintError, SAEError) as exc:
            notes.warn(f"No preview for this concept: {exc}")
            return {"status": notes.text()}
        scale = canvas.display_scale(image.width, image.height, 256)
        info = (f"**{chosen.label}** ({chosen.concept.describe()}): left the "
                f"empty prompt, right the concept painted everywhere at strength {self.profile.layer_strength:g}.")
        return {"preview": image.resize((image.width * scale, image.height * scale), Image.NEAREST),
                "examples": examples, "palette_info": info}

    def _paintable(self, concept: Concept, mode: str) -> bool:
        """Whether a layer of ``mode`` can paint the concept (what the mode needs: a prototype, an example)."""
        entry = self.engine.concepts.blocks.get(concept.block)
        if MODES[mode].needs is None:
            return True
        return entry is not None and any(entry.can_paint(f, mode) and w > 0
                                         for f, w in self.engine.concepts.weights(concept).items())


__all__ = ["NEEDING", "PALETTE_HEADERS", "PALETTE_LIMIT", "PaletteHandlers", "trial_cell"]
