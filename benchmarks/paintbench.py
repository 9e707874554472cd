"""PaintBench (toy): paint each labelled concept's best feature and factor into random regions; judge the region.

    python benchmarks/paintbench.py [--k 10] [--strength 1.0] [--json out.json] [--card assets/toy/MODEL_CARD.md]

Prints the per-concept table and a per-block summary (see ``paint_app.toyworld.bench`` for the definitions).
With ``--card`` the tables replace the PaintBench section of the model card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

CARD_START, CARD_END = "<!-- paintbench -->", "<!-- /paintbench -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paintbench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--k", type=int, default=10, help="held-out scenes per concept")
    parser.add_argument("--strength", type=float, default=1.0, help="layer strength (the session default is 1.0)")
    parser.add_argument("--step-range", type=int, nargs=2, metavar=("START", "END"),
                        help="paint only on denoising steps [START, END) (default: every step)")
    parser.add_argument("--blocks", nargs="*", help="only these blocks (default: every block with an SAE)")
    parser.add_argument("--concepts", nargs="*", help="only these concepts")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--card", type=Path, help="replace the PaintBench section of this model card")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from paint_app.concepts import ConceptLibrary
    from paint_app.engine import Engine
    from paint_app.models import load_model
    from paint_app.toyworld.bench import Bench, concepts_to_paint, summary, summary_table, table
    from paint_app.toyworld.judges import Judges

    loaded = load_model(args.model, device="cpu")
    concepts = ConceptLibrary.load([], loaded.profile)
    if not concepts.blocks:
        print(f"paintbench: error: model {args.model!r} has no SAEs in {loaded.profile.sae_dir}", file=sys.stderr)
        return 2
    step_range = tuple(args.step_range) if args.step_range else None
    bench = Bench(Engine(loaded, concepts), Judges.load(), args.strength, args.k, step_range)
    start = time.perf_counter()
    results = []
    for block in args.blocks or sorted(concepts.blocks):
        for concept in args.concepts or concepts_to_paint():
            results.append(bench.run_concept(block, concept))
            r = results[-1]
            print(f"{block} {concept}: success {r.success_feature:.2f} (factor {r.success_factor}) "
                  f"base {r.base_rate:.2f} leakage {r.leakage_feature:.3f} removal {r.removal}", flush=True)
    seconds = time.perf_counter() - start
    rows = summary(results)
    header = (f"PaintBench (toy), model {args.model}, K={args.k} scenes per concept, strength {args.strength}, "
              f"step range {list(step_range) if step_range else 'all'}, {loaded.profile.steps} steps, "
              f"guidance {loaded.profile.guidance}; {seconds:.0f} s on {loaded.device}")
    text = f"{header}\n\n{table(results)}\n\nSummary (best feature per concept, mean over concepts):\n\n" \
           f"{summary_table(rows)}\n"
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": [asdict(r) for r in results],
                                         "summary": rows}, indent=1) + "\n")
    if args.card:
        write_card_section(args.card, text)
    return 0


def write_card_section(card: Path, text: str) -> None:
    body = card.read_text() if card.exists() else ""
    section = f"{CARD_START}\n{text}{CARD_END}"
    if CARD_START in body and CARD_END in body:
        before, rest = body.split(CARD_START, 1)
        body = before + section + rest.split(CARD_END, 1)[1]
    else:
        body = body.rstrip() + "\n\n## PaintBench\n\n" + section + "\n"
    card.write_text(body)


if __name__ == "__main__":
    sys.exit(main())
