"""The parts of a painting's image on one block: what the model drew, as layers that can be moved, scaled, copied.

``decompose_painting`` reads the block's SAE codes of the image over the denoising (the inspector's feature maps,
``explore.capture_feature_maps``), leaves out the block's position-only features (measured once per engine and
block on a few probe images) and factorises the rest with ``sae.decompose``. Each ``Part`` is named from its
strongest features' labels and becomes a ``move`` layer (``Part.layer``) that changes nothing until its offset,
scale or weights change. ``paint-app decompose`` is the command line (``add_parser``, ``run``).
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from sae.decompose import check_parts, decompose, position_features
from sae.errors import SAEError

from .engine import Engine
from .errors import PaintError
from .explore import BlockMap, ExploreCache, FeatureMaps, capture_feature_maps
from .painting import Concept, Layer, Painting, quantize_mask
from .session import MAX_STRENGTH, Session, as_painting
from .session import Layer as SessionLayer

DEFAULT_PARTS = 3  # on the toy, 3 parts give the object its own part most often (docs/move.md)
TOP_FEATURES = 8  # a part's layer carries its strongest features (gain 1.0 each)
CELL_THRESHOLD = 0.5  # a part covers a cell where its map (maximum 1) is at least this
MASK_FLOOR = 0.1  # below this share of its peak, a part's map is left out of its layer's mask
PROBE_SEEDS = 2  # seeds 0 and 1 of each probe prompt
MIN_PROBES = 4  # without labels to prompt with, more seeds of the empty prompt
SMOOTH_CELLS = 3  # the fit sees each cell's code averaged over this many cells square around it

_probe_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine -> {settings key: {block: features}}
_probe_lock = threading.Lock()


@dataclass
class Part:
    """One part of an image on one block: where it is (``map`` on the block's grid, maximum 1) and what it is
    made of (``weights``: its strongest features, in units of each feature's typical activation)."""

    block: str
    index: int
    name: str
    map: np.ndarray  # float32 [rows, cols]
    weights: dict[int, float]
    cells: int  # cells where the map is at least CELL_THRESHOLD

    def mask(self, width: int, height: int) -> np.ndarray:
        """The map at image size: each grid cell's value over its pixels (below ``MASK_FLOOR`` zero), on the
        session's 256 levels."""
        rows, cols = self.map.shape
        grid = np.where(self.map >= MASK_FLOOR, self.map, 0.0)
        pixels = grid[np.arange(height) * rows // height][:, np.arange(width) * cols // width]
        return quantize_mask(pixels)

    def layer(self, width: int, height: int, offset: tuple[int, int] = (0, 0), scale: float = 1.0,
              copy: bool = False, gains: dict[int, float] | None = None) -> Layer:
        """The part as a ``move`` layer: its features at gain 1 over its mask; as drawn (a no-op) until moved
        (``offset`` in pixels), scaled (``scale``: 0 erases, 1 as drawn), copied, or re-weighted (``gains``: some
        of its features' gains, 1 as drawn, 2 twice as much, 0 without that feature)."""
        concept = Concept.of_mix(self.block, {**{feature: 1.0 for feature in self.weights},
                                              **self.checked_gains(gains or {})})
        return Layer(concept, self.mask(width, height), name=self.name, mode="move", strength=float(scale),
                     offset=(int(offset[0]), int(offset[1])), copy=bool(copy))

    def checked_gains(self, gains: dict[int, float], field_name: str = "gains") -> dict[int, float]:
        """``gains`` checked: only the part's own features, finite numbers within a session's strength range."""
        for feature, gain in gains.items():
            if feature not in self.weights:
                raise PaintError(f"{field_name} names feature {feature}; allowed: this part's features "
                                 f"{', '.join(map(str, self.weights))}")
            if not math.isfinite(gain) or abs(gain) > MAX_STRENGTH:
                raise PaintError(f"{field_name} gives feature {feature} the gain {gain}; allowed: a number from "
                                 f"-{MAX_STRENGTH:g} to {MAX_STRENGTH:g} (1 as drawn)")
        return {int(feature): float(gain) for feature, gain in gains.items()}

    def to_dict(self) -> dict:
        """The part as plain data (``paint-app decompose --json``)."""
        return {"index": self.index, "name": self.name, "block": self.block, "cells": self.cells,
                "features": {str(f): round(w, 6) for f, w in self.weights.items()},
                "map": np.round(self.map.astype(np.float64), 4).tolist()}


def dense_codes(block_map: BlockMap) -> np.ndarray:
    """A block's feature maps as dense codes [rows, cols, features] (the features the maps keep per cell)."""
    rows, cols = block_map.grid
    dense = np.zeros((rows, cols, block_map.n_features), np.float32)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    np.add.at(dense, (r[..., None], c[..., None], block_map.indices), np.maximum(block_map.values, 0))
    return dense


def _normalised(engine: Engine, block: str, block_map: BlockMap) -> np.ndarray:
    """Dense codes over each feature's typical activation, so that features weigh alike in the fit."""
    sigma = engine.concepts.blocks[block].sae.feature_mean.detach().float().cpu().numpy()
    return dense_codes(block_map) / np.maximum(sigma, 1e-6)


def fit_input(codes: np.ndarray) -> np.ndarray:
    """What the fit sees: each cell's code averaged with its neighbours' (``SMOOTH_CELLS`` square) and scaled to
    unit length, so that a part is a place of one make-up rather than the cells where some features are strongest.

    On the toy's one-object MoveBench scenes (14 scenes, 3 parts) this raised the best part's IoU with the object
    from 0.52 to 0.76 on down_blocks.0 and from 0.68 to 0.85 on up_blocks.1 (docs/move.md)."""
    smooth = ndimage.uniform_filter(codes, size=(SMOOTH_CELLS, SMOOTH_CELLS, 1), mode="nearest")
    return smooth / np.maximum(np.linalg.norm(smooth, axis=-1, keepdims=True), 1e-6)


def probe_paintings(engine: Engine, settings: Painting) -> list[Painting]:
    """A few different images to tell position from content: the palette's probe prompts (the empty prompt and
    the best-read labels), each at seeds 0 to ``PROBE_SEEDS`` - 1 (more when there are few prompts), with
    ``settings``' size, steps and guidance, nothing painted."""
    plain = Painting(**settings.settings())
    prompts = [p for p in ExploreCache(engine).probe_prompts() if not engine.prompt_report(p)["truncated"]]
    seeds = range(max(PROBE_SEEDS, -(-MIN_PROBES // len(prompts))))  # enough images with few labels
    return [replace(plain, prompt=prompt, seed=seed) for prompt in prompts for seed in seeds]


def position_features_of(engine: Engine, block: str, settings: Painting) -> np.ndarray:
    """The block's position-only features (``sae.decompose.position_features``) at ``settings``' size, measured
    once per engine on the probe images (every block at once) and cached."""
    key = (settings.model, settings.width, settings.height, settings.steps, settings.guidance)
    with _probe_lock:
        known = _probe_cache.setdefault(engine, {})
        if key not in known:
            codes: dict[str, list[np.ndarray]] = {name: [] for name in engine.concepts.blocks}
            for probe in probe_paintings(engine, settings):
                maps = capture_feature_maps(engine, probe)[1]
                for name, block_map in maps.blocks.items():
                    codes[name].append(_normalised(engine, name, block_map))
            known[key] = {name: position_features(found) for name, found in codes.items()}
        return known[key][block]


def part_name(engine: Engine, block: str, weights: dict[int, float], index: int) -> str:
    """The two words that best name a part ("red circle"): each word of its features' labels scored by the
    features' weights times how well each reads its label (the label's score); else "part N"."""
    entry = engine.concepts.blocks[block]
    scores: dict[str, float] = {}
    for feature, weight in weights.items():
        label = entry.labels.get(feature)
        for word in (label.label.split() if label else []):
            scores[word] = scores.get(word, 0.0) + weight * max(float(label.score), 1e-3)
    words = sorted(scores, key=lambda word: -scores[word])[:2]
    return " ".join(words) or f"part {index}"


def decompose_painting(engine: Engine, painting: Painting | Session, block: str, n_parts: int = DEFAULT_PARTS,
                       maps: FeatureMaps | None = None, seed: int = 0) -> list[Part]:
    """The parts of the painting's image on ``block``, largest first. ``maps``: the image's feature maps if they
    were captured already (the page's inspector has them), else the image is generated once to capture them."""
    painting = as_painting(painting)
    engine.concepts.get(block, "block")
    try:
        check_parts(n_parts)
    except SAEError as exc:
        raise PaintError(str(exc)) from None
    if maps is None:
        maps = capture_feature_maps(engine, painting, [block])[1]
    if block not in maps.blocks:
        raise PaintError(f"block is {block!r}; the feature maps given hold: {', '.join(sorted(maps.blocks))}")
    codes = _normalised(engine, block, maps.blocks[block])
    excluded = position_features_of(engine, block, painting)
    try:
        found = decompose(fit_input(codes), n_parts, exclude=excluded, seed=seed)
    except SAEError as exc:
        raise PaintError(str(exc)) from None
    parts = []
    for index in range(len(found)):
        weights = found.top_features(index, TOP_FEATURES)
        part_map = found.maps[index]
        parts.append(Part(block, index, part_name(engine, block, weights, index), part_map, weights,
                          int((part_map >= CELL_THRESHOLD).sum())))
    return parts


def part_at(parts: list[Part], index: int, field_name: str = "part") -> Part:
    """``parts[index]``, or an error naming ``field_name`` and the indices there are."""
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < len(parts):
        raise PaintError(f"{field_name} is {index!r}; allowed: 0 to {len(parts) - 1}")
    return parts[index]


def add_part(painting: Painting | Session, part: Part, offset: tuple[int, int] = (0, 0), scale: float = 1.0,
             copy: bool = False, gains: dict[int, float] | None = None) -> Painting | Session:
    """A copy of ``painting`` (or of a session file's ``Session``) with ``part`` on top as a move layer
    (``Part.layer``)."""
    layer = part.layer(painting.width, painting.height, offset, scale, copy, gains)
    if isinstance(painting, Session):  # its own layers stay as the file wrote them
        return replace(painting, layers=[*painting.layers, SessionLayer.of(layer)])
    return replace(painting, layers=[*painting.layers, layer])


# ----------------------------------------------------------------------------------------------------------------
# paint-app decompose


def add_parser(sub, add_model_args: Callable[..., None]) -> argparse.ArgumentParser:
    """The ``decompose`` subcommand on ``paint-app``'s subparsers (``add_model_args``: the CLI's --model, --sae
    and --device)."""
    parser = sub.add_parser("decompose", help="list the parts of a session's image on a block (what the model drew, "
                                              "by NMF of the block's SAE codes); --add writes one as a move layer")
    parser.add_argument("session", help="session JSON file")
    parser.add_argument("--block", help="the block to decompose (default: the block new layers paint on, as the model's profile says)")
    parser.add_argument("--parts", type=int, default=DEFAULT_PARTS, help=f"how many parts, 2 to 8 "
                                                                         f"(default: {DEFAULT_PARTS})")
    parser.add_argument("--json", action="store_true", help="one JSON object per part and line, with its map")
    parser.add_argument("--add", type=int, metavar="K", help="write the session with part K added as a move layer")
    parser.add_argument("--move", type=int, nargs=2, default=(0, 0), metavar=("DX", "DY"),
                        help="with --add: move the part by DX, DY pixels")
    parser.add_argument("--scale", type=float, default=1.0, help="with --add: 0 erases, 1 as drawn, 2 stronger")
    parser.add_argument("--copy", action="store_true", help="with --add: keep the part where it was as well")
    parser.add_argument("--gain", action="append", default=[], metavar="FEATURE=GAIN",
                        help="with --add: re-weight one of the part's features (1 as drawn, 2 twice as much, 0 "
                             "without it); repeat for several")
    parser.add_argument("--out", help="with --add: the session file to write")
    add_model_args(parser, model_default=None)
    parser.set_defaults(handler=run)
    return parser


def default_block(engine: Engine) -> str:
    """The block a new layer paints on by default (the model profile's ``layer_defaults``), if it has an SAE;
    else the first block with an SAE in the profile's order, else by name. On the toy that is the fine, late
    16x16 block, where the parts fit the objects best (docs/move.md)."""
    loaded = engine.concepts.blocks
    profile = engine.model.profile
    preferred = [(profile.layer_concept or {}).get("block")] + [block.name for block in profile.blocks]
    return next((name for name in preferred if name in loaded), min(loaded))


def run(args: argparse.Namespace) -> int:
    """``paint-app decompose``: print the parts, or with ``--add`` write the session with one added."""
    from .engine import load_engine
    from .session import load_session

    if args.add is None and (args.out or args.copy or tuple(args.move) != (0, 0) or args.scale != 1.0 or args.gain):
        raise PaintError("--out, --move, --scale, --copy and --gain need --add K (the part to add)")
    gains = parse_gains(args.gain)
    if args.add is not None and not args.out:
        raise PaintError("--out is missing; allowed: the session file to write with part --add added")
    check_parts(args.parts, "--parts")
    if not math.isfinite(args.scale):
        raise PaintError(f"--scale is {args.scale}; allowed: a finite number (0 erases, 1 as drawn)")
    session = load_session(args.session)
    if args.model:
        session.model = args.model
    engine = load_engine(session.model, args.sae or session.saes, args.device)
    if not engine.concepts.blocks:
        raise PaintError(f"model {session.model!r} has no SAEs; pass --sae PATH (an SAE folder or hf://...)")
    block = args.block or default_block(engine)
    engine.concepts.get(block, "--block")
    parts = decompose_painting(engine, session, block, args.parts)
    if args.add is not None:
        part = part_at(parts, args.add, "--add")
        add_part(session, part, tuple(args.move), args.scale, args.copy, part.checked_gains(gains, "--gain")) \
            .save(args.out)
        print(f"wrote {args.out} with part {part.index} ({part.name}) of {block} as layer {len(session.layers)}")
        return 0
    labels = engine.concepts.blocks[block]
    for part in parts:
        if args.json:
            print(json.dumps(part.to_dict()))
            continue
        top = ", ".join(f"{f} {labels.label(f) or '?'} {w:.2f}" for f, w in list(part.weights.items())[:4])
        print(f"{part.index}\t{part.name}\t{part.cells} cells\t{top}")
    return 0


def parse_gains(values: list[str]) -> dict[int, float]:
    """``--gain FEATURE=GAIN`` values as {feature: gain}; an error names ``--gain`` and the form allowed."""
    gains = {}
    for value in values:
        feature, _, gain = value.partition("=")
        try:
            gains[int(feature)] = float(gain)
        except ValueError:
            raise PaintError(f"--gain is {value!r}; allowed: FEATURE=GAIN, e.g. 12=2.0") from None
    return gains


__all__ = ["CELL_THRESHOLD", "DEFAULT_PARTS", "Part", "add_part", "add_parser", "decompose_painting", "default_block", "dense_codes",
           "parse_gains", "part_at", "part_name", "position_features_of", "probe_paintings", "run"]
