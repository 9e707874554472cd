"""PaintBench on the toy model: does painting a concept put it inside the mask, and nowhere else?

For each labelled colour, texture and shape concept and each block with an SAE: on K held-out scenes whose
caption lacks the concept, paint the concept's best feature and its best factor into
a random rectangle (sides 24 or 32 px, on the 8-px grid of the coarsest block) at the given strength, and judge:
- success: the concept is judged present inside the mask (``Judges``: colour, texture or shape of the region);
- base rate: the same judgement on the unpainted image (what success would be by chance);
- leakage: the fraction of pixels outside the mask whose colour moved by more than ``LEAK_THRESHOLD`` (RGB
  Euclidean distance, 0-255 scale) between the unpainted and the painted image (same seed); also reported beyond
  ``EDGE_PX`` pixels of the mask (one latent cell: the VAE decoder spreads a painted edge by a few pixels, so
  this separates the blur at the edge from changes elsewhere in the picture);
- removal (erase mode): on scenes whose caption names the concept and whose unpainted image shows it, erase the
  best feature over the object (its region dilated to the 4-px grid); removal is the concept judged gone there,
  and the share of the box's pixels judged background after (and before) says whether it became background or
  something else.
  In ``replace`` and ``paste`` modes the object's box is instead painted with the scene's background (its
  best-reading feature, replaced or pasted).

The best feature is, among the features labelled with the concept, the one that best *writes* it (highest
``write`` score: its painted direction closest to the concept's mean difference), with ``feature_by="read"``
the one that best reads it (highest label score: its activation map closest to the concept's map), or with
``feature_by="replace"`` (``"paste"``) the one that best paints it by replacing (pasting): highest ``replace``
(``paste``) score, the share of ``trial_scores``' trial edits, on the labels' scenes, judged to show it.

``mode`` is how the feature and factor are painted: ``add`` (the default), ``set``, ``replace`` (the block
and the later blocks of its level overwritten with the concept's prototype; ``sae.prototypes``) or ``paste``
(the feature's top example made again and moved onto the mask; ``sae.exemplars``). Erasing is the SAE's
``erase``, or in ``replace`` and ``paste`` modes the scene's background painted over the object that way.
In ``recipe`` mode each concept is painted with its recipe, the edit ``recipe_trials`` measured best for it
(any mode, ``fill`` included; its own strength and steps; ``sae.recipes``), and erasing is ``replace``'s.
In ``tile`` mode each concept is painted as a new user paints it: the first tile the palette shows for its word
(``ConceptLibrary.tiles``) with the edit a pick of it sets (whatever block, mode, strength and steps it says);
one result per concept, on the tile's block, and erasing is ``replace``'s on that block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paint_app.engine import Engine
from paint_app.session import Layer, Mask, Session
from sae.recipes import Edit

from .evaluate import object_region
from .judges import Judges, colour_fractions
from .labels import CONCEPT_KIND, TRIAL_MODES, best_labelled
from .world import COLOUR_NAMES, SHAPES, TEXTURES, Scene, caption, scene_for_seed

BENCH_SEED_BASE = 50_000_000
TRIAL_SEED_BASE = 30_500_000  # replace and paste scores: in the labels' seed range, past the scenes labels read
LEAK_THRESHOLD = 40.0
EDGE_PX = 4
PAINTED_KINDS = ("colour", "texture", "shape")
TILE_ROW = "each word's tile"  # tile mode's summary row: every concept, on the block its tile chose


@dataclass
class Result:
    block: str
    concept: str
    kind: str
    feature: int | None
    feature_score: float
    factor: int | None
    success_feature: float
    success_factor: float | None
    base_rate: float
    leakage_feature: float
    leakage_factor: float | None
    removal: float | None
    n: int
    n_erase: int
    far_leakage_feature: float | None = None  # beyond EDGE_PX of the mask
    far_leakage_factor: float | None = None
    feature_write: float | None = None  # the painted feature's write score (None where labels have none)
    erased_background: float | None = None  # erase trials: share of the object's box judged background after
    base_background: float | None = None  # ... and before
    feature_replace: float | None = None  # the painted feature's replace (in paste mode: paste) score, if any
    edit: str | None = None  # in recipe mode: the concept's recipe, e.g. "replace factor 30"


def best_feature(concepts, block: str, concept: str, by: str = "write",
                 mode: str = "add") -> tuple[int | None, float, float | None]:
    """(feature, its label score, its write score) of the concept's best labelled feature (``best_labelled``);
    of those a layer of ``mode`` can paint (``replace``: with a prototype, ``paste``: with a top example)."""
    entry = concepts.blocks[block]
    labels = {f: label for f, label in entry.labels.items() if entry.can_paint(f, mode)}
    feature = best_labelled(labels, concept, by)
    if feature is None:
        return None, 0.0, None
    return feature, labels[feature].score, labels[feature].write


def best_factor(concepts, block: str, concept: str, mode: str = "add") -> int | None:
    """The factor labelled with the concept whose strongest feature is best labelled (factors keep no scores),
    of those with a feature a layer of ``mode`` can paint."""
    entry = concepts.blocks[block]
    if entry.factors is None:
        return None
    candidates = [i for i, label in enumerate(entry.factors.labels) if label == concept and
                  any(entry.can_paint(f, mode) for f in entry.factors.features_of(i))]
    if not candidates:
        return None

    def quality(factor: int) -> float:
        top = entry.factors.features_of(factor)
        return sum(w * (entry.labels[f].score if f in entry.labels and entry.labels[f].label == concept else 0.0)
                   for f, w in top.items()) / max(1e-6, sum(top.values()))

    return max(candidates, key=quality)


def paint_trials(concept: str, k: int, seed_base: int) -> list[tuple[str, int, list[int], np.ndarray]]:
    """The ``k`` painting trials of a concept: (caption, seed, rectangle, its mask) of scenes that lack it."""
    rng = np.random.default_rng([seed_base, concepts_to_paint().index(concept)])
    trials = []
    for i in range(k):
        scene, seed = scene_lacking(concept, seed_base + 1000 * i)
        rect = random_rect(rng)
        trials.append((caption(scene, np.random.default_rng(seed)), seed, rect, rect_mask(rect)))
    return trials


def scene_lacking(concept: str, seed: int):
    kind = CONCEPT_KIND[concept]
    while True:
        scene = scene_for_seed(seed, n_objects=1 + seed % 2)
        if all(getattr(o, kind) != concept for o in scene.objects):
            return scene, seed
        seed += 1_000_003


def random_rect(rng: np.random.Generator, size: int = 64) -> list[int]:
    w, h = (int(v) for v in rng.choice([24, 32], 2))
    x0 = int(rng.integers(0, (size - w) // 8 + 1)) * 8
    y0 = int(rng.integers(0, (size - h) // 8 + 1)) * 8
    return [x0, y0, x0 + w, y0 + h]


def rect_mask(rect: list[int], size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    x0, y0, x1, y1 = rect
    mask[y0:y1, x0:x1] = True
    return mask


def leakage(base: np.ndarray, painted: np.ndarray, mask: np.ndarray, margin: int = 0) -> float:
    """The share of pixels outside ``mask`` (grown by ``margin`` pixels) whose colour moved by > LEAK_THRESHOLD."""
    from scipy.ndimage import binary_dilation

    moved = np.linalg.norm(painted.astype(np.float32) - base.astype(np.float32), axis=-1) > LEAK_THRESHOLD
    outside = ~(binary_dilation(mask, iterations=margin) if margin else mask)
    return float(moved[outside].mean())


class Bench:
    def __init__(self, engine: Engine, judges: Judges, strength: float, k: int,
                 step_range: tuple[int, int] | None = None, keep_outside: bool = False,
                 feature_by: str = "write", mode: str = "add") -> None:
        self.engine = engine
        self.mode = mode
        self.feature_by = feature_by
        self.step_range = step_range
        self.judges = judges
        self.strength = strength
        self.k = k
        profile = engine.model.profile
        self.base_session = Session(model=engine.model.name, width=profile.width, height=profile.height,
                                    steps=profile.steps, guidance=profile.guidance, keep_outside=keep_outside)
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def image(self, prompt: str, seed: int, layers: list[Layer] | None = None) -> np.ndarray:
        if not layers and (prompt, seed) in self._cache:
            return self._cache[(prompt, seed)]
        session = Session(**{**self.base_session.__dict__, "prompt": prompt, "seed": seed, "layers": layers or []})
        image = np.asarray(self.engine.generate(session).convert("RGB"))
        if not layers:
            self._cache[(prompt, seed)] = image
        return image

    def judged(self, kind: str, image: np.ndarray, mask: np.ndarray) -> str:
        return self.judges.judge(kind, image, mask)[0]

    def run_concept(self, block: str, concept: str) -> Result:
        if self.mode == "recipe":
            return self.run_recipe(block, concept)
        kind = CONCEPT_KIND[concept]
        feature, score, write = best_feature(self.engine.concepts, block, concept, self.feature_by, mode=self.mode)
        factor = best_factor(self.engine.concepts, block, concept, self.mode)
        painted = {name: self.trials(concept, None if index is None else
                                     dict(block=block, strength=self.strength, step_range=self.step_range,
                                          mode=self.mode, **{name: index}))
                   for name, index in (("feature", feature), ("factor", factor))}
        removal, n_erase, after, before = self.erase(block, concept, feature) if feature is not None else \
            (None, 0, None, None)
        label = None if feature is None else self.engine.concepts.blocks[block].labels[feature]
        replace_score = None if label is None else label.paste if self.mode == "paste" else label.replace
        (hits, leaks, far), base = painted["feature"], self.base_hits(concept)
        factor_hits, factor_leaks, factor_far = painted["factor"]
        return Result(block, concept, kind, feature, score, factor, mean(hits) or 0.0, mean(factor_hits),
                      mean(base) or 0.0, mean(leaks) or 0.0, mean(factor_leaks), removal, self.k, n_erase, mean(far),
                      mean(factor_far), write, after, before, replace_score)

    def run_tile(self, concept: str) -> Result:
        """Paint the first tile the palette shows for the concept's word, with the edit a pick of it sets."""
        tiles = self.engine.concepts.tiles(concept, profile=self.engine.model.profile)
        tile = tiles[0] if tiles and tiles[0].paintable else None
        if tile is None:
            return Result("-", concept, CONCEPT_KIND[concept], None, 0.0, None, 0.0, None,
                          mean(self.base_hits(concept)) or 0.0, 0.0, None, None, self.k, 0)
        chosen, recipe = tile.choice.concept, tile.choice.recipe
        fields = dict(block=chosen.block, mode=recipe.mode, strength=recipe.strength, step_range=recipe.step_range,
                      feature=chosen.feature, factor=chosen.factor, features=chosen.weights)
        hits, leaks, far = self.trials(concept, fields)
        removal, n_erase, after, before = self.erase(chosen.block, concept, None, "replace")
        what = f"feature {chosen.feature}" if chosen.feature is not None else \
            f"factor {chosen.factor}" if chosen.factor is not None else f"mix of {len(chosen.mix)} features"
        steps = "every step" if recipe.step_range is None else f"steps {list(recipe.step_range)}"
        edit = f"'{tile.name}': {recipe.mode} {what}, strength {recipe.strength:g}, {steps}" + \
            ("" if tile.measured else " (not measured)")
        return Result(chosen.block, concept, CONCEPT_KIND[concept], chosen.feature, recipe.score or 0.0, chosen.factor,
                      mean(hits) or 0.0, None, mean(self.base_hits(concept)) or 0.0, mean(leaks) or 0.0, None, removal,
                      self.k, n_erase, mean(far), None, None, after, before, None, edit)

    def run_recipe(self, block: str, concept: str) -> Result:
        """Paint the concept's recipe (its best edit in ``recipes.json``); erase by painting the background over
        the object with ``replace``."""
        entry = self.engine.concepts.blocks[block]
        edit = entry.recipes.best(concept) if entry.recipes is not None else None
        fields = None if edit is None else dict(block=block, mode=edit.mode, strength=edit.strength,
                                                feature=edit.feature, factor=edit.factor,
                                                step_range=tuple(edit.step_range) if edit.step_range else None)
        hits, leaks, far = self.trials(concept, fields)
        removal, n_erase, after, before = self.erase(block, concept, None, "replace")
        return Result(block, concept, CONCEPT_KIND[concept], None if edit is None else edit.feature,
                      0.0 if edit is None else edit.score, None, mean(hits) or 0.0, None,
                      mean(self.base_hits(concept)) or 0.0, mean(leaks) or 0.0, None, removal, self.k, n_erase,
                      mean(far), None, None, after, before, None, None if edit is None else edit.describe())

    def base_hits(self, concept: str) -> list[bool]:
        """Whether each trial's unpainted image already shows the concept inside the rectangle."""
        return [self.judged(CONCEPT_KIND[concept], self.image(prompt, seed), mask) == concept
                for prompt, seed, _, mask in paint_trials(concept, self.k, BENCH_SEED_BASE)]

    def trials(self, concept: str, fields: dict | None) -> tuple[list[bool], list[float], list[float]]:
        """(judged the concept, leakage, leakage beyond EDGE_PX) of each trial painted with a layer of ``fields``
        (none where ``fields`` is None)."""
        hits, leaks, far = [], [], []
        for prompt, seed, rect, mask in paint_trials(concept, self.k, BENCH_SEED_BASE) if fields else []:
            base = self.image(prompt, seed)
            painted = self.image(prompt, seed, [Layer(mask=Mask(rects=[rect]), **fields)])
            hits.append(self.judged(CONCEPT_KIND[concept], painted, mask) == concept)
            leaks.append(leakage(base, painted, mask))
            far.append(leakage(base, painted, mask, EDGE_PX))
        return hits, leaks, far

    def erase(self, block: str, concept: str, feature: int | None,
              mode: str | None = None) -> tuple[float | None, int, float | None, float | None]:
        """(removal, trials, the box's background share after, before) over the concept's erase trials, erasing
        as ``eraser`` does in ``mode`` (default: the bench's)."""
        kind = CONCEPT_KIND[concept]
        removed, after, before = [], [], []
        for i in range(self.k):
            scene, prompt, seed = erase_scene(kind, concept, i)
            base = self.image(prompt, seed)
            region = object_region(base)
            if region is None or self.judged(kind, base, region) != concept:
                continue
            rect = region_rect(region)
            layer = self.eraser(block, feature, scene.background, rect, mode or self.mode)
            if layer is None:
                continue
            painted = self.image(prompt, seed, [layer])
            box = rect_mask(rect)
            removed.append(self.judged(kind, painted, box) != concept)
            after.append(colour_fractions(painted, box)["background"])
            before.append(colour_fractions(base, box)["background"])
        return mean(removed), len(removed), mean(after), mean(before)

    def eraser(self, block: str, feature: int | None, background: str, rect: list[int], mode: str) -> Layer | None:
        """The layer that erases: the feature's ``erase``, or in replace and paste modes the scene's background
        painted over the object (its best-reading feature that the mode can paint; None where there is none)."""
        if mode not in ("replace", "paste"):
            return Layer(block=block, mask=Mask(rects=[rect]), feature=feature, mode="erase",
                         step_range=self.step_range)
        ground = best_feature(self.engine.concepts, block, background, "read", mode=mode)[0]
        if ground is None:
            return None
        step_range = None if self.mode == "recipe" else self.step_range
        return Layer(block=block, mask=Mask(rects=[rect]), feature=ground, mode=mode, step_range=step_range)


def trial_scores(engine: Engine, judges: Judges, block: str, mode: str = "replace", trials: int = 8,
                 candidates: int = 8, concepts: list[str] | None = None, progress: bool = True) -> dict[int, float]:
    """How well each feature paints its label in ``mode`` (replace or paste): for each colour, texture and shape,
    its ``candidates`` best-reading labelled features that the mode can paint each paint the same ``trials``
    rectangles of scenes lacking it (the labels' seeds, not PaintBench's; every step, the rest kept); a feature's
    score is the share judged to be the concept inside the rectangle."""
    from tqdm.auto import tqdm

    bench = Bench(engine, judges, strength=1.0, k=trials, keep_outside=True, mode=mode)
    entry = engine.concepts.blocks[block]
    scores: dict[int, float] = {}
    for concept in tqdm(concepts or concepts_to_paint(), desc=f"{mode} scores {block}", disable=not progress):
        labelled = sorted((f for f, label in entry.labels.items() if label.label == concept and entry.can_paint(f, mode)),
                          key=lambda f: (-entry.labels[f].score, f))[:candidates]
        hits: dict[int, list[bool]] = {feature: [] for feature in labelled}
        for prompt, seed, rect, mask in paint_trials(concept, trials, TRIAL_SEED_BASE) if labelled else []:
            for feature in labelled:
                layer = Layer(block=block, mask=Mask(rects=[rect]), feature=feature, mode=mode)
                painted = bench.image(prompt, seed, [layer])
                hits[feature].append(bench.judged(CONCEPT_KIND[concept], painted, mask) == concept)
        scores.update({feature: float(np.mean(found)) for feature, found in hits.items()})
    return scores


RECIPE_MODES = ("add", "replace", "paste", "fill")


def recipe_trials(engine: Engine, judges: Judges, block: str, trials: int = 8, candidates: int = 8,
                  concepts: list[str] | None = None, progress: bool = True) -> dict[str, list[Edit]]:
    """The edits tried for painting each colour, texture and shape on ``block``, best first (``sae.recipes``).

    Tried, each on the same ``trials`` rectangles of scenes lacking the concept as ``trial_scores`` (the labels'
    seeds, the rest kept):
    - ``add``: the concept's ``candidates`` best-reading labelled features and its best writer, at the model's
      default strength and step range for a new layer;
    - ``replace`` and ``paste``: the labelled features whose score of that name ``trial_scores`` measured (read
      from the labels, not measured again);
    - ``fill``: the ``candidates`` best-reading labelled features with a top example, every step;
    - every factor labelled with the concept (its ground-truth factor and the NMF factors named after it) in
      each of those modes that can paint it (add at the defaults, the others at every step).
    Ties go to the cheaper edit: add, replace, paste, fill; a feature before a factor."""
    from tqdm.auto import tqdm

    profile = engine.model.profile
    bench = Bench(engine, judges, strength=1.0, k=trials, keep_outside=True)
    entry = engine.concepts.blocks[block]
    add_range = list(profile.layer_step_range) if profile.layer_step_range else None
    recipes: dict[str, list[Edit]] = {}
    for concept in tqdm(concepts or concepts_to_paint(), desc=f"recipes {block}", disable=not progress):
        labelled = [f for f, label in entry.labels.items() if label.label == concept]
        by_read = sorted(labelled, key=lambda f: (-entry.labels[f].score, f))[:candidates]
        writer = best_labelled(entry.labels, concept, "write")
        to_try = [Edit("add", feature=f, strength=profile.layer_strength, step_range=add_range)
                  for f in dict.fromkeys([*by_read, *([writer] if writer is not None else [])])]
        to_try += [Edit("fill", feature=f) for f in sorted((f for f in labelled if entry.can_paint(f, "fill")),
                                                           key=lambda f: (-entry.labels[f].score, f))[:candidates]]
        names = (concept, f"{concept} (nmf)")
        factors = [i for i, label in enumerate(entry.factors.labels) if label in names] if entry.factors else []
        for factor in factors:
            top = entry.factors.features_of(factor)
            to_try.append(Edit("add", factor=factor, strength=profile.layer_strength, step_range=add_range))
            to_try += [Edit(mode, factor=factor) for mode in (*TRIAL_MODES, "fill")
                       if any(entry.can_paint(f, mode) for f in top)]
        hits: list[list[bool]] = [[] for _ in to_try]
        for prompt, seed, rect, mask in paint_trials(concept, trials, TRIAL_SEED_BASE) if to_try else []:
            for edit, found in zip(to_try, hits):
                layer = Layer(block=block, mask=Mask(rects=[rect]), feature=edit.feature, factor=edit.factor,
                              mode=edit.mode, strength=edit.strength,
                              step_range=tuple(edit.step_range) if edit.step_range else None)
                painted = bench.image(prompt, seed, [layer])
                found.append(bench.judged(CONCEPT_KIND[concept], painted, mask) == concept)
        for edit, found in zip(to_try, hits):
            edit.score = round(float(np.mean(found)), 4)
        for mode in TRIAL_MODES:
            to_try += [Edit(mode, feature=f, score=getattr(entry.labels[f], mode)) for f in labelled
                       if getattr(entry.labels[f], mode) is not None]
        recipes[concept] = sorted(to_try, key=recipe_order)
    return recipes


def recipe_order(edit: Edit) -> tuple:
    """Best first: by score, then the cheaper edit (add, replace, paste; a feature before a factor)."""
    return (-edit.score, RECIPE_MODES.index(edit.mode), edit.feature is None, edit.feature or 0, edit.factor or 0)


def erase_scene(kind: str, concept: str, i: int) -> tuple[Scene, str, int]:
    """The ``i``-th erase trial of a concept: (a one-object scene that has it, its caption, the seed)."""
    seed = BENCH_SEED_BASE + 500_000 + 1000 * i
    scene = scene_for_seed(seed, n_objects=1, **{kind: concept})
    return scene, caption(scene, form="full" if kind == "texture" else "plain"), seed


def region_rect(region: np.ndarray) -> list[int]:
    """The bounding box of a boolean region, grown to the 4-px grid: [x0, y0, x1, y1]."""
    rows, cols = np.nonzero(region)
    return [int(cols.min()) // 4 * 4, int(rows.min()) // 4 * 4, -(-(int(cols.max()) + 1) // 4) * 4,
            -(-(int(rows.max()) + 1) // 4) * 4]


def concepts_to_paint() -> list[str]:
    return list(COLOUR_NAMES) + list(TEXTURES) + list(SHAPES)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def tile_table(results: list[Result]) -> str:
    """Tile mode's per-concept table: the tile's edit (on its block), what its trials measured, and PaintBench's
    figures."""
    lines = [f"| concept | kind | the first tile's edit | block | its trials | success | base rate | leakage | "
             f"leakage beyond {EDGE_PX} px | removal (erase) |", "|" + "---|" * 10]
    for r in results:
        removal = "-" if r.removal is None else f"{fmt(r.removal)} of {r.n_erase}"
        trials = "-" if r.edit is None or "(not measured)" in r.edit else fmt(r.feature_score)
        lines.append(f"| {r.concept} | {r.kind} | {r.edit or 'no tile'} | {r.block} | {trials} | "
                     f"{fmt(r.success_feature if painted(r) else None)} | {fmt(r.base_rate)} | "
                     f"{fmt(r.leakage_feature if painted(r) else None)} | {fmt(r.far_leakage_feature)} | {removal} |")
    return "\n".join(lines)


def table(results: list[Result]) -> str:
    lines = ["| block | concept | feature (score, write[, replace]) | success feature | success factor | base rate "
             "| leakage feature | leakage factor | removal (erase) |", "|" + "---|" * 9]
    for r in results:
        write = "" if r.feature_write is None else f", {r.feature_write:.2f}"
        write += "" if r.feature_replace is None else f", {r.feature_replace:.2f}"
        feature = "-" if r.feature is None else f"{r.feature} ({r.feature_score:.2f}{write})"
        if r.edit is not None:
            feature = f"{r.edit} ({r.feature_score:.2f} in its trials)"
        removal = "-" if r.removal is None else f"{fmt(r.removal)} of {r.n_erase}"
        has_feature = r.feature is not None or r.edit is not None
        lines.append(f"| {r.block} | {r.concept} | {feature} | {fmt(r.success_feature if has_feature else None)} | "
                     f"{fmt(r.success_factor)} | {fmt(r.base_rate)} | {fmt(r.leakage_feature if has_feature else None)} | "
                     f"{fmt(r.leakage_factor)} | {removal} |")
    return "\n".join(lines)


def mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


def summary(results: list[Result], by_block: bool = True) -> list[dict]:
    """Per block (or, with ``by_block`` False, one row for all: tile mode, where each concept's tile picks its
    block): mean success per kind (best feature, and best factor as ``<kind>_factor``) over the concepts that had
    one to paint (``<kind>_unpainted`` lists the others), leakage, removal."""
    rows = []
    for block in sorted({r.block for r in results}) if by_block else [TILE_ROW]:
        row: dict = {"block": block}
        mine = [r for r in results if r.block == block or not by_block]
        for kind in PAINTED_KINDS:
            row[kind] = mean([r.success_feature for r in mine if r.kind == kind and painted(r)])
            row[f"{kind}_unpainted"] = [r.concept for r in mine if r.kind == kind and not painted(r)]
            row[f"{kind}_factor"] = mean([r.success_factor for r in mine
                                          if r.kind == kind and r.success_factor is not None])
        row["leakage"] = mean([r.leakage_feature for r in mine if painted(r)])
        row["recipes"] = any(r.edit is not None for r in mine)
        row["leakage_factor"] = mean([r.leakage_factor for r in mine if r.leakage_factor is not None])
        row["far_leakage"] = mean([r.far_leakage_feature for r in mine if r.far_leakage_feature is not None])
        row["far_leakage_factor"] = mean([r.far_leakage_factor for r in mine if r.far_leakage_factor is not None])
        row["removal"] = mean([r.removal for r in mine if r.removal is not None])
        row["erased_background"] = mean([r.erased_background for r in mine if r.erased_background is not None])
        row["base_background"] = mean([r.base_background for r in mine if r.base_background is not None])
        for kind in PAINTED_KINDS:
            row[f"{kind}_base"] = mean([r.base_rate for r in mine if r.kind == kind])
        rows.append(row)
    return rows


def painted(r: Result) -> bool:
    """Whether the result's concept had a feature (or recipe) to paint."""
    return r.feature is not None or r.edit is not None


def success(row: dict, kind: str) -> str:
    """A summary row's success for ``kind``, naming the concepts it had nothing to paint with."""
    unpainted = row.get(f"{kind}_unpainted")  # absent from older runs
    return fmt(row[kind]) + (f" (none for {', '.join(unpainted)})" if unpainted else "")


def summary_table(rows: list[dict]) -> str:
    lines = ["| block | painted with | colour success | texture success | shape success | leakage | "
             f"leakage beyond {EDGE_PX} px | removal (erase) | erased box: background after (before) |",
             "|" + "---|" * 9]
    for row in rows:
        after, before = row.get("erased_background"), row.get("base_background")  # absent from older runs
        box = "-" if after is None else f"{fmt(after)} ({fmt(before)})"
        first = "first tile" if row["block"] == TILE_ROW else "recipe" if row.get("recipes") else "best feature"
        lines.append(f"| {row['block']} | {first} | {success(row, 'colour')} | {success(row, 'texture')} | "
                     f"{success(row, 'shape')} | {fmt(row['leakage'])} | {fmt(row['far_leakage'])} | "
                     f"{fmt(row['removal'])} | {box} |")
        if row["block"] != TILE_ROW:  # a tile paints one edit: no factor beside it
            lines.append(f"| {row['block']} | best factor | {fmt(row['colour_factor'])} | "
                         f"{fmt(row['texture_factor'])} | {fmt(row['shape_factor'])} | {fmt(row['leakage_factor'])} | "
                         f"{fmt(row['far_leakage_factor'])} | - | - |")
        lines.append(f"| {row['block']} | nothing (base rate) | {fmt(row['colour_base'])} | {fmt(row['texture_base'])} | "
                     f"{fmt(row['shape_base'])} | - | - | - | - |")
    return "\n".join(lines)
