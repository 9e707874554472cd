"""Make the toy model's SAEs with the ``sae`` toolkit, then label them from the ground truth.

``python -m paint_app.toyworld.saes [--prompts 1000] [--work runs/toy_sae] [--out paint_app/assets/toy/saes] [--overwrite]``

1. captions of held-out scenes -> ``sae collect`` (every chosen block at once, the model's default steps/guidance);
2. per block: ``sae train``, then ``sae factors`` and ``sae top-examples`` on the shipped folder;
3. ground-truth labels (``paint_app.toyworld.labels``) for features and factors;
4. ``sae prototypes`` over the first ``--prototype-prompts`` captions (for ``replace`` edits), then each
   colour, texture and shape's best readers' replace and paste scores (``bench.trial_scores``) into
   ``labels.json``; then each concept's recipes (``bench.recipe_trials``: every edit tried, best first) into
   ``recipes.json``;
5. ``paint_app.json`` lists the blocks that now carry SAEs.

``--prototypes-only`` redoes step 4 for SAEs already in ``--out``; ``--scores-only`` only its scores and
recipes; ``--recipes-only`` only the recipes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from sae.cli import main as sae_main

from . import SAES_DIR
from .labels import TRIAL_MODES, label_sae, set_trial_scores
from .model import BLOCK_ROLES, text_entry_of
from .world import prompts

SAE_SEED_BASE = 40_000_000
# block: (features, k) of its SAE
BLOCKS = {
    "down_blocks.0.attentions.0": (256, 8),
    "up_blocks.0.attentions.1": (512, 16),
    "up_blocks.1.attentions.0": (256, 8),
    "up_blocks.1.attentions.1": (256, 8),
    "down_blocks.0.attentions.1": (256, 8),
    "mid_block.attentions.0": (512, 16),
}
# the blocks made by default, by where the UNet reads the caption (``train --text-entry``)
DEFAULT_BLOCKS = {
    "all": ["down_blocks.0.attentions.0", "up_blocks.0.attentions.1", "up_blocks.1.attentions.0"],
    "first": ["down_blocks.0.attentions.0", "down_blocks.0.attentions.1"],
    "middle": ["mid_block.attentions.0", "up_blocks.1.attentions.0"],
}
SHIPPED_FILES = ("config.json", "sae.safetensors")


def run_sae(*argv: str) -> None:
    print("+ sae " + " ".join(argv), flush=True)
    code = sae_main(list(argv))
    if code:
        raise SystemExit(f"saes: error: `sae {' '.join(argv)}` exited with {code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paint_app.toyworld.saes", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--blocks", nargs="*", choices=list(BLOCKS),
                        help="default: " + "; ".join(f"{', '.join(b)} (text entry: {entry})"
                                                     for entry, b in DEFAULT_BLOCKS.items()))
    parser.add_argument("--work", type=Path, default=Path("runs") / "toy_sae")
    parser.add_argument("--out", type=Path, default=SAES_DIR)
    parser.add_argument("--label-scenes", type=int, default=300)
    parser.add_argument("--n-factors", type=int, default=24)
    parser.add_argument("--site", choices=("delta", "output"), default="delta",
                        help="what the SAEs read: the block's update (the shipped SAEs) or its output")
    parser.add_argument("--prototype-prompts", type=int, default=300,
                        help="captions (the first of --prompts) that the prototypes are averaged over")
    parser.add_argument("--prototypes-only", action="store_true",
                        help="only make the prototypes of the SAEs already in --out")
    parser.add_argument("--scores-only", action="store_true",
                        help="only measure the replace and paste scores of the SAEs already in --out")
    parser.add_argument("--recipes-only", action="store_true",
                        help="only try the edits of each concept's recipes (the replace and paste scores kept)")
    parser.add_argument("--trials", type=int, default=8, help="trial edits per feature for its replace/paste score")
    parser.add_argument("--candidates", type=int, default=8,
                        help="features per concept (its best readers the mode can paint) given a score")
    parser.add_argument("--overwrite", action="store_true", help="replace SAEs already in --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from sae.pipelines import load_diffusers_pipeline

    pipe = load_diffusers_pipeline(args.model, device="cpu")
    if not args.blocks:
        args.blocks = DEFAULT_BLOCKS[text_entry_of(pipe.unet.config)]
    existing = [b for b in args.blocks if (args.out / b / "sae.safetensors").exists()]
    if args.prototypes_only or args.scores_only or args.recipes_only:
        for block in existing:
            if args.prototypes_only:
                make_prototypes(args, args.out / block, write_prompts(args))
            score_trials(args, block, args.out / block, recipes_only=args.recipes_only)
        return 0
    if existing and not args.overwrite:
        print(f"saes: error: {args.out} already holds SAEs for {', '.join(existing)}; pass --overwrite",
              file=sys.stderr)
        return 2
    prompt_file = write_prompts(args)
    acts = args.work / "acts"
    block_flags = [flag for block in args.blocks for flag in ("--block", block)]
    run_sae("collect", "--model", args.model, *block_flags, "--prompts", str(prompt_file), "--out", str(acts),
            "--batch-size", "16", "--device", "cpu", "--site", args.site, "--overwrite")
    for block in args.blocks:
        features, k = BLOCKS[block]
        trained = args.work / "saes" / block
        run_sae("train", "--acts", str(acts), "--block", block, "--out", str(trained), "--features", str(features),
                "--k", str(k), "--batch-size", "1024", "--overwrite")
        folder = args.out / block
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in SHIPPED_FILES:
            shutil.copy2(trained / name, folder / name)
        run_sae("factors", "--sae", str(folder), "--acts", str(acts), "--n", str(args.n_factors), "--device", "cpu")
        run_sae("top-examples", "--sae", str(folder), "--acts", str(acts), "--per-feature", "4", "--device", "cpu")
        summary = label_sae(pipe, folder, args.label_scenes)
        make_prototypes(args, folder, prompt_file)
        score_trials(args, block, folder)
        print(json.dumps({"block": block, "labelled": summary["labelled"],
                          "best": {k: v["score"] for k, v in summary["best"].items()}}), flush=True)
    write_blocks(args.out.parent / "paint_app.json", args.out, BLOCK_ROLES[text_entry_of(pipe.unet.config)])
    return 0


def write_prompts(args: argparse.Namespace) -> Path:
    args.work.mkdir(parents=True, exist_ok=True)
    prompt_file = args.work / "prompts.txt"
    prompt_file.write_text("\n".join(prompts(args.prompts, SAE_SEED_BASE)) + "\n")
    return prompt_file


def make_prototypes(args: argparse.Namespace, folder: Path, prompt_file: Path) -> None:
    """The SAE's prototypes on the collection's own first captions and seeds (the same images)."""
    run_sae("prototypes", "--sae", str(folder), "--model", args.model, "--prompts", str(prompt_file),
            "--limit", str(args.prototype_prompts), "--device", "cpu")


def score_trials(args: argparse.Namespace, block: str, folder: Path, recipes_only: bool = False) -> None:
    """Measure the replace and paste scores of the SAE in ``folder`` and write them into its labels; then try
    each concept's edits and write its recipes."""
    from paint_app.concepts import ConceptLibrary
    from paint_app.engine import Engine
    from paint_app.models import load_model
    from sae.recipes import Recipes, save_recipes

    from .bench import BENCH_SEED_BASE, TRIAL_SEED_BASE, recipe_trials, trial_scores
    from .judges import Judges

    loaded, judges = load_model(args.model, device="cpu"), Judges.load()

    def engine() -> Engine:  # loaded again after the labels change
        return Engine(loaded, ConceptLibrary.load([f"{block}={folder}"], loaded.profile))

    for mode in () if recipes_only else TRIAL_MODES:
        scores = trial_scores(engine(), judges, block, mode, args.trials, args.candidates)
        scored = set_trial_scores(folder, scores, mode)
        print(json.dumps({"block": block, "mode": mode, "scored": scored,
                          "mean_score": round(sum(scores.values()) / max(1, len(scores)), 4)}), flush=True)
    edits = recipe_trials(engine(), judges, block, args.trials, args.candidates)
    source = (f"ground-truth judges on {args.trials} trial rectangles per concept (seeds from {TRIAL_SEED_BASE}, "
              f"disjoint from PaintBench's {BENCH_SEED_BASE}), the rest of the image kept")
    save_recipes(folder, Recipes(edits, args.trials, source))
    print(json.dumps({"block": block, "recipes": {c: f"{e[0].describe()} {e[0].score:.2f}" for c, e in edits.items()
                                                  if e}}), flush=True)


def write_blocks(defaults_file: Path, sae_dir: Path, roles: dict[str, str]) -> None:
    """The model's profile lists exactly the blocks that carry SAEs (made now or before), with their ``roles``."""
    defaults = json.loads(defaults_file.read_text()) if defaults_file.exists() else {}
    defaults["blocks"] = {block: role for block, role in roles.items() if (sae_dir / block / "sae.safetensors").exists()}
    defaults_file.write_text(json.dumps(defaults, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
