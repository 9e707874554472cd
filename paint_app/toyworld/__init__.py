"""The toy world and its embedded default model (``toy``), shipped as package data in ``paint_app/assets/toy``.

``TOY_DIR`` is that folder (or ``$PAINT_APP_TOY_DIR`` if set): a diffusers pipeline folder with the model's
defaults (``paint_app.json``), its SAEs (``saes/``), judges (``judges/``) and example sessions (``sessions/``).
``toy_model`` is what the ``sae.models`` entry point ``toy`` loads, so that the ``sae`` toolkit finds the model by
its short name without knowing where it lives. Import-light: no torch here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["TOY_DIR", "SAES_DIR", "JUDGES_DIR", "SESSIONS_DIR", "toy_model"]

TOY_DIR = Path(os.environ.get("PAINT_APP_TOY_DIR") or Path(__file__).resolve().parent.parent / "assets" / "toy")
SAES_DIR = TOY_DIR / "saes"
JUDGES_DIR = TOY_DIR / "judges"
SESSIONS_DIR = TOY_DIR / "sessions"

_GENERATION_KEYS = ("width", "height", "steps", "guidance")


def toy_model() -> dict:
    """The ``sae.models`` entry point ``toy``: ``{"path": TOY_DIR, "defaults": {width, height, steps, guidance}}``,
    the defaults read from the model's own ``paint_app.json``."""
    if not (TOY_DIR / "model_index.json").is_file():
        raise FileNotFoundError(f"model 'toy' is not built: {TOY_DIR} has no model_index.json; "
                                "train it with `python -m paint_app.toyworld.train`")
    file = TOY_DIR / "paint_app.json"
    settings = json.loads(file.read_text()) if file.is_file() else {}
    return {"path": str(TOY_DIR), "defaults": {key: settings[key] for key in _GENERATION_KEYS if key in settings}}
