"""Feature maps of an image during its generation; the strongest features and factors at a point; heatmaps.

A generation runs with read-only named hooks on the blocks that have SAEs. Each hook reads the block's site
(``delta`` = h_out - h_in, or ``output`` = h_out) of the conditional batch row *after* any painted edit, encodes
it with the block's SAE and sums the codes over denoising steps. The mean code is kept sparsely (the strongest
``KEEP`` features per location), enough for the inspector, heatmaps and factor read-outs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from diffusers.hooks import ModelHook
from PIL import Image

from sae.hooks import BlockHook, attached, block_input, block_output, site_value
from sae.pipelines import get_block

from .engine import Engine
from .errors import PaintError
from .painting import Choice, Concept, Layer, Painting
from .prepared import keep_icon, kept_icon
from .session import Session, as_painting

KEEP = 32  # features kept per location
HEAT_COLOR = (255, 40, 40)
ICON_SIDE = 96  # a tile's picture is at most this many pixels along its longer side


@dataclass
class BlockMap:
    """The mean SAE code of one block over a generation, sparsely: [rows, cols, KEEP] values and indices."""

    values: np.ndarray
    indices: np.ndarray
    n_features: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.values.shape[0], self.values.shape[1]

    def feature(self, feature: int) -> np.ndarray:
        """Feature ``feature``'s map [rows, cols] (zero where it is not among the kept features)."""
        return (self.values * (self.indices == feature)).sum(-1)

    def dense_at(self, row: int, col: int) -> np.ndarray:
        z = np.zeros(self.n_features, np.float32)
        z[self.indices[row, col]] = self.values[row, col]
        return z


@dataclass
class FeatureMaps:
    """Feature maps of one image, per block, with the image size they belong to."""

    width: int
    height: int
    blocks: dict[str, BlockMap] = field(default_factory=dict)

    def cell(self, block: str, x: float, y: float) -> tuple[int, int]:
        """The grid cell of block ``block`` under image point (x, y)."""
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise PaintError(f"point is ({x:g}, {y:g}); allowed: inside the image, 0 <= x < {self.width} and "
                             f"0 <= y < {self.height}")
        rows, cols = self.blocks[block].grid
        return min(rows - 1, int(y * rows / self.height)), min(cols - 1, int(x * cols / self.width))


class _Capture(BlockHook):
    """A named hook accumulating one block's SAE codes over the UNet calls of a generation."""

    def __init__(self, sae) -> None:
        super().__init__()
        self.sae = sae
        self.total: torch.Tensor | None = None
        self.calls = 0

    @torch.no_grad()
    def after(self, module, args, kwargs, output) -> None:
        h_out = block_output(output)
        x = site_value(self.sae.config.site, block_input(args, kwargs), h_out)[-1]  # the conditional row
        param = self.sae.W_dec
        z = self.sae.encode(x.permute(1, 2, 0).to(param.device, param.dtype)).float()
        self.total = z if self.total is None else self.total + z
        self.calls += 1

    def block_map(self, keep: int = KEEP) -> BlockMap:
        if self.total is None:
            raise PaintError("the generation never reached this block; no feature map to read")
        mean = self.total / self.calls
        top = torch.topk(mean, min(keep, mean.shape[-1]), dim=-1)
        return BlockMap(top.values.cpu().numpy(), top.indices.cpu().numpy(), mean.shape[-1])


class _AttachAtFirstCall(ModelHook):
    """The UNet's named hook that attaches the capture hooks at its first call, when the engine's edit hooks are
    already on the blocks, so the captures wrap them and read edited activations."""

    def __init__(self, unet: torch.nn.Module, captures: dict[str, _Capture], stack: ExitStack) -> None:
        super().__init__()
        self.unet, self.captures, self.stack = unet, captures, stack
        self.done = False

    def pre_forward(self, module, *args, **kwargs):
        if not self.done:
            self.done = True
            self.stack.enter_context(attached([(get_block(self.unet, block), "paint-app.capture", capture)
                                               for block, capture in self.captures.items()]))
        return args, kwargs


@contextmanager
def _captures_after_edits(unet: torch.nn.Module, captures: dict[str, _Capture]) -> Iterator[None]:
    """Capture hooks on the blocks, attached after the engine's edit hooks; every hook is removed on exit."""
    with ExitStack() as stack:
        stack.enter_context(attached([(unet, "paint-app.capture-trigger", _AttachAtFirstCall(unet, captures, stack))]))
        yield


def capture_feature_maps(engine: Engine, painting: Painting | Session, blocks: list[str] | None = None,
                         keep: int = KEEP) -> tuple[Image.Image, FeatureMaps]:
    """Generate ``painting`` (the same pixels as ``engine.generate``) and read its feature maps on ``blocks``
    (default: every block with an SAE)."""
    painting = as_painting(painting)
    names = list(blocks) if blocks is not None else sorted(engine.concepts.blocks)
    captures = {name: _Capture(engine.concepts.get(name).sae) for name in names}
    with engine.lock:
        if painting.keep_outside and painting.layers:
            engine.generate(painting.unpainted())  # the plain run keep_outside needs, unseen by the hooks
        engine.make_sources(painting)  # the plain runs move layers overwrite, unseen by the hooks too
        with _captures_after_edits(engine.pipeline.unet, captures):
            image = engine.generate(painting, replay=False)  # the hooks must see every step
    maps = FeatureMaps(painting.width, painting.height, {name: c.block_map(keep) for name, c in captures.items()})
    return image, maps


def top_features_at(engine: Engine, maps: FeatureMaps, x: float, y: float, n: int = 8,
                    blocks: list[str] | None = None) -> list[dict]:
    """The strongest features at image point (x, y) over ``blocks`` (default all), strongest first."""
    rows = []
    for block in blocks or sorted(maps.blocks):
        entry = engine.concepts.get(block)
        block_map = maps.blocks[block]
        row, col = maps.cell(block, x, y)
        sigma = entry.sae.feature_mean
        for value, feature in zip(block_map.values[row, col], block_map.indices[row, col]):
            if value <= 0:
                continue
            feature = int(feature)
            typical = float(sigma[feature]) or 1.0
            rows.append({"block": block, "feature": feature, "label": entry.label(feature),
                         "value": float(value), "relative": float(value) / typical})
    rows.sort(key=lambda r: -r["relative"])
    return rows[:n]


def top_factors_at(engine: Engine, maps: FeatureMaps, x: float, y: float, n: int = 5) -> list[dict]:
    """The strongest factors at (x, y): each factor's least-squares share of the code, a = z.w / w.w."""
    rows = []
    for block in sorted(maps.blocks):
        factors = engine.concepts.get(block).factors
        if factors is None:
            continue
        z = maps.blocks[block].dense_at(*maps.cell(block, x, y))
        weights = factors.weights.numpy()
        scores = weights @ z / np.maximum((weights**2).sum(1), 1e-8)
        for factor in np.argsort(-scores)[:n]:
            if scores[factor] > 0:
                rows.append({"block": block, "factor": int(factor), "label": factors.labels[factor],
                             "value": float(scores[factor])})
    rows.sort(key=lambda r: -r["value"])
    return rows[:n]


def heatmap(maps: FeatureMaps, block: str, feature: int) -> np.ndarray:
    """Feature ``feature`` of ``block`` at image size [height, width] (bilinear), in its own units."""
    if block not in maps.blocks:
        raise PaintError(f"block is {block!r}; feature maps exist for: {', '.join(sorted(maps.blocks))}")
    grid = maps.blocks[block].feature(feature).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((maps.width, maps.height), Image.BILINEAR), np.float32)


def heatmap_overlay(image: Image.Image, heat: np.ndarray, scale: int = 1, opacity: float = 0.7) -> Image.Image:
    """``image`` with ``heat`` (normalised to its maximum) laid over it in red; enlarged ``scale`` times."""
    base = np.asarray(image.convert("RGB"), np.float32)
    peak = float(heat.max(initial=0.0))
    weight = (np.clip(heat / peak, 0, 1) if peak > 0 else np.zeros_like(heat))[..., None] * opacity
    grey = base.mean(axis=2, keepdims=True) * 0.6 + base * 0.4  # desaturate so the red reads
    mixed = grey * (1 - weight) + np.array(HEAT_COLOR, np.float32) * weight
    out = Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))
    return out.resize((out.width * scale, out.height * scale), Image.NEAREST) if scale > 1 else out


def region_of(maps: FeatureMaps, block: str, feature: int, threshold: float = 0.25) -> np.ndarray:
    """Where a feature is active, as a soft mask at image size: its heatmap over its peak, below ``threshold`` 0."""
    heat = heatmap(maps, block, feature)
    peak = float(heat.max(initial=0.0))
    if peak <= 0:
        raise PaintError(f"feature {feature} of {block} is not active anywhere in this image; pick one the "
                         "inspector lists at a point")
    soft = heat / peak
    return np.where(soft >= threshold, np.clip(soft / 0.5, 0, 1), 0.0).astype(np.float32)


def everywhere(settings: Painting, concept: Concept, strength: float) -> Painting:
    """``settings`` with one layer painting ``concept`` over the whole image (a palette preview)."""
    mask = np.ones((settings.height, settings.width), np.float32)
    return replace(settings, layers=[Layer(concept, mask, name="preview", strength=strength)])


def icon_painting(settings: Painting, choice: Choice) -> Painting:
    """``settings`` with one layer painting ``choice``'s edit (its recipe: every tile has one) over the middle of
    the image (a tile's picture), the rest of the image kept."""
    height, width = settings.height, settings.width
    mask = np.zeros((height, width), np.float32)
    mask[height // 4:height - height // 4, width // 4:width - width // 4] = 1.0
    recipe = choice.recipe
    steps = tuple(recipe.step_range) if recipe.step_range and recipe.step_range[1] <= settings.steps else None
    layer = Layer(choice.concept, mask, name=choice.label, mode=recipe.mode, strength=recipe.strength,
                  step_range=steps)
    return replace(settings, layers=[layer], keep_outside=True)


def icon_key(choice: Choice) -> tuple:
    """What decides a tile's picture: its concept and its edit."""
    recipe = choice.recipe
    return (choice.concept, None) if recipe is None else \
        (choice.concept, (recipe.mode, recipe.strength, tuple(recipe.step_range or ())))


class ExploreCache:
    """What the palette shows for a concept, computed once per engine: tiles' pictures, previews, top examples.

    Shared by every tab because it holds only derived pictures of the model, never a user's painting.
    """

    def __init__(self, engine: Engine, probe_seeds: tuple[int, ...] = (0,)) -> None:
        self.engine = engine
        self.probe_seeds = probe_seeds
        self._previews: dict[tuple, Image.Image] = {}
        self._icons: dict[tuple, Image.Image] = {}
        self._lock = threading.Lock()
        self._probes: list[tuple[str, Image.Image, FeatureMaps]] | None = None

    def neutral_settings(self) -> Painting:
        profile = self.engine.model.profile
        return Painting(model=self.engine.model.name, prompt="", seed=0, width=profile.width, height=profile.height,
                        steps=profile.steps, guidance=profile.guidance)

    def preview(self, concept: Concept, strength: float = 2.0) -> Image.Image:
        """The concept painted everywhere on an empty prompt, beside the same image without it."""
        key = (concept, strength)
        with self._lock:
            return self._previews[key] if key in self._previews else self._make_preview(key, concept, strength)

    def _make_preview(self, key: tuple, concept: Concept, strength: float) -> Image.Image:
        settings = self.neutral_settings()
        plain = self.engine.generate(settings)
        painted = self.engine.generate(everywhere(settings, concept, strength))
        pair = Image.new("RGB", (plain.width * 2 + 2, plain.height), (255, 255, 255))
        pair.paste(plain.convert("RGB"), (0, 0))
        pair.paste(painted.convert("RGB"), (plain.width + 2, 0))
        self._previews[key] = pair
        return pair

    def icon(self, tile) -> Image.Image:
        """A tile's picture: its edit (``tile.choice``: concept and recipe) painted over the middle of the neutral
        scene (the empty prompt, seed 0), the rest kept, cropped to the middle three quarters; made once per engine
        and edit, at most ``ICON_SIDE`` pixels along its longer side. A ``paste`` or ``fill`` edit makes its example first (one more generation)."""
        choice = tile.choice if hasattr(tile, "choice") else tile
        key = icon_key(choice)
        with self._lock:
            if key not in self._icons and (kept := kept_icon(self.engine, choice.concept.block, key)) is not None:
                self._icons[key] = kept  # made by an earlier session and kept by `paint-app prepare`'s cache
            if key not in self._icons:
                painting = icon_painting(self.neutral_settings(), choice)
                image = self.engine.generate(painting).convert("RGB")
                width, height = image.size  # the painted middle with a margin of the scene around it
                image = image.crop((width // 8, height // 8, width - width // 8, height - height // 8))
                if max(image.size) > ICON_SIDE:
                    image.thumbnail((ICON_SIDE, ICON_SIDE), Image.BILINEAR)
                self._icons[key] = image
                keep_icon(self.engine, choice.concept.block, key, image)
            return self._icons[key]

    def cached_icon(self, tile) -> Image.Image | None:
        """A tile's picture if it was made already (never makes one)."""
        return self._icons.get(icon_key(tile.choice if hasattr(tile, "choice") else tile))

    def icon_of(self, concept: Concept) -> Image.Image | None:
        """A made picture of ``concept`` (e.g. for a layer in the stack), if there is one."""
        return next((image for (made, _), image in list(self._icons.items()) if made == concept), None)

    def probe_prompts(self) -> list[str]:
        """A small fixed probe set: the empty prompt and the best-scored distinct feature labels."""
        labels: dict[str, float] = {}
        for entry in self.engine.concepts.blocks.values():
            for label in entry.labels.values():
                text = label.label.strip()
                if text and len(text) <= 60 and labels.get(text, -1.0) < label.score:
                    labels[text] = label.score
        best = sorted(labels, key=lambda t: -labels[t])[:6]
        return [""] + best

    def probes(self) -> list[tuple[str, Image.Image, FeatureMaps]]:
        with self._lock:
            return self._probes if self._probes is not None else self._make_probes()

    def _make_probes(self) -> list[tuple[str, Image.Image, FeatureMaps]]:
        settings = self.neutral_settings()
        probes = []
        for prompt in self.probe_prompts():
            if self.engine.prompt_report(prompt)["truncated"]:
                continue
            for seed in self.probe_seeds:
                image, maps = capture_feature_maps(self.engine, replace(settings, prompt=prompt, seed=seed))
                probes.append((prompt, image, maps))
        self._probes = probes
        return probes

    def top_examples(self, block: str, weights: dict[int, float], n: int = 4) -> list[tuple[Image.Image, str]]:
        """The probe images where a concept (features with weights) is strongest, with its heatmap and a caption."""
        scored = []
        for prompt, image, maps in self.probes():
            heat = sum(w * heatmap(maps, block, f) for f, w in weights.items())
            scored.append((float(heat.max(initial=0.0)), prompt, image, heat))
        scored.sort(key=lambda item: -item[0])
        return [(heatmap_overlay(image, heat, scale=2), f"{prompt or '(empty prompt)'} · peak {peak:.2f}")
                for peak, prompt, image, heat in scored[:n] if peak > 0]


__all__ = ["BlockMap", "ExploreCache", "FeatureMaps", "ICON_SIDE", "capture_feature_maps", "everywhere", "heatmap",
           "heatmap_overlay", "icon_key", "icon_painting", "region_of", "top_factors_at", "top_features_at"]
