"""MoveBench (toy): decompose a generated image, drag the object's part elsewhere, and judge with ground truth.

    python benchmarks/movebench.py [--k 20] [--blocks B ...] [--parts N] [--json OUT]

For each of K seeded one-object scenes (and K two-object scenes for ``move2``), the toy model draws the scene
from its full caption (``a red striped circle at the top left on grass``). The object's pixels are found in the
drawn image (the toy's colour judge: the largest foreground component, ``object_region``); a scene counts only
when the model drew the caption's object (colour and shape judged right), and the count is printed. Then, per
block with an SAE:

1. the image is decomposed into parts (``paint_app.decompose``), and the part whose map overlaps the object's
   pixels most is taken (its IoU with the object is reported);
2. the part becomes a ``move`` layer, as on the page, and is edited (the page's "keep the rest" on):
   - ``move``: dragged by a third of the image or more (whole cells of 8 px) to a place where the object fits
     and does not overlap where it was;
   - ``erase``: scale 0;
   - ``copy``: a copy dragged as for ``move``;
   - ``move2``: ``move`` in a scene with a second object, which must stay as it was;
3. the result is judged: ``moved`` (the object's colour and shape judged at the new place), ``gone`` (the old
   place judged background: at least ``GONE_BACKGROUND`` of its pixels), ``both`` (moved and gone; for
   ``copy``: present at both places), and ``changed_elsewhere`` (the share of pixels outside both places,
   grown by ``EDGE_PX``, whose colour moved by more than ``LEAK_THRESHOLD``).

Targets on the best block: ``both`` >= 80% for move, ``gone`` >= 90% for erase, ``changed_elsewhere`` <= 5%.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from paint_app.decompose import DEFAULT_PARTS, decompose_painting
from paint_app.engine import Engine, load_engine
from paint_app.painting import Painting
from paint_app.toyworld.bench import EDGE_PX, leakage
from paint_app.toyworld.judges import Judges, colour_fractions
from paint_app.toyworld.world import caption, scene_for_seed

MOVE_SEED_BASE = 70_000_000
MIN_DRAG = 64 // 3  # at least a third of the image
GONE_BACKGROUND = 0.8
TASKS = ("move", "erase", "copy", "move2")


@dataclass
class Trial:
    task: str
    block: str
    seed: int
    prompt: str
    iou: float  # the chosen part's map against the object's pixels
    offset: tuple[int, int]
    moved: bool
    gone: bool
    both: bool
    changed_elsewhere: float


@dataclass
class Drawn:
    """A scene the model drew as its caption says: the image and the object's pixels in it."""

    seed: int
    prompt: str
    colour: str
    shape: str
    image: np.ndarray
    region: np.ndarray  # bool [64, 64]: the object's pixels, dilated by 2
    other: np.ndarray | None = field(default=None)  # the second object's pixels (two-object scenes)


def draw(engine: Engine, judges: Judges, seed: int, n_objects: int) -> Drawn | None:
    scene = scene_for_seed(seed, n_objects=n_objects)
    prompt = caption(scene, form="full")
    image = np.asarray(engine.generate(painting_for(engine, prompt, seed)))
    first = scene.objects[0]
    region = object_near(image, first.cx, first.cy)
    if region is None or judges.colour(image, region)[0] != first.colour or \
            judges.shape(image, region)[0] != first.shape:
        return None
    other = None
    if n_objects > 1:
        other = object_near(image, scene.objects[1].cx, scene.objects[1].cy)
        if other is None or (other & region).any():
            return None
    return Drawn(seed, prompt, first.colour, first.shape, image, region, other)


def object_near(image: np.ndarray, cx: float, cy: float) -> np.ndarray | None:
    """The foreground component nearest (cx, cy) in pixels, dilated by 2; None when there is none."""
    labels, n = ndimage.label(~background_pixels(image))
    if n == 0:
        return None
    centres = ndimage.center_of_mass(labels > 0, labels, range(1, n + 1))
    sizes = ndimage.sum(labels > 0, labels, range(1, n + 1))
    candidates = [(np.hypot(cy - c[0], cx - c[1]), i + 1) for i, c in enumerate(centres) if sizes[i] >= 24]
    if not candidates:
        return None
    return ndimage.binary_dilation(labels == min(candidates)[1], iterations=2)


def background_pixels(image: np.ndarray) -> np.ndarray:
    from paint_app.toyworld.judges import classify_pixels

    return classify_pixels(image) < 0


def painting_for(engine: Engine, prompt: str, seed: int) -> Painting:
    profile = engine.model.profile
    return Painting(model=engine.model.name, prompt=prompt, seed=seed, width=profile.width, height=profile.height,
                    steps=profile.steps, guidance=profile.guidance, keep_outside=True)


def drag_for(region: np.ndarray, avoid: np.ndarray | None, rng: np.random.Generator,
             cell: int = 8) -> tuple[int, int] | None:
    """An offset (dx, dy), in whole cells, of at least MIN_DRAG pixels, that keeps the object's box inside the
    image and off its old box (and off ``avoid``, another object); None when there is none."""
    rows, cols = np.nonzero(region)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    height, width = region.shape
    options = []
    for dy in range(-height, height + 1, cell):
        for dx in range(-width, width + 1, cell):
            if np.hypot(dx, dy) < MIN_DRAG or not (0 <= x0 + dx and x1 + dx <= width and 0 <= y0 + dy and
                                                   y1 + dy <= height):
                continue
            if not (x1 + dx <= x0 or x0 + dx >= x1 or y1 + dy <= y0 or y0 + dy >= y1):
                continue  # overlaps its old box
            moved = shifted(region, (dx, dy))
            if avoid is not None and (moved & ndimage.binary_dilation(avoid, iterations=2)).any():
                continue
            options.append((dx, dy))
    if not options:
        return None
    return options[int(rng.integers(len(options)))]


def shifted(mask: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    from paint_app.painting import shift

    return shift(mask.astype(np.float32), offset) > 0


def judge_trial(judges: Judges, task: str, drawn: Drawn, image: np.ndarray, offset: tuple[int, int],
                block: str, iou: float) -> Trial:
    new = shifted(drawn.region, offset) if task != "erase" else np.zeros_like(drawn.region)
    old_only = drawn.region & ~new
    present_new = bool(new.any()) and judges.colour(image, new)[0] == drawn.colour and \
        judges.shape(image, new)[0] == drawn.shape
    present_old = judges.colour(image, drawn.region)[0] == drawn.colour and \
        judges.shape(image, drawn.region)[0] == drawn.shape
    gone = colour_fractions(image, old_only)["background"] >= GONE_BACKGROUND
    both = (present_new and present_old) if task == "copy" else (present_new and gone)
    if task == "erase":
        both = gone
    changed = leakage(drawn.image, image, drawn.region | new, margin=EDGE_PX)
    return Trial(task, block, drawn.seed, drawn.prompt, iou, offset, present_new, gone, both, changed)


def run_task(engine: Engine, judges: Judges, task: str, drawn: Drawn, block: str, n_parts: int,
             rng: np.random.Generator) -> Trial | None:
    painting = painting_for(engine, drawn.prompt, drawn.seed)
    parts = decompose_painting(engine, painting, block, n_parts)
    ious = [iou_of(part_pixels(part.map, drawn.region.shape), drawn.region) for part in parts]
    best = int(np.argmax(ious))
    offset = (0, 0) if task == "erase" else drag_for(drawn.region, drawn.other, rng)
    if offset is None:
        return None
    layer = parts[best].layer(painting.width, painting.height)
    layer.offset = offset
    layer.strength = 0.0 if task == "erase" else 1.0
    layer.copy = task == "copy"
    painting.layers = [layer]
    image = np.asarray(engine.generate(painting))
    return judge_trial(judges, task, drawn, image, offset, block, ious[best])


def part_pixels(grid_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A part's map on the image's pixels (each cell over its pixels), as a bool mask of where it is > 0.5."""
    rows, cols = grid_map.shape
    big = np.kron(grid_map, np.ones((shape[0] // rows, shape[1] // cols)))
    return big > 0.5


def iou_of(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def summarise(trials: list[Trial]) -> dict[str, dict[str, dict]]:
    """Per block and task: n, moved, gone, both, changed_elsewhere (shares 0..1), and the mean part IoU."""
    table: dict[str, dict[str, dict]] = {}
    for block in sorted({t.block for t in trials}):
        for task in TASKS:
            rows = [t for t in trials if t.block == block and t.task == task]
            if rows:
                table.setdefault(block, {})[task] = {
                    "n": len(rows),
                    **{key: float(np.mean([getattr(t, key) for t in rows]))
                       for key in ("moved", "gone", "both", "changed_elsewhere", "iou")},
                }
    return table


def print_table(table: dict[str, dict[str, dict]]) -> None:
    print(f"{'block':28} {'task':6} {'n':>3} {'moved':>6} {'gone':>6} {'both':>6} {'elsewhere':>9} {'IoU':>5}")
    for block, tasks in table.items():
        for task, row in tasks.items():
            print(f"{block:28} {task:6} {row['n']:3d} {row['moved']:6.0%} {row['gone']:6.0%} {row['both']:6.0%} "
                  f"{row['changed_elsewhere']:9.1%} {row['iou']:5.2f}")


def run(engine: Engine, judges: Judges, k: int, blocks: list[str], n_parts: int,
        tasks: tuple[str, ...] = TASKS) -> tuple[list[Trial], dict[str, int]]:
    """K drawn scenes per kind (one object; two for move2), each task on each block."""
    trials: list[Trial] = []
    counts = {"one object": 0, "two objects": 0, "tried": 0}
    for n_objects in (1, 2):
        kind_tasks = [t for t in tasks if (t == "move2") == (n_objects == 2)]
        if not kind_tasks:
            continue
        found, seed = 0, MOVE_SEED_BASE + 1_000 * n_objects
        while found < k and seed < MOVE_SEED_BASE + 1_000 * n_objects + 20 * k:
            counts["tried"] += 1
            drawn = draw(engine, judges, seed, n_objects)
            seed += 1
            if drawn is None:
                continue
            found += 1
            counts["one object" if n_objects == 1 else "two objects"] += 1
            for block in blocks:
                for task in kind_tasks:
                    trial = run_task(engine, judges, task, drawn, block, n_parts, np.random.default_rng(drawn.seed))
                    if trial is not None:
                        trials.append(trial)
    return trials, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="movebench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--k", type=int, default=20, help="drawn scenes per kind (one object, two objects)")
    parser.add_argument("--blocks", nargs="*", help="only these blocks (default: every block with an SAE)")
    parser.add_argument("--parts", type=int, default=DEFAULT_PARTS, help="parts per decomposition")
    parser.add_argument("--tasks", nargs="*", choices=TASKS, default=list(TASKS))
    parser.add_argument("--json", type=Path, help="write the per-block, per-task figures (and every trial) here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"--k is {args.k}; allowed: 1 or more")
    torch.set_num_threads(args.threads)
    engine = load_engine(args.model, [], "cpu")
    blocks = args.blocks or sorted(engine.concepts.blocks)
    unknown = [b for b in blocks if b not in engine.concepts.blocks]
    if unknown:
        parser.error(f"--blocks {' '.join(unknown)}: no SAE; allowed: {', '.join(sorted(engine.concepts.blocks))}")
    start = time.perf_counter()
    trials, counts = run(engine, Judges.load(), args.k, blocks, args.parts, tuple(args.tasks))
    table = summarise(trials)
    print(f"MoveBench: {counts['one object']} one-object and {counts['two objects']} two-object scenes drawn as "
          f"captioned (of {counts['tried']} tried), {args.parts} parts, {time.perf_counter() - start:.0f} s")
    print_table(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"k": args.k, "parts": args.parts, "scenes": counts, "results": table,
                                         "trials": [asdict(t) for t in trials]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
