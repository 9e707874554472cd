"""``paint-app``: serve the painting app (default), render a session file, list the concepts a model paints, find the parts of an image (decompose), give SAEs words and pictures (prepare)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sae.errors import SAEError

from .errors import PaintError
from .modes import RANKS


def _add_model_args(parser: argparse.ArgumentParser, model_default: str | None = "toy") -> None:
    parser.add_argument("--model", default=model_default,
                        help="short name (toy, tiny-random-sd, tiny-random-sdxl), hub id or local folder"
                             + (f" (default: {model_default})" if model_default else " (default: the session's)"))
    parser.add_argument("--sae", action="append", default=[], metavar="PATH",
                        help="an SAE folder, a folder of SAE folders, an hf:// URI of either "
                             "(hf://[models/|datasets/|spaces/]owner/name[@revision][/path]), a preset (saepaint), "
                             "or BLOCK=PATH; repeat for several (default: the SAEs shipped with the model, else the "
                             "model's preset)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paint-app", description=__doc__)
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="start the painting app in the browser (the default command)")
    _add_model_args(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--share", action="store_true", help="make a public gradio.live link")
    serve.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads (default 0: half the cores, at least 1, so the browser and the "
                            "server's own threads are not starved)")

    render = sub.add_parser("render", help="render a session file to an image")
    render.add_argument("session", help="session JSON file")
    render.add_argument("--out", required=True, help="output image (PNG)")
    render.add_argument("--keep-outside", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the image outside the painted areas on the plain image's latents "
                             "(default: as the session file says)")
    _add_model_args(render, model_default=None)

    features = sub.add_parser("features", help="list the concepts a model can be painted with, as the palette's "
                                               "tiles (or its raw features, factors or recipes)")
    _add_model_args(features)
    features.add_argument("--block", help="only this block (tiles: as if only its SAE were loaded)")
    features.add_argument("--search", help="only concepts (or features, factors, recipes) whose name or label holds "
                                           "all these words")
    listed = features.add_mutually_exclusive_group()
    listed.add_argument("--features", action="store_true",
                        help="list the raw features instead of the palette's concept tiles")
    listed.add_argument("--factors", action="store_true", help="list the raw factors instead of the concept tiles")
    listed.add_argument("--recipes", action="store_true",
                        help="list each concept's recipe instead: the edit (mode, feature or factor, strength, "
                             "steps) measured to paint it best on each block, with the share of trials that worked")
    features.add_argument("--rank", choices=RANKS,
                          help="with --features, the order of search results: best painters for add/set layers "
                               "(write score, the default), or for the layers of a mode that needs something of a "
                               "concept (replace: a prototype; paste and fill: an example), those that have it "
                               "first, by that mode's measured score")
    features.add_argument("--json", action="store_true", help="one JSON object per line")
    features.add_argument("--limit", type=int, default=0, help="at most this many rows (0: all)")
    from .decompose import add_parser as add_decompose  # their parsers and handlers live in their modules
    from .prepare import add_parser as add_prepare

    add_decompose(sub, _add_model_args)
    add_prepare(sub, _add_model_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers warns on import that torchvision is missing; nothing here needs torchvision.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    try:
        if args.command in (None, "serve"):
            return _serve(args)
        if args.command in ("prepare", "decompose"):
            return args.handler(args)
        if args.command == "render":
            return _render(args)
        return _features(args)
    except (PaintError, SAEError) as exc:
        print(f"paint-app: error: {exc}", file=sys.stderr)
        return 2


def serving_threads(requested: int = 0) -> int:
    """Torch CPU threads for the server: ``requested``, or half the cores (at least one).

    Measured on a 2-core machine with the page open in the same machine's browser: with both cores, torch's
    threads wait on each other while the browser draws, and a toy repaint took 583 ms instead of 275 ms."""
    if requested < 0:
        raise PaintError(f"--threads is {requested}; allowed: 0 (automatic) or a positive number")
    return requested or max(1, (os.cpu_count() or 2) // 2)


def _serve(args: argparse.Namespace) -> int:
    defaults = build_parser().parse_args(["serve"])
    for key, value in vars(defaults).items():
        if not hasattr(args, key):
            setattr(args, key, value)
    import torch

    torch.set_num_threads(serving_threads(args.threads))
    try:
        from .ui import serve
    except ImportError as exc:
        print(f"paint-app: the painting app is not available in this build ({exc})", file=sys.stderr)
        return 0
    serve(model=args.model, sae_paths=args.sae, device=args.device, host=args.host, port=args.port, share=args.share)
    return 0


def _render(args: argparse.Namespace) -> int:
    from .engine import load_engine
    from .session import load_session

    session = load_session(args.session)
    if args.model:
        session.model = args.model
    if args.keep_outside is not None:
        session.keep_outside = args.keep_outside
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".webp"):
        raise PaintError(f"--out is {str(out)!r}; allowed: a .png or .webp file (lossless, to compare pixels)")
    if not out.parent.is_dir():
        raise PaintError(f"--out is {str(out)!r}; its folder does not exist")
    engine = load_engine(session.model, args.sae or session.saes, args.device)
    image = engine.generate(session)
    tmp = out.with_name(out.name + ".tmp" + out.suffix)
    image.save(tmp, lossless=True) if out.suffix.lower() == ".webp" else image.save(tmp)
    tmp.replace(out)
    print(f"wrote {out} ({image.width}x{image.height})")
    return 0


def _features(args: argparse.Namespace) -> int:
    """The palette's concept tiles (the default: what a pick of each paints), or raw features, factors, recipes."""
    from .concepts import ConceptLibrary, tile_row
    from .models import PROFILES, load_model

    if args.rank is not None and not args.features:
        raise PaintError(f"--rank is {args.rank!r}; allowed only with --features (it orders feature rows; the "
                         "concept tiles come by name match, measured first, then score)")
    profile = PROFILES.get(args.model) or load_model(args.model, device="cpu").profile
    concepts = ConceptLibrary.load(args.sae, profile, device="cpu")
    if not concepts.blocks:
        raise PaintError(f"model {args.model!r} has no SAEs; pass --sae PATH (an SAE folder, a folder of them, hf://... or a preset)")
    if args.block is not None:
        concepts.get(args.block, "--block")
    if args.recipes:
        rows, kind = concepts.recipe_rows(args.block, args.search), "recipe label"
    elif args.factors:
        rows, kind = concepts.factor_rows(args.block, args.search), "factor label"
    elif args.features:
        rows, kind = concepts.feature_rows(args.block, args.search, args.rank or "write"), "feature label"
    else:
        library = concepts if args.block is None else ConceptLibrary({args.block: concepts.blocks[args.block]})
        rows, kind = [tile_row(t) for t in library.tiles(args.search or "", profile=profile)], "concept name"
    if args.limit > 0:
        rows = rows[: args.limit]
    if not rows and args.search:
        print(f"paint-app: no {kind} matches {args.search!r}", file=sys.stderr)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        elif args.recipes:
            steps = "every step" if row["step_range"] is None else f"steps {row['step_range']}"
            print(f"{row['block']}\t{row['concept']}\t{row['edit']} (strength {row['strength']:g}, {steps})\t"
                  f"{100 * row['score']:.0f}% of trials ({row['tried']} edit{'s' if row['tried'] != 1 else ''} tried)")
        elif args.factors:
            print(f"{row['block']}\tfactor {row['factor']}\t{row['label']}")
        elif args.features:
            print(f"{row['block']}\t{row['feature']}\t{row['frequency']:.4f}\t{row['label']}")
        else:
            print(tile_line(row))
    return 0


def tile_line(row: dict) -> str:
    """A concept tile's row as text: name, block, the edit a pick applies, and the tile's note."""
    what = f"feature {row['feature']}" if row["feature"] is not None else \
        f"factor {row['factor']}" if row["factor"] is not None else f"mix of {len(row['features'] or {})} features"
    steps = "every step" if row["step_range"] is None else f"steps {row['step_range']}"
    edit = f"{row['mode']} {what} (strength {row['strength']:g}, {steps})"
    note = row["note"] if row["paintable"] else f"{row['note']}; cannot be painted: {row['why_not']}"
    return f"{row['name']}\t{row['block']}\t{edit}\t{note}"

if __name__ == "__main__":
    sys.exit(main())
