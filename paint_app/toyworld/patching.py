"""Activation patching on the toy model: which block's output decides an object's colour?

For pairs of one-object captions that differ only in the colour (``a blue square`` and ``a purple square``,
same seed), the donor caption's run is recorded at every transformer block and denoising step; then the
recipient caption is generated again with one block's output replaced by the donor's:
- wholesale: the whole output, from step ``start`` on; the recipient's object is judged (its largest foreground
  component): did it take the donor's colour?
- left half: only the left half of the output, from step ``start`` on; judged on the donor object's pixels in the
  left half (pairs whose donor object has fewer than ``MIN_PIXELS`` there are skipped), with the leakage of the
  right half (pixels beyond ``EDGE_PX`` of the middle whose colour moved by more than ``LEAK_THRESHOLD``).

No SAE is involved: a replaced output is the donor's own, cell by cell, so this is the ceiling of any edit of one
block's output. An SAE edit adds the same vector at every painted cell; where even the donor's own activations do
not carry the colour, no feature of that block can.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sae.hooks import block_output, forward_hooks, replace_block_output
from sae.pipelines import get_block, unet_blocks

from .bench import EDGE_PX, leakage
from .evaluate import object_region
from .judges import Judges, classify_pixels
from .world import COLOUR_NAMES, SHAPES

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


def colour_pairs(n: int) -> list[tuple[str, str, str, int]]:
    """``n`` seeded (recipient colour, donor colour, shape, seed) with two different colours."""
    rng = np.random.default_rng(PATCH_SEED_BASE)
    pairs = []
    for i in range(n):
        recipient, donor = rng.choice(len(COLOUR_NAMES), 2, replace=False)
        pairs.append((COLOUR_NAMES[recipient], COLOUR_NAMES[donor], SHAPES[int(rng.integers(len(SHAPES)))],
                      PATCH_SEED_BASE + i))
    return pairs


class Patcher:
    """Records every block's output over a generation, and replays one block's recorded output into another."""

    def __init__(self, pipe, blocks: list[str], steps: int, guidance: float, size: int) -> None:
        self.pipe, self.blocks = pipe, blocks
        self.settings = dict(num_inference_steps=steps, guidance_scale=guidance, width=size, height=size)
        self.recorded: dict[str, list[torch.Tensor]] = {}

    def generate(self, prompt: str, seed: int) -> np.ndarray:
        generator = torch.Generator(self.pipe.unet.device).manual_seed(seed)
        image = self.pipe(prompt, generator=generator, **self.settings).images[0]
        return np.asarray(image.convert("RGB"))

    def record(self, prompt: str, seed: int) -> np.ndarray:
        self.recorded = {block: [] for block in self.blocks}

        def recorder(block):
            return lambda module, args, kwargs, output: self.recorded[block].append(block_output(output).clone())

        unet = self.pipe.unet
        with forward_hooks({get_block(unet, b): recorder(b) for b in self.blocks}):
            return self.generate(prompt, seed)

    def patched(self, prompt: str, seed: int, block: str, start: int, left_half: bool) -> np.ndarray:
        """The generation with ``block``'s output replaced by the recorded one (its left half only, with
        ``left_half``) on UNet calls ``start`` and later (one call per step)."""
        calls = enumerate(self.recorded[block])

        def replace(module, args, kwargs, output):
            index, donor = next(calls)
            if index < start:
                return None
            current = block_output(output)
            if left_half:
                donor = torch.cat([donor[..., : current.shape[-1] // 2], current[..., current.shape[-1] // 2:]], -1)
            return replace_block_output(output, donor)

        with forward_hooks({get_block(self.pipe.unet, block): replace}):
            return self.generate(prompt, seed)


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
    hits: dict[str, dict[str, list]] = {b: {"all": [], "late": [], "left": [], "leak": []} for b in blocks}
    for recipient, donor, shape, seed in pairs:
        donor_image = patcher.record(f"a {donor} {shape}", seed)
        plain = patcher.generate(f"a {recipient} {shape}", seed)
        donor_left = (classify_pixels(donor_image) == COLOUR_NAMES.index(donor)) & left
        for block in blocks:
            for key, begin in (("all", 0), ("late", start)):
                image = patcher.patched(f"a {recipient} {shape}", seed, block, begin, left_half=False)
                hits[block][key].append(judge_pair(judges, image, object_region(image)) == donor)
            if donor_left.sum() >= MIN_PIXELS:
                image = patcher.patched(f"a {recipient} {shape}", seed, block, start, left_half=True)
                hits[block]["left"].append(judge_pair(judges, image, donor_left) == donor)
                hits[block]["leak"].append(leakage(plain, image, left, EDGE_PX))
    return [BlockCeiling(b, grids[b], float(np.mean(h["all"])), float(np.mean(h["late"])),
                         float(np.mean(h["left"])) if h["left"] else None,
                         float(np.mean(h["leak"])) if h["leak"] else None, len(pairs), len(h["left"]))
            for b, h in hits.items()]


def table(rows: list[BlockCeiling], start: int) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    lines = ["| block | grid | whole output, every step | whole output, steps >= "
             f"{start} | left half, steps >= {start} | its leakage (right half, beyond {EDGE_PX} px) |",
             "|" + "---|" * 6]
    for r in rows:
        lines.append(f"| {r.block} | {r.grid}x{r.grid} | {pct(r.wholesale)} of {r.pairs} | "
                     f"{pct(r.wholesale_late)} | {pct(r.left_half)} of {r.left_pairs} | {pct(r.left_leakage)} |")
    return "\n".join(lines)
