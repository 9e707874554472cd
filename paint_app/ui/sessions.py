"""Sessions: a tab's painting as a session file, opened from an upload; downloads built when they are asked for.

Nothing here runs on a repaint: the session JSON and the image PNG are written only when a download button is
clicked (the page then hands the file to the browser), so painting does no file writes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from sae.errors import SAEError

from .. import canvas
from ..canvas import CanvasLayer
from ..errors import PaintError
from ..session import Session
from .layers import file_path
from .outputs import CHANGED, SETTINGS, Notes, outputs
from .state import TabState
from .views import Views

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
SESSION_NAME = "paint-session.json"
IMAGE_NAME = "paint-image.png"


class SessionHandlers(Views):
    def session_of(self, state: TabState) -> Session:
        """The tab's painting in the session format (JSON, PNG masks): for downloads and the inspector's cache key,
        never for a repaint."""
        return Session.of(self.painting_of(state), saes=self.sae_sources())

    def sae_sources(self) -> list[str]:
        """The SAE paths a session names, so ``paint-app render`` finds them; none for the model's own SAEs."""
        sae_dir = self.profile.sae_dir
        sources = [entry.source for _, entry in sorted(self.engine.concepts.blocks.items())]

        def shipped(source: str) -> bool:
            if sae_dir is None or "://" in source or "=" in source:
                return False
            return Path(source).resolve().is_relative_to(Path(sae_dir).resolve())

        return [] if all(shipped(source) for source in sources) else sources

    def _folder(self, state: TabState) -> Path:
        folder = self.workdir / state.tab_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def session_file(self, state: TabState) -> str | None:
        """Write the tab's session (one file per tab); None before the first image."""
        if state.settings is None:
            return None
        path = self._folder(state) / SESSION_NAME
        self.session_of(state).save(path)
        return str(path)

    def image_file(self, state: TabState) -> str | None:
        """Write the tab's image at its own size (one file per tab); None before the first image."""
        if state.output is None:
            return None
        path = self._folder(state) / IMAGE_NAME
        state.output.save(path)
        return str(path)

    @outputs("session_download", "status")
    def download_session(self, state: TabState) -> dict:
        """A click on "Download session": the file the page then hands to the browser."""
        return self._download(self.session_file(state), "session_download", "session")

    @outputs("image_download", "status")
    def download_image(self, state: TabState) -> dict:
        """A click on "Download image": the image at its own size, which the page hands to the browser."""
        return self._download(self.image_file(state), "image_download", "image")

    @staticmethod
    def _download(path: str | None, output: str, what: str) -> dict:
        """The file for the download box ``output``; before the first image, none and a warning."""
        if path is not None:
            return {output: path}
        notes = Notes()
        notes.warn(f"There is no image yet: press Generate first; then the {what} can be downloaded.")
        return {output: None, "status": notes.text()}

    @outputs(*CHANGED, *SETTINGS, "prompt_notes", "keep_outside")
    def load_session_file(self, state: TabState, path: Any) -> dict:
        """Restore settings, layers and image from an uploaded session; a bad file changes nothing."""
        notes = Notes()
        if path is None:
            return {}
        try:
            file = Path(file_path(path))
            if file.stat().st_size > MAX_UPLOAD_BYTES:
                raise PaintError(f"the session file is {file.stat().st_size} bytes; allowed: at most "
                                 f"{MAX_UPLOAD_BYTES} bytes")
            session = Session.from_json(file.read_bytes())
            if session.model != self.engine.model.name:
                raise PaintError(f"model is {session.model!r}; this app runs {self.engine.model.name!r} "
                                 f"(start it with `paint-app serve --model {session.model}` for this session)")
            self.engine.plan(session).validate()
        except (PaintError, SAEError, OSError) as exc:
            notes.warn(f"Uploaded session not loaded: {exc}. The canvas, layers and image are kept.")
            return {"status": notes.text()}
        self.prompt_notes(session.prompt, notes)
        if session.saes and session.saes != self.sae_sources():
            notes.info(f"The session names the SAEs {', '.join(session.saes)}; this app paints with its own "
                       f"({', '.join(self.sae_sources()) or 'those shipped with the model'}).")
        settings = replace(session, layers=[], saes=[])
        layers: list[CanvasLayer] = []
        for layer in session.to_painting().layers:
            layers.append(CanvasLayer.of(layer, canvas.next_color(layers)))
        state.settings, state.layers, state.active = settings, layers, 0 if layers else -1
        state.keep_outside = session.keep_outside
        state.base = self.engine.generate(settings)
        state.changed()
        timing = self._show(state, notes)
        notes.info(f"Loaded a session with {len(layers)} layers.")
        return {**self.whole_view(state, notes), **self.settings_view(settings), "timing": timing,
                "keep_outside": state.keep_outside,
                "prompt_notes": self.prompt_notes(settings.prompt, Notes(), quiet=True)}


__all__ = ["IMAGE_NAME", "MAX_UPLOAD_BYTES", "SESSION_NAME", "SessionHandlers"]
