"""The session file, version 1 (docs/design.md §6): the JSON form of a ``Painting``; parse, validate, save.

A session is self-contained JSON that replays to the same pixels with the same model and SAEs. Every field is
validated; an error names the field, the value and what is allowed. This is the only place masks are PNGs: a
``Painting`` in memory holds numpy masks (``Session.to_painting``, ``Session.of``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import SessionError
from .modes import MODES as EDIT_MODES
from .modes import NAMES as MODES
from .painting import Concept, Painting, Settings, shift
from .painting import Layer as PaintedLayer

VERSION = 1
MAX_SIZE = 2048
MAX_STEPS = 500
MAX_STRENGTH = 100.0
MAX_GUIDANCE = 50.0
MAX_LAYERS = 64
MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**63 - 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fail(field_name: str, value: Any, allowed: str) -> SessionError:
    try:
        shown = repr(value)
    except (ValueError, RecursionError):  # an int of over 4300 digits; nesting deeper than repr goes
        shown = f"a {type(value).__name__} too large to show"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return SessionError(f"{field_name} is {shown}; allowed: {allowed}")


def _int(data: dict, key: str, where: str, low: int, high: int, default: Any = None) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(f"{where}{key}", value, f"an integer from {low} to {high}")
    return value


def _number(data: dict, key: str, where: str, low: float, high: float, default: Any = None) -> float:
    value = data.get(key, default)
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high):
        raise _fail(f"{where}{key}", value, f"a finite number from {low:g} to {high:g}")
    return float(value)


def _string(data: dict, key: str, where: str, default: Any = None, max_chars: int = MAX_PROMPT_CHARS) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or len(value) > max_chars:
        raise _fail(f"{where}{key}", value, f"a string of at most {max_chars} characters")
    return value


def _bool(data: dict, key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise _fail(f"{where}{key}", value, "true or false")
    return value


@dataclass
class Mask:
    """A layer's mask in image pixels: a grey PNG (alpha = strength) or rectangles."""

    png: str | None = None
    rects: list[list[int]] | None = None

    def to_array(self, width: int, height: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
        """The mask as float32 [height, width] in [0, 1], shifted by ``offset`` = (dx, dy) pixels."""
        if self.png is not None:
            array = decode_png_mask(self.png, width, height, "mask.png")
        else:
            array = np.zeros((height, width), np.float32)
            for x0, y0, x1, y1 in self.rects or []:
                array[y0:y1, x0:x1] = 1.0
        return shift(array, offset)

    def to_dict(self) -> dict:
        return {"png": self.png} if self.png is not None else {"rects": self.rects}


def png_size(raw: bytes) -> tuple[int, int] | None:
    """The (width, height) a PNG's header (IHDR) declares, read before anything is decoded; None if not a PNG."""
    if len(raw) < 24 or raw[:8] != PNG_SIGNATURE or raw[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", raw[16:24])


def decode_png_mask(text: str, width: int, height: int, field_name: str) -> np.ndarray:
    """A base64 grey PNG as float32 [height, width] in [0, 1]; its declared size is checked before decoding."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(field_name, text, "base64 of an 8-bit grey PNG") from None
    size = png_size(raw)
    if size is not None and size != (width, height):
        raise SessionError(f"{field_name} is {size[0]}x{size[1]} pixels; allowed: the session's "
                           f"width x height, {width}x{height}")
    try:
        image = Image.open(io.BytesIO(raw), formats=["PNG"])
        image.load()
        if image.mode in ("LA", "RGBA", "PA"):
            image = image.getchannel("A")
        grey = image.convert("L")
    except Exception as exc:  # the bytes come from the user: any decoder error means "not a readable PNG"
        raise _fail(field_name, text, f"base64 of an 8-bit grey PNG (the bytes are not a readable image: "
                    f"{type(exc).__name__}: {exc})") from None
    return np.asarray(grey, dtype=np.float32) / 255.0


def encode_png_mask(array: np.ndarray) -> str:
    """Base64 of an 8-bit grey PNG of a float mask in [0, 1]."""
    grey = np.clip(np.rint(np.asarray(array, np.float32) * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Layer:
    """One painted concept: a feature, a factor or a weighted mix of features of one block."""

    block: str
    mask: Mask
    name: str = ""
    feature: int | None = None
    factor: int | None = None
    features: dict[int, float] | None = None
    mode: str = "add"
    strength: float = 1.0
    step_range: tuple[int, int] | None = None
    offset: tuple[int, int] = (0, 0)
    enabled: bool = True
    cond_only: bool = False
    amount: float = 1.0
    copy: bool = False

    def mask_array(self, width: int, height: int) -> np.ndarray:
        return self.mask.to_array(width, height, self.offset)

    def to_concept(self) -> Concept:
        if self.feature is not None:
            return Concept(self.block, feature=self.feature)
        if self.factor is not None:
            return Concept(self.block, factor=self.factor)
        return Concept.of_mix(self.block, self.features or {})

    def to_painted(self, width: int, height: int) -> PaintedLayer:
        """The layer in memory: its mask decoded (unshifted) at the session's size."""
        return PaintedLayer(self.to_concept(), self.mask.to_array(width, height), name=self.name, mode=self.mode,
                            strength=self.strength, step_range=self.step_range, offset=tuple(self.offset),
                            enabled=self.enabled, cond_only=self.cond_only, amount=self.amount, copy=self.copy)

    @classmethod
    def of(cls, layer: PaintedLayer) -> Layer:
        """A painted layer's JSON form: its mask as a grey PNG."""
        concept = layer.concept
        return cls(block=concept.block, mask=Mask(png=encode_png_mask(layer.mask)), name=layer.name,
                   feature=concept.feature, factor=concept.factor, features=concept.weights, mode=layer.mode,
                   strength=float(layer.strength), step_range=layer.step_range, offset=tuple(layer.offset),
                   enabled=layer.enabled, cond_only=layer.cond_only, amount=float(layer.amount), copy=layer.copy)

    def to_dict(self) -> dict:
        data: dict[str, Any] = {"name": self.name, "block": self.block}
        if self.feature is not None:
            data["feature"] = self.feature
        elif self.factor is not None:
            data["factor"] = self.factor
        else:
            data["features"] = {str(f): w for f, w in (self.features or {}).items()}
        data.update(mode=self.mode, strength=self.strength, mask=self.mask.to_dict(), offset=list(self.offset))
        if self.step_range is not None:
            data["step_range"] = list(self.step_range)
        if not self.enabled:
            data["enabled"] = False
        if self.cond_only:
            data["cond_only"] = True
        if self.amount != 1.0:
            data["amount"] = self.amount
        if self.copy:
            data["copy"] = True
        return data


@dataclass
class Session(Settings):
    """A painting as its file holds it: the settings, the layers with PNG (or rectangle) masks, the SAE paths."""

    layers: list[Layer] = field(default_factory=list)
    saes: list[str] = field(default_factory=list)
    keep_outside: bool = False  # outside every mask, follow the unpainted image (steering.keep_outside)
    version: int = VERSION

    @classmethod
    def from_dict(cls, data: Any) -> Session:
        if not isinstance(data, dict):
            raise _fail("session", data, "a JSON object")
        version = data.get("version")
        if version != VERSION or isinstance(version, bool):
            raise _fail("version", version, f"{VERSION}")
        model = data.get("model", "toy")
        if not isinstance(model, str) or not model.strip():
            raise _fail("model", model, "a model name, hub id or local path (a non-empty string)")
        width = _int(data, "width", "", 8, MAX_SIZE)
        height = _int(data, "height", "", 8, MAX_SIZE)
        for key, value in (("width", width), ("height", height)):
            if value % 8:
                raise _fail(key, value, f"a multiple of 8 from 8 to {MAX_SIZE}")
        steps = _int(data, "steps", "", 1, MAX_STEPS)
        session = cls(
            model=model, prompt=_string(data, "prompt", "", ""), negative_prompt=_string(data, "negative_prompt", "", ""),
            seed=_int(data, "seed", "", 0, MAX_SEED, 0), width=width, height=height, steps=steps,
            guidance=_number(data, "guidance", "", 0.0, MAX_GUIDANCE, 0.0),
            saes=_sae_list(data.get("saes", [])), keep_outside=_bool(data, "keep_outside", "", False),
        )
        layers = data.get("layers", [])
        if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
            raise _fail("layers", layers, f"a list of at most {MAX_LAYERS} layers")
        session.layers = [_parse_layer(item, f"layers[{i}].", session) for i, item in enumerate(layers)]
        return session

    @classmethod
    def from_json(cls, text: str | bytes) -> Session:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # also numbers of over 4300 digits, nesting too deep
            raise SessionError(f"session file is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        data = {"version": self.version, "model": self.model, "prompt": self.prompt,
                "negative_prompt": self.negative_prompt, "seed": self.seed, "width": self.width,
                "height": self.height, "steps": self.steps, "guidance": self.guidance,
                "layers": [layer.to_dict() for layer in self.layers]}
        if self.saes:
            data["saes"] = list(self.saes)
        if self.keep_outside:
            data["keep_outside"] = True
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_painting(self) -> Painting:
        """The painting this session describes, masks decoded to numpy."""
        return Painting(**self.settings(), layers=[layer.to_painted(self.width, self.height) for layer in self.layers],
                        keep_outside=self.keep_outside)

    @classmethod
    def of(cls, painting: Painting, saes: list[str] | None = None) -> Session:
        """A painting's JSON form (``saes``: the SAE paths that ``paint-app render`` should load)."""
        return cls(**painting.settings(), layers=[Layer.of(layer) for layer in painting.layers], saes=list(saes or []),
                   keep_outside=painting.keep_outside)

    def save(self, path: str | Path) -> None:
        """Write atomically: a failed save leaves any earlier file whole."""
        save_text(path, self.to_json() + "\n")


def save_text(path: str | Path, text: str) -> None:
    target = Path(path)
    handle, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=target.name, suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(tmp, target)


def load_session(path: str | Path) -> Session:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SessionError(f"session file '{path}' cannot be read: {exc.strerror or exc}") from None
    return Session.from_json(text)


def _sae_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail("saes", value, "a list of SAE paths (local folders or hf://owner/repo/subfolder)")
    return list(value)


def _parse_layer(data: Any, where: str, session: Session) -> Layer:
    if not isinstance(data, dict):
        raise _fail(where.rstrip("."), data, "a JSON object")
    block = data.get("block")
    if not isinstance(block, str) or not block:
        raise _fail(f"{where}block", block, "the name of a UNet block, e.g. 'down_blocks.2.attentions.1'")
    concepts = [key for key in ("feature", "factor", "features") if key in data]
    if len(concepts) != 1:
        raise SessionError(f"{where[:-1]} names {', '.join(concepts) or 'no concept'}; allowed: exactly one of "
                           "'feature' (an index), 'factor' (an index) or 'features' (a map of index to weight)")
    layer = Layer(block=block, mask=_parse_mask(data.get("mask"), f"{where}mask", session),
                  name=_string(data, "name", where, "", 200))
    if "feature" in data:
        layer.feature = _int(data, "feature", where, 0, 2**31)
    elif "factor" in data:
        layer.factor = _int(data, "factor", where, 0, 2**31)
    else:
        layer.features = _parse_features(data["features"], f"{where}features")
    mode = data.get("mode", "add")
    if mode not in MODES:
        raise _fail(f"{where}mode", mode, ", ".join(MODES))
    layer.mode = mode
    layer.strength = _number(data, "strength", where, -MAX_STRENGTH, MAX_STRENGTH, 1.0)
    if "step_range" in data:
        layer.step_range = _parse_step_range(data["step_range"], f"{where}step_range", session.steps)
    layer.offset = _parse_offset(data.get("offset", [0, 0]), f"{where}offset", session)
    layer.enabled = _bool(data, "enabled", where, True)
    layer.cond_only = _bool(data, "cond_only", where, False)
    layer.amount = _number(data, "amount", where, 0.0, 1.0, 1.0)
    layer.copy = _bool(data, "copy", where, False)
    if layer.copy and not EDIT_MODES[mode].copyable:
        copying = " or ".join(name for name, edit_mode in EDIT_MODES.items() if edit_mode.copyable)
        raise _fail(f"{where}copy", True, f"true only with mode {copying} (this layer's mode is {mode!r}); false "
                    "otherwise")
    return layer


def _parse_features(value: Any, where: str) -> dict[int, float]:
    if not isinstance(value, dict) or not value or len(value) > 4096:
        raise _fail(where, value, 'a non-empty map of feature index to weight, e.g. {"17": 1.0, "40": 0.5}')
    out: dict[int, float] = {}
    for key in value:
        try:
            feature = int(key)
        except (TypeError, ValueError):
            raise _fail(f"{where} key", key, "a feature index written as a string of digits") from None
        if feature < 0:
            raise _fail(f"{where} key", key, "a feature index >= 0")
        out[feature] = _number(value, key, f"{where}.", -MAX_STRENGTH, MAX_STRENGTH)
    return out


def _parse_step_range(value: Any, where: str, steps: int) -> tuple[int, int]:
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok or not 0 <= value[0] < value[1] <= steps:
        raise _fail(where, value, f"[start, end] with 0 <= start < end <= steps ({steps})")
    return value[0], value[1]


def _parse_offset(value: Any, where: str, session: Session) -> tuple[int, int]:
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok or abs(value[0]) > session.width or abs(value[1]) > session.height:
        raise _fail(where, value, f"[dx, dy] whole pixels with |dx| <= {session.width} and |dy| <= {session.height}")
    return value[0], value[1]


def _parse_mask(value: Any, where: str, session: Session) -> Mask:
    if not isinstance(value, dict) or len([k for k in ("png", "rects") if k in value]) != 1:
        raise _fail(where, value, '{"png": "<base64 grey PNG>"} or {"rects": [[x0, y0, x1, y1], ...]}')
    if "png" in value:
        if not isinstance(value["png"], str):
            raise _fail(f"{where}.png", value["png"], "base64 of an 8-bit grey PNG")
        decode_png_mask(value["png"], session.width, session.height, f"{where}.png")
        return Mask(png=value["png"])
    rects = value["rects"]
    if not isinstance(rects, list) or len(rects) > 1024:
        raise _fail(f"{where}.rects", rects, "a list of [x0, y0, x1, y1] rectangles")
    for i, rect in enumerate(rects):
        ok = isinstance(rect, list) and len(rect) == 4 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in rect)
        if not ok or not (0 <= rect[0] < rect[2] <= session.width and 0 <= rect[1] < rect[3] <= session.height):
            raise _fail(f"{where}.rects[{i}]", rect, f"[x0, y0, x1, y1] whole pixels inside the image: "
                        f"0 <= x0 < x1 <= {session.width}, 0 <= y0 < y1 <= {session.height}")
    return Mask(rects=[list(r) for r in rects])


def as_painting(value: Painting | Session) -> Painting:
    """A painting, from a painting or a session."""
    return value.to_painting() if isinstance(value, Session) else value
