"""The painting canvas: a ``gr.HTML`` component with its own small script (``web/canvas.js``).

Why not ``gr.ImageEditor``: it exports every layer and the composite as full-size PNGs through WebGL after each
stroke and uploads them, which took ~0.8 s per stroke in software-rendered chromium, twice the whole repaint
budget. This canvas keeps the active layer's mask in the page and sends it, on pointer-up, in the event's data
as raw bytes (no image encoding on either side); nothing is uploaded and the canvas is not an input of any event.

What the server shows (the component's value, see ``canvas_value``, sent only when the canvas must change: a
layer switch, a new image, a move button): the base image with the other layers tinted in and the active layer's
unshifted mask (PNG data URLs), its offset, colour and id. What the page sends (``parse_edit``), as the data of an
``input`` event: ``{"kind": "stroke" | "move", "layer": id, "width", "height", "offset": [dx, dy], "mask": MASK |
None}``, where ``width`` and ``height`` are the image size the canvas showed and MASK, the layer's unshifted mask
at the canvas's resolution (the image enlarged by a whole ``scale``), is ``{"width": W, "height": H, "data":
base64 of W * H bytes}``: one byte (0-255, the mask strength) per canvas pixel, row by row. The server
area-averages it to image pixels (``decode_mask``).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .canvas import CanvasLayer, alpha_to_mask, canvas_background, clamp_offset, display_scale
from .errors import PaintError, as_int
from .painting import quantize_mask

WEB = Path(__file__).with_name("web")
PNG_PREFIX = "data:image/png;base64,"
MAX_MASK_BYTES = 24 * 2**20  # of the base64 text: a 4096 x 4096 canvas
MAX_SCALE = 64  # canvas pixels per image pixel, along each side
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


def encode_mask(alpha: np.ndarray) -> dict:
    """A canvas-resolution mask (uint8 [H, W]) as the page sends it: ``{"width", "height", "data"}``."""
    alpha = np.ascontiguousarray(alpha, np.uint8)
    return {"width": int(alpha.shape[1]), "height": int(alpha.shape[0]),
            "data": base64.b64encode(alpha.tobytes()).decode("ascii")}


def decode_mask(value: Any, width: int, height: int) -> np.ndarray:
    """The page's mask (``{"width", "height", "data"}``: base64 of one byte per canvas pixel, row-major, at a whole
    multiple of the image size) -> float mask [height, width] in [0, 1], area-averaged to image pixels (at the
    session file's 256 levels: ``painting.quantize_mask``)."""
    if not isinstance(value, dict) or not {"width", "height", "data"} <= set(value):
        shown = type(value).__name__ if not isinstance(value, dict) else f"an object with {sorted(value)}"
        raise PaintError(f"canvas edit: 'mask' is {shown}; allowed: an object with 'width', 'height' and 'data' "
                         "(base64 of one byte per canvas pixel, row by row)")
    mask_width, mask_height = (as_int(value["width"], "canvas edit: 'mask.width'"),
                               as_int(value["height"], "canvas edit: 'mask.height'"))
    scale = mask_width // width if width else 0
    if not (1 <= scale <= MAX_SCALE and (mask_width, mask_height) == (width * scale, height * scale)):
        raise PaintError(f"canvas edit: 'mask' is {mask_width}x{mask_height} pixels; allowed: the image's "
                         f"{width}x{height} times a whole scale from 1 to {MAX_SCALE}")
    data = value["data"]
    if not isinstance(data, str):
        raise PaintError(f"canvas edit: 'mask.data' is a {type(data).__name__}; allowed: a base64 string")
    if len(data) > MAX_MASK_BYTES:
        raise PaintError(f"canvas edit: 'mask.data' is {len(data)} bytes; allowed: at most {MAX_MASK_BYTES}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise PaintError("canvas edit: 'mask.data' is not valid base64") from None
    if len(raw) != mask_width * mask_height:
        raise PaintError(f"canvas edit: 'mask.data' holds {len(raw)} bytes; allowed: one per canvas pixel, "
                         f"{mask_width}x{mask_height} = {mask_width * mask_height}")
    alpha = np.frombuffer(raw, np.uint8).reshape(mask_height, mask_width)
    return quantize_mask(alpha_to_mask(alpha, width, height))


__all__ = ["CanvasEdit", "canvas_value", "decode_mask", "encode_mask", "parse_edit", "png_data_url", "script", "style", "template"]
