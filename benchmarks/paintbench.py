"""PaintBench (toy): paint each labelled concept's best feature and factor into random regions; judge the region.

    python benchmarks/paintbench.py [--k 10] [--strength S] [--json out.json] [--card assets/toy/MODEL_CARD.md]

By default each layer is painted at the model's default for a new layer in the app (``layer_defaults`` in its
``paint_app.json``: for the toy model strength 32 on steps [2, 8)).

Prints the per-concept table and a per-block summary (see ``paint_app.toyworld.bench`` for the definitions).
With ``--card`` the tables go into the model card, one section per strength and step range.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paintbench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--k", type=int, default=10, help="held-out scenes per concept")
    parser.add_argument("--strength", type=float,
                        help="layer strength (default: the model's default for a new layer in the app)")
    parser.add_argument("--step-range", type=int, nargs=2, metavar=("START", "END"),
                        help="paint only on denoising steps [START, END) (default: the model's default for a new "
                             "layer; 0 0 for every step)")
    parser.add_argument("--keep-outside", action="store_true",
                        help="sessions keep the image outside the mask on the unpainted run's latents (the app's "
                             "'keep the rest' option); leakage then measures what still gets through")
    parser.add_argument("--mode", choices=("add", "set", "replace", "paste", "recipe"), default="add",
                        help="how the feature and factor are painted (replace needs the SAEs' prototypes, paste "
                             "their top examples with seeds); recipe: each concept painted with its recipe, the "
                             "edit its SAE's recipes.json measured best (its own mode, strength and steps; "
                             "--strength, --step-range and --feature-by then unused)")
    parser.add_argument("--feature-by", choices=("write", "read", "replace", "paste"),
                        help="a concept's best feature: the labelled feature that best writes it (its write score; "
                             "the default in add and set modes), best reads it (its label score), or best paints it "
                             "by replacing or pasting (its replace or paste score, measured on the labels' scenes; "
                             "the default in those modes, falling back to the best reader where there are none)")
    parser.add_argument("--blocks", nargs="*", help="only these blocks (default: every block with an SAE)")
    parser.add_argument("--concepts", nargs="*", help="only these concepts")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--card", type=Path, help="write the tables into this model card (one section per strength "
                        "and step range, replaced on a re-run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--from-json", type=Path, help="print (and --card) the results of an earlier --json run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from paint_app.toyworld.bench import Result, summary, summary_table, table

    if args.from_json:
        data = json.loads(args.from_json.read_text())
        header, results = data["header"], [Result(**r) for r in data["results"]]
    else:
        header, results = run(args)
    rows = summary(results)
    text = f"{header}\n\n{table(results)}\n\nSummary (mean over concepts; success = the concept judged inside the " \
           f"mask):\n\n{summary_table(rows)}\n"
    print("\n" + text)
    if args.json and not args.from_json:
        args.json.write_text(json.dumps({"header": header, "results": [asdict(r) for r in results],
                                         "summary": rows}, indent=1) + "\n")
    if args.card:
        tag = re.search(r"(strength \S+, step range (\[[^]]*\]|all)|each concept's recipe)(, outside kept)?"
                        r"(, features by \w+ score)?(, mode \w+)?", header).group(0)
        write_card_section(args.card, text, tag)
    return 0


def run(args: argparse.Namespace):
    from paint_app.concepts import ConceptLibrary
    from paint_app.engine import Engine
    from paint_app.models import load_model
    from paint_app.toyworld.bench import Bench, concepts_to_paint
    from paint_app.toyworld.judges import Judges

    loaded = load_model(args.model, device="cpu")
    concepts = ConceptLibrary.load([], loaded.profile)
    if not concepts.blocks:
        print(f"paintbench: error: model {args.model!r} has no SAEs in {loaded.profile.sae_dir}", file=sys.stderr)
        raise SystemExit(2)
    profile = loaded.profile
    strength = profile.layer_strength if args.strength is None else args.strength
    step_range = profile.layer_step_range if args.step_range is None else tuple(args.step_range)
    step_range = step_range if step_range and step_range[1] > 0 else None
    args.feature_by = args.feature_by or {"replace": "replace", "paste": "paste"}.get(args.mode, "write")
    if args.mode == "recipe":
        args.feature_by = "write"  # unused
        missing = [block for block in args.blocks or concepts.blocks if concepts.blocks[block].recipes is None]
        if missing:
            print(f"paintbench: error: --mode recipe: no recipes.json for {', '.join(missing)}; make them with "
                  "`python -m paint_app.toyworld.saes --recipes-only`", file=sys.stderr)
            raise SystemExit(2)
    bench = Bench(Engine(loaded, concepts), Judges.load(), strength, args.k, step_range, args.keep_outside,
                  args.feature_by, args.mode)
    start = time.perf_counter()
    results = []
    for block in args.blocks or sorted(concepts.blocks):
        for concept in args.concepts or concepts_to_paint():
            results.append(bench.run_concept(block, concept))
            r = results[-1]
            print(f"{block} {concept}: success {r.success_feature:.2f} (factor {r.success_factor}) "
                  f"base {r.base_rate:.2f} leakage {r.leakage_feature:.3f} removal {r.removal}", flush=True)
    seconds = time.perf_counter() - start
    painted = "each concept's recipe" if args.mode == "recipe" else \
        f"strength {strength}, step range {list(step_range) if step_range else 'all'}"
    header = (f"PaintBench (toy), model {args.model}, K={args.k} scenes per concept, {painted}"
              f"{', outside kept' if args.keep_outside else ''}"
              f"{'' if args.feature_by == 'write' else f', features by {args.feature_by} score'}"
              f"{'' if args.mode == 'add' else ', mode ' + args.mode}, "
              f"{loaded.profile.steps} steps, "
              f"guidance {loaded.profile.guidance}; {seconds:.0f} s on {loaded.device}")
    return header, results


def write_card_section(card: Path, text: str, tag: str) -> None:
    """Replace (or append) the card's section for this configuration, between markers naming it."""
    start, end = f"<!-- paintbench: {tag} -->", f"<!-- /paintbench: {tag} -->"
    body = card.read_text() if card.exists() else ""
    section = f"{start}\n{text}{end}"
    if start in body and end in body:
        before, rest = body.split(start, 1)
        body = before + section + rest.split(end, 1)[1]
    else:
        body = body.rstrip() + "\n\n" + section + "\n"
    card.write_text(body)


if __name__ == "__main__":
    sys.exit(main())
