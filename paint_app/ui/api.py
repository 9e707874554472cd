"""The page's API for scripts: named endpoints that ``gradio_client`` calls and the page's "Use via API" lists.

Each endpoint is a typed method of ``PaintApi`` named in ``ENDPOINTS`` (``gr.api`` derives its inputs and outputs
from the type hints); adding one is a method and its name. Bad input raises ``gr.Error`` with the same message as
the CLI (field, value, allowed), so the client gets an error status and the server keeps serving.
"""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

from sae.errors import SAEError

from ..concepts import tile_row
from ..decompose import DEFAULT_PARTS, decompose_painting, default_block
from ..errors import PaintError, SessionError
from ..session import Session
from .handlers import PaintApp

# name -> whether it runs the model (then calls wait in their own queue, one at a time)
ENDPOINTS: dict[str, bool] = {"render": True, "features": False, "decompose": True}
KEPT_IMAGES = 16  # images written for calls still being sent; gradio copies each into its own cache first


class PaintApi:
    """The endpoints over one page's engine: ``render`` (a session file's JSON -> its PNG) and ``features``."""

    def __init__(self, app: PaintApp, gpu: Callable[[Callable], Callable] | None = None) -> None:
        self.app = app
        self.folder = Path(tempfile.mkdtemp(prefix="api-", dir=app.workdir))
        self.written: deque[Path] = deque()
        self._generate = gpu(self.app.engine.generate) if gpu is not None else self.app.engine.generate
        self._decompose = gpu(decompose_painting) if gpu is not None else decompose_painting

    def render(self, session: str) -> gr.FileData:
        """Render a session file (its JSON text) on this server's model and SAEs: the PNG that `paint-app render`
        writes for the same file."""
        with user_errors():
            parsed = Session.from_json(session)
            self.check_saes(parsed)
            image = self._generate(parsed)
        return gr.FileData(path=str(self.keep(image)), mime_type="image/png")

    def features(self, search: str = "", limit: int = 0) -> list[dict]:
        """The concepts this server paints, as the palette's tiles (`paint-app features --json`): those whose name
        holds all the search words; at most `limit` rows (0: all)."""
        engine = self.app.engine
        with user_errors():
            rows = [tile_row(t) for t in engine.concepts.tiles(search or "", profile=engine.model.profile)]
        return rows[:limit] if limit > 0 else rows

    def decompose(self, session: str, block: str = "", parts: int = DEFAULT_PARTS) -> list[dict]:
        """The parts of a session file's image (what the model drew, by NMF of one block's SAE codes), as
        `paint-app decompose --json` lists them: index, name, block, cells, features, map. `block` empty: the
        model's default block; `parts`: 2 to 8."""
        engine = self.app.engine
        with user_errors():
            parsed = Session.from_json(session)
            self.check_saes(parsed)
            found = self._decompose(engine, parsed, block or default_block(engine), parts)
        return [part.to_dict() for part in found]

    def check_saes(self, session: Session) -> None:
        """A session may name the SAEs it was painted with; the server renders with its own, so they must agree."""
        served = self.app.sae_sources()
        if session.saes and session.saes != served:
            raise SessionError(f"saes is {session.saes!r}; allowed on this server: {served or []!r} (the SAEs it "
                               "serves) or none; render other SAEs with `paint-app render --sae`")

    def keep(self, image) -> Path:
        """Write the PNG as ``paint-app render`` does (PIL's defaults), keeping only the last few files."""
        handle = tempfile.NamedTemporaryFile(suffix=".png", dir=self.folder, delete=False)
        with handle:
            image.save(handle, format="PNG")
        self.written.append(Path(handle.name))
        while len(self.written) > KEPT_IMAGES:
            self.written.popleft().unlink(missing_ok=True)
        return Path(handle.name)


@contextmanager
def user_errors() -> Iterator[None]:
    """The app's clear errors as ``gr.Error``: an error status on the client, the message kept."""
    try:
        yield
    except (PaintError, SAEError) as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def attach_api(app: PaintApp, gpu: Callable[[Callable], Callable] | None = None) -> PaintApi:
    """Register ``ENDPOINTS`` in the current ``gr.Blocks``; renders run one at a time in their own queue (the
    engine's lock keeps them apart from the page's generations)."""
    api = PaintApi(app, gpu)
    for name, runs_model in ENDPOINTS.items():
        # its own queue: gr.api in the page's "engine" queue broke the page's events (their tab state raced);
        # the engine's lock runs one generation at a time anyway
        queue = {"concurrency_id": "api", "concurrency_limit": 1} if runs_model else {}
        gr.api(getattr(api, name), api_name=name, **queue)
    return api


def hide_page_events(blocks: gr.Blocks) -> None:
    """Keep the page's own events (its states' load events too, added as the ``with`` closes) off "Use via API",
    which then lists ``ENDPOINTS`` only; the page still calls them."""
    for event in blocks.fns.values():
        if event.api_visibility == "public" and event.api_name not in ENDPOINTS:
            event.api_visibility = "undocumented"


__all__ = ["ENDPOINTS", "PaintApi", "attach_api", "hide_page_events"]
