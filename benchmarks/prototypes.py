"""Prototype replacement (toy): paint colours by overwriting late blocks' outputs with each colour's prototype.

    python benchmarks/prototypes.py [--model toy] [--k 8] [--blocks B ...] [--start 0] [--no-keep-outside]
                                    [--how set|shift] [--scenes 6] [--sae DIR [--prompts 96] [--top 0.1]]
                                    [--erase] [--json out.json]

Runs on PaintBench's own colour trials (with ``--erase``, its erase trials: each object of the colour is
overwritten with the scene's background prototype); see ``paint_app.toyworld.prototypes`` for what is
measured. Prints one row per colour and their mean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from paint_app.toyworld.prototypes import LATE_BLOCKS

    parser = argparse.ArgumentParser(prog="prototypes", description=__doc__.splitlines()[0])
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

    from paint_app.toyworld.judges import Judges
    from paint_app.toyworld.patching import load_with_blocks
    from paint_app.toyworld.prototypes import (
        PrototypePainter,
        background_prototypes,
        colour_prototypes,
        erase_colours,
        paint_colours,
        sae_prototypes,
        table,
    )
    from paint_app.toyworld.world import COLOUR_NAMES

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
