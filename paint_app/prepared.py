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
import weakref
from pathlib import Path

import torch
from PIL import Image

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


_SAE_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # an SAE's key, hashed once per loaded SAE


def sae_key(sae) -> str:
    """An SAE's identity: a hash of its config and weights (where its files are does not matter)."""
    if sae in _SAE_KEYS:
        return _SAE_KEYS[sae]
    digest = hashlib.sha256(json.dumps(sae.config.to_dict(), sort_keys=True, default=str).encode())
    for tensor in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_pre):
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    _SAE_KEYS[sae] = digest.hexdigest()[:20]
    return _SAE_KEYS[sae]


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


def _icon_file(engine, block: str, key: tuple) -> Path | None:
    """Where a tile's picture (``key``: ``explore.icon_key``) is kept, when ``prepare`` ran for the block's SAE."""
    entry = engine.concepts.blocks.get(block)
    if entry is None:
        return None
    folder = entry_folder(engine.model.name, entry.sae)
    if not read_entry(folder).get("complete"):
        return None
    return folder / "icons" / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:16]}.png"


def kept_icon(engine, block: str, key: tuple) -> Image.Image | None:
    """A tile's picture kept by an earlier session (``keep_icon``), if there is one."""
    file = _icon_file(engine, block, key)
    if file is None or not file.is_file():
        return None
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except OSError:
        return None  # a damaged file: the picture is made again (and written over it)


def keep_icon(engine, block: str, key: tuple, image: Image.Image) -> None:
    """Keep a tile's picture as a PNG in the block's prepare entry (only where ``prepare`` ran: other SAEs leave
    no files); a full disk only means it is made again next time."""
    file = _icon_file(engine, block, key)
    if file is None:
        return
    tmp = file.with_name(file.name + ".tmp.png")
    try:
        file.parent.mkdir(exist_ok=True)
        image.save(tmp)
        tmp.replace(file)
    except OSError:
        tmp.unlink(missing_ok=True)


__all__ = ["ENTRY_NAME", "cache_root", "entry_folder", "read_entry", "sae_key", "keep_icon", "kept_icon", "use_prepared"]
