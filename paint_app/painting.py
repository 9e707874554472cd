"""What a painting is, in memory: concepts, layers with numpy masks, and the settings they are painted with.

Free of hooks, Gradio and file formats: the canvas, the palette, recipes and the engine all speak these types.
``paint_app.session`` is their JSON form (and the only place masks are PNGs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .errors import PaintError


@dataclass(frozen=True)
class Concept:
    """What a layer paints: one feature, one factor, or a weighted mix of features, of one UNet block's SAE."""

    block: str
    feature: int | None = None
    factor: int | None = None
    mix: tuple[tuple[int, float], ...] | None = None  # (feature, weight) pairs

    def __post_init__(self) -> None:
        named = [key for key in ("feature", "factor", "mix") if getattr(self, key) is not None]
        if len(named) != 1:
            raise PaintError(f"a concept names {', '.join(named) or 'nothing'}; allowed: exactly one of a feature, "
                             "a factor or a mix of features")

    @classmethod
    def of_mix(cls, block: str, weights: dict[int, float]) -> Concept:
        return cls(block, mix=tuple((int(f), float(w)) for f, w in weights.items()))

    @classmethod
    def from_dict(cls, block: str, data: dict[str, Any]) -> Concept:
        """From the session's encoding: ``{"feature": 3}``, ``{"factor": 1}`` or ``{"features": {"3": 1.0}}``."""
        if "feature" in data:
            return cls(block, feature=int(data["feature"]))
        if "factor" in data:
            return cls(block, factor=int(data["factor"]))
        return cls.of_mix(block, {int(f): float(w) for f, w in data["features"].items()})

    def to_dict(self) -> dict[str, Any]:
        """The session's encoding (without the block)."""
        if self.feature is not None:
            return {"feature": self.feature}
        if self.factor is not None:
            return {"factor": self.factor}
        return {"features": {str(f): w for f, w in self.mix}}

    @property
    def weights(self) -> dict[int, float] | None:
        """A mix's weights by feature (None for a feature or a factor)."""
        return dict(self.mix) if self.mix is not None else None

    def describe(self) -> str:
        if self.feature is not None:
            return f"{self.block} feature {self.feature}"
        if self.factor is not None:
            return f"{self.block} factor {self.factor}"
        return f"{self.block} mix of {len(self.mix)} features"


@dataclass(frozen=True)
class Recipe:
    """How a concept is best painted, as measured (``recipes.json``): the edit a pick of it sets on a layer."""

    mode: str
    strength: float
    step_range: tuple[int, int] | None
    score: float | None = None  # the share of its trials judged to show the concept; None: not measured


@dataclass(frozen=True)
class Choice:
    """A concept offered to paint with, by its name: from the palette, the inspector, the user's own, or the
    model's default; with its recipe where one was measured."""

    concept: Concept
    label: str
    recipe: Recipe | None = None
    source: str = "palette"  # palette | inspector | mine | default


def quantize_mask(mask: np.ndarray) -> np.ndarray:
    """A float mask on the 256 levels a session file stores (an 8-bit PNG), exactly as reading that file gives
    them: a painting and its saved session then render the same pixels."""
    grey = np.clip(np.rint(np.asarray(mask, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return grey.astype(np.float32) / np.float32(255.0)


def shift(array: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """Move a mask by (dx, dy) pixels; what leaves the image is dropped, what enters is zero."""
    dx, dy = offset
    if dx == 0 and dy == 0:
        return array
    height, width = array.shape
    out = np.zeros_like(array)
    src_x, dst_x = slice(max(0, -dx), min(width, width - dx)), slice(max(0, dx), min(width, width + dx))
    src_y, dst_y = slice(max(0, -dy), min(height, height - dy)), slice(max(0, dy), min(height, height + dy))
    out[dst_y, dst_x] = array[src_y, src_x]
    return out


@dataclass
class Layer:
    """One painted concept: where (a soft mask in image pixels, moved by ``offset``) and how (its edit mode)."""

    concept: Concept
    mask: np.ndarray  # float32 [height, width] in [0, 1], unshifted
    name: str = ""
    mode: str = "add"
    strength: float = 1.0
    step_range: tuple[int, int] | None = None  # [start, end) of the denoising steps; None: every step
    offset: tuple[int, int] = (0, 0)  # (dx, dy) pixels the painted region was moved by
    enabled: bool = True
    cond_only: bool = False  # with classifier-free guidance, act on the conditional half only
    amount: float = 1.0  # how much of the layer acts, 0..1: its mask is scaled by this
    copy: bool = False  # mode ``move``: keep the part where it was as well (a copy at the offset)

    def acting_mask(self) -> np.ndarray:
        """The mask as the edit uses it: moved by the offset, scaled by the amount, on the session's 256 levels."""
        mask = self.shown_mask()
        return quantize_mask(mask if self.amount == 1.0 else mask * np.float32(self.amount))

    def acting_origin(self) -> np.ndarray:
        """The acting mask before the offset (where a ``move`` layer's part was)."""
        return quantize_mask(self.mask if self.amount == 1.0 else self.mask * np.float32(self.amount))

    @property
    def block(self) -> str:
        return self.concept.block

    def shown_mask(self) -> np.ndarray:
        """The mask where it acts: moved by the layer's offset."""
        return shift(self.mask, self.offset)

    def is_empty(self) -> bool:
        return not bool((self.shown_mask() > 0).any())


@dataclass
class Settings:
    """What decides the plain image: the model, the prompt, the seed, the size, the steps and the guidance."""

    model: str = "toy"
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    width: int = 64
    height: int = 64
    steps: int = 20
    guidance: float = 0.0

    def key(self) -> tuple:
        """The settings as a tuple: the key of the plain run they make."""
        return (self.model, self.prompt, self.negative_prompt, self.seed, self.steps, self.guidance, self.width,
                self.height)

    def settings(self) -> dict[str, Any]:
        """The settings alone, as keyword arguments (of ``Settings``, ``Painting`` or ``Session``)."""
        return {item.name: getattr(self, item.name) for item in fields(Settings)}


@dataclass
class Painting(Settings):
    """Generation settings and the layers painted over them: everything that decides the image."""

    layers: list[Layer] = field(default_factory=list)
    keep_outside: bool = False  # outside every mask, follow the unpainted image (steering.keep_outside)

    def fingerprint(self) -> str:
        """A digest of everything that decides the image (masks included), e.g. to key a cache by."""
        digest = hashlib.sha1(repr((self.key(), self.keep_outside)).encode())
        for layer in self.layers:
            digest.update(repr((layer.concept, layer.mode, layer.strength, layer.step_range, layer.offset,
                                layer.enabled, layer.cond_only, layer.amount, layer.copy, layer.mask.shape)).encode())
            digest.update(np.ascontiguousarray(layer.mask, np.float32).tobytes())
        return digest.hexdigest()

    def unpainted(self) -> Painting:
        return Painting(**self.settings(), keep_outside=self.keep_outside)


__all__ = ["Choice", "Concept", "Layer", "Painting", "Recipe", "Settings", "quantize_mask", "shift"]
