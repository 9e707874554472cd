"""Recipes: for each concept, the edits tried for painting it on one block, with the share of trials that worked.

``recipes.json`` beside an SAE::

    {"version": 1, "source": "...", "trials": 8,
     "recipes": {"pink": [{"mode": "replace", "factor": 12, "strength": 1.0, "step_range": null,
                           "score": 0.75}, ...]}}

Each concept's list is ordered best first, so its first edit is the concept's recipe: what a user who wants
"pink here" should paint, as measured (on the toy model, by ground-truth judges on trial scenes; see
``paint_app.toyworld.bench.recipe_trials``). An edit names a feature or a factor, never both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SAEError

RECIPES_NAME = "recipes.json"
EDIT_MODES = ("add", "set", "replace", "paste", "fill")


@dataclass
class Edit:
    mode: str
    feature: int | None = None
    factor: int | None = None
    strength: float = 1.0
    step_range: list[int] | None = None  # [start, end) of the denoising steps; None: every step
    score: float = 0.0  # share of the trials judged to show the concept

    def describe(self) -> str:
        what = f"feature {self.feature}" if self.feature is not None else f"factor {self.factor}"
        return f"{self.mode} {what}"


@dataclass
class Recipes:
    edits: dict[str, list[Edit]] = field(default_factory=dict)  # concept -> edits tried, best first
    trials: int = 0
    source: str = ""

    def best(self, concept: str) -> Edit | None:
        tried = self.edits.get(concept)
        return tried[0] if tried else None


def save_recipes(folder: str | Path, recipes: Recipes) -> None:
    data = {"version": 1, "source": recipes.source, "trials": recipes.trials,
            "recipes": {concept: [asdict(e) for e in edits] for concept, edits in recipes.edits.items()}}
    file = Path(folder) / RECIPES_NAME
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(file)


def load_recipes(folder: str | Path) -> Recipes | None:
    """The recipes beside the SAE in ``folder``; None when it has none."""
    file = Path(folder) / RECIPES_NAME
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
        edits = {str(concept): [_edit(entry, f"recipes.{concept}[{i}]") for i, entry in enumerate(entries)]
                 for concept, entries in data["recipes"].items()}
        return Recipes(edits, int(data.get("trials", 0)), str(data.get("source", "")))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SAEError(f"'{file}' is not a valid recipes file ({exc}); expected "
                       '{"version": 1, "recipes": {"<concept>": [{"mode": ..., "feature" or "factor": ..., '
                       '"strength": ..., "step_range": [start, end] or null, "score": ...}, ...]}}') from None


def _edit(entry: dict, where: str) -> Edit:
    mode = str(entry["mode"])
    if mode not in EDIT_MODES:
        raise ValueError(f"{where}.mode is {mode!r}; allowed: {', '.join(EDIT_MODES)}")
    feature, factor = entry.get("feature"), entry.get("factor")
    if (feature is None) == (factor is None):
        raise ValueError(f"{where} names {'both' if feature is not None else 'neither'} a feature and a factor; "
                         "allowed: exactly one")
    steps = entry.get("step_range")
    if steps is not None and (len(steps) != 2 or not 0 <= int(steps[0]) < int(steps[1])):
        raise ValueError(f"{where}.step_range is {steps!r}; allowed: [start, end] with 0 <= start < end, or null")
    return Edit(mode, None if feature is None else int(feature), None if factor is None else int(factor),
                float(entry.get("strength", 1.0)), None if steps is None else [int(s) for s in steps],
                float(entry.get("score", 0.0)))
