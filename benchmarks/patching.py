"""Activation patching (toy): which block's output decides an object's colour? The ceiling of one-block edits.

    python benchmarks/patching.py [--model toy] [--pairs 12] [--start 2] [--blocks B ...] [--json out.json]

See ``paint_app.toyworld.patching`` for what is measured. Prints one row per transformer block.
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
    parser = argparse.ArgumentParser(prog="patching", description=__doc__.splitlines()[0])
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

    from paint_app.toyworld.judges import Judges
    from paint_app.toyworld.patching import ceilings, colour_pairs, load_with_blocks, table

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
