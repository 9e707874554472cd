"""The cache of ``paint-app prepare``: where the words and pictures it made for an SAE live, and reading them.

One entry per model and SAE: ``<cache>/prepare/<model>-<hash>/<sae key>/`` holding ``entry.json`` (what run made
it and whether it is complete), ``labels.json``, ``top_examples.json`` and ``icons/``. The cache folder is
``$PAINT_APP_CACHE``, else ``$XDG_CACHE_HOME/paint-app``, else ``~/.cache/paint-app`` (never the package). The SAE
key hashes its config and weights, so a moved folder keeps its entry and a retrained SAE gets a new one.

Kept apart from ``paint_app.prepare`` (which runs the model) so that ``concepts`` can read entries without
importing the engine.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from sae.errors import SAEError
from sae.examples import TOP_EXAMPLES_NAME, load_top_examples
from sae.labels import load_labels

from .errors import PaintError

ENTRY_NAME = "entry.json"


def cache_root(cache: str | Path | None = None) -> Path:
    """The user's cache folder for paint-app (never inside the package)."""
    if cache:
        return Path(cache).expanduser()
    if os.environ.get("PAINT_APP_CACHE"):
        return Path(os.environ["PAINT_APP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "paint-app"


def sae_key(sae) -> str:
    """An SAE's identity: a hash of its config and weights (where its files are does not matter)."""
    digest = hashlib.sha256(json.dumps(sae.config.to_dict(), sort_keys=True, default=str).encode())
    for tensor in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_pre):
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def model_folder_name(model: str) -> str:
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in model.strip("/"))[-60:]
    return f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def entry_folder(model: str, sae, cache: str | Path | None = None) -> Path:
    """Where the prepared words and pictures of ``sae`` on ``model`` live."""
    return cache_root(cache) / "prepare" / model_folder_name(model) / sae_key(sae)


def read_entry(folder: Path) -> dict:
    try:
        return json.loads((folder / ENTRY_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def use_prepared(entry, profile, cache: str | Path | None = None) -> None:
    """Give a block (``BlockConcepts``) the labels and top examples ``prepare`` made for its SAE on the profile's
    model, where its own folder has none."""
    if profile is None or (entry.labels and entry.examples):
        return
    folder = entry_folder(profile.name, entry.sae, cache)
    if not read_entry(folder).get("complete"):
        return
    try:
        if not entry.labels:
            entry.labels = load_labels(folder)
        if not entry.examples and (folder / TOP_EXAMPLES_NAME).is_file():
            entry.examples = load_top_examples(folder)
    except SAEError as exc:
        raise PaintError(f"the prepared words of block {entry.block} in '{folder}' cannot be read ({exc}); delete "
                         "that folder and run `paint-app prepare` again") from None


__all__ = ["ENTRY_NAME", "cache_root", "entry_folder", "read_entry", "sae_key", "use_prepared"]
