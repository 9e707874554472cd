"""The contract between handlers and the page: each handler declares the outputs it may return, once, next to it.

A handler returns a dict of named outputs (component names of ``layout.build_app``); ``@outputs(...)`` declares
which names it may return, and the wiring takes each event's output components from that declaration. A key a
handler returns but did not declare is a bug: ``guarded`` turns it into the page's generic warning instead of
silently dropping it, and ``tests/test_ui_outputs.py`` checks every handler against its declaration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import gradio as gr
from PIL import Image

from sae.errors import SAEError

from .. import canvas
from ..errors import PaintError

log = logging.getLogger(__name__)

OUTPUT_TARGET = 320  # the shown image is enlarged to at least this many pixels along its longer side

# Output groups several handlers share (names of components in ``layout.build_app``).
SETTINGS = ("prompt", "negative", "seed", "steps", "guidance", "width", "height")
PANEL = ("stack", "layer_info", "mode", "strength", "step_start", "step_end")
EDITED = ("state", "editor", *PANEL, "status")  # the layer list or the active layer changed
REPAINTED = ("state", "output", "timing", "status", "layer_info")  # the image was made again
CHANGED = (*EDITED, "output", "timing")  # a layer changed and the image may follow: all a tab shows of it


class UndeclaredOutput(RuntimeError):
    """A handler returned an output its declaration lacks: a bug in the handler or its declaration."""


def outputs(*names: str) -> Callable[[Callable], Callable]:
    """Declare the outputs a handler may return (duplicates are dropped, order kept)."""
    declared = tuple(dict.fromkeys(names))

    def mark(method: Callable) -> Callable:
        method.outputs = declared
        return method

    return mark


def declared(handler: Any) -> tuple[str, ...]:
    """A handler's declared outputs (``@outputs``); raises if it declares none."""
    names = getattr(handler, "outputs", None)
    if names is None:
        raise UndeclaredOutput(f"handler {getattr(handler, '__name__', handler)!r} declares no outputs (@outputs)")
    return names


def declared_handlers(cls: type) -> dict[str, tuple[str, ...]]:
    """Every method of ``cls`` with declared outputs: {name: outputs}."""
    return {name: member.outputs for name in dir(cls) if callable(member := getattr(cls, name, None))
            and hasattr(member, "outputs")}


def check_declared(result: dict, names: Iterable[str], where: str = "handler") -> dict:
    """``result`` itself if every key of it is in ``names``; else ``UndeclaredOutput`` naming the strays."""
    stray = sorted(set(result) - set(names))
    if stray:
        raise UndeclaredOutput(f"{where} returned {', '.join(stray)}, which its outputs ({', '.join(names)}) "
                               "do not declare")
    return result


def guarded(method: Callable, *args, names: Iterable[str] | None = None) -> dict:
    """Run a handler; user errors become warnings, anything else (an undeclared output too) a warning as well:
    the server never dies of input. With ``names``, the result may only hold those outputs."""
    try:
        result = method(*args) or {}
        return check_declared(result, names, getattr(method, "__name__", "handler")) if names is not None \
            else result
    except (PaintError, SAEError) as exc:
        gr.Warning(str(exc))
        return _status(f"⚠️ {exc}", names)
    except Exception as exc:  # noqa: BLE001 - a handler bug must not take the page down
        log.exception("handler %s failed", getattr(method, "__name__", method))
        message = f"Something went wrong ({type(exc).__name__}: {exc}); the canvas and layers are kept."
        gr.Warning(message)
        return _status(f"⚠️ {message}", names)


def _status(text: str, names: Iterable[str] | None) -> dict:
    return {"status": text} if names is None or "status" in names else {}


def ordered(result: dict, names: list[str] | tuple[str, ...]) -> list:
    """A handler's named results in the order of ``names``; what it did not return stays as it is
    (``gr.skip()``); a name it returned that ``names`` lacks raises ``UndeclaredOutput``. The image is shown
    enlarged (nearest neighbour) so small images are visible and clicks land on whole pixels."""
    check_declared(result, names)
    if isinstance(result.get("output"), Image.Image):
        result = {**result, "output": for_display(result["output"])}
    return [result.get(name, gr.skip()) for name in names]


def for_display(image: Image.Image) -> Image.Image:
    scale = canvas.display_scale(image.width, image.height, OUTPUT_TARGET)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


class Notes:
    """Warnings of one handler call: shown as gradio toasts and in the page's status line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def warn(self, message: str) -> None:
        self.lines.append(f"⚠️ {message}")
        gr.Warning(message)

    def info(self, message: str) -> None:
        self.lines.append(message)

    def text(self) -> str:
        return "\n\n".join(self.lines)


__all__ = ["CHANGED", "EDITED", "Notes", "PANEL", "REPAINTED", "SETTINGS", "UndeclaredOutput", "check_declared",
           "declared", "declared_handlers", "for_display", "guarded", "ordered", "outputs"]
