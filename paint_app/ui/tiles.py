"""Concept tiles: what a person paints with. Typing a word lists the concepts for it (``ConceptLibrary.tiles``),
each shown by its picture, name and note; a click paints the tile's edit on the active layer (or a new one), its
"erase" makes a new layer that erases the concept where it is painted.

Pictures (``ExploreCache.icon``: the tile's edit on the neutral scene) are made lazily: the tiles appear at once
with their names, and ``fill_icons``, chained after every change of the tiles shown, makes the missing pictures
of the shown tiles one by one, streaming the grid as they come (in its own queue, so a stroke waits for at most
the one picture being made). Pictures are cached per engine, so a second tab or search shows them at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from sae.errors import SAEError

from ..errors import PaintError
from ..explore import icon_key
from ..prepare import prepare_hint
from .outputs import CHANGED, Notes, outputs
from .state import TabState
from .views import Views
from .widgets import TILE_ACTIONS, clicked

log = logging.getLogger(__name__)

MAX_WORDS = 200  # characters of a tile search
STREAM_EVERY = 0.4  # seconds between two sends of the grid while pictures are being made


class TileHandlers(Views):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.icon_errors: dict[tuple, str] = {}  # pictures that could not be made, by ``icon_key``: why

    @outputs("state", "tiles", "status")
    def find_tiles(self, state: TabState, text: Any) -> dict:
        """The tiles for the words typed (all concepts with none), the user's own concepts among them."""
        notes = Notes()
        words = " ".join(str(text or "").split())
        if len(words) > MAX_WORDS:
            notes.warn(f"concept search is {len(words)} characters; allowed: at most {MAX_WORDS}. The tiles are kept.")
            return {"status": notes.text()}
        tiles = self.find_tiles_for(state, words)
        empty = ""
        if not tiles:
            names = [tile.name for tile in self.engine.concepts.tiles("", custom=state.custom, profile=self.profile)]
            empty = (f"No concept matches {words!r}. " + (f"Try: {', '.join(names[:16])}." if names else
                                                           prepare_hint(self.engine)
                                                           or "This model has no concepts to paint (no SAEs)."))
            notes.info(empty)
        elif words:
            notes.info(f"{len(tiles)} concept{'s' if len(tiles) != 1 else ''} for {words!r}: click one to paint it "
                       "on the active layer.")
        return {"state": state, "tiles": self.tile_grid(state, empty), "status": notes.text()}

    @outputs("tiles", "stack")
    def fill_icons(self, state: TabState) -> Iterator[dict]:
        """Make the missing pictures of the shown tiles, sending the grid every ``STREAM_EVERY`` seconds and at the
        end (then with the layer stack, whose layers show their concepts' pictures); stops early when other tiles
        are shown meanwhile (their own fill follows)."""
        token = state.tiles_token
        missing = [tile for tile in state.tiles if tile.paintable and self.cache.cached_icon(tile) is None
                   and icon_key(tile.choice) not in self.icon_errors]
        if not missing:  # another tab may have made them since this tab's grid was sent with pictures pending
            yield {"tiles": self.tile_grid(state), "stack": self.stack(state)} if state.tiles else {}
            return
        sent = time.perf_counter()
        for i, tile in enumerate(missing):
            if state.tiles_token != token:
                return
            try:
                self.cache.icon(tile)
            except (PaintError, SAEError) as exc:
                self.icon_errors[icon_key(tile.choice)] = str(exc)
                log.warning("no picture for the tile %r: %s", tile.name, exc)
            last = i == len(missing) - 1
            if last or time.perf_counter() - sent >= STREAM_EVERY:
                sent = time.perf_counter()
                if state.tiles_token == token:
                    yield {"tiles": self.tile_grid(state), **({"stack": self.stack(state)} if last else {})}

    def shown_tile(self, state: TabState, data: Any) -> tuple[str, Any]:
        """The action and the tile a click on the grid names; an error names the field."""
        return clicked(data, "concept tile", TILE_ACTIONS, state.tiles_token, state.tiles, "tiles",
                       "the tiles changed since; click the tile again")

    @outputs(*CHANGED)
    def tile_action(self, state: TabState, data: Any, live: bool = True) -> dict:
        """A click on a tile: ``pick`` paints its edit on the active layer (a new one if there is none); ``erase``
        adds a layer that erases its concept where it is painted (mode ``erase``, not a negative strength)."""
        notes = Notes()
        try:
            action, tile = self.shown_tile(state, data)
            if not tile.paintable:
                raise PaintError(f"'{tile.name}' cannot be painted on this model: {tile.why_not}")
        except PaintError as exc:
            notes.warn(f"{exc}. The layers are kept.")
            return {"status": notes.text()}
        chosen = tile.choice  # named after the tile, with its edit (a tile always carries one)
        if action == "pick":
            return self.paint_choice(state, chosen, notes, live)
        layer = self.new_layer(state, chosen.concept, f"erase {tile.name}", mode="erase")
        state.selected = chosen
        notes.info(f"New layer '{layer.name}': paint where {tile.name} should go.")
        return self.edited(state, notes)


__all__ = ["TileHandlers"]
