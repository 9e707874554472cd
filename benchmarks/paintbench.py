"""PaintBench (toy): paint each labelled concept's best feature and factor into random regions; judge the region.

    python benchmarks/paintbench.py [--k 10] [--strength S] [--mode M] [--keep-outside] [--json [out.json]]

By default each layer is painted at the model's default for a new layer in the app (``layer_defaults`` in its
``paint_app.json``: for the toy model strength 32 on steps [2, 8)).

Prints the per-concept table and a per-block summary (see ``paint_app.toyworld.bench`` for the definitions).
``--json`` alone writes the results to ``benchmarks/results/paintbench[_<mode>][_k<K>][_s<strength>][_by_<score>]
[_keep_outside].json`` (where every PaintBench result lives); ``--json FILE`` writes them to FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
AUTO = Path("<auto>")


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
    parser.add_argument("--mode", choices=("add", "set", "replace", "paste", "recipe", "tile"), default="add",
                        help="how the feature and factor are painted (replace needs the SAEs' prototypes, paste "
                             "their top examples with seeds); recipe: each concept painted with its recipe, the "
                             "edit its SAE's recipes.json measured best (its own mode, strength and steps; "
                             "--strength, --step-range and --feature-by then unused); tile: the default user "
                             "path, each word's first palette tile painted with the edit a pick of it sets (its "
                             "block, mode, strength and steps; one result per concept; --blocks, --strength, "
                             "--step-range and --feature-by unused)")
    parser.add_argument("--feature-by", choices=("write", "read", "replace", "paste"),
                        help="a concept's best feature: the labelled feature that best writes it (its write score; "
                             "the default in add and set modes), best reads it (its label score), or best paints it "
                             "by replacing or pasting (its replace or paste score, measured on the labels' scenes; "
                             "the default in those modes, falling back to the best reader where there are none)")
    parser.add_argument("--blocks", nargs="*", help="only these blocks (default: every block with an SAE)")
    parser.add_argument("--concepts", nargs="*", help="only these concepts")
    parser.add_argument("--json", type=Path, nargs="?", const=AUTO,
                        help="write the results here (alone: to benchmarks/results/, named after the options)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--from-json", type=Path, help="print the results of an earlier --json run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from paint_app.toyworld.bench import Result, summary, summary_table, table, tile_table

    if args.from_json:
        data = json.loads(args.from_json.read_text())
        header, results = data["header"], [Result(**r) for r in data["results"]]
    else:
        header, results = run(args)
    tiles = ", mode tile," in header
    rows = summary(results, by_block=not tiles)
    text = f"{header}\n\n{tile_table(results) if tiles else table(results)}\n\nSummary (mean over concepts; success = the concept judged inside the " \
           f"mask):\n\n{summary_table(rows)}\n"
    print("\n" + text)
    if args.json and not args.from_json:
        file = RESULTS / default_json_name(parser, args) if args.json == AUTO else args.json
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps({"header": header, "results": [asdict(r) for r in results],
                                    "summary": rows}, indent=1) + "\n")
        print(f"results in {file}")
    return 0


def default_json_name(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """``paintbench[_<mode>][_k<K>][_s<strength>][_steps<a>_<b>][_by_<score>][_keep_outside].json``: each option
    that differs from its default, in that order."""
    parts = ["paintbench"]
    if args.mode != "add":
        parts.append(args.mode)
    if args.k != parser.get_default("k"):
        parts.append(f"k{args.k}")
    if args.strength is not None:
        parts.append(f"s{args.strength:g}")
    if args.step_range is not None:
        parts.append(f"steps{args.step_range[0]}_{args.step_range[1]}")
    if args.feature_by != {"replace": "replace", "paste": "paste"}.get(args.mode, "write"):
        parts.append(f"by_{args.feature_by}")
    if args.keep_outside:
        parts.append("keep_outside")
    return "_".join(parts) + ".json"


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
    if args.mode in ("recipe", "tile"):
        args.feature_by = "write"  # unused
        missing = [block for block in args.blocks or concepts.blocks if concepts.blocks[block].recipes is None]
        if missing and args.mode == "recipe":
            print(f"paintbench: error: --mode recipe: no recipes.json for {', '.join(missing)}; make them with "
                  "`python -m paint_app.toyworld.saes --recipes-only`", file=sys.stderr)
            raise SystemExit(2)
    bench = Bench(Engine(loaded, concepts), Judges.load(), strength, args.k, step_range, args.keep_outside,
                  args.feature_by, args.mode)
    start = time.perf_counter()
    results = []
    for concept in args.concepts or concepts_to_paint() if args.mode == "tile" else []:
        results.append(bench.run_tile(concept))
        r = results[-1]
        print(f"{concept}: {r.block} {r.edit}: success {r.success_feature:.2f} base {r.base_rate:.2f} "
              f"leakage {r.leakage_feature:.3f} removal {r.removal}", flush=True)
    for block in [] if args.mode == "tile" else args.blocks or sorted(concepts.blocks):
        for concept in args.concepts or concepts_to_paint():
            results.append(bench.run_concept(block, concept))
            r = results[-1]
            print(f"{block} {concept}: success {r.success_feature:.2f} (factor {r.success_factor}) "
                  f"base {r.base_rate:.2f} leakage {r.leakage_feature:.3f} removal {r.removal}", flush=True)
    seconds = time.perf_counter() - start
    painted = "each concept's recipe" if args.mode == "recipe" else \
        "each word's first tile (ConceptLibrary.tiles), with the edit a pick of it sets" if args.mode == "tile" else \
        f"strength {strength}, step range {list(step_range) if step_range else 'all'}"
    header = (f"PaintBench (toy), model {args.model}, K={args.k} scenes per concept, {painted}"
              f"{', outside kept' if args.keep_outside else ''}"
              f"{'' if args.feature_by == 'write' else f', features by {args.feature_by} score'}"
              f"{'' if args.mode == 'add' else ', mode ' + args.mode}, "
              f"{loaded.profile.steps} steps, "
              f"guidance {loaded.profile.guidance}; {seconds:.0f} s on {loaded.device}")
    return header, results


if __name__ == "__main__":
    sys.exit(main())
