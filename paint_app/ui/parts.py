"""Concepts in this image: the parts of the image as the model drew it, as tiles; a part picked becomes a layer.

*Find its parts* decomposes the plain image (the settings of the last Generate, no layers: what a ``move`` layer
moves) on one block into 2-8 parts (``decompose.decompose_painting``), reusing the feature maps the inspector
captured when they are of that image. Each part shows the image with everything but the part faded. Picking a
part adds it as a ``move`` layer (as drawn: it changes nothing yet), or selects its layer if it has one, and
switches the canvas to the Move tool with the part's map shown: dragging it moves what the model drew. In the
layer stack, a part's row has its scale (0 erases, 1 as drawn, 2 stronger), *copy* and *erase*.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from sae.errors import SAEError

from ..canvas import CanvasLayer, next_color
from ..decompose import DEFAULT_PARTS, Part, decompose_painting, default_block
from ..errors import PaintError, to_finite
from ..explore import FeatureMaps, capture_feature_maps
from ..painting import Painting
from . import state as tab
from .outputs import EDITED, Notes, outputs
from .state import TabState
from .views import Views
from .widgets import clicked, icon_url

MIN_PARTS, MAX_PARTS = 2, 8
STRIP_ACTIONS = ("pick",)  # what the strip sends
PART_ACTIONS = ("scale", "copy")  # what the layer stack sends for a part's layer
MAX_SCALE = 4.0  # a part's scale from its stack row: 0 erases, 1 as drawn, 2 stronger
PICTURE_SIDE = 64  # a part's picture is enlarged (nearest neighbour) to at least this many pixels
FADE = 0.75  # how far the rest of the image fades to white in a part's picture
PARTS = ("state", "parts", "status")


def part_picture(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with everything outside the part's mask faded to white, so the part stands out where it is."""
    pixels = np.asarray(image.convert("RGB"), np.float32)
    keep = np.clip(mask, 0.0, 1.0)[..., None]
    faded = pixels * (1.0 - FADE) + 255.0 * FADE
    picture = Image.fromarray(np.rint(keep * pixels + (1.0 - keep) * faded).astype(np.uint8))
    scale = max(1, -(-PICTURE_SIDE // max(picture.size)))
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST) if scale > 1 else picture


def scale_of(data: dict) -> float:
    """The stack's ``value`` for a part's scale: a number from 0 to ``MAX_SCALE``."""
    value = data.get("value")
    number = to_finite(value) if not isinstance(value, bool) else None
    if number is None or not 0 <= number <= MAX_SCALE:
        raise PaintError(f"layer stack: 'value' is {value!r}; allowed: a scale from 0 (erased) to {MAX_SCALE:g} "
                         "(1: as drawn)")
    return float(number)


def parts_value(parts: list[Part], pictures: list[Image.Image], token: int, head: str,
                picked: set[int]) -> dict:
    """What the strip shows: ``{"token", "head", "parts": [{"name", "note", "icon", "picked"}]}``."""
    return {"token": token, "head": head,
            "parts": [{"name": part.name, "note": f"{part.cells} cell{'s' if part.cells != 1 else ''}",
                       "icon": icon_url(picture), "picked": part.index in picked}
                      for part, picture in zip(parts, pictures)]}


class PartHandlers(Views):
    def part_blocks(self) -> list[str]:
        """The blocks an image can be decomposed on: those with an SAE."""
        return sorted(self.engine.concepts.blocks)

    def default_part_block(self) -> str | None:
        """The block the parts are found on unless another is chosen: the same as ``paint-app decompose``'s
        (``decompose.default_block``); None without SAEs."""
        return default_block(self.engine) if self.engine.concepts.blocks else None

    def plain_painting(self, state: TabState) -> Painting:
        """The image as generated (the last Generate's settings, no layers): what a part's layer moves."""
        return Painting(**self.settings_of(state).settings())

    def plain_maps(self, state: TabState) -> FeatureMaps:
        """The plain image's feature maps on every block: the inspector's when they are of it (nothing painted
        then), else captured once and kept until the settings change."""
        plain = self.plain_painting(state)
        key = plain.fingerprint()
        if state.parts_maps is not None and state.parts_maps[0] == key:
            return state.parts_maps[1]
        inspected = state.maps is not None and state.maps_key == self.painting_of(state).fingerprint()
        maps = state.maps if inspected and not state.has_paint() else capture_feature_maps(self.engine, plain)[1]
        state.parts_maps = (key, maps)
        return maps

    def picked_parts(self, state: TabState) -> set[int]:
        """The indices of the parts shown that have a layer now."""
        uids = {layer.uid for layer in state.layers}
        return {index for (key, index), uid in state.part_layers.items() if key == state.parts_key and uid in uids}

    def parts_strip(self, state: TabState) -> dict:
        """The strip's value: the parts shown, which of them have a layer, and a line on what they are."""
        head = (f"Concepts in this image ({state.parts_key[1]}): click one, then drag it on the canvas."
                if state.parts and state.parts_key else "")
        return parts_value(state.parts, state.part_pictures, state.parts_token, head, self.picked_parts(state))

    @outputs(*PARTS)
    def find_parts(self, state: TabState, block: Any, count: Any) -> dict:
        """The parts of the image on ``block`` (none: the default block), ``count`` of them (2 to 8)."""
        notes = Notes()
        try:
            n_parts = self._part_count(count)
            if state.base is None:
                raise PaintError("image: there is none yet; press Generate first, then find its parts")
            if not self.engine.concepts.blocks:
                raise PaintError("block: no SAEs are loaded, so an image has no parts to find; start the app with "
                                 "--sae PATH")
            name = self.default_part_block() if block in (None, "") else block
            if name not in self.engine.concepts.blocks:
                raise PaintError(f"block is {block!r}; allowed: {', '.join(self.part_blocks())}")
            maps = self.plain_maps(state)
            parts = decompose_painting(self.engine, self.plain_painting(state), name, n_parts, maps=maps)
        except (PaintError, SAEError) as exc:
            notes.warn(f"{exc}. The layers and the image are kept.")
            return {"status": notes.text()}
        width, height = self.size(state)
        names: list[str] = []
        for part in parts:  # one name per part shown ("grass", "grass (2)"): the strip and the layers tell them apart
            names.append(tab.unique_name(part.name, names))
        parts = [replace(part, name=name) for part, name in zip(parts, names)]
        state.parts, state.parts_token = parts, state.parts_token + 1
        state.parts_key = (state.parts_maps[0], name, n_parts)
        state.part_pictures = [part_picture(state.base, part.mask(width, height)) for part in parts]
        notes.info(f"{len(parts)} parts of the image on {name}: click one, then drag it on the canvas.")
        return {"state": state, "parts": self.parts_strip(state), "status": notes.text()}

    @outputs(*PARTS)
    def refresh_parts(self, state: TabState, block: Any, count: Any) -> dict:
        """After a Generate: the parts of the new image, if parts were shown (finding them costs about one
        generation, so not before they are asked for); the status line keeps the generation's notes."""
        if not state.parts or state.parts_key is None or state.base is None \
                or state.parts_key[0] == self.plain_painting(state).fingerprint():
            return {}
        result = self.find_parts(state, block, count)
        if "parts" not in result:  # it could not: the parts shown are of the image before
            state.parts, state.parts_token, state.parts_key = [], state.parts_token + 1, None
            return {"state": state, "parts": self.parts_strip(state), "status": result.get("status", "")}
        return {key: value for key, value in result.items() if key != "status"}

    @staticmethod
    def _part_count(count: Any) -> int:
        number = to_finite(count) if not isinstance(count, bool) else None
        if number is None or number != int(number) or not MIN_PARTS <= number <= MAX_PARTS:
            raise PaintError(f"parts is {count!r}; allowed: a whole number from {MIN_PARTS} to {MAX_PARTS}")
        return int(number)

    @outputs(*EDITED, "parts")
    def part_action(self, state: TabState, data: Any, live: bool = True) -> dict:
        """A click on a part: its layer becomes the active one (added as drawn if it has none), the canvas shows
        its map with the Move tool on."""
        notes = Notes()
        try:
            _, part = clicked(data, "image part", STRIP_ACTIONS, state.parts_token, state.parts, "parts",
                              "find its parts again")
        except PaintError as exc:
            notes.warn(f"{exc}. The layers are kept.")
            return {"status": notes.text()}
        key = (state.parts_key, part.index)
        layer = state.layer_by_uid(state.part_layers.get(key))
        if layer is not None:
            tab.select_layer(state, state.layers.index(layer))
            notes.info(f"Layer '{layer.name}' selected: drag it on the canvas.")
        else:
            layer = self._add_part_layer(state, part)
            notes.info(f"New layer '{layer.name}', as drawn: drag it on the canvas to move it; in the layers, "
                       "scale it (0 erases), copy or erase it.")
        return {**self.edited(state, notes), "editor": self.editor(state, tool="move"),
                "parts": self.parts_strip(state)}

    def _add_part_layer(self, state: TabState, part: Part) -> CanvasLayer:
        """The part as a new active layer (a ``move`` layer as drawn: the image does not change)."""
        width, height = self.size(state)
        layer = CanvasLayer.of(part.layer(width, height), next_color(state.layers))
        tab.rename_layer(state, layer, part.name)
        state.layers.append(layer)
        state.active = len(state.layers) - 1
        state.part_layers[(state.parts_key, part.index)] = layer.uid
        state.layer_pictures[layer.uid] = state.part_pictures[part.index]
        state.changed()
        return layer


__all__ = ["DEFAULT_PARTS", "MAX_PARTS", "MAX_SCALE", "MIN_PARTS", "PART_ACTIONS", "PartHandlers", "part_picture",
           "parts_value", "scale_of"]
