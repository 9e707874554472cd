"""The page's own small components beside the canvas: concept tiles, the layer stack, the inspector's concepts.

Each is a ``gr.HTML`` with a small script (``paint_app/web/{tiles,stack,found}.*``), like the canvas: the server
sends a value (built here) and the script draws it; a click sends an action as the data of an ``input`` event,
which ``parse_action`` validates (an error names the component and the field).

- Tiles (``tile_grid_value``): ``{"token", "query", "empty", "pending", "tiles": [{"name", "note", "measured",
  "paintable", "why_not", "icon"}]}``; actions ``{"action": "pick" | "erase", "index", "name", "token"}``.
- Stack (``stack_value``): ``{"active", "layers": [{"id", "name", "sub", "detail", "color", "icon", "enabled",
  "amount" (0..100), "active"}]}``; actions ``{"action": "select" | "eye" | "amount" | "delete", "layer", "on",
  "value"}``.
- Found (``found_value``): ``{"token", "head", "items": [{"name", "value", "detail", "color", "icon"}]}``;
  actions ``{"action": "erase" | "more", "index", "name", "token"}``.

``icon`` is a PNG data URL, or None where the picture is not made yet (the tile then shows a placeholder).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..canvas import CanvasLayer
from ..errors import PaintError, to_finite
from ..web_canvas import png_data_url

WEB = Path(__file__).resolve().parent.parent / "web"
TILE_ACTIONS = ("pick", "erase")
STACK_ACTIONS = ("select", "eye", "amount", "delete")
FOUND_ACTIONS = ("erase", "more")


def asset(name: str) -> str:
    return (WEB / name).read_text()


def html_parts(name: str) -> dict[str, str]:
    """The ``gr.HTML`` arguments of component ``name`` (``tiles``, ``stack``, ``found``)."""
    return {"html_template": asset(f"{name}.html"), "css_template": asset(f"{name}.css"),
            "js_on_load": asset(f"{name}.js")}


def icon_url(image: Image.Image | None) -> str | None:
    return png_data_url(image) if image is not None else None


def tile_grid_value(tiles: Sequence[Any], icons: Sequence[Image.Image | None], token: int, query: str,
                    empty: str = "") -> dict:
    """What the tile grid shows: ``tiles`` (``concepts.Tile``) with their pictures where made."""
    pending = sum(icon is None and t.paintable for t, icon in zip(tiles, icons))
    return {"token": token, "query": query, "empty": empty, "pending": pending,
            "tiles": [{"name": t.name, "note": t.note, "measured": bool(t.measured), "paintable": bool(t.paintable),
                       "why_not": t.why_not, "icon": icon_url(icon)} for t, icon in zip(tiles, icons)]}


def stack_value(layers: Sequence[CanvasLayer], active: int, icons: Sequence[Image.Image | None]) -> dict:
    """What the layer stack shows: each layer with its picture (or colour), eye, amount and whether it is active."""
    rows = []
    for i, (layer, icon) in enumerate(zip(layers, icons)):
        sub = " · ".join(part for part in (layer.mode if layer.mode != "add" else "",
                                           "nothing painted" if layer.is_empty() else "") if part)
        rows.append({"id": layer.uid, "name": layer.name, "sub": sub, "detail": layer.concept.describe(),
                     "color": layer.color, "icon": icon_url(icon), "enabled": bool(layer.enabled),
                     "amount": int(round(100 * layer.amount)), "active": i == active})
    return {"active": layers[active].uid if 0 <= active < len(layers) else "", "layers": rows}


def found_value(items: Sequence[dict], token: int, head: str) -> dict:
    """What the inspector shows at a point: ``items`` (name, value, detail, color, icon as an image or None)."""
    return {"token": token, "head": head,
            "items": [{**item, "icon": icon_url(item.get("icon"))} for item in items]}


def parse_action(data: Any, where: str, actions: Sequence[str]) -> dict:
    """A component's action, checked: an object whose ``action`` is one of ``actions``."""
    if not isinstance(data, dict):
        raise PaintError(f"{where}: expected an object, got {type(data).__name__}")
    action = data.get("action")
    if action not in actions:
        raise PaintError(f"{where}: 'action' is {action!r}; allowed: {', '.join(actions)}")
    return data


def index_of(data: dict, where: str, count: int) -> int:
    """The action's ``index``: a whole number naming one of ``count`` shown items."""
    value = data.get("index")
    number = to_finite(value) if not isinstance(value, bool) else None
    if number is None or number != int(number) or not 0 <= number < count:
        raise PaintError(f"{where}: 'index' is {value!r}; allowed: a whole number from 0 to {count - 1}"
                         if count else f"{where}: 'index' is {value!r}; nothing is shown to pick")
    return int(number)


def clicked(data: Any, where: str, actions: Sequence[str], token: Any, items: Sequence[Any], shown: str,
            again: str) -> tuple[str, Any]:
    """The action and the item a click on a list of shown items names (tiles, the inspector's concepts), checked
    against what is shown now: the list's ``token``, the item's ``index`` and its ``name``. An error names the
    component and the field; ``shown`` names the items ("tiles"), ``again`` says what to do."""
    data = parse_action(data, where, actions)
    if data.get("token") != token:
        raise PaintError(f"{where}: 'token' is {data.get('token')!r} but the {shown} shown now are {token!r}: {again}")
    item = items[index_of(data, where, len(items))]
    if data.get("name") != item.name:
        raise PaintError(f"{where}: 'name' is {data.get('name')!r}; the {shown[:-1]} there is {item.name!r}")
    return data["action"], item


def amount_of(data: dict, where: str) -> float:
    """The stack's ``value``: a percentage 0..100 -> an amount 0..1."""
    value = data.get("value")
    number = to_finite(value) if not isinstance(value, bool) else None
    if number is None or not 0 <= number <= 100:
        raise PaintError(f"{where}: 'value' is {value!r}; allowed: a number from 0 to 100 (percent)")
    return float(number) / 100.0


__all__ = ["FOUND_ACTIONS", "STACK_ACTIONS", "TILE_ACTIONS", "amount_of", "found_value", "html_parts", "icon_url",
           "clicked", "index_of", "parse_action", "stack_value", "tile_grid_value"]
