"""Activation patching on the toy model: which block's output decides an object's colour?

    python -m research.patching [--model toy] [--pairs 12] [--start 2] [--blocks B ...] [--json out.json]

Prints one row per transformer block (``--json research/results/patching.json`` writes the study's result file).

For pairs of one-object captions that differ only in the colour (``a blue square`` and ``a purple square``,
same seed), the donor caption's run is recorded at every transformer block and denoising step; then the
recipient caption is generated again with one block's output replaced by the donor's:
- wholesale: the whole output, from step ``start`` on; the recipient's object is judged (its largest foreground
  component): did it take the donor's colour?
- left half: only the left half of the output, from step ``start`` on; judged on the donor object's pixels in the
  left half (pairs whose donor object has fewer than ``MIN_PIXELS`` there are skipped), with the leakage of the
  right half (pixels beyond ``EDGE_PX`` of the middle whose colour moved by more than ``LEAK_THRESHOLD``).

- object cells, mean: on the grid cells the donor's object covers in the left half (at least half of each), the
  output is *replaced* by the donor's mean over those cells (one vector, the same in every cell), from ``start``;
- object cells, mean added: on the same cells, the donor's mean minus the recipient's own (unpatched) mean over
  them is *added*, from ``start`` on: the one constant shift that gives those cells the donor's mean.
The last two are judged and their leakage measured as the left half is.

No SAE is involved: a replaced output is the donor's own, cell by cell, so this is the ceiling of any edit of one
block's output. An SAE edit adds the same vector at every painted cell; where even the donor's own activations do
not carry the colour, no feature of that block can. Where a replaced mean carries the colour but the added one
does not, the block holds the colour as a value that has to be overwritten, not as a direction to add.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from paint_app.errors import ModelError
from paint_app.models import LoadedModel, load_model
from paint_app.steering import grid_mask
from paint_app.toyworld.bench import EDGE_PX, leakage, mean
from paint_app.toyworld.evaluate import object_region
from paint_app.toyworld.judges import Judges, classify_pixels
from paint_app.toyworld.world import COLOUR_NAMES, SHAPES
from sae.hooks import block_output, forward_hooks, replace_block_output
from sae.pipelines import get_block, unet_blocks

PATCH_SEED_BASE = 70_000_000
MIN_PIXELS = 20


@dataclass
class BlockCeiling:
    block: str
    grid: int
    wholesale: float  # share of pairs whose object took the donor's colour, patched from step 0
    wholesale_late: float  # the same, patched from step ``start``
    left_half: float | None  # the donor's colour where the donor's object lies in the left half, from ``start``
    left_leakage: float | None  # leakage in the right half, beyond EDGE_PX of the middle
    pairs: int
    left_pairs: int
    mean_replaced: float | None = None  # the donor's colour on its object's left-half cells set to its mean there
    mean_replaced_leakage: float | None = None
    mean_added: float | None = None  # ... with the donor's mean minus the recipient's added there instead
    mean_added_leakage: float | None = None


def colour_pairs(n: int) -> list[tuple[str, str, str, int]]:
    """``n`` seeded (recipient colour, donor colour, shape, seed) with two different colours."""
    rng = np.random.default_rng(PATCH_SEED_BASE)
    pairs = []
    for i in range(n):
        recipient, donor = rng.choice(len(COLOUR_NAMES), 2, replace=False)
        pairs.append((COLOUR_NAMES[recipient], COLOUR_NAMES[donor], SHAPES[int(rng.integers(len(SHAPES)))],
                      PATCH_SEED_BASE + i))
    return pairs


Recording = dict[str, list[torch.Tensor]]  # block name: its output at each UNet call of a generation
HOW = ("values", "mean", "mean_added")


class Patcher:
    """Records every block's output over a generation, and replays one block's recorded output into another."""

    def __init__(self, pipe, blocks: list[str], steps: int, guidance: float, size: int) -> None:
        self.pipe, self.blocks = pipe, blocks
        self.settings = dict(num_inference_steps=steps, guidance_scale=guidance, width=size, height=size)

    def generate(self, prompt: str, seed: int, on_step=None) -> np.ndarray:
        """One image; ``on_step`` is diffusers' ``callback_on_step_end``, given the latents."""
        generator = torch.Generator(self.pipe.unet.device).manual_seed(seed)
        callback = {} if on_step is None else dict(callback_on_step_end=on_step,
                                                   callback_on_step_end_tensor_inputs=["latents"])
        image = self.pipe(prompt, generator=generator, **self.settings, **callback).images[0]
        return np.asarray(image.convert("RGB"))

    def record(self, prompt: str, seed: int) -> tuple[np.ndarray, Recording]:
        recorded: Recording = {block: [] for block in self.blocks}

        def recorder(block):
            return lambda module, args, kwargs, output: recorded[block].append(block_output(output).clone())

        unet = self.pipe.unet
        with forward_hooks({get_block(unet, b): recorder(b) for b in self.blocks}):
            return self.generate(prompt, seed), recorded

    def patched(self, prompt: str, seed: int, block: str, start: int, donor: Recording,
                cells: torch.Tensor | None = None, how: str = "values", plain: Recording | None = None) -> np.ndarray:
        """The generation with ``block``'s output patched from the ``donor`` recording on UNet calls ``start`` and
        later (one call per step), at ``cells`` ([H, W] of 0 or 1 on the block's grid; None: every cell):
        ``how="values"`` the donor's values, cell by cell; ``"mean"`` the donor's mean over ``cells``;
        ``"mean_added"`` the donor's mean minus the ``plain`` recording's mean over ``cells``, added."""
        if how not in HOW:
            raise ValueError(f"how is {how!r}; allowed: {', '.join(HOW)}")
        if how == "mean_added" and plain is None:
            raise ValueError("how='mean_added' needs the plain recording")
        calls = iter(range(len(donor[block])))

        def replace(module, args, kwargs, output):
            index = next(calls)
            if index < start:
                return None
            current, given = block_output(output), donor[block][index]
            mask = torch.ones(current.shape[-2:]) if cells is None else cells
            mask = mask.to(current.device, current.dtype)
            if how == "values":
                return replace_block_output(output, mask * given + (1 - mask) * current)
            given_mean = region_mean(given, mask)
            if how == "mean":
                return replace_block_output(output, mask * given_mean + (1 - mask) * current)
            return replace_block_output(output, current + mask * (given_mean - region_mean(plain[block][index], mask)))

        with forward_hooks({get_block(self.pipe.unet, block): replace}):
            return self.generate(prompt, seed)


def region_mean(output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean over ``mask``'s cells of each batch row and channel of ``output`` [B, C, H, W], as [B, C, 1, 1]."""
    return (output * mask).sum((-2, -1), keepdim=True) / mask.sum().clamp(min=1)


def grid_cells(pixels: np.ndarray, grid: int) -> torch.Tensor:
    """The [grid, grid] cells that ``pixels`` (a boolean image) covers at least half of, as 0 or 1."""
    return (grid_mask(torch.from_numpy(pixels), (grid, grid)) >= 0.5).float()


def judge_pair(judges: Judges, image: np.ndarray, region: np.ndarray | None) -> str:
    return judges.colour(image, region)[0] if region is not None and region.any() else "none"


def ceilings(pipe, judges: Judges, pairs: list[tuple[str, str, str, int]], steps: int, guidance: float,
             size: int, start: int = 2, blocks: list[str] | None = None) -> list[BlockCeiling]:
    """Per block: how often replacing its output with the donor's gives the donor's colour (see module doc)."""
    grids = {b.name: b.grid[1] for b in unet_blocks(pipe.unet, size, size, pipe.vae_scale_factor)}
    blocks = blocks or list(grids)
    patcher = Patcher(pipe, blocks, steps, guidance, size)
    left = np.zeros((size, size), bool)
    left[:, : size // 2] = True
    hits: dict[str, dict[str, list]] = {b: {key: [] for key in ("all", "late", "left", "leak", "mean", "mean_leak",
                                                                  "added", "added_leak")} for b in blocks}
    for recipient, donor, shape, seed in pairs:
        prompt = f"a {recipient} {shape}"
        donor_image, donor_run = patcher.record(f"a {donor} {shape}", seed)
        plain, plain_run = patcher.record(prompt, seed)
        donor_left = (classify_pixels(donor_image) == COLOUR_NAMES.index(donor)) & left
        for block in blocks:
            h = hits[block]
            for key, begin in (("all", 0), ("late", start)):
                image = patcher.patched(prompt, seed, block, begin, donor_run)
                h[key].append(judge_pair(judges, image, object_region(image)) == donor)
            if donor_left.sum() < MIN_PIXELS:
                continue
            half = torch.zeros(grids[block], grids[block])
            half[:, : grids[block] // 2] = 1
            cells = grid_cells(donor_left, grids[block])
            for key, leak_key, region, how in (("left", "leak", half, "values"), ("mean", "mean_leak", cells, "mean"),
                                               ("added", "added_leak", cells, "mean_added")):
                if not region.any():
                    continue
                image = patcher.patched(prompt, seed, block, start, donor_run, region, how, plain_run)
                h[key].append(judge_pair(judges, image, donor_left) == donor)
                h[leak_key].append(leakage(plain, image, left, EDGE_PX))
    return [BlockCeiling(b, grids[b], float(np.mean(h["all"])), float(np.mean(h["late"])), mean(h["left"]),
                         mean(h["leak"]), len(pairs), len(h["left"]), mean(h["mean"]),
                         mean(h["mean_leak"]), mean(h["added"]), mean(h["added_leak"]))
            for b, h in hits.items()]


def unknown_blocks(unet, blocks: list[str], size: int) -> str | None:
    """An error naming ``blocks`` the UNet lacks and listing its transformer blocks, or None when all exist."""
    names = [b.name for b in unet_blocks(unet, size, size)]
    unknown = sorted(set(blocks) - set(names))
    if not unknown:
        return None
    return f"--blocks names {', '.join(unknown)}; this UNet's transformer blocks are: {', '.join(names)}"


def load_with_blocks(model: str, blocks: list[str]) -> tuple[LoadedModel | None, str | None]:
    """(the model loaded on the CPU, None), or (None, why not): an unknown model, or ``blocks`` it lacks."""
    try:
        loaded = load_model(model, device="cpu")
    except ModelError as exc:
        return None, str(exc)
    problem = unknown_blocks(loaded.pipeline.unet, blocks, loaded.profile.width)
    return (None, problem) if problem else (loaded, None)


def table(rows: list[BlockCeiling], start: int) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    lines = ["| block | grid | whole output, every step | whole output, steps >= "
             f"{start} | left half, steps >= {start} (leakage) | object cells set to the donor's mean (leakage) "
             "| object cells shifted by the mean difference (leakage) |", "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r.block} | {r.grid}x{r.grid} | {pct(r.wholesale)} of {r.pairs} | "
                     f"{pct(r.wholesale_late)} | {pct(r.left_half)} of {r.left_pairs} ({pct(r.left_leakage)}) | "
                     f"{pct(r.mean_replaced)} ({pct(r.mean_replaced_leakage)}) | "
                     f"{pct(r.mean_added)} ({pct(r.mean_added_leakage)}) |")
    return "\n".join(lines) + f"\n\nLeakage: pixels of the right half beyond {EDGE_PX} px of the middle that moved."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.patching", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--pairs", type=int, default=12, help="caption pairs (recipient colour, donor colour)")
    parser.add_argument("--start", type=int, default=2, help="the first step patched in the late columns")
    parser.add_argument("--blocks", nargs="*", help="only these blocks (default: every transformer block)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs is {args.pairs}; allowed: an integer >= 1")
    torch.set_num_threads(args.threads)

    loaded, problem = load_with_blocks(args.model, args.blocks or [])
    if problem:
        print(f"patching: error: {problem}", file=sys.stderr)
        return 2
    profile = loaded.profile
    started = time.perf_counter()
    rows = ceilings(loaded.pipeline, Judges.load(), colour_pairs(args.pairs), profile.steps, profile.guidance,
                    profile.width, args.start, args.blocks)
    header = (f"Activation patching (toy), model {args.model}, {args.pairs} caption pairs, {profile.steps} steps, "
              f"guidance {profile.guidance}; {time.perf_counter() - started:.0f} s on cpu")
    print(f"\n{header}\n\n{table(rows, args.start)}\n")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "start": args.start,
                                         "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
