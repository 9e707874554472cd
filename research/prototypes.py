"""Prototype replacement (toy): can late blocks paint a colour when their activations are overwritten, not added to?

    python -m research.prototypes [--model toy] [--k 8] [--blocks B ...] [--start 0] [--no-keep-outside]
                                  [--how set|shift] [--scenes 6] [--sae DIR [--prompts 96] [--top 0.1]]
                                  [--erase] [--json out.json]

Prints one row per colour and their mean. The study's result files in ``research/results/``: ``prototypes.json``
(the defaults), ``prototypes_sae.json`` (``--sae paint_app/assets/toy/saes/up_blocks.1.attentions.0``),
``prototypes_erase.json`` (``--erase``).

A colour's prototype at a block is the block's mean output over the grid cells the colour covers, one vector per
denoising step and CFG half, measured on generations of ``a {colour} plain {shape}`` (plain texture, so the mean
is the colour's and not a stripe's). Painting overwrites the chosen blocks' outputs in a rectangle's cells on every
step from ``start`` on: *set* to the prototype, or *shifted* so that their mean is the prototype (each cell keeping
its own deviation from the mean, which carries what the run's own noise asks of it); with ``keep_outside`` the latents outside the rectangle follow the
unpainted run after every step and its pixels are pasted back there, as the app's "keep the rest" option does.

Without ground truth (``sae_prototypes``), a colour's cells are chosen by an SAE instead: the cells where its
feature that best reads the colour (highest label score) fires in the top ``top`` fraction of its positive
activations, on the last step of generations of the world's captions; the prototypes are the mean outputs there.
That is what a ``replace`` edit of a feature could use on any model.

Erasing (``erase_colours``) replaces them with the scene's background instead: its prototype is the mean output
over the background's cells in generations of objects on that background.

It runs on PaintBench's own colour trials (and erase trials) (``bench.scene_lacking`` and ``bench.random_rect`` with the same seeds)
and judges them as PaintBench does: success is the colour judged inside the rectangle, leakage the pixels beyond
``EDGE_PX`` of it that moved. The painting itself edits no SAE code: this measures what an edit that *replaces*
a block's activations could paint, against the ``add`` edits of features and factors that PaintBench measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from paint_app.steering import keep_outside, paste_outside
from paint_app.toyworld.bench import (
    BENCH_SEED_BASE,
    EDGE_PX,
    concepts_to_paint,
    erase_scene,
    leakage,
    random_rect,
    rect_mask,
    region_rect,
    scene_lacking,
)
from paint_app.toyworld.evaluate import object_region
from paint_app.toyworld.judges import Judges, classify_pixels, colour_fractions
from paint_app.toyworld.labels import best_labelled
from paint_app.toyworld.world import BACKGROUND_NAMES, COLOUR_NAMES, SHAPES, caption, prompts
from research.patching import Patcher, Recording, grid_cells, load_with_blocks, region_mean
from sae.hooks import block_input, block_output, forward_hooks, replace_block_output, site_value
from sae.labels import load_labels
from sae.model import SAE
from sae.pipelines import get_block

PROTOTYPE_SEED_BASE = 90_000_000
SAE_PROMPT_SEED_BASE = 91_000_000
BACKGROUND_SEED_BASE = 93_000_000
LATE_BLOCKS = ("up_blocks.0.attentions.1", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1")

Prototypes = dict[str, torch.Tensor]  # block name: [UNet calls, batch rows, channels]


@dataclass
class PrototypeResult:
    colour: str
    success: float  # the colour judged inside the rectangle
    leakage: float  # pixels outside the rectangle that moved
    far_leakage: float  # ... beyond EDGE_PX of it
    n: int
    cover: float | None = None  # the share of the rectangle's pixels judged the colour (erasing: background)


def colour_prototypes(patcher: Patcher, colour: str, n_scenes: int) -> Prototypes:
    """The colour's mean output at each of the patcher's blocks over the cells it covers, per UNet call and row."""
    index = COLOUR_NAMES.index(colour)
    generations = [(f"a {colour} plain {SHAPES[j % len(SHAPES)]}", PROTOTYPE_SEED_BASE + 100 * index + j)
                   for j in range(n_scenes)]
    return pixel_prototypes(patcher, generations, lambda image: classify_pixels(image) == index, repr(colour))


def background_prototypes(patcher: Patcher, n_scenes: int) -> dict[str, Prototypes]:
    """Per background, its mean output over the background's cells in generations of objects on it."""
    result = {}
    for b, background in enumerate(BACKGROUND_NAMES):
        generations = [(f"a {COLOUR_NAMES[j % len(COLOUR_NAMES)]} {SHAPES[j % len(SHAPES)]} on {background}",
                        BACKGROUND_SEED_BASE + 100 * b + j) for j in range(n_scenes)]
        result[background] = pixel_prototypes(patcher, generations, lambda image: classify_pixels(image) < 0,
                                              f"the background {background!r}")
    return result


def pixel_prototypes(patcher: Patcher, generations: list[tuple[str, int]],
                     chosen: Callable[[np.ndarray], np.ndarray], what: str) -> Prototypes:
    """The mean output over the cells of the pixels ``chosen(image)`` marks, over the (prompt, seed) generations."""
    sums: dict[str, torch.Tensor] = {}
    weight = 0.0
    for prompt, seed in generations:
        image, recording = patcher.record(prompt, seed)
        pixels = chosen(image)
        if not pixels.any():
            continue
        cells = grid_cells(pixels, max(outputs[0].shape[-1] for outputs in recording.values()))
        weight += float(cells.sum())
        for block, total in weighted_sums(recording, cells).items():
            sums[block] = sums.get(block, 0) + total
    if not sums:
        raise ValueError(f"no generation showed {what}; no prototype")
    return {block: total / weight for block, total in sums.items()}


def weighted_sums(recording: Recording, cells: torch.Tensor) -> Prototypes:
    """Each block's output summed over ``cells`` (weights on the finest grid), per call and CFG row:
    {block: [calls, rows, channels]}. A coarser block's cell weighs as many fine cells as it holds, so every
    block's sum divided by ``cells.sum()`` is its mean over the same pixels."""
    sums = {}
    for block, outputs in recording.items():
        grid = outputs[0].shape[-1]
        fine_per_cell = (cells.shape[-1] / grid) ** 2  # < 1 where the block is finer than the cells
        weights = torch.nn.functional.adaptive_avg_pool2d(cells[None, None], grid)[0, 0] * fine_per_cell
        sums[block] = torch.stack([(o * weights).sum((-2, -1)) for o in outputs])
    return sums


def sae_prototypes(patcher: Patcher, sae_folder: Path | str, colours: list[str], n_prompts: int = 96,
                   top: float = 0.1) -> dict[str, Prototypes]:
    """Per colour, prototypes over the cells where the SAE's best-reading feature for it fires most (module doc)."""
    sae, labels = SAE.from_pretrained(sae_folder), load_labels(sae_folder)
    features = {colour: best_labelled(labels, colour, "read") for colour in colours}
    missing = [colour for colour, feature in features.items() if feature is None]
    if missing:
        raise ValueError(f"the SAE in {sae_folder} has no feature labelled {', '.join(missing)}")
    last_site: list[torch.Tensor] = []

    def read_site(module, args, kwargs, output):
        value = site_value(sae.config.site, block_input(args, kwargs), block_output(output))
        last_site[:] = [value[-1]]  # the conditional half with CFG

    codes, recordings = [], []
    for i, prompt in enumerate(prompts(n_prompts, SAE_PROMPT_SEED_BASE)):
        with forward_hooks({get_block(patcher.pipe.unet, sae.config.block): read_site}):
            recordings.append(patcher.record(prompt, SAE_PROMPT_SEED_BASE + i)[1])
        x = last_site[0].permute(1, 2, 0).reshape(-1, sae.d_in)
        codes.append(sae.encode(x.to(sae.W_dec.dtype)).detach())
    grid = last_site[0].shape[-1]
    result = {}
    for colour, feature in features.items():
        activation = torch.stack([c[:, feature] for c in codes])  # [prompts, cells]
        positive = activation[activation > 0]
        if positive.numel() == 0:
            raise ValueError(f"feature {feature} ({colour}) never fired on {n_prompts} captions; no prototype")
        chosen = (activation >= torch.quantile(positive, 1 - top)).float()
        sums: dict[str, torch.Tensor] = {}
        for recording, cells in zip(recordings, chosen):
            for block, total in weighted_sums(recording, cells.reshape(grid, grid)).items():
                sums[block] = sums.get(block, 0) + total
        weight = float(chosen.sum())
        result[colour] = {block: total / weight for block, total in sums.items()}
    return result


HOW = ("set", "shift")


class PrototypePainter(Patcher):
    """Generates with the blocks' outputs in a rectangle overwritten with a colour's prototypes: ``how="set"``
    sets every cell to the prototype; ``"shift"`` shifts the cells by the prototype minus their current mean
    (at that step, in that run), so their mean becomes the prototype and each keeps its own deviation from it."""

    def __init__(self, pipe, blocks: list[str], steps: int, guidance: float, size: int, how: str = "set") -> None:
        if how not in HOW:
            raise ValueError(f"how is {how!r}; allowed: {', '.join(HOW)}")
        super().__init__(pipe, blocks, steps, guidance, size)
        self.how = how

    def unpainted(self, prompt: str, seed: int) -> tuple[np.ndarray, list[torch.Tensor]]:
        latents: list[torch.Tensor] = []

        def record(pipe, index, timestep, tensors):
            latents.append(tensors["latents"].clone())
            return tensors

        return self.generate(prompt, seed, on_step=record), latents

    def painted(self, prompt: str, seed: int, prototypes: Prototypes, mask: np.ndarray, start: int = 0,
                unpainted: tuple[np.ndarray, list[torch.Tensor]] | None = None) -> np.ndarray:
        """Replaced from UNet call ``start`` on in ``mask``'s cells; the rest kept when ``unpainted`` is given."""
        hooks = {get_block(self.pipe.unet, block): self._replacer(prototypes[block], mask, start, self.how)
                 for block in self.blocks}
        if unpainted is None:
            with forward_hooks(hooks):
                return self.generate(prompt, seed)
        image, latents = unpainted
        cover = grid_cells(mask, latents[0].shape[-1])

        def blend(pipe, index, timestep, tensors):
            tensors["latents"] = keep_outside(tensors["latents"], latents[index], cover)
            return tensors

        with forward_hooks(hooks):
            painted = self.generate(prompt, seed, on_step=blend)
        return np.asarray(paste_outside(Image.fromarray(painted), Image.fromarray(image), cover))

    @staticmethod
    def _replacer(prototype: torch.Tensor, mask: np.ndarray, start: int, how: str):
        calls = iter(range(len(prototype)))

        def replace(module, args, kwargs, output):
            index = next(calls)
            if index < start:
                return None
            current = block_output(output)
            cells = grid_cells(mask, current.shape[-1]).to(current.device, current.dtype)
            value = prototype[index][:, :, None, None].to(current.device, current.dtype)
            if how == "shift":
                return replace_block_output(output, current + cells * (value - region_mean(current, cells)))
            return replace_block_output(output, cells * value + (1 - cells) * current)

        return replace


def paint_colours(painter: PrototypePainter, judges: Judges, prototypes: dict[str, Prototypes], k: int,
                  start: int = 0, keep: bool = True) -> list[PrototypeResult]:
    """Per colour of ``prototypes``, on PaintBench's first ``k`` trials of it: replace the painter's blocks in the
    rectangle with the colour's prototypes and judge."""
    size = painter.settings["width"]
    results = []
    for colour, prototype in prototypes.items():
        rng = np.random.default_rng([BENCH_SEED_BASE, concepts_to_paint().index(colour)])
        hits, leaks, far, cover = [], [], [], []
        for i in range(k):
            scene, seed = scene_lacking(colour, BENCH_SEED_BASE + 1000 * i)
            prompt = caption(scene, np.random.default_rng(seed))
            mask = rect_mask(random_rect(rng, size), size)
            unpainted = painter.unpainted(prompt, seed)
            painted = painter.painted(prompt, seed, prototype, mask, start, unpainted if keep else None)
            hits.append(judges.colour(painted, mask)[0] == colour)
            leaks.append(leakage(unpainted[0], painted, mask))
            far.append(leakage(unpainted[0], painted, mask, EDGE_PX))
            cover.append(colour_fractions(painted, mask)[colour])
        results.append(PrototypeResult(colour, float(np.mean(hits)), float(np.mean(leaks)), float(np.mean(far)), k,
                                       float(np.mean(cover))))
    return results


def erase_colours(painter: PrototypePainter, judges: Judges, backgrounds: dict[str, Prototypes], k: int,
                  start: int = 0, keep: bool = True) -> list[PrototypeResult]:
    """Per colour, on PaintBench's first ``k`` erase trials of it (an object of that colour, its box on the 4-px
    grid): replace the painter's blocks in the box with the scene's background prototypes; success is the colour
    judged gone there (trials whose unpainted object is not judged that colour are skipped, as PaintBench does)."""
    results = []
    for colour in COLOUR_NAMES:
        gone, leaks, far, cover = [], [], [], []
        for i in range(k):
            scene, prompt, seed = erase_scene("colour", colour, i)
            unpainted = painter.unpainted(prompt, seed)
            region = object_region(unpainted[0])
            if region is None or judges.colour(unpainted[0], region)[0] != colour:
                continue
            mask = rect_mask(region_rect(region), painter.settings["width"])
            painted = painter.painted(prompt, seed, backgrounds[scene.background], mask, start,
                                      unpainted if keep else None)
            gone.append(judges.colour(painted, mask)[0] != colour)
            leaks.append(leakage(unpainted[0], painted, mask))
            far.append(leakage(unpainted[0], painted, mask, EDGE_PX))
            cover.append(colour_fractions(painted, mask)["background"])
        if gone:
            results.append(PrototypeResult(colour, float(np.mean(gone)), float(np.mean(leaks)), float(np.mean(far)),
                                           len(gone), float(np.mean(cover))))
    return results


def table(results: list[PrototypeResult], erasing: bool = False) -> str:
    success, cover = ("removal", "pixels judged background") if erasing else ("success", "pixels judged the colour")
    lines = [f"| colour | {success} | {cover} | leakage | leakage beyond {EDGE_PX} px |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.colour} | {100 * r.success:.0f}% of {r.n} | {100 * r.cover:.0f}% | "
                     f"{100 * r.leakage:.0f}% | {100 * r.far_leakage:.0f}% |")
    mean = {key: 100 * float(np.mean([getattr(r, key) for r in results])) for key in ("success", "cover", "leakage",
                                                                                     "far_leakage")}
    lines.append(f"| **mean** | **{mean['success']:.0f}%** | {mean['cover']:.0f}% | {mean['leakage']:.0f}% | "
                 f"{mean['far_leakage']:.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.prototypes", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--k", type=int, default=8, help="PaintBench trials per colour")
    parser.add_argument("--blocks", nargs="+", default=list(LATE_BLOCKS), help="the blocks whose outputs are replaced")
    parser.add_argument("--how", choices=("set", "shift"), default="set",
                        help="set the rectangle's cells to the prototype, or shift them so their mean is the prototype")
    parser.add_argument("--start", type=int, default=0, help="the first denoising step replaced")
    parser.add_argument("--no-keep-outside", dest="keep", action="store_false",
                        help="let the painted run change the rest of the image (default: keep it, as the app does)")
    parser.add_argument("--scenes", type=int, default=6, help="generations per colour that make its prototypes")
    parser.add_argument("--sae", type=Path, help="choose each colour's cells with this SAE's best-reading feature "
                        "for it instead of the ground truth (its labels.json must name the colours)")
    parser.add_argument("--prompts", type=int, default=96, help="with --sae: captions whose cells are chosen")
    parser.add_argument("--top", type=float, default=0.1,
                        help="with --sae: the top fraction of the feature's positive activations chosen")
    parser.add_argument("--erase", action="store_true",
                        help="erase each colour's objects with the background's prototype (PaintBench's erase trials)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    for name in ("k", "scenes", "prompts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} is {getattr(args, name)}; allowed: an integer >= 1")
    if not 0 < args.top <= 1:
        parser.error(f"--top is {args.top}; allowed: a fraction in (0, 1]")
    if args.sae and args.erase:
        parser.error("--erase takes the background's prototypes from the ground truth; leave out --sae")
    if args.sae and not (args.sae / "sae.safetensors").exists():
        parser.error(f"--sae is {args.sae}; allowed: a folder holding an SAE (sae.safetensors, config.json)")
    torch.set_num_threads(args.threads)

    loaded, problem = load_with_blocks(args.model, args.blocks)
    if problem:
        print(f"prototypes: error: {problem}", file=sys.stderr)
        return 2
    profile = loaded.profile
    if not 0 <= args.start < profile.steps:
        parser.error(f"--start is {args.start}; allowed: 0 to {profile.steps - 1} (the model samples "
                     f"{profile.steps} steps)")
    loaded.pipeline.set_progress_bar_config(disable=True)
    started = time.perf_counter()
    painter = PrototypePainter(loaded.pipeline, args.blocks, profile.steps, profile.guidance, profile.width, args.how)
    try:
        if args.erase:
            prototypes = background_prototypes(painter, args.scenes)
            source = f"the background's pixels in {args.scenes} generations on it, erasing each colour's objects"
        elif args.sae:
            prototypes = sae_prototypes(painter, args.sae, list(COLOUR_NAMES), args.prompts, args.top)
            source = (f"cells chosen by the SAE in {args.sae} (top {args.top:g} of each colour's best-reading "
                      f"feature on {args.prompts} captions)")
        else:
            prototypes = {c: colour_prototypes(painter, c, args.scenes) for c in COLOUR_NAMES}
            source = f"the colour's pixels in {args.scenes} generations"
    except ValueError as exc:
        print(f"prototypes: error: {exc}", file=sys.stderr)
        return 2
    paint = erase_colours if args.erase else paint_colours
    results = paint(painter, Judges.load(), prototypes, args.k, args.start, args.keep)
    header = (f"Prototype replacement (toy), model {args.model}, blocks {', '.join(args.blocks)}, K={args.k} "
              f"PaintBench trials per colour, prototypes over {source}, cells {args.how}, steps >= {args.start}, "
              f"{'outside kept' if args.keep else 'outside free'}, {profile.steps} steps, guidance "
              f"{profile.guidance}; {time.perf_counter() - started:.0f} s on cpu")
    print(f"\n{header}\n\n{table(results, args.erase)}\n")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": [asdict(r) for r in results]}, indent=1)
                             + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
