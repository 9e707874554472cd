"""``PaintApp``: the page's handlers, one object over one shared engine, composed of the handler groups.

Each handler takes the tab's ``TabState`` and plain values and returns a dict of named outputs (declared with
``@outputs`` next to it), so tests call them without a browser; ``layout.build_app`` wires them to components.
"""

from __future__ import annotations

from .factors import FactorHandlers, PartGainHandlers
from .generate import GenerateHandlers
from .inspector import InspectorHandlers
from .layers import LayerHandlers
from .palette import PaletteHandlers
from .parts import PartHandlers
from .sessions import SessionHandlers
from .tiles import TileHandlers


class PaintApp(GenerateHandlers, LayerHandlers, PaletteHandlers, TileHandlers, InspectorHandlers, FactorHandlers,
               SessionHandlers, PartHandlers, PartGainHandlers):
    """The handlers of the page, over one shared engine."""


__all__ = ["PaintApp"]
