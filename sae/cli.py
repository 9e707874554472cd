"""``sae``: collect activations, train, evaluate, label and factor SAEs for any diffusers UNet block.

Each subcommand lives in a function ``cmd_<name>(args)`` registered in ``build_parser``.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import SAEError


def cmd_info(args: argparse.Namespace) -> int:
    from .factors import load_factors
    from .labels import load_labels
    from .model import SAE, resolve_path

    folder = resolve_path(args.path)
    sae = SAE.from_pretrained(folder)
    frequency = sae.feature_frequency
    info = {
        "path": str(args.path), **sae.config.to_dict(),
        "dead_fraction": float((frequency == 0).float().mean()),
        "mean_frequency": float(frequency.mean()),
        "labels": len(load_labels(folder)),
        "factors": (load_factors(folder).n_factors if load_factors(folder) is not None else 0),
    }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe an SAE folder (ours or SAEPaint's; local or hf://)")
    info.add_argument("path")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SAEError as exc:
        print(f"sae: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
