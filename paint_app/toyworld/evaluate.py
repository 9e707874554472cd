"""Prompt adherence of the toy model on held-out captions, judged by the toy judges.

Each held-out seed gives a one-object scene and a caption of it in a random form of the grammar (``a red circle``,
``a red striped circle at the top left on grass``...). The generated image's object is its largest foreground
component; the judges give its colour, shape and (when the caption names one) texture.

``python -m paint_app.toyworld.evaluate [--n 200] [--model toy] [--steps 8] [--guidance 3]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .judges import Judges, foreground
from .world import TEXTURES, caption, scene_for_seed

EVAL_SEED_BASE = 10_000_000


def object_region(image: np.ndarray) -> np.ndarray | None:
    """The largest foreground component, dilated by 2 pixels; None when there is no foreground."""
    labels, n = ndimage.label(foreground(image))
    if n == 0:
        return None
    sizes = ndimage.sum(labels > 0, labels, index=range(1, n + 1))
    return ndimage.binary_dilation(labels == int(np.argmax(sizes)) + 1, iterations=2)


def adherence(pipe, judges: Judges, n: int, steps: int, guidance: float, seed_base: int = EVAL_SEED_BASE) -> dict:
    hits: dict[str, list[bool]] = {"colour": [], "shape": [], "texture": []}
    seconds = []
    for i in range(n):
        seed = seed_base + i
        scene = scene_for_seed(seed, n_objects=1)
        text = caption(scene, np.random.default_rng(seed))
        obj = scene.objects[0]
        start = time.perf_counter()
        image = np.asarray(pipe(text, num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
                                generator=torch.Generator().manual_seed(seed)).images[0])
        seconds.append(time.perf_counter() - start)
        region = object_region(image)
        hits["colour"].append(region is not None and judges.colour(image, region)[0] == obj.colour)
        hits["shape"].append(region is not None and judges.shape(image, region)[0] == obj.shape)
        if any(word in text.split() for word in TEXTURES):
            hits["texture"].append(region is not None and judges.texture(image, region)[0] == obj.texture)
    return {"n": n, "steps": steps, "guidance": guidance,
            **{k: round(float(np.mean(v)), 4) for k, v in hits.items()}, "n_texture": len(hits["texture"]),
            "seconds_per_image_median": round(float(np.median(seconds)), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paint_app.toyworld.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    from paint_app.models import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device="cpu")
    steps = args.steps or loaded.profile.steps
    guidance = loaded.profile.guidance if args.guidance is None else args.guidance
    result = adherence(loaded.pipeline, Judges.load(), args.n, steps, guidance)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
