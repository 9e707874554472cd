"""Steering overhead: plain vs steered generation (4 layers on 2 blocks), run side by side in one process.

The steered runs: 4 ``add`` layers; 4 mixed ``add``/``set``/``erase`` layers; 4 ``replace`` layers (the SAEs'
prototypes made first from two prompts); 4 ``paste`` layers, with their examples cached (as on every repaint after
the first) and made anew (the first paste of a feature: one more generation).

Also the speedup of a repaint whose prompt did not change (cached text embeddings) over one that encodes it again,
and how the cost grows with the number of layers on one block (``--layer-counts``: 1, 4 and 16 layers of add, set,
erase and a mix in turn, soft masks; ``full_size.stacked_painting``, which times the same on SDXL-Turbo's UNet).

    python benchmarks/steering_overhead.py [--model tiny-random-sd] [--repeats 30] [--size 64] [--steps 4]
                                           [--layer-counts 1,4,16]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from full_size import parse_counts, stacked_painting  # noqa: E402  (this folder: on the path when run as a script)
from helpers import make_sae, save_sae  # noqa: E402

from paint_app.concepts import ConceptLibrary  # noqa: E402
from paint_app.engine import Engine  # noqa: E402
from paint_app.models import load_model  # noqa: E402
from paint_app.painting import Painting  # noqa: E402
from paint_app.session import Session  # noqa: E402
from sae.examples import save_top_examples  # noqa: E402
from sae.pipelines import get_block  # noqa: E402
from sae.prototypes import compute_prototypes  # noqa: E402

BLOCKS = ("down_blocks.0.attentions.0", "mid_block.attentions.0")
REPLACED_FEATURE = 0  # given a prototype on both blocks by ``build_engine``


def build_engine(model_name: str, device: str, folder: Path, size: int, steps: int) -> tuple[Engine, dict[str, int]]:
    """The engine, and per block the feature (the one that fired most) whose example ``paste`` layers paste."""
    model = load_model(model_name, device=device)
    channels = {block: get_block(model.pipeline.unet, block).config.in_channels for block in BLOCKS}
    paths, pasted = [], {}
    for i, block in enumerate(BLOCKS):
        sae = make_sae(channels[block], 8 * channels[block], k=8, block=block, seed=i)
        paths.append(str(save_sae(folder / block, sae)))
        prototypes = compute_prototypes(model.pipeline, sae.to(model.device), ["a red circle", "a blue square"],
                                        top=1.0, progress=False, num_inference_steps=steps, guidance_scale=0.0,
                                        height=size, width=size)
        best = int(prototypes.counts.argmax())  # the feature that fired most: its prototype serves as feature 0's
        for values in prototypes.values.values():
            values[REPLACED_FEATURE] = values[best]
        prototypes.counts[REPLACED_FEATURE] = prototypes.counts[best]
        prototypes.save(folder / block)
        save_top_examples(folder / block, {best: [{"prompt": "a red circle", "prompt_id": 0, "seed": 0,
                                                  "step": steps - 1, "row": 0, "col": 0, "value": 1.0}]})
        pasted[block] = best
    return Engine(model, ConceptLibrary.load(paths, model.profile, device=model.device)), pasted


def paintings(model: str, size: int, steps: int, pasted: dict[str, int]) -> tuple[Painting, ...]:
    """Plain; 4 ``add`` layers on 2 blocks; 4 mixed layers (add, set, erase, add) on 2 blocks; 4 ``replace``;
    4 ``paste`` (written as session files, decoded once)."""
    base = {"version": 1, "model": model, "prompt": "a red circle on grass", "seed": 0, "width": size,
            "height": size, "steps": steps, "guidance": 0.0}
    half, quarter = size // 2, size // 4
    layers = [
        {"block": BLOCKS[0], "feature": 3, "mode": "add", "strength": 4.0, "mask": {"rects": [[0, 0, half, size]]}},
        {"block": BLOCKS[0], "feature": 5, "mode": "set", "strength": 2.0,
         "mask": {"rects": [[half, 0, size, size]]}},
        {"block": BLOCKS[1], "feature": 7, "mode": "erase", "mask": {"rects": [[0, 0, size, half]]}},
        {"block": BLOCKS[1], "features": {"1": 1.0, "2": 0.5}, "mode": "add", "strength": 3.0,
         "mask": {"rects": [[quarter, quarter, 3 * quarter, 3 * quarter]]}},
    ]
    added = [{**layer, "mode": "add", "strength": 3.0} for layer in layers]
    replaced = [{key: value for key, value in layer.items() if key not in ("feature", "features")} |
                {"mode": "replace", "feature": REPLACED_FEATURE} for layer in layers]
    pastes = [{key: value for key, value in layer.items() if key not in ("feature", "features")} |
              {"mode": "paste", "feature": pasted[layer["block"]]} for layer in layers]
    return tuple(Session.from_dict({**base, "layers": chosen}).to_painting()
                 for chosen in ([], added, layers, replaced, pastes))


def timed(engine: Engine, painting: Painting) -> float:
    """Seconds for one generation with every step computed (``replay=False``: the step cache would otherwise
    replay a plain run whole, and a steered one up to its first edited step, which is not steering's cost)."""
    start = time.perf_counter()
    engine.generate(painting, replay=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random-sd")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--layer-counts", type=parse_counts, default=[1, 4, 16],
                        help="layers stacked on one block, timed against plain ('' for none)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        engine, pasted = build_engine(args.model, args.device, Path(tmp), args.size, args.steps)
        plain, added, steered, replaced, pastes = paintings(args.model, args.size, args.steps, pasted)
        for _ in range(3):  # warm-up: caches, allocator, first-call overheads
            for painting in (plain, added, steered, replaced, pastes):
                timed(engine, painting)
        names = ("plain", "added", "steered", "replaced", "pasted", "paste_made", "uncached", "cached")
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.repeats):  # interleaved, so drifts of the machine hit all sides alike
            for name, painting in (("plain", plain), ("added", added), ("steered", steered), ("replaced", replaced),
                                   ("pasted", pastes)):
                times[name].append(timed(engine, painting))
            engine._examples.clear()
            times["paste_made"].append(timed(engine, pastes))
            engine._prompt_cache.clear()
            times["uncached"].append(timed(engine, steered))
            times["cached"].append(timed(engine, steered))
        stacked = {n: stacked_painting(args.model, BLOCKS[0], n, args.size, args.steps) for n in args.layer_counts}
        stacked_times: dict[int, list[float]] = {n: [] for n in [0, *args.layer_counts]}
        for _ in range(args.repeats):
            for n in stacked_times:
                stacked_times[n].append(timed(engine, stacked.get(n, plain)))
    device = engine.model.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    p, a, s, r, v, m, u, c = (statistics.median(times[name]) for name in names)
    print(f"model {args.model}, {args.size}x{args.size}, {args.steps} steps, device {device} ({name}), "
          f"torch threads {torch.get_num_threads()}, {args.repeats} interleaved repeats")
    print(f"plain generation, median      {p * 1000:8.1f} ms")
    print(f"4 add layers on 2 blocks      {a * 1000:8.1f} ms   ratio {a / p:6.3f} (target <= 1.05)")
    print(f"4 mixed add/set/erase layers  {s * 1000:8.1f} ms   ratio {s / p:6.3f} (target <= 1.05)")
    print(f"4 replace layers on 2 blocks  {r * 1000:8.1f} ms   ratio {r / p:6.3f} (target <= 1.05)")
    print(f"4 paste layers, examples kept {v * 1000:8.1f} ms   ratio {v / p:6.3f} (target <= 1.05)")
    print(f"4 paste layers, examples made {m * 1000:8.1f} ms   ratio {m / p:6.3f} (2 examples: 2 more generations)")
    print(f"repaint, prompt re-encoded    {u * 1000:8.1f} ms")
    print(f"repaint, prompt cached        {c * 1000:8.1f} ms   speedup {u / c:6.3f}x")
    base, fastest = statistics.median(stacked_times[0]), min(stacked_times[0])
    for n in args.layer_counts:
        t = statistics.median(stacked_times[n])
        print(f"{n:2d} layers on {BLOCKS[0]:<18} {t * 1000:8.1f} ms   ratio {t / base:6.3f}, fastest runs' "
              f"{min(stacked_times[n]) / fastest:6.3f} (plain in the same loop {base * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
