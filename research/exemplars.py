"""Exemplar ceiling (toy): paste a real generated object's activations into PaintBench's rectangles, *shifted*.

    python -m research.exemplars [--k 8] [--blocks B ...] [--json research/results/exemplars.json]

For each texture and shape, one exemplar: the first seed from 70,000,000 whose ``a red {texture} square`` or
``a red {shape}`` is judged to show it. Its outputs of the given blocks (default: the last up level,
``up_blocks.1.attentions.{0,1}``) are recorded at every step and both CFG halves. On PaintBench's K trials of
the concept (same scenes and rectangles), the blocks' outputs are overwritten, at every step, with the
exemplar's, moved by whole grid cells (rolled: what leaves one edge enters at the other) so that the exemplar's object box is centred on the rectangle:
- ``rectangle``: every cell of the rectangle (the exemplar's object and whatever surrounds it);
- ``object``: only the cells of the rectangle that the moved object covers (half or more of the cell).
Success = the concept judged inside the rectangle, as PaintBench judges it. No SAE is involved: this measures
what a real object's own activations can carry when moved (not resized: resizing to the rectangle was the
earlier ceiling, shape 53% and texture 50%, and it breaks a pattern's period).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

EXEMPLAR_SEED_BASE = 70_000_000
LATE_LEVEL = ["up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
WINDOWS = ("rectangle", "object")
CELL = 4  # pixels per cell of the toy's 16x16 grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.exemplars", description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8, help="PaintBench trials per concept")
    parser.add_argument("--blocks", nargs="*", default=LATE_LEVEL, help="blocks overwritten (16x16 grid)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from paint_app.models import load_model
    from paint_app.toyworld.bench import BENCH_SEED_BASE, paint_trials
    from paint_app.toyworld.judges import Judges
    from paint_app.toyworld.world import SHAPES, TEXTURES

    pipe = load_model("toy", device="cpu").pipeline
    judges = Judges.load()
    start = time.perf_counter()
    results = []
    for kind, concepts in (("texture", TEXTURES), ("shape", SHAPES)):
        for concept in concepts:
            exemplar = find_exemplar(pipe, judges, kind, concept, args.blocks)
            for window in WINDOWS:
                hits = [judges.judge(kind, generate(pipe, prompt, seed, paste_hooks(pipe, exemplar, rect, window)),
                                     mask)[0] == concept
                        for prompt, seed, rect, mask in paint_trials(concept, args.k, BENCH_SEED_BASE)]
                results.append({"kind": kind, "concept": concept, "window": window, "exemplar_seed": exemplar["seed"],
                                "success": float(np.mean(hits)), "n": len(hits)})
                print(f"{kind} {concept} ({window}): {np.mean(hits):.0%}", flush=True)
    header = (f"Exemplar ceiling (toy), blocks {', '.join(args.blocks)}, K={args.k} PaintBench trials per concept, "
              f"moved by whole cells, every step, 8 steps, guidance 3.0; {time.perf_counter() - start:.0f} s on cpu")
    print("\n" + header + "\n\n" + table(results))
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=1) + "\n")
    return 0


def generate(pipe, prompt: str, seed: int, hooks: dict) -> np.ndarray:
    from sae.hooks import forward_hooks

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad(), forward_hooks(hooks):
        image = pipe(prompt, generator=generator, num_inference_steps=8, guidance_scale=3.0, height=64, width=64)
    return np.asarray(image.images[0].convert("RGB"))


def find_exemplar(pipe, judges, kind: str, concept: str, blocks: list[str]) -> dict:
    """The first judged-right generation of the concept: its blocks' outputs per step, object cells and centre."""
    from paint_app.toyworld.evaluate import object_region
    from sae.pipelines import get_block

    prompt = f"a red {concept} square" if kind == "texture" else f"a red {concept}"
    for seed in range(EXEMPLAR_SEED_BASE, EXEMPLAR_SEED_BASE + 50):
        outputs: dict[str, list[torch.Tensor]] = {block: [] for block in blocks}

        image = generate(pipe, prompt, seed, {get_block(pipe.unet, b): recorder(outputs[b]) for b in blocks})
        region = object_region(image)
        if region is None or judges.judge(kind, image, region)[0] != concept:
            continue
        rows, cols = np.nonzero(region)
        size = region.shape[0] // CELL
        cells = torch.from_numpy(region.reshape(size, CELL, size, CELL).mean((1, 3)) >= 0.5).float()
        centre = ((rows.min() + rows.max() + 1) / 2 / CELL, (cols.min() + cols.max() + 1) / 2 / CELL)
        return {"seed": seed, "outputs": outputs, "cells": cells, "centre": centre}
    raise SystemExit(f"exemplars: no judged-right exemplar of {concept!r} in 50 seeds")


def recorder(into: list[torch.Tensor]):
    from sae.hooks import block_output

    return lambda module, args, kwargs, output: into.append(block_output(output).clone())


def paste_hooks(pipe, exemplar: dict, rect: list[int], window: str) -> dict:
    """Hooks that overwrite each block's output in the window with the exemplar's, moved onto the rectangle."""
    from sae.hooks import block_output, replace_block_output
    from sae.pipelines import get_block

    x0, y0, x1, y1 = rect
    dy = round((y0 + y1) / 2 / CELL - exemplar["centre"][0])
    dx = round((x0 + x1) / 2 / CELL - exemplar["centre"][1])
    mask = torch.zeros_like(exemplar["cells"])
    mask[y0 // CELL:y1 // CELL, x0 // CELL:x1 // CELL] = 1
    if window == "object":
        mask = mask * torch.roll(exemplar["cells"], shifts=(dy, dx), dims=(0, 1))

    def paster(block: str):
        calls = iter(exemplar["outputs"][block])

        def hook(module, args, kwargs, output):
            h = block_output(output)
            target = torch.roll(next(calls), shifts=(dy, dx), dims=(2, 3))
            return replace_block_output(output, h + mask * (target - h))

        return hook

    return {get_block(pipe.unet, block): paster(block) for block in exemplar["outputs"]}


def table(results: list[dict]) -> str:
    lines = ["| kind | concept | " + " | ".join(f"{w} window" for w in WINDOWS) + " |", "|---|---|---|---|"]
    for kind in ("texture", "shape"):
        concepts = dict.fromkeys(r["concept"] for r in results if r["kind"] == kind)
        for concept in [*concepts, "mean"]:
            cells = []
            for window in WINDOWS:
                mine = [r["success"] for r in results if r["kind"] == kind and r["window"] == window
                        and (concept == "mean" or r["concept"] == concept)]
                cells.append(f"{np.mean(mine):.0%}")
            lines.append(f"| {kind} | {concept} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
