"""The painting canvas: a ``gr.HTML`` component with its own small script (``web/canvas.js``).

Why not ``gr.ImageEditor``: it exports every layer and the composite as full-size PNGs through WebGL after each
stroke and uploads them, which took ~0.8 s per stroke in software-rendered chromium, twice the whole repaint
budget. This canvas keeps the active layer's mask in the page and sends it, on pointer-up, as one small PNG in
the event's data; nothing is uploaded and the canvas is not an input of any event.

What the server shows (the component's value, see ``canvas_value``): the base image with the other layers tinted
in, the active layer's unshifted mask, its offset, colour and id. What the page sends (``parse_edit``), as the data
of an ``input`` event: ``{"kind": "stroke" | "move", "layer": id, "width", "height", "offset": [dx, dy],
"mask": "data:image/png;base64,..." | None}``.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .canvas import CanvasLayer, alpha_to_mask, canvas_background, clamp_offset, display_scale
from .errors import PaintError, as_int

WEB = Path(__file__).with_name("web")
PNG_PREFIX = "data:image/png;base64,"
MAX_MASK_BYTES = 16 * 2**20
EDIT_KINDS = ("stroke", "move")


def template() -> str:
    return (WEB / "canvas.html").read_text()


def script() -> str:
    return (WEB / "canvas.js").read_text()


def style() -> str:
    return (WEB / "canvas.css").read_text()


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return PNG_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


def canvas_value(image: Image.Image | None, layers: list[CanvasLayer], active: int, width: int, height: int,
                 active_color: str, hint: str = "") -> dict:
    """What the canvas shows: the picture (other enabled layers tinted in) and the active layer to paint."""
    others = [layer for i, layer in enumerate(layers) if i != active]
    background = canvas_background(image, others, width, height)
    value: dict[str, Any] = {"width": width, "height": height, "scale": display_scale(width, height),
                             "background": png_data_url(background), "layer": None, "mask": None,
                             "offset": [0, 0], "color": active_color, "hint": hint}
    if 0 <= active < len(layers):
        layer = layers[active]
        alpha = np.clip(np.rint(layer.mask * 255.0), 0, 255).astype(np.uint8)
        value.update(layer=layer.uid, mask=png_data_url(Image.fromarray(alpha, mode="L")),
                     offset=[int(layer.offset[0]), int(layer.offset[1])])
    return value


@dataclass
class CanvasEdit:
    """One edit sent by the page: a new mask for a layer (``stroke``) or a new offset (``move``)."""

    kind: str
    layer: str | None
    width: int
    height: int
    offset: tuple[int, int]
    mask: np.ndarray | None = None  # float32 [height, width], unshifted


def parse_edit(data: Any, width: int, height: int) -> CanvasEdit:
    """Validate the page's edit against the image size the server holds; errors name the field."""
    if not isinstance(data, dict):
        raise PaintError(f"canvas edit: expected an object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in EDIT_KINDS:
        raise PaintError(f"canvas edit: 'kind' is {kind!r}; allowed: {', '.join(EDIT_KINDS)}")
    layer = data.get("layer")
    if layer is not None and not isinstance(layer, str):
        raise PaintError(f"canvas edit: 'layer' is {layer!r}; allowed: a layer id (string) or null")
    shown = (as_int(data.get("width"), "canvas edit: 'width'"), as_int(data.get("height"), "canvas edit: 'height'"))
    offset = data.get("offset") or [0, 0]
    if not (isinstance(offset, (list, tuple)) and len(offset) == 2):
        raise PaintError(f"canvas edit: 'offset' is {offset!r}; allowed: [dx, dy] in pixels")
    offset = clamp_offset((as_int(offset[0], "canvas edit: 'offset'"), as_int(offset[1], "canvas edit: 'offset'")),
                          width, height)
    edit = CanvasEdit(kind, layer, shown[0], shown[1], offset)
    if kind == "stroke" and shown == (width, height):
        edit.mask = decode_mask(data.get("mask"), width, height)
    return edit


def decode_mask(url: Any, width: int, height: int) -> np.ndarray:
    """A PNG data URL from the page -> float mask [height, width] (red channel, area-averaged)."""
    if not isinstance(url, str) or not url.startswith(PNG_PREFIX):
        raise PaintError("canvas edit: 'mask' must be a data URL of a PNG (data:image/png;base64,...)")
    if len(url) > MAX_MASK_BYTES:
        raise PaintError(f"canvas edit: 'mask' is {len(url)} bytes; allowed: at most {MAX_MASK_BYTES}")
    try:
        picture = Image.open(io.BytesIO(base64.b64decode(url[len(PNG_PREFIX):], validate=True)))
        if picture.format != "PNG":
            raise ValueError(f"a {picture.format} picture")
        picture.load()
    except (ValueError, OSError) as exc:
        raise PaintError(f"canvas edit: 'mask' is not a readable PNG ({exc})") from exc
    grey = np.asarray(picture.convert("RGB"))[..., 0]
    return alpha_to_mask(grey, width, height)


__all__ = ["CanvasEdit", "canvas_value", "decode_mask", "parse_edit", "png_data_url", "script", "style", "template"]
