"""Painting without a prompt, on the toy model: the first concept tile for each word, painted on the empty prompt.

For each colour, texture and shape word, the first tile the palette shows for it (``ConceptLibrary.tiles``, the
edit a pick applies) is painted into PaintBench's rectangles (the same positions and seeds as its held-out
trials) on the *empty* prompt, with the rest of the image kept, and judged by the toy's judges: success (the
concept inside the rectangle), base rate (the unpainted empty-prompt image already shows it there) and leakage
beyond 4 px of the rectangle. The same trials with the scenes' own captions are printed beside them.

    python benchmarks/empty_prompt.py [--k 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8, help="trials per concept")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from paint_app.engine import load_engine
    from paint_app.painting import Layer, Painting
    from paint_app.toyworld.bench import BENCH_SEED_BASE, EDGE_PX, concepts_to_paint, leakage, paint_trials
    from paint_app.toyworld.judges import Judges
    from paint_app.toyworld.labels import CONCEPT_KIND

    engine = load_engine("toy", [], "cpu")
    profile = engine.model.profile
    judges = Judges.load()
    settings = Painting(model="toy", width=profile.width, height=profile.height, steps=profile.steps,
                        guidance=profile.guidance, keep_outside=True)
    start = time.perf_counter()
    rows = []
    for word in concepts_to_paint():
        tile = engine.concepts.tiles(word, profile=profile)[0]
        recipe, kind = tile.choice.recipe, CONCEPT_KIND[word]
        step_range = recipe.step_range if recipe.step_range and recipe.step_range[1] <= profile.steps else None
        scores = {"empty": ([], [], []), "caption": ([], [], [])}
        for caption, seed, _, mask in paint_trials(word, args.k, BENCH_SEED_BASE):
            layer = Layer(tile.choice.concept, mask.astype(np.float32), name=word, mode=recipe.mode,
                          strength=recipe.strength, step_range=step_range)
            for name, prompt in (("empty", ""), ("caption", caption)):
                plain = Painting(**{**settings.settings(), "prompt": prompt, "seed": seed}, keep_outside=True)
                painted = Painting(**plain.settings(), layers=[layer], keep_outside=True)
                base = np.asarray(engine.generate(plain).convert("RGB"))
                image = np.asarray(engine.generate(painted).convert("RGB"))
                hits, bases, far = scores[name]
                hits.append(judges.judge(kind, image, mask)[0] == word)
                bases.append(judges.judge(kind, base, mask)[0] == word)
                far.append(leakage(base, image, mask, EDGE_PX))
        rows.append((word, kind, tile, scores))
    print(f"toy, {args.k} trials per concept, rest kept, {time.perf_counter() - start:.0f} s")
    print(f"{'concept':10} {'kind':8} {'edit (first tile)':44} {'empty: success':>14} {'base':>5} {'leak>4px':>8}"
          f" {'caption: success':>16}")
    for word, kind, tile, scores in rows:
        edit = f"{tile.choice.recipe.mode} {tile.choice.concept.describe()}"
        (hits, bases, far), (chits, _, _) = scores["empty"], scores["caption"]
        print(f"{word:10} {kind:8} {edit:44} {np.mean(hits):14.0%} {np.mean(bases):5.0%} {np.mean(far):8.2%}"
              f" {np.mean(chits):16.0%}")
    print("\nmean over concepts   empty prompt: success  leakage>4px   captions: success  leakage>4px")
    for kind in ("colour", "texture", "shape"):
        mine = [scores for _, k, _, scores in rows if k == kind]
        empty = statistics.mean(float(np.mean(s["empty"][0])) for s in mine)
        empty_leak = statistics.mean(float(np.mean(s["empty"][2])) for s in mine)
        cap = statistics.mean(float(np.mean(s["caption"][0])) for s in mine)
        cap_leak = statistics.mean(float(np.mean(s["caption"][2])) for s in mine)
        print(f"{kind:8}             {empty:22.0%} {empty_leak:12.2%} {cap:19.0%} {cap_leak:12.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
