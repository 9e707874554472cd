"""``sae``: collect activations, train, evaluate, label and factor SAEs for any diffusers UNet block.

Each subcommand lives in a function ``cmd_<name>(args)`` registered in ``build_parser``.
The usual chain: collect -> train -> eval -> label -> factors -> top-examples (see README, "Train your own SAEs").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

from .errors import SAEError
from .train import TrainOptions

MODEL_HELP = ("a short name (tiny-random-sd, tiny-random-sdxl, or one a package registers in the entry-point group "
              "sae.models, such as paint-app's toy), a hub id or a local diffusers folder")


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of the dataclass ``cls`` (``--field-name``, or the field's ``flag``), with its type,
    default and help from the field; fields without a default are required, booleans are switches."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if not item.metadata.get("cli", True):
            continue
        flag = item.metadata.get("flag") or "--" + item.name.replace("_", "-")
        kind = next((t for t in typing.get_args(hints[item.name]) if t is not type(None)), hints[item.name])
        required = item.default is dataclasses.MISSING
        shown = "" if required or item.default is None or kind is bool else f" (default: {item.default:g})" \
            if isinstance(item.default, float) else f" (default: {item.default})"
        options = {"dest": item.name, "help": item.metadata.get("help", "") + shown}
        if kind is not bool:
            options["metavar"] = flag[2:].upper().replace("-", "_")
        if kind is bool:
            parser.add_argument(flag, action="store_true", **options)
        else:
            parser.add_argument(flag, type=kind, required=required, default=None if required else item.default,
                                **options)


def dataclass_from_options(cls: type, args: argparse.Namespace):
    """The dataclass ``cls`` from parsed options (``add_dataclass_options``); fields left off the CLI keep defaults."""
    return cls(**{item.name: getattr(args, item.name) for item in dataclasses.fields(cls)
                  if item.metadata.get("cli", True)})


def print_report(report: dict, as_json: bool) -> None:
    """One JSON object, or one ``key: value`` line per entry."""
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")


def cmd_info(args: argparse.Namespace) -> int:
    from .factors import load_factors
    from .labels import load_labels
    from .model import SAE, resolve_path

    folder = resolve_path(args.path)
    sae = SAE.from_pretrained(folder)
    frequency = sae.feature_frequency
    factors = load_factors(folder)
    info = {
        "path": str(args.path), **sae.config.to_dict(),
        "dead_fraction": float((frequency == 0).float().mean()),
        "mean_frequency": float(frequency.mean()),
        "labels": len(load_labels(folder)),
        "factors": factors.n_factors if factors is not None else 0,
    }
    print_report(info, args.json)
    return 0


def _open_sae_and_acts(args: argparse.Namespace):
    """The SAE of ``--sae`` (on ``--device``) and its matching shard folder from ``--acts``."""
    from .model import SAE, resolve_path
    from .pipelines import pick_device
    from .store import ActivationStore

    folder = resolve_path(args.sae)
    sae = SAE.from_pretrained(folder, device=pick_device(getattr(args, "device", "auto")))
    store = ActivationStore(args.acts, block=sae.config.block)
    store.check_matches(sae.config)
    return folder, sae, store


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cmd_collect(args: argparse.Namespace) -> int:
    from .capture import CollectOptions, collect
    from .pipelines import model_defaults

    manifests = collect(CollectOptions(
        model=args.model, blocks=args.block, prompts_file=args.prompts, out=args.out, site=args.site,
        steps=args.steps, step_indices=args.step_index, batch_size=args.batch_size, limit=args.limit, seed=args.seed,
        guidance=args.guidance, height=args.height, width=args.width, device=args.device, dtype=args.dtype,
        overwrite=args.overwrite, defaults=model_defaults(args.model)))
    for block, manifest in manifests.items() if _is_main_process() else ():
        print(f"{block}: {manifest.counts.get('vectors', 0)} vectors of width {manifest.d_in} in "
              f"{manifest.counts.get('shards', 0)} shards")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    out = train(dataclass_from_options(TrainOptions, args))
    if _is_main_process():
        print(f"SAE in {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .metrics import evaluate, plot_frequency

    folder, sae, store = _open_sae_and_acts(args)
    report = evaluate(sae, store, max_vectors=args.max_vectors)
    frequency = report.pop("frequency")
    if args.plot:
        plot_frequency(frequency, args.plot, title=f"{sae.config.block or folder.name}")
        report["plot"] = str(args.plot)
    if args.model or args.prompts:
        report.update(_splice(args, sae, store))
    print_report(report, args.json)
    return 0


def _splice(args: argparse.Namespace, sae, store) -> dict:
    from .capture import read_prompts
    from .metrics import splice_pixel_difference
    from .pipelines import load_diffusers_pipeline

    if not (args.model and args.prompts):
        raise SAEError("the splice test needs both --model and --prompts")
    manifest = store.manifest
    pipe = load_diffusers_pipeline(args.model, device=args.device)
    kwargs = {"num_inference_steps": manifest.num_inference_steps}
    if manifest.height:
        kwargs.update(height=manifest.height, width=manifest.width)
    if manifest.guidance_scale is not None:
        kwargs["guidance_scale"] = manifest.guidance_scale
    prompts = read_prompts(args.prompts, args.limit)
    return {"splice_prompts": len(prompts),
            **splice_pixel_difference(pipe, sae, manifest.block, prompts, kwargs, seed=manifest.seed)}


def cmd_label(args: argparse.Namespace) -> int:
    from .capture import read_prompts
    from .labels import load_labels, merge_labels, prompt_feature_max, save_labels, word_association_labels

    folder, sae, store = _open_sae_and_acts(args)
    prompts = read_prompts(args.prompts) if args.prompts else store.prompts()
    if not prompts:
        raise SAEError(f"acts '{store.folder}' hold no prompts.json; give the prompts file with --prompts")
    if len(prompts) < store.manifest.n_prompts:
        raise SAEError(f"prompts file '{args.prompts}' has {len(prompts)} prompts; the activations were collected "
                       f"from {store.manifest.n_prompts}")
    strongest = prompt_feature_max(sae, store)
    computed = word_association_labels(strongest, prompts, top_fraction=args.top_fraction)
    existing = load_labels(folder)
    labels = merge_labels(existing, computed)
    save_labels(folder, labels)
    kept = sum(1 for label in existing.values() if label.source in ("user", "ground-truth"))
    print(f"{len(computed)} prompt-word labels computed, {kept} user/ground-truth labels kept; "
          f"{len(labels)} labels in {folder / 'labels.json'}")
    return 0


def cmd_factors(args: argparse.Namespace) -> int:
    from .factors import compute_factors, save_factors
    from .labels import load_labels

    folder, sae, store = _open_sae_and_acts(args)
    factors = compute_factors(sae.cpu(), store, args.n, load_labels(folder), args.max_vectors, args.seed)
    out = args.out or folder
    save_factors(out, factors)
    for i, label in enumerate(factors.labels):
        print(f"factor {i}: {label}")
    return 0


def cmd_top_examples(args: argparse.Namespace) -> int:
    from .examples import TOP_EXAMPLES_NAME, save_top_examples, top_examples

    folder, sae, store = _open_sae_and_acts(args)
    examples = top_examples(sae, store, args.per_feature, distinct_prompts=not args.all_locations,
                            max_vectors=args.max_vectors)
    path = save_top_examples(args.out or folder / TOP_EXAMPLES_NAME, examples)
    print(f"top examples of {len(examples)} features in {path}")
    return 0


def cmd_prototypes(args: argparse.Namespace) -> int:
    from .capture import generation_settings, read_prompts
    from .model import SAE, resolve_path
    from .pipelines import load_diffusers_pipeline, model_defaults
    from .prototypes import compute_prototypes

    folder = resolve_path(args.sae)
    prompts = read_prompts(args.prompts, args.limit)
    pipe = load_diffusers_pipeline(args.model, device=args.device, dtype=args.dtype)
    sae = SAE.from_pretrained(folder, device=pipe.unet.device)
    height, width, steps, guidance = generation_settings(pipe, args.steps, args.guidance, args.height, args.width,
                                                         model_defaults(args.model))
    settings = {"num_inference_steps": steps, "height": height, "width": width}
    if guidance is not None:
        settings["guidance_scale"] = guidance
    prototypes = compute_prototypes(pipe, sae, prompts, top=args.top, seed=args.seed, blocks=args.block, **settings)
    file = prototypes.save(args.out or folder)
    have = int((prototypes.counts > 0).sum())
    print(f"prototypes of {have} of {sae.n_features} features at {', '.join(prototypes.blocks)} "
          f"({prototypes.steps} steps, {len(prompts)} prompts) in {file}")
    return 0


def _add_sae_and_acts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sae", required=True, help="SAE folder (ours or SAEPaint's; local or hf://)")
    parser.add_argument("--acts", required=True, help="shard folder from `sae collect` (or its parent for several blocks)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe an SAE folder (ours or SAEPaint's; local or hf://)")
    info.add_argument("path")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    collect = sub.add_parser("collect", help="run a pipeline over prompts and store block activations as shards",
                             description="Run a diffusers pipeline over prompts and store the chosen site of each "
                             "block as fp16 shards. Re-running skips finished shards; under `accelerate launch` "
                             "prompts are split across processes.")
    collect.add_argument("--model", required=True, help=MODEL_HELP)
    collect.add_argument("--block", required=True, action="append", help="UNet transformer block (repeatable)")
    collect.add_argument("--prompts", required=True, help="text file, one prompt per line")
    collect.add_argument("--out", required=True, help="output folder (one subfolder per block if several)")
    collect.add_argument("--site", default="delta", choices=["delta", "output"],
                         help="delta = block output - input (default), output = block output")
    collect.add_argument("--steps", type=int, help="denoising steps (default: the model's own, from its sae.models entry point, else 4)")
    collect.add_argument("--step-index", type=int, action="append", help="keep only this step (repeatable)")
    collect.add_argument("--batch-size", type=int, default=8, help="prompts per pipeline call and per shard")
    collect.add_argument("--limit", type=int, help="use only the first N prompts")
    collect.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    collect.add_argument("--guidance", type=float, help="guidance scale (default: the model's, else the pipeline's)")
    collect.add_argument("--height", type=int)
    collect.add_argument("--width", type=int)
    collect.add_argument("--device", default="auto")
    collect.add_argument("--dtype", default=None, help="auto (fp16 on cuda), float32, float16, bfloat16")
    collect.add_argument("--overwrite", action="store_true", help="replace a different collection in --out")
    collect.set_defaults(func=cmd_collect)

    train = sub.add_parser("train", help="train a TopK SAE on collected activations",
                           description="Train a TopK SAE (AuxK, unit-norm decoder, checkpoints). Data-parallel under "
                           "`accelerate launch`.")
    add_dataclass_options(train, TrainOptions)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="FVU, L0, dead fraction, frequency histogram; optional splice test")
    _add_sae_and_acts(evaluate)
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument("--plot", help="write a PNG histogram of firing frequencies here")
    evaluate.add_argument("--max-vectors", type=int)
    evaluate.add_argument("--model", help="with --prompts: splice the reconstruction into generation")
    evaluate.add_argument("--prompts", help="prompts for the splice test")
    evaluate.add_argument("--limit", type=int, default=8, help="prompts used by the splice test")
    evaluate.set_defaults(func=cmd_eval)

    label = sub.add_parser("label", help="label features with over-represented prompt words (labels.json)")
    _add_sae_and_acts(label)
    label.add_argument("--prompts", help="the prompts file used for collection (default: stored with the acts)")
    label.add_argument("--top-fraction", type=float, default=0.1, help="share of prompts counted as a feature's top")
    label.set_defaults(func=cmd_label)

    factors = sub.add_parser("factors", help="NMF factors of feature activations (factors.safetensors)")
    _add_sae_and_acts(factors)
    factors.add_argument("--n", type=int, required=True, help="number of factors")
    factors.add_argument("--out", help="SAE folder or file (default: the SAE folder)")
    factors.add_argument("--max-vectors", type=int, default=50_000)
    factors.add_argument("--seed", type=int, default=0)
    factors.set_defaults(func=cmd_factors)

    top = sub.add_parser("top-examples", help="each feature's strongest (prompt, step, location, value) records")
    _add_sae_and_acts(top)
    top.add_argument("--out", help="JSON file or folder (default: top_examples.json in the SAE folder)")
    top.add_argument("--per-feature", type=int, default=8)
    top.add_argument("--all-locations", action="store_true", help="allow several records from one prompt")
    top.add_argument("--max-vectors", type=int)
    top.set_defaults(func=cmd_top_examples)

    proto = sub.add_parser("prototypes", help="each feature's mean block outputs where it fires most "
                           "(prototypes.safetensors, for `replace` edits)",
                           description="Run a pipeline over prompts twice (same seeds) and store, per feature, the "
                           "mean output of the SAE's block and of the later blocks of its level over the cells "
                           "where the feature's last-step activation is in its top fraction: one vector per step "
                           "and CFG half.")
    proto.add_argument("--sae", required=True, help="SAE folder (local or hf://); its config names the block")
    proto.add_argument("--model", required=True, help=MODEL_HELP)
    proto.add_argument("--prompts", required=True, help="text file, one prompt per line")
    proto.add_argument("--limit", type=int, help="use only the first N prompts")
    proto.add_argument("--top", type=float, default=0.1, help="share of a feature's positive activations counted")
    proto.add_argument("--block", action="append", help="blocks to keep prototypes for, the SAE's own first "
                       "(default: the SAE's block, from its config, and the later blocks of its level)")
    proto.add_argument("--steps", type=int, help="denoising steps (default: the model's own, from its sae.models entry point, else 4)")
    proto.add_argument("--guidance", type=float, help="guidance scale (default: the model's, else the pipeline's)")
    proto.add_argument("--height", type=int)
    proto.add_argument("--width", type=int)
    proto.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    proto.add_argument("--out", help="SAE folder or file (default: the SAE folder)")
    proto.add_argument("--device", default="auto")
    proto.add_argument("--dtype", default=None, help="auto (fp16 on cuda), float32, float16, bfloat16")
    proto.set_defaults(func=cmd_prototypes)
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
