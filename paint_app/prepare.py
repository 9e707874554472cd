"""``paint-app prepare``: words and pictures for SAEs that come without them.

It runs the model over a prompt set (by default the shipped ``assets/prompts/prepare.txt``, see
``paint_app.prompt_set``) with every SAE's block hooked, and keeps, per SAE, each feature's strongest activation
per prompt and where it was (step, grid cell): streamed, no activations are stored. From those it writes, per SAE,

- ``labels.json``: each feature's words (``sae.labels.word_association_labels``: the words over-represented
  among its strongest prompts, by specificity), optionally with CLIP's best words for its picture (``--clip``);
- ``top_examples.json``: its strongest prompts with their seeds, step and cell (as ``sae.examples`` records);
- ``icons/``: tile pictures (``ExploreCache.icon``) as PNGs, made on demand and kept.

The cache lives in the user's cache folder (``$PAINT_APP_CACHE``, else ``$XDG_CACHE_HOME/paint-app``, else
``~/.cache/paint-app``), one entry per model and SAE: ``prepare/<model>/<sae key>/``. The SAE key hashes its
config and weights (``paint_app.prepared``, the cache's own module). ``ConceptLibrary.add``
reads an entry's labels and examples (``use_prepared``) when the SAE's own folder has none.

Work goes in chunks of prompts; each chunk's results are written atomically into ``chunks/`` of every entry, so
an interrupted run resumes where it stopped. A full disk stops with a ``PaintError`` and the unfinished entries
are removed.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sae.capture import capture, read_prompts
from sae.errors import SAEError
from sae.examples import TOP_EXAMPLES_NAME, load_top_examples, save_top_examples
from sae.labels import Label, load_labels, prompt_words, save_labels, word_association_labels

from .errors import PaintError
from .prepared import ENTRY_NAME, cache_root, entry_folder, read_entry, use_prepared

PROMPTS_FILE = Path(__file__).parent / "assets" / "prompts" / "prepare.txt"
CHUNK_SIZE = 64  # prompts per chunk: the unit of resuming
BATCH_SIZE = 4  # prompts per pipeline call
PER_FEATURE = 8  # top examples kept per feature
TOP_FRACTION = 0.02  # a feature's top prompts for its words: its strongest 2% (60 of the shipped 3000)
MIN_TOP = 8
CLIP_WORDS = 2


# ----------------------------------------------------------------------------------------------------------------
# Running it.


@dataclass
class PrepareOptions:
    model: str
    saes: list[str]
    prompts_file: str | None = None  # default: the shipped prompt set
    limit: int | None = None
    steps: int | None = None  # default: the model's own
    cache: str | None = None
    clip: str | None = None  # a folder with CLIP weights (transformers CLIPModel + CLIPProcessor)
    icons: int = 0  # pictures made now for this many tiles (the rest on demand)
    device: str = "auto"
    seed: int = 0
    chunk_size: int = CHUNK_SIZE
    batch_size: int = BATCH_SIZE
    progress: bool = True


@dataclass
class Run:
    """One prepare run: the loaded model and SAEs, prompts, generation settings and each SAE's cache entry."""

    loaded: object
    library: object
    prompts: list[str]
    settings: dict  # height, width, steps, guidance, seed
    entries: dict[str, Path]  # block -> entry folder
    key: str  # what makes two runs the same: prompts and settings

    def chunks(self, size: int) -> list[list[int]]:
        return [list(range(i, min(i + size, len(self.prompts)))) for i in range(0, len(self.prompts), size)]

    def chunk_file(self, block: str, number: int) -> Path:
        return self.entries[block] / "chunks" / self.key / f"chunk_{number:05d}.safetensors"


def prepare(options: PrepareOptions, out: TextIO | None = None) -> dict[str, Path]:
    """Run ``paint-app prepare``; returns each block's cache entry. See the module docstring."""
    out = out or sys.stdout
    run = open_run(options)
    todo = [n for n, _ in enumerate(run.chunks(options.chunk_size))
            if not all(run.chunk_file(block, n).is_file() for block in run.entries)]
    done = all(read_entry(folder).get("complete") and read_entry(folder).get("run") == run.key
               for folder in run.entries.values())
    if done:
        print(f"prepare: already done for {len(run.entries)} SAE(s) of {options.model}; in "
              f"{cache_root(options.cache) / 'prepare'}", file=out)
    else:
        with disk_full_guard(run, options):
            for folder in run.entries.values():
                _write_json(folder / ENTRY_NAME, {**read_entry(folder), "complete": False, **_entry_meta(run, options)})
            if todo:
                _print_estimate(run, options, len(todo), out)
            bar = tqdm(todo, desc="prepare", unit="chunk", disable=not options.progress)
            chunks = run.chunks(options.chunk_size)
            for number in bar:
                results = collect_chunk(run, chunks[number], options.batch_size)
                for block, tensors in results.items():
                    write_chunk(run.chunk_file(block, number), tensors)
            for block in run.entries:
                finish_entry(run, block, options)
    if options.clip or options.icons:
        with cache_folder(options.cache):  # the pictures go where this run's entries are
            engine = _engine(run)
            if options.clip:
                add_clip_labels(engine, run, options.clip, out=out, progress=options.progress)
            if options.icons:
                make_icons(engine, options.icons, progress=options.progress)
    for block, folder in run.entries.items():
        print(f"{block}: {len(load_labels(folder))} features with words in {folder}", file=out)
    return dict(run.entries)


def open_run(options: PrepareOptions) -> Run:
    from .concepts import ConceptLibrary
    from .models import load_model

    if options.chunk_size < 1 or options.batch_size < 1:
        raise PaintError(f"chunk size is {options.chunk_size} and batch size {options.batch_size}; both must be >= 1")
    for name, value in (("--steps", options.steps), ("--limit", options.limit)):
        if value is not None and value < 1:
            raise PaintError(f"{name} is {value}; it must be >= 1")
    try:
        prompts = read_prompts(options.prompts_file or PROMPTS_FILE, options.limit)
    except SAEError as exc:
        raise PaintError(f"--prompts: {exc}") from None
    loaded = load_model(options.model, device=options.device)
    loaded.pipeline.set_progress_bar_config(disable=True)  # prepare's own bars count chunks
    library = ConceptLibrary.load(options.saes, loaded.profile, device=loaded.device)
    if not library.blocks:
        raise PaintError(f"model {options.model!r} has no SAEs to prepare; pass --sae PATH (an SAE folder or hf://...)")
    profile = loaded.profile
    settings = {"height": profile.height, "width": profile.width, "steps": options.steps or profile.steps,
                "guidance": profile.guidance, "seed": options.seed}
    key_text = json.dumps({"prompts": prompts, **settings, "chunk": options.chunk_size, "batch": options.batch_size})
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    entries = {block: entry_folder(profile.name, entry.sae, options.cache)
               for block, entry in sorted(library.blocks.items())}
    return Run(loaded, library, prompts, settings, entries, key)


def _entry_meta(run: Run, options: PrepareOptions) -> dict:
    return {"model": run.loaded.profile.name, "run": run.key, "n_prompts": len(run.prompts),
            "prompts_file": str(options.prompts_file or PROMPTS_FILE), **run.settings}


def _pipeline_kwargs(run: Run, prompt_ids: list[int]) -> dict:
    settings = run.settings
    kwargs = {"prompt": [run.prompts[i] for i in prompt_ids], "num_inference_steps": settings["steps"],
              "height": settings["height"], "width": settings["width"], "output_type": "latent",
              "generator": [torch.Generator().manual_seed(settings["seed"] + i) for i in prompt_ids]}
    if settings["guidance"] is not None:
        kwargs["guidance_scale"] = settings["guidance"]
    return kwargs


@torch.no_grad()
def collect_chunk(run: Run, prompt_ids: list[int], batch_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per block, the chunk's sparse (prompt, feature, value, where) of each feature's strongest activation per
    prompt; ``where`` = step x cells + row x cols + col."""
    parts: dict[str, list[dict[str, torch.Tensor]]] = {block: [] for block in run.entries}
    for start in range(0, len(prompt_ids), batch_size):
        ids = prompt_ids[start:start + batch_size]
        for block, (best, where) in _strongest(run, ids).items():
            rows, features = best.nonzero(as_tuple=True)
            parts[block].append({"prompt": torch.tensor(ids, dtype=torch.int32)[rows], "feature": features.int(),
                                 "value": best[rows, features], "where": where[rows, features]})
    return {block: {name: torch.cat([p[name] for p in chunks]).contiguous() for name in chunks[0]}
            for block, chunks in parts.items()}


def _strongest(run: Run, prompt_ids: list[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per block, [prompts, features]: each feature's strongest activation over steps and cells, and where."""
    blocks = run.library.blocks
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def sink(block: str, step: int, value: torch.Tensor) -> None:
        sae = blocks[block].sae
        batch, rows, cols, channels = value.shape
        z = sae.encode(value.reshape(batch, rows * cols, channels).to(sae.W_dec.device, sae.W_dec.dtype)).float()
        best, cell = z.max(dim=1)
        best, where = best.cpu(), (cell.cpu() + step * rows * cols).int()
        if block in found:
            old_best, old_where = found[block]
            better = best > old_best
            best, where = torch.where(better, best, old_best), torch.where(better, where, old_where)
        found[block] = (best, where)

    sites: dict[str, list[str]] = {}
    for block in run.entries:
        sites.setdefault(blocks[block].sae.config.site, []).append(block)
    with ExitStack() as stack:
        for site, names in sites.items():
            stack.enter_context(capture(run.loaded.pipeline, names, site, sink=sink))
        run.loaded.pipeline(**_pipeline_kwargs(run, prompt_ids))
    return found


def write_chunk(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """One chunk's results, written atomically (a temporary file, then a rename)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(file)


def _print_estimate(run: Run, options: PrepareOptions, n_chunks: int, out: TextIO) -> None:
    """Time images as the run makes them (a batch, after one image that warms the pipeline up), and print the
    prompts left x seconds per image."""
    remaining = min(len(run.prompts), n_chunks * options.chunk_size)
    batch = list(range(min(options.batch_size, len(run.prompts))))
    _strongest(run, [0])
    start = time.perf_counter()
    _strongest(run, batch)
    seconds = (time.perf_counter() - start) / len(batch)
    total = seconds * remaining
    print(f"prepare: {remaining} prompts x {run.settings['steps']} step(s) on {len(run.entries)} SAE(s); one image "
          f"took {seconds:.2f} s, so about {_duration(total)} (prompts x seconds per image)", file=out, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def finish_entry(run: Run, block: str, options: PrepareOptions) -> None:
    """Read the block's chunks, write its labels and top examples, mark the entry complete and drop the chunks."""
    folder = run.entries[block]
    sae = run.library.blocks[block].sae
    strongest = torch.zeros(len(run.prompts), sae.n_features)
    where = torch.zeros(len(run.prompts), sae.n_features, dtype=torch.int32)
    for number in range(len(run.chunks(options.chunk_size))):
        part = load_file(str(run.chunk_file(block, number)))
        rows, features = part["prompt"].long(), part["feature"].long()
        strongest[rows, features] = part["value"]
        where[rows, features] = part["where"]
    labels = word_association_labels(strongest, run.prompts, top_fraction=TOP_FRACTION, min_top=MIN_TOP)
    save_labels(folder, labels)
    save_top_examples(folder / TOP_EXAMPLES_NAME, top_examples(strongest, where, run, block))
    _write_json(folder / ENTRY_NAME, {**read_entry(folder), "complete": True, "block": block,
                                      "features_with_words": len(labels)})
    shutil.rmtree(folder / "chunks", ignore_errors=True)


def top_examples(strongest: torch.Tensor, where: torch.Tensor, run: Run, block: str) -> dict[int, list[dict]]:
    """Per feature that fired, its ``PER_FEATURE`` strongest prompts (one record each, as ``sae.examples``)."""
    rows, cols = _grid(run, block)
    top = strongest.topk(min(PER_FEATURE, strongest.shape[0]), dim=0)
    examples = {}
    for feature in (strongest.max(0).values > 0).nonzero().flatten().tolist():
        records = []
        for value, prompt_id in zip(top.values[:, feature].tolist(), top.indices[:, feature].tolist()):
            if value <= 0:
                break
            step, cell = divmod(int(where[prompt_id, feature]), rows * cols)
            records.append({"prompt": run.prompts[prompt_id], "prompt_id": prompt_id,
                            "seed": run.settings["seed"] + prompt_id, "step": step, "row": cell // cols,
                            "col": cell % cols, "value": round(value, 5)})
        examples[feature] = records
    return examples


def _grid(run: Run, block: str) -> tuple[int, int]:
    from sae.pipelines import unet_blocks

    pipe = run.loaded.pipeline
    scale = getattr(pipe, "vae_scale_factor", 8)
    infos = {info.name: info for info in unet_blocks(pipe.unet, run.settings["height"], run.settings["width"], scale)}
    return tuple(infos[block].grid)


def _write_json(file: Path, data: dict) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(file)


class disk_full_guard:
    """Turns a full disk while writing into a ``PaintError`` and removes the run's unfinished entries (another
    write error becomes a ``PaintError`` naming the folder, and the finished chunks stay for a rerun)."""

    def __init__(self, run: Run, options: PrepareOptions) -> None:
        self.run, self.options = run, options

    def __enter__(self) -> disk_full_guard:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if not isinstance(exc, OSError):
            return False
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise PaintError(f"cannot write the prepare cache '{cache_root(self.options.cache)}' ({exc}); pass "
                             "--cache DIR to use another folder") from None
        written = [f for folder in self.run.entries.values() for f in (folder / "chunks").rglob("chunk_*.safetensors")]
        n_chunks = len(self.run.chunks(self.options.chunk_size)) * len(self.run.entries)
        need = f"about {_size(sum(f.stat().st_size for f in written) / len(written) * n_chunks)}" if written \
            else "an amount not known yet"
        removed = [folder for folder in self.run.entries.values() if not read_entry(folder).get("complete")]
        for folder in removed:
            shutil.rmtree(folder, ignore_errors=True)
        raise PaintError(f"the disk holding the prepare cache '{cache_root(self.options.cache)}' is full ({exc}); "
                         f"prepare needs {need} there while it runs. Removed the unfinished cache "
                         f"entr{'y' if len(removed) == 1 else 'ies'} {', '.join(str(f) for f in removed)}. Free "
                         "some space or pass --cache DIR on another disk, then run it again") from None


def _size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TB"


# ----------------------------------------------------------------------------------------------------------------
# Pictures and CLIP words.


@contextmanager
def cache_folder(cache: str | Path | None) -> Iterator[None]:
    """``$PAINT_APP_CACHE`` set to ``cache`` meanwhile (nothing changes without one): the engine's pictures
    (``ExploreCache.icon``) look for entries in the default cache folder."""
    if not cache:
        yield
        return
    before = os.environ.get("PAINT_APP_CACHE")
    os.environ["PAINT_APP_CACHE"] = str(cache)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PAINT_APP_CACHE", None)
        else:
            os.environ["PAINT_APP_CACHE"] = before


def _engine(run: Run):
    from .concepts import ConceptLibrary
    from .engine import Engine

    library = ConceptLibrary({block: entry for block, entry in run.library.blocks.items()})
    for entry in library.blocks.values():
        use_prepared(entry, run.loaded.profile)
    return Engine(run.loaded, library)


def prepared_icon(explore_cache, tile) -> Image.Image:
    """A tile's picture (``ExploreCache.icon``), which keeps it as a PNG in the prepare cache once ``prepare`` ran
    for its SAE, so a later session reads it instead of making it again."""
    return explore_cache.icon(tile)


def make_icons(engine, count: int, progress: bool = True) -> int:
    """Make and keep the pictures of the palette's first ``count`` tiles; returns how many were made."""
    from .explore import ExploreCache

    explore = ExploreCache(engine)
    tiles = [t for t in engine.concepts.tiles("", profile=engine.model.profile) if t.paintable][:count]
    for tile in tqdm(tiles, desc="icons", unit="icon", disable=not progress):
        prepared_icon(explore, tile)
    return len(tiles)


def feature_choice(engine, block: str, feature: int, label: str = ""):
    """A feature as a tile's edit: ``add`` at the model's layer defaults (what an unmeasured tile paints)."""
    from .concepts import layer_defaults
    from .painting import Choice, Concept, Recipe

    strength, step_range = layer_defaults(engine.model.profile)
    return Choice(Concept(block, feature=feature), label or f"feature {feature}", Recipe("add", strength, step_range))


def clip_scores(clip: str | Path, images: list[Image.Image], words: list[str], batch_size: int = 32) -> torch.Tensor:
    """[images, words]: CLIP's cosine similarity of each image with "a picture of <word>"."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(str(clip)).eval()
        processor = CLIPProcessor.from_pretrained(str(clip))
    except (OSError, ValueError) as exc:
        raise PaintError(f"--clip {str(clip)!r} is not a folder with CLIP weights and its processor "
                         f"(transformers CLIPModel + CLIPProcessor, e.g. a save_pretrained folder): {exc}") from None
    with torch.no_grad():
        text = processor(text=[f"a picture of {w}" for w in words], return_tensors="pt", padding=True)
        text_features = _features(model.get_text_features(**text))
        scores = []
        for start in range(0, len(images), batch_size):
            pixels = processor(images=images[start:start + batch_size], return_tensors="pt")
            scores.append(_features(model.get_image_features(**pixels)) @ text_features.T)
    return torch.cat(scores) if scores else torch.zeros(0, len(words))


def _features(output) -> torch.Tensor:
    tensor = output if isinstance(output, torch.Tensor) else output.pooler_output
    return torch.nn.functional.normalize(tensor.float(), dim=-1)


def add_clip_labels(engine, run: Run, clip: str | Path, top: int = CLIP_WORDS,
                    out: TextIO | None = None, progress: bool = True) -> int:
    """Score each feature's picture (its ``add`` edit over the neutral scene, as a tile's) against the prompt set's
    words with CLIP and add the ``top`` best words to its label (a feature with no words gets them as its label,
    source ``clip``). Pictures are kept in the cache. Returns how many labels changed."""
    from .explore import ExploreCache

    vocabulary = sorted(set().union(*(prompt_words(p) for p in run.prompts)))
    explore = ExploreCache(engine)
    changed = 0
    for block, folder in run.entries.items():
        labels = load_labels(folder)
        features = sorted(load_top_examples(folder)) if (folder / TOP_EXAMPLES_NAME).is_file() else []
        images = [prepared_icon(explore, feature_choice(engine, block, f))
                  for f in tqdm(features, desc=f"pictures {block}", unit="feature", disable=not progress)]
        scores = clip_scores(clip, images, vocabulary) if images else torch.zeros(0, len(vocabulary))
        for feature, row in zip(features, scores):
            best = [vocabulary[i] for i in row.topk(min(top, len(vocabulary))).indices.tolist()]
            labels[feature] = _with_words(labels.get(feature), best, float(row.max()))
            changed += 1
        save_labels(folder, labels)
        engine.concepts.get(block).labels = labels
    if out is not None:
        print(f"prepare: CLIP words added to {changed} features", file=out)
    return changed


def _with_words(label: Label | None, words: list[str], score: float) -> Label:
    if label is None:
        return Label(" ".join(words), round(score, 4), "clip")
    have = label.label.split()
    extra = [w for w in words if w not in have]
    return Label(" ".join(have + extra), label.score, label.source)


# ----------------------------------------------------------------------------------------------------------------
# The hint the palette shows before prepare ran, and the CLI.

_SECONDS_PER_IMAGE: dict[int, float] = {}


def seconds_per_image(engine) -> float:
    """One image of the model at its own settings, timed once per engine (the plain pipeline, no cache)."""
    if id(engine) not in _SECONDS_PER_IMAGE:
        profile = engine.model.profile
        kwargs = {"prompt": "", "num_inference_steps": profile.steps, "height": profile.height,
                  "width": profile.width, "output_type": "latent", "generator": torch.Generator().manual_seed(0)}
        with engine.lock, torch.no_grad():
            start = time.perf_counter()
            engine.pipeline(**kwargs)
            _SECONDS_PER_IMAGE[id(engine)] = time.perf_counter() - start
    return _SECONDS_PER_IMAGE[id(engine)]


def prepare_hint(engine) -> str:
    """What to run when the model's SAEs have no words (empty when some block has labels or there are no SAEs)."""
    blocks = engine.concepts.blocks
    if not blocks or any(entry.labels for entry in blocks.values()):
        return ""
    saes = " ".join(f"--sae {entry.source}" for _, entry in sorted(blocks.items()))
    n_prompts = sum(1 for line in PROMPTS_FILE.read_text().splitlines() if line.strip())
    minutes = math.ceil(n_prompts * seconds_per_image(engine) / 60)
    return (f"These SAEs have no words yet: run `paint-app prepare --model {engine.model.name} {saes}` "
            f"(about {minutes} minute{'s' if minutes != 1 else ''} on this machine: {n_prompts} prompts), "
            "then start the app again.")


def add_parser(sub, add_model_args: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """The ``prepare`` subcommand of ``paint-app`` (``sub``: its subparsers; ``add_model_args``: the CLI's
    --model, --sae and --device)."""
    parser = sub.add_parser("prepare", help="give SAEs without labels words and pictures: run the model over a "
                                            "prompt set, label features by their prompts' words, keep top examples")
    add_model_args(parser)
    parser.add_argument("--prompts", help="one prompt per line (default: the shipped set of 3000)")
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    parser.add_argument("--steps", type=int, help="denoising steps per image (default: the model's)")
    parser.add_argument("--cache", help="cache folder (default: $PAINT_APP_CACHE, else $XDG_CACHE_HOME/paint-app, "
                                        "else ~/.cache/paint-app); serve reads another one with PAINT_APP_CACHE=DIR")
    parser.add_argument("--clip", help="a folder with CLIP weights (transformers CLIPModel + CLIPProcessor): add "
                                       "CLIP's best words for each feature's picture to its label")
    parser.add_argument("--icons", type=int, default=0, help="make the pictures of this many tiles now (default 0: "
                                                             "on demand)")
    parser.add_argument("--seed", type=int, default=0, help="seed of prompt 0 (prompt i uses seed + i)")
    parser.set_defaults(handler=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    prepare(PrepareOptions(model=args.model, saes=args.sae, prompts_file=args.prompts, limit=args.limit,
                           steps=args.steps, cache=args.cache, clip=args.clip, icons=args.icons,
                           device=args.device, seed=args.seed))
    return 0


__all__ = ["PrepareOptions", "add_parser", "make_icons", "prepare", "prepare_hint", "prepared_icon"]
