"""How well the toy's objects get a part of their own: per block and number of parts, the best part's IoU.

    python benchmarks/part_iou.py [--parts 2 3 4 5] [--seeds 3]

For each prompt and seed, the toy draws one object; its pixels are the toy judges' foreground (the largest
component of pixels nearest an object colour). The image is decomposed on every block with an SAE
(``paint_app.decompose``) and the best part's IoU with the object is taken (a part covers the pixels where its
map is at least ``CELL_THRESHOLD``). Printed per block: the mean and the lowest best IoU, and the ceiling (the
object itself on the block's grid: cells at least half covered), which a coarse grid cannot beat.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage

from paint_app.decompose import CELL_THRESHOLD, decompose_painting
from paint_app.engine import load_engine
from paint_app.explore import capture_feature_maps
from paint_app.painting import Painting
from paint_app.toyworld.judges import foreground

PROMPTS = ("a red circle", "a blue square on the left", "a yellow triangle at the top right",
           "a green diamond at the bottom")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def object_pixels(image) -> np.ndarray | None:
    labels, n = ndimage.label(foreground(np.asarray(image.convert("RGB"))))
    if n == 0:
        return None
    sizes = ndimage.sum(labels > 0, labels, index=range(1, n + 1))
    return labels == int(np.argmax(sizes)) + 1


def ceiling(obj: np.ndarray, grid: tuple[int, int]) -> float:
    rows, cols = grid
    height, width = obj.shape
    cells = obj.reshape(rows, height // rows, cols, width // cols).mean(axis=(1, 3)) >= 0.5
    return iou(np.kron(cells, np.ones((height // rows, width // cols), bool)), obj)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    engine = load_engine("toy", [], "cpu")
    start = time.perf_counter()
    scenes = []
    for prompt in PROMPTS:
        for seed in range(args.seeds):
            painting = Painting(model="toy", prompt=prompt, seed=seed, width=64, height=64, steps=8, guidance=3.0)
            image, maps = capture_feature_maps(engine, painting)
            obj = object_pixels(image)
            if obj is not None:
                scenes.append((painting, maps, obj))
    print(f"{len(scenes)} scenes with an object, of {len(PROMPTS) * args.seeds}")
    for n_parts in args.parts:
        for block in sorted(engine.concepts.blocks):
            best, ceilings = [], []
            for painting, maps, obj in scenes:
                parts = decompose_painting(engine, painting, block, n_parts, maps=maps)
                best.append(max(iou(p.mask(64, 64) >= CELL_THRESHOLD, obj) for p in parts))
                ceilings.append(ceiling(obj, maps.blocks[block].grid))
            print(f"parts {n_parts}  {block:28} best part IoU mean {np.mean(best):.2f}  lowest {np.min(best):.2f}"
                  f"  ceiling {np.mean(ceilings):.2f}")
    print(f"{time.perf_counter() - start:.0f} s on the CPU")


if __name__ == "__main__":
    main()
