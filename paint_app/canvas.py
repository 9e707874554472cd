"""Canvas layers: painted layers with a colour and an id for the page; soft masks at image size; moving a region.

The page's canvas (``web_canvas``) shows the image enlarged by an integer ``scale`` so strokes can be precise on
small images. A stroke's opacity is its mask strength; masks are area-averaged from canvas pixels to image pixels
here and from image pixels to each block's grid in ``steering.grid_mask``, so a thin or faint stroke gives a
small value, not nothing. A moved region keeps its painted mask and stores the move as the layer's ``offset``.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .errors import PaintError
from .painting import Layer

LAYER_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
DISPLAY_TARGET = 128  # canvas pixels along the longer side, at least
CHANGE_TOLERANCE = 1.5 / 255  # a mask that moved less than this (a rounding) is the same mask


@dataclass
class CanvasLayer(Layer):
    """A painted layer as the page keeps it: the painting's layer, with the colour it is tinted in and the id the
    page's edits name it by."""

    color: str = LAYER_COLORS[0]
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def of(cls, layer: Layer, color: str) -> CanvasLayer:
        """A painted layer (e.g. from a session file) on the canvas, tinted ``color``."""
        values = {item.name: getattr(layer, item.name) for item in dataclasses.fields(Layer)}
        if not values["name"]:
            values["name"] = layer.concept.describe()
        return cls(**values, color=color)


def next_color(layers: list[CanvasLayer]) -> str:
    used = {layer.color for layer in layers}
    free = [c for c in LAYER_COLORS if c not in used]
    return free[0] if free else LAYER_COLORS[len(layers) % len(LAYER_COLORS)]


def display_scale(width: int, height: int, target: int = DISPLAY_TARGET) -> int:
    """The integer factor that makes the canvas at least ``target`` pixels along its longer side."""
    return max(1, math.ceil(target / max(width, height)))


def empty_mask(width: int, height: int) -> np.ndarray:
    return np.zeros((height, width), np.float32)


def alpha_to_mask(layer: np.ndarray, width: int, height: int) -> np.ndarray:
    """An editor layer (RGBA [h, w, 4] uint8, or grey [h, w]) -> float mask [height, width] by area averaging
    (with numpy where the layer is the image enlarged by a whole scale, as the page's canvas is)."""
    array = np.asarray(layer)
    if array.ndim == 3 and array.shape[2] in (2, 4):
        alpha = array[..., -1]
    elif array.ndim == 3:
        alpha = array.max(axis=2)
    elif array.ndim == 2:
        alpha = array
    else:
        raise PaintError(f"a canvas layer has shape {list(array.shape)}; allowed: [height, width] or "
                         "[height, width, channels]")
    alpha = alpha.astype(np.float32) / 255.0
    rows, cols = alpha.shape
    if (rows, cols) == (height, width):
        pass
    elif rows % height == 0 and cols % width == 0 and rows // height == cols // width:  # the canvas's whole scale
        scale = rows // height
        alpha = alpha.reshape(height, scale, width, scale).mean(axis=(1, 3), dtype=np.float32)
    else:
        alpha = np.asarray(Image.fromarray(alpha, mode="F").resize((width, height), Image.BOX), np.float32)
    return np.clip(alpha, 0.0, 1.0)


def canvas_background(image: Image.Image | None, others: list[CanvasLayer], width: int, height: int) -> Image.Image:
    """The base image at image size, with the other layers' (moved) masks tinted over it (the page enlarges it)."""
    base = image.convert("RGB") if image is not None else Image.new("RGB", (width, height), (236, 236, 236))
    picture = np.asarray(base, np.float32)
    for layer in others:
        if not layer.enabled:
            continue
        weight = 0.45 * layer.shown_mask()[..., None]
        picture = picture * (1 - weight) + np.array(_rgb(layer.color), np.float32) * weight
    picture = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
    return Image.fromarray(picture)


def masks_differ(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or float(np.abs(a - b).max(initial=0.0)) > CHANGE_TOLERANCE


def clamp_offset(offset: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    dx, dy = (int(round(v)) for v in offset)
    return max(-width, min(width, dx)), max(-height, min(height, dy))


def nudge(offset: tuple[int, int], dx: int, dy: int, width: int, height: int) -> tuple[int, int]:
    return clamp_offset((offset[0] + dx, offset[1] + dy), width, height)


def place_at(mask: np.ndarray, x: float, y: float) -> tuple[int, int]:
    """The offset that moves the mask's centre of mass to image point (x, y)."""
    total = float(mask.sum())
    if total <= 0:
        raise PaintError("the active layer has nothing painted, so there is no region to move; paint on the "
                         "canvas first")
    rows, cols = np.indices(mask.shape, dtype=np.float32)
    cy = float((rows * mask).sum() / total) + 0.5
    cx = float((cols * mask).sum() / total) + 0.5
    height, width = mask.shape
    return clamp_offset((x - cx, y - cy), width, height)


def mask_from_image(image: Image.Image | np.ndarray, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """A mask from an uploaded picture (alpha if it has one, else brightness), with notes on what was adapted."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    notes = []
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        grey = picture.convert("RGBA").getchannel("A")
        used = "its alpha channel"
    else:
        grey = picture.convert("L")
        used = "its brightness"
    if picture.mode not in ("L", "LA", "RGBA"):
        notes.append(f"the image was {picture.mode}; converted to grey ({used} is the mask strength)")
    if picture.size != (width, height):
        notes.append(f"the image was {picture.size[0]}x{picture.size[1]}; resized to the canvas, {width}x{height}")
        grey = grey.resize((width, height), Image.BOX)
    return np.asarray(grey, np.float32) / 255.0, notes


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A mask for a new image size (area-averaged down, bilinear up)."""
    if mask.shape == (height, width):
        return mask
    method = Image.BOX if width * height < mask.size else Image.BILINEAR
    return np.clip(np.asarray(Image.fromarray(mask.astype(np.float32), mode="F").resize((width, height), method),
                              np.float32), 0.0, 1.0)


def _rgb(color: str) -> tuple[int, int, int]:
    text = color.lstrip("#")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


__all__ = ["CanvasLayer", "LAYER_COLORS", "alpha_to_mask", "canvas_background", "clamp_offset",
           "display_scale", "empty_mask", "mask_from_image",
           "masks_differ", "next_color", "nudge", "place_at", "resize_mask"]
