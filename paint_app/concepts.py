"""The concepts a model can be painted with: per block, its SAE, feature labels and factors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from sae.errors import SAEError
from sae.examples import TOP_EXAMPLES_NAME, load_top_examples
from sae.exemplars import pasteable_record
from sae.factors import Factors, load_factors
from sae.labels import Label, load_labels
from sae.model import SAE
from sae.prototypes import Prototypes, load_prototypes
from sae.recipes import Recipes, load_recipes

from .errors import ModelError, PaintError
from .models import ModelProfile
from .modes import MODES, RANKS
from .painting import Choice, Concept, Recipe
from .prepared import use_prepared
from .presets import default_sae_paths, locate_saes


@dataclass(frozen=True)
class Tile:
    """One concept of the palette, as a person asks for it: its name and the edit a pick of it paints."""

    name: str  # what a person asks for: a label's words ("red", "striped") or their own concept's name
    choice: Choice  # what a pick paints: the concept, label=name, and its recipe (mode, strength, steps, score)
    measured: bool  # True: the edit is a measured recipe; False: the best-ranked feature for the label, at defaults
    note: str  # one short line the tile shows, e.g. "100% of 8 trials" or "not measured: best feature for 'dog'"
    paintable: bool = True
    why_not: str = ""  # when not paintable: what is missing, in a few words


@dataclass
class BlockConcepts:
    block: str
    sae: SAE
    source: str
    labels: dict[int, Label] = field(default_factory=dict)
    factors: Factors | None = None
    prototypes: Prototypes | None = None  # for ``replace`` edits (``sae prototypes``)
    examples: dict[int, list[dict]] = field(default_factory=dict)  # top examples, for ``paste`` edits
    recipes: Recipes | None = None  # per concept, the edits tried for painting it, best first

    def label(self, feature: int) -> str:
        entry = self.labels.get(feature)
        return entry.label if entry else ""

    def replaceable(self, feature: int) -> bool:
        """Whether a ``replace`` layer can paint the feature (it has a prototype)."""
        return self.prototypes is not None and self.prototypes.has(feature)

    def pasteable(self, feature: int) -> bool:
        """Whether a ``paste`` layer can paint the feature (it has a top example that can be made again)."""
        return pasteable_record(self.examples.get(feature)) is not None

    def can_paint(self, feature: int, mode: str) -> bool:
        """Whether a layer of ``mode`` can paint the feature (what the mode needs: ``paint_app.modes``)."""
        return MODES[mode].can_paint(self, feature)


class ConceptLibrary:
    """SAEs by block, with labels and factors; resolves a layer's concept into features and weights."""

    def __init__(self, blocks: dict[str, BlockConcepts] | None = None) -> None:
        self.blocks: dict[str, BlockConcepts] = dict(blocks or {})
        self._tiles: dict[tuple, list[Tile]] = {}  # the library's own tiles, per layer defaults and contents
        self._located: dict[str, list[tuple[str | None, Path]]] = {}  # per --sae value: its SAE folders

    @property
    def saes(self) -> dict[str, SAE]:
        return {name: entry.sae for name, entry in self.blocks.items()}

    @classmethod
    def load(cls, paths: list[str], profile: ModelProfile | None = None,
             device: str | torch.device = "cpu") -> ConceptLibrary:
        """Load SAEs from ``paths`` (each a ``--sae`` value: see ``add``); with no paths, those shipped with the
        model, else the model's default preset (``presets.default_sae_paths``)."""
        if not paths and profile is not None:
            shipped = profile.sae_dir is not None and Path(profile.sae_dir).is_dir()
            paths = [str(p) for p in sorted(Path(profile.sae_dir).iterdir()) if p.is_dir()] if shipped else \
                default_sae_paths(profile.name, [])
        library = cls()
        for spec in paths:
            library.add(spec, profile, device)
        return library

    def add(self, spec: str, profile: ModelProfile | None = None,
            device: str | torch.device = "cpu") -> list[BlockConcepts]:
        """Load the SAEs one ``--sae`` value names: an SAE folder, a folder of SAE folders (ours or SAEPaint's
        checkpoints, each named by block), an ``hf://`` URI of either, or a preset (``presets.PRESETS``).
        ``BLOCK=PATH`` names the block of one SAE, or takes that block's SAE from a set."""
        block, path = _split_spec(spec)
        try:
            found = self._located[path] if path in self._located else locate_saes(path)
        except SAEError as exc:
            raise ModelError(f"--sae {spec!r}: {exc}") from None
        self._located[path] = found
        if block and len(found) > 1:
            found = [(name, folder) for name, folder in found if name == block]
            if not found:
                names = ", ".join(sorted(name for name, _ in self._located[path] if name))
                raise ModelError(f"--sae {spec!r}: {path} has no SAE for block {block}; it has SAEs for: {names}")
        elif block:
            found = [(block, found[0][1])]
        unnamed = [str(folder) for name, folder in found if not name]
        if unnamed:
            raise ModelError(f"--sae {spec!r}: the SAE in {unnamed[0]} does not say which block it reads; "
                             "write it as BLOCK=PATH, e.g. down_blocks.2.attentions.1=PATH")
        if len(found) == 1:
            return [self._add_sae(spec, found[0][0], found[0][1], profile, device)]
        return [self._add_sae(f"{name}={path}", name, folder, profile, device) for name, folder in found]

    def _add_sae(self, spec: str, block: str, folder: Path, profile: ModelProfile | None,
                 device: str | torch.device) -> BlockConcepts:
        """Load one SAE folder for ``block``; ``spec`` is the ``--sae`` value that names it alone (its source)."""
        try:
            sae = SAE.from_pretrained(folder, device=device)
        except SAEError as exc:
            raise ModelError(f"--sae {spec!r}: {exc}") from None
        if profile is not None:
            known = {b.name: b for b in profile.blocks}  # others are checked against the UNet when painted
            if block in known and known[block].channels != sae.d_in:
                raise ModelError(f"--sae {spec!r}: the SAE for block {block} reads vectors of size {sae.d_in}, but "
                                 f"block {block} of {profile.name} has {known[block].channels} channels "
                                 f"(SAE folder {folder})")
        sae.config.block = block
        try:
            prototypes = load_prototypes(folder)
            examples = load_top_examples(folder) if (Path(folder) / TOP_EXAMPLES_NAME).is_file() else {}
            recipes = load_recipes(folder)
        except SAEError as exc:
            raise ModelError(f"--sae {spec!r}: {exc}") from None
        entry = BlockConcepts(block, sae, spec, load_labels(folder), load_factors(folder), prototypes, examples,
                              recipes)
        use_prepared(entry, profile)  # words and examples `paint-app prepare` made, where the folder has none
        self.blocks[block] = entry
        return entry

    def get(self, block: str, field_name: str = "block") -> BlockConcepts:
        if block not in self.blocks:
            raise ModelError(f"{field_name} is {block!r} but no SAE is loaded for that block; "
                             f"SAEs are loaded for: {', '.join(sorted(self.blocks)) or 'no block'}")
        return self.blocks[block]

    def resolve(self, concept: Concept, where: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Features and weights of a concept (a feature, a factor or a weighted mix)."""
        try:
            return self._resolve(concept, where)
        except SAEError as exc:
            raise ModelError(str(exc)) from None

    def weights(self, concept: Concept, where: str = "concept") -> dict[int, float]:
        """A concept's features with their weights."""
        return dict(zip(*self.resolve(concept, where)))

    def _resolve(self, concept: Concept, where: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
        entry = self.get(concept.block, f"{where}.block")
        if concept.feature is not None:
            entry.sae.check_feature(concept.feature, f"{where}.feature")
            return (concept.feature,), (1.0,)
        if concept.factor is not None:
            if entry.factors is None:
                raise ModelError(f"{where}.factor is {concept.factor} but block {concept.block!r} has no factors "
                                 "file (factors.safetensors beside its SAE); make one with `sae factors`")
            if not 0 <= concept.factor < entry.factors.n_factors:
                raise ModelError(f"{where}.factor is {concept.factor}; block {concept.block!r} has factors "
                                 f"0..{entry.factors.n_factors - 1}")
            weights = entry.factors.features_of(concept.factor)
            return tuple(weights), tuple(weights.values())
        for feature, _ in concept.mix:
            entry.sae.check_feature(feature, f"{where}.features key")
        return tuple(f for f, _ in concept.mix), tuple(w for _, w in concept.mix)

    def first_concept(self, profile: ModelProfile | None = None) -> Choice | None:
        """What a new layer paints when nothing is picked.

        The model's own choice (``layer_defaults.concept`` in its ``paint_app.json``) when those SAEs are loaded
        and have it; else the feature that best reads its label; None without SAEs."""
        wanted = profile.layer_concept if profile is not None else None
        entry = self.blocks.get(wanted["block"]) if wanted else None
        if entry is not None and "factor" in wanted and entry.factors is not None \
                and wanted["factor"] in entry.factors.labels:
            factor = entry.factors.labels.index(wanted["factor"])
            return Choice(Concept(entry.block, factor=factor), wanted["factor"], source="default")
        if entry is not None and "feature" in wanted and wanted["feature"] < entry.sae.n_features:
            feature = wanted["feature"]
            return Choice(Concept(entry.block, feature=feature), entry.label(feature), source="default")
        rows = self.feature_rows()
        if not rows:
            return None
        best = max(rows, key=lambda r: r["score"])
        return Choice(Concept(best["block"], feature=best["feature"]), best["label"], source="default")

    def recipe_choice(self, block: str, name: str) -> Choice:
        """The concept ``name``'s recipe on ``block`` (``recipes.json``) as a choice: what it paints, and how."""
        entry = self.get(block)
        edit = entry.recipes.best(name) if entry.recipes is not None else None
        if edit is None:
            raise PaintError(f"recipe is {name!r}; block {block} has no recipe of that name")
        concept = Concept(block, feature=edit.feature) if edit.feature is not None else Concept(block, factor=edit.factor)
        recipe = Recipe(edit.mode, edit.strength, tuple(edit.step_range) if edit.step_range else None, edit.score)
        return Choice(concept, name, recipe)

    def tiles(self, search: str = "", custom: Sequence[Choice] = (), profile: ModelProfile | None = None) -> list[Tile]:
        """The palette's concepts as tiles: every distinct name among the recipes' concepts, the feature labels
        and the factor labels (any block; case-insensitive), and the user's own ``custom`` choices.

        A name's tile paints its best measured recipe across blocks (``best_recipe``); where no block has one,
        the best-ranked feature labelled with it (``feature_rows``' ``write`` ranking; else the best factor
        labelled with it) as an ``add`` at the model's layer defaults (``profile``), marked not measured.

        ``search``: the tiles whose name holds every word; an exact name first, then measured before not
        measured, then by score. Without it, every tile: measured first, by score, then by name. The library's
        own tiles are built once per layer defaults (and again when its blocks change), so a search costs a
        filter and a sort. The user's own come first among tiles of equal rank."""
        strength, step_range = layer_defaults(profile)
        key = (strength, step_range, tuple((name, id(e), id(e.labels), len(e.labels), id(e.factors), id(e.recipes))
                                           for name, e in self.blocks.items()))
        if key not in self._tiles:
            self._tiles = {key: self._build_tiles(strength, step_range)}  # one set of defaults at a time
        found = [self._custom_tile(choice, strength, step_range) for choice in custom] + self._tiles[key]
        words = [w for w in search.lower().split() if w]
        if not words:  # the library's tiles are in this order already; the user's own go first among equals
            return sorted(found, key=lambda t: (not t.measured, -tile_score(t))) if custom else list(found)
        exact = " ".join(words)
        hits = [(i, t) for i, t in enumerate(found) if all(w in t.name.lower() for w in words)]
        hits.sort(key=lambda it: (it[1].name.lower() != exact, not it[1].measured, -(tile_score(it[1])), it[0]))
        return [t for _, t in hits]

    def _build_tiles(self, strength: float, step_range: tuple[int, int] | None) -> list[Tile]:
        names: dict[str, str] = {}  # lower-case -> the first spelling seen
        for _, entry in sorted(self.blocks.items()):
            for concept in (entry.recipes.edits if entry.recipes is not None else {}):
                names.setdefault(concept.strip().lower(), concept.strip())
        for _, entry in sorted(self.blocks.items()):
            for feature in sorted(entry.labels):
                text = entry.labels[feature].label.strip()
                if text:
                    names.setdefault(text.lower(), text)
        for _, entry in sorted(self.blocks.items()):
            for text in (entry.factors.labels if entry.factors is not None else []):
                if text.strip():
                    names.setdefault(text.strip().lower(), text.strip())
        by_label: dict[str, list[dict]] = {}
        for row in sorted(self.feature_rows(), key=paint_rank):  # stable: by block, then feature, within a rank
            if row["label"].strip():
                by_label.setdefault(row["label"].strip().lower(), []).append(row)
        tiles = []
        for key, name in names.items():
            tiles.append(self._measured_tile(key, name) or self._feature_tile(name, by_label.get(key), strength,
                                                                               step_range)
                         or self._factor_tile(key, name, strength, step_range)
                         or Tile(name, Choice(self._any_concept(), name, None), False,
                                 "cannot be painted on this model", False, "no recipe or feature"))
        return sorted(tiles, key=lambda t: (not t.measured, -tile_score(t), t.name.lower()))

    def _measured_tile(self, key: str, name: str) -> Tile | None:
        found = best_recipe(self, key)
        if found is None:
            return None
        block, edit, trials = found
        concept = Concept(block, feature=edit.feature) if edit.feature is not None else Concept(block, factor=edit.factor)
        recipe = Recipe(edit.mode, edit.strength, tuple(edit.step_range) if edit.step_range else None, edit.score)
        note = f"{100 * edit.score:.0f}% of {trials} trials" if trials else f"{100 * edit.score:.0f}% in trials"
        return Tile(name, Choice(concept, name, recipe), True, note)

    @staticmethod
    def _feature_tile(name: str, rows: list[dict] | None, strength: float,
                      step_range: tuple[int, int] | None) -> Tile | None:
        if not rows:
            return None
        best = rows[0]
        choice = Choice(Concept(best["block"], feature=best["feature"]), name, Recipe("add", strength, step_range))
        return Tile(name, choice, False, f"not measured: best feature for '{name}'")

    def _factor_tile(self, key: str, name: str, strength: float, step_range: tuple[int, int] | None) -> Tile | None:
        candidates = [(block, i) for block, entry in sorted(self.blocks.items()) if entry.factors is not None
                      for i, text in enumerate(entry.factors.labels) if text.strip().lower() == key]
        if not candidates:
            return None

        def quality(candidate: tuple[str, int]) -> float:  # how well its features read their labels, by weight
            entry = self.blocks[candidate[0]]
            top = entry.factors.features_of(candidate[1])
            return sum(w * (entry.labels[f].score if f in entry.labels else 0.0) for f, w in top.items()) \
                / max(1e-6, sum(top.values()))

        block, factor = max(candidates, key=lambda c: (quality(c), [-ord(ch) for ch in c[0]], -c[1]))
        choice = Choice(Concept(block, factor=factor), name, Recipe("add", strength, step_range))
        return Tile(name, choice, False, f"not measured: factor labelled '{name}'")

    def _any_concept(self) -> Concept:
        block = min(self.blocks) if self.blocks else "-"
        return Concept(block, feature=0)

    def _custom_tile(self, choice: Choice, strength: float, step_range: tuple[int, int] | None) -> Tile:
        name = choice.label.strip() or choice.concept.describe()
        recipe = choice.recipe or Recipe("add", strength, step_range)
        chosen = replace(choice, label=name, recipe=recipe, source="mine")
        measured = recipe.score is not None
        note = f"yours: {100 * recipe.score:.0f}% in trials" if measured else "yours: not measured"
        try:
            self.resolve(choice.concept, "concept")
        except ModelError:
            return Tile(name, chosen, measured, note, False, f"no SAE for block {choice.concept.block}"
                        if choice.concept.block not in self.blocks else "its features are not in this SAE")
        mode = MODES.get(recipe.mode)
        features = self.weights(choice.concept)
        if mode is None or not any(mode.can_paint(self.blocks[choice.concept.block], f) for f in features):
            return Tile(name, chosen, measured, note, False, (mode.lacks() if mode else "") or
                        f"mode {recipe.mode!r} cannot paint it")
        return Tile(name, chosen, measured, note)

    def feature_rows(self, block: str | None = None, search: str | None = None, rank: str = "write") -> list[dict]:
        """One row per feature (block, feature, label, score, write, source, frequency, sigma, and for each mode
        that needs something of a concept (``replace``, ``paste``, ``fill``): whether the feature has it, under the
        mode's name, and the mode's measured score where the labels have one, ``<mode>_score``), optionally
        filtered.

        Search results come best first, by ``rank`` (``paint_app.modes``: each mode names its own): ``write`` (how
        well painting the feature writes its label) where the labels measured it, else ``score`` (how well its
        activation reads the label); a mode's own rank lists the features it can paint first, by its score where
        measured, then by ``score``."""
        if rank not in RANKS:
            raise PaintError(f"rank is {rank!r}; allowed: {', '.join(RANKS)}")
        if block is not None:
            self.get(block)
        words = [w for w in (search or "").lower().split() if w]
        needing = [mode for mode in MODES.values() if mode.needs]
        rows = []
        for name, entry in sorted(self.blocks.items()):
            if block is not None and name != block:
                continue
            frequency = entry.sae.feature_frequency.tolist()
            sigma = entry.sae.feature_mean.tolist()
            for feature in range(entry.sae.n_features):
                label = entry.labels.get(feature)
                text = label.label if label else ""
                if words and not all(w in text.lower() for w in words):
                    continue
                row = {"block": name, "feature": feature, "label": text,
                       "score": round(label.score, 4) if label else 0.0, "write": label.write if label else None,
                       "source": label.source if label else "", "frequency": frequency[feature],
                       "sigma": sigma[feature]}
                for mode in needing:
                    row[mode.name] = mode.can_paint(entry, feature)
                    row[f"{mode.name}_score"] = getattr(label, mode.name, None) if label else None
                rows.append(row)
        if words:
            rows.sort(key=SORT_KEYS[rank])
        return rows

    def factor_rows(self, block: str | None = None, search: str | None = None) -> list[dict]:
        words = [w for w in (search or "").lower().split() if w]
        rows = []
        for name, entry in sorted(self.blocks.items()):
            if entry.factors is None or (block is not None and name != block):
                continue
            for factor, label in enumerate(entry.factors.labels):
                if words and not all(w in label.lower() for w in words):
                    continue
                top = entry.factors.features_of(factor)
                rows.append({"block": name, "factor": factor, "label": label,
                             "features": {str(f): round(w, 4) for f, w in list(top.items())[:8]},
                             **{mode.name: any(mode.can_paint(entry, f) for f in top)
                                for mode in MODES.values() if mode.needs}})
        return rows

    def recipe_rows(self, block: str | None = None, search: str | None = None) -> list[dict]:
        """One row per concept and block with a recipe (``recipes.json``): the edit measured to paint the
        concept best there (block, concept, mode, feature or factor, strength, step_range, score, tried: how
        many edits were tried), best first across blocks when searching."""
        words = [w for w in (search or "").lower().split() if w]
        rows = []
        for name, entry in sorted(self.blocks.items()):
            if entry.recipes is None or (block is not None and name != block):
                continue
            for concept, tried in entry.recipes.edits.items():
                if not tried or (words and not all(w in concept.lower() for w in words)):
                    continue
                best = tried[0]
                rows.append({"block": name, "concept": concept, "mode": best.mode, "feature": best.feature,
                             "factor": best.factor, "strength": best.strength, "step_range": best.step_range,
                             "score": best.score, "tried": len(tried), "edit": best.describe()})
        if words:
            rows.sort(key=lambda r: -r["score"])
        return rows


def layer_defaults(profile: ModelProfile | None) -> tuple[float, tuple[int, int] | None]:
    """The strength and step range a new layer starts with on the model (its ``layer_defaults``), the step range
    fitted to its steps (None where nothing of it is left)."""
    if profile is None:
        return ModelProfile.layer_strength, None
    return profile.layer_strength, fit_steps(profile.layer_step_range, profile.steps)


def fit_steps(step_range: tuple[int, int] | None, steps: int) -> tuple[int, int] | None:
    if step_range is None:
        return None
    start, end = int(step_range[0]), min(int(step_range[1]), steps)
    return (start, end) if 0 <= start < end else None


def best_recipe(library: ConceptLibrary, key: str):
    """(block, edit, trials) of the concept's best measured recipe across blocks, or None where no block has one
    that it can paint (``key``: the concept's name, lower case).

    On each block its first edit (``recipes.json``, best first) that the block can paint. Across blocks: the
    highest score; on a tie, the block whose other edits for the concept score higher (compared best first: the
    runner-up, then the next...) — the best of many 8-trial scores is partly luck, and more edits that paint the
    concept on the same block are independent evidence that the block carries it; then the cheaper edit (add,
    replace, paste, fill; a feature before a factor, as within a block); then the block's name."""
    candidates = []
    for block, entry in sorted(library.blocks.items()):
        if entry.recipes is None:
            continue
        tried = next((edits for concept, edits in entry.recipes.edits.items() if concept.strip().lower() == key), None)
        for i, edit in enumerate(tried or []):
            features = [edit.feature] if edit.feature is not None else \
                (list(entry.factors.features_of(edit.factor)) if entry.factors is not None
                 and 0 <= edit.factor < entry.factors.n_factors else [])
            if edit.mode in MODES and any(entry.can_paint(f, edit.mode) for f in features):
                rest = tuple(-e.score for j, e in enumerate(tried) if j != i)
                candidates.append(((-edit.score, rest, _mode_rank(edit.mode), edit.feature is None, block),
                                   block, edit, entry.recipes.trials))
                break
    if not candidates:
        return None
    _, block, edit, trials = min(candidates, key=lambda c: c[0])
    return block, edit, trials


def _mode_rank(mode: str) -> int:
    order = ("add", "replace", "paste", "fill")  # cheapest first, as recipes order their ties
    return order.index(mode) if mode in order else len(order)


def tile_score(tile: Tile) -> float:
    """A tile's measured score (0 where not measured), to order tiles."""
    return tile.choice.recipe.score if tile.choice.recipe is not None and tile.choice.recipe.score is not None \
        else 0.0


def tile_row(tile: Tile) -> dict:
    """A tile as a flat row (``paint-app features --search``): the name and the edit a pick applies."""
    concept, recipe = tile.choice.concept, tile.choice.recipe
    return {"name": tile.name, "block": concept.block, "mode": recipe.mode if recipe else None,
            "feature": concept.feature, "factor": concept.factor,
            "features": None if concept.mix is None else {str(f): w for f, w in concept.mix},
            "strength": recipe.strength if recipe else None,
            "step_range": list(recipe.step_range) if recipe and recipe.step_range else None,
            "score": recipe.score if recipe else None, "measured": tile.measured, "note": tile.note,
            "paintable": tile.paintable, "why_not": tile.why_not, "source": tile.choice.source}


def paint_rank(row: dict) -> tuple[int, float]:
    """Sort key of a feature row, best painter first: rows with a write score (by it), then the rest by score."""
    return (0, -row["write"]) if row["write"] is not None else (1, -row["score"])


def trial_rank(mode: str):
    """Sort key of feature rows for ``mode`` layers (a mode that needs something of a concept): the features the
    mode can paint first, by their measured score of that name where there is one, then by label score."""

    def key(row: dict) -> tuple[int, float, float]:
        if not row[mode]:
            return (2, 0.0, -row["score"])
        if row[f"{mode}_score"] is None:
            return (1, 0.0, -row["score"])
        return (0, -row[f"{mode}_score"], -row["score"])

    return key


SORT_KEYS = {rank: paint_rank if rank == "write" else trial_rank(rank) for rank in RANKS}


def _split_spec(spec: str) -> tuple[str, str]:
    """``BLOCK=PATH`` as (block, path); any other ``--sae`` value as ("", value)."""
    block, sep, path = spec.partition("=")
    if sep and block and "/" not in block and ":" not in block:
        return block, path
    return "", spec


__all__ = ["BlockConcepts", "ConceptLibrary", "PaintError", "Tile", "best_recipe", "layer_defaults", "tile_row"]
