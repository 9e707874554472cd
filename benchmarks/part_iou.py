"""How well the toy's objects get a part of their own: per block and number of parts, the best part's IoU.

    python benchmarks/part_iou.py [--parts 2 3 4 5] [--seeds 3] [--objects 1|2] [--blocks B ...]

For each prompt and seed, the toy draws one object (``--objects 2``: two); its pixels are the toy judges'
foreground (the largest component of pixels nearest an object colour; with two objects, the two largest, each
scored on its own). The image is decomposed on every block with an SAE
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

PROMPTS = {1: ("a red circle", "a blue square on the left", "a yellow triangle at the top right",
               "a green diamond at the bottom"),
           2: ("a red circle on the left and a blue square on the right",
               "a yellow triangle at the top and a purple circle at the bottom",
               "a green square at the top left and an orange diamond at the bottom right",
               "a pink diamond in the middle and a blue circle at the top right")}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def object_pixels(image, n: int = 1) -> list[np.ndarray]:
    """The ``n`` largest foreground components (fewer if the image has fewer)."""
    labels, found = ndimage.label(foreground(np.asarray(image.convert("RGB"))))
    sizes = ndimage.sum(labels > 0, labels, index=range(1, found + 1)) if found else np.zeros(0)
    return [labels == int(i) + 1 for i in np.argsort(-sizes, kind="stable")[:n]]


def ceiling(obj: np.ndarray, grid: tuple[int, int]) -> float:
    rows, cols = grid
    height, width = obj.shape
    cells = obj.reshape(rows, height // rows, cols, width // cols).mean(axis=(1, 3)) >= 0.5
    return iou(np.kron(cells, np.ones((height // rows, width // cols), bool)), obj)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--objects", type=int, choices=(1, 2), default=1)
    parser.add_argument("--blocks", nargs="+", help="only these blocks (default: every block with an SAE)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    engine = load_engine("toy", [], "cpu")
    start = time.perf_counter()
    scenes = []
    for prompt in PROMPTS[args.objects]:
        for seed in range(args.seeds):
            painting = Painting(model="toy", prompt=prompt, seed=seed, width=64, height=64, steps=8, guidance=3.0)
            image, maps = capture_feature_maps(engine, painting)
            objects = object_pixels(image, args.objects)
            if len(objects) == args.objects:
                scenes.append((painting, maps, objects))
    print(f"{len(scenes)} scenes with {args.objects} object(s) drawn, of {len(PROMPTS[args.objects]) * args.seeds}")
    for n_parts in args.parts:
        for block in args.blocks or sorted(engine.concepts.blocks):
            best, ceilings = [], []
            for painting, maps, objects in scenes:
                parts = decompose_painting(engine, painting, block, n_parts, maps=maps)
                for obj in objects:
                    best.append(max(iou(p.mask(64, 64) >= CELL_THRESHOLD, obj) for p in parts))
                    ceilings.append(ceiling(obj, maps.blocks[block].grid))
            print(f"parts {n_parts}  {block:28} best part IoU mean {np.mean(best):.2f}  lowest {np.min(best):.2f}"
                  f"  ceiling {np.mean(ceilings):.2f}")
    print(f"{time.perf_counter() - start:.0f} s on the CPU")


if __name__ == "__main__":
    main()
