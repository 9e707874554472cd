"""Presets: published SAEs by name (``--sae saepaint``), and the preset a model uses when no ``--sae`` is given.

Where a preset's SAEs live on the Hugging Face Hub is data, in this one table. A preset may name several candidate
locations, tried in order: a folder of SAEs (``hf://...``), or one folder per block. Neither location of
``saepaint`` has been checked against the hub from here (no network): a wrong one fails with what each held.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sae.errors import SAEError
from sae.hub import is_uri
from sae.locate import find_saes
from sae.model import resolve_path

log = logging.getLogger(__name__)

Location = str | Mapping[str, str]  # a folder of SAEs, or {block: the folder of that block's SAE}


@dataclass(frozen=True)
class Preset:
    """A named set of published SAEs: the model they read, where they may be, and the blocks they must cover."""

    name: str
    model: str
    locations: tuple[Location, ...]
    blocks: tuple[str, ...]
    description: str

    def locate(self) -> list[tuple[str, Path]]:
        """(block, local SAE folder) for each of the preset's blocks, from its first location that has them all."""
        failures = []
        for location in self.locations:
            try:
                return self._locate_at(location)
            except SAEError as exc:
                failures.append(f"[{_describe(location)}] {exc}")
        raise SAEError(f"preset '{self.name}' ({self.description}) was found at none of its locations, tried in "
                       f"order (paint_app/presets.py; their layout on the hub is not verified): " + " ".join(failures))

    def _locate_at(self, location: Location) -> list[tuple[str, Path]]:
        if isinstance(location, str):
            found = {block: folder for block, folder in find_saes(resolve_path(location)) if block}
        else:
            found = {block: _one_sae(block, uri) for block, uri in location.items()}
        missing = [block for block in self.blocks if block not in found]
        if missing:
            raise SAEError(f"no SAE for block(s) {', '.join(missing)}; "
                           f"found SAEs for: {', '.join(sorted(found)) or 'no block'}")
        return [(block, found[block]) for block in self.blocks]


def _one_sae(block: str, uri: str) -> Path:
    """The SAE folder of ``block`` at ``uri``: the folder itself, or the one SAE (or the block's) below it."""
    found = find_saes(resolve_path(uri))
    named = [folder for name, folder in found if name == block]
    if named or len(found) == 1:
        return (named or [found[0][1]])[0]
    raise SAEError(f"'{uri}' holds {len(found)} SAEs and none for block {block}")


def _describe(location: Location) -> str:
    return location if isinstance(location, str) else f"one folder per block, e.g. {next(iter(location.values()))}"


SDXL_TURBO_BLOCKS = ("down_blocks.2.attentions.1", "mid_block.attentions.0", "up_blocks.0.attentions.0",
                     "up_blocks.0.attentions.1")
# SAEPaint's run names: unet.<block>_k10_hidden5120_auxk256_bs4096_lr0.0001, each with its checkpoint in final/.
_SAEPAINT_RUN = "unet.{block}_k10_hidden5120_auxk256_bs4096_lr0.0001"

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset(
        name="saepaint",
        model="stabilityai/sdxl-turbo",
        locations=(
            # The SAEPaint Space serves its repository, whose app reads checkpoints/<run>/final.
            "hf://spaces/surokpro2/Unboxing_SDXL_with_SAEs/checkpoints",
            # The model repo holds these runs at its top level among other variants: fetch only these four.
            {block: "hf://surokpro2/sdxl-saes/" + _SAEPAINT_RUN.format(block=block) for block in SDXL_TURBO_BLOCKS},
        ),
        blocks=SDXL_TURBO_BLOCKS,
        description="SAEPaint's four SDXL-Turbo SAEs",
    ),
)}

DEFAULT_PRESETS: dict[str, str] = {"stabilityai/sdxl-turbo": "saepaint"}


def default_sae_paths(model: str | None, paths: list[str]) -> list[str]:
    """``paths`` when given; else the model's default preset (logged in one line), else none."""
    if paths or model not in DEFAULT_PRESETS:
        return list(paths)
    preset = PRESETS[DEFAULT_PRESETS[model]]
    log.warning("paint-app: no --sae given; using preset '%s' (%s)", preset.name, preset.description)
    return [preset.name]


def locate_saes(path: str) -> list[tuple[str | None, Path]]:
    """The SAEs one ``--sae`` value names, as (block, local folder): an SAE folder or a folder of them (local or
    ``hf://``), else a preset. A local folder named like a preset wins."""
    if is_uri(path) or Path(path).expanduser().is_dir():
        return find_saes(resolve_path(path))
    if path in PRESETS:
        return list(PRESETS[path].locate())
    raise SAEError(f"not a folder, an hf:// URI or a preset; presets: {', '.join(sorted(PRESETS))}")


__all__ = ["DEFAULT_PRESETS", "PRESETS", "Preset", "default_sae_paths", "locate_saes"]
