"""Finding SAEs in a folder: one SAE folder, or a folder of them (ours or SAEPaint's checkpoints), each named by
the block it reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from .errors import SAEError
from .model import CONFIG_NAME, SAEPAINT_WEIGHTS_NAME, WEIGHTS_NAME

MAX_DEPTH = 4  # how many levels of sub-folders are searched for SAE folders
SAE_FOLDER_HOLDS = (f"an SAE folder holds {CONFIG_NAME} with {WEIGHTS_NAME} (ours), or {CONFIG_NAME} with "
                    f"{SAEPAINT_WEIGHTS_NAME}, mean.pt and std.pt (SAEPaint's checkpoints)")
FINAL_NAME = "final"  # SAEPaint's last checkpoint of a run: unet.<block>_k10_..._lr0.0001/final

_SAEPAINT_RUN = re.compile(r"^unet\.(.+?)_k")  # unet.<block>_k10_hidden5120_auxk256_bs4096_lr0.0001
_BLOCK_IN_NAME = re.compile(r"((?:down_blocks|up_blocks)\.\d+\.attentions\.\d+|mid_block\.attentions\.\d+)")


def is_sae_folder(folder: Path) -> bool:
    """Whether ``folder`` holds one SAE: ours (config + safetensors) or a SAEPaint checkpoint (config + .pth)."""
    return (folder / CONFIG_NAME).is_file() and \
        ((folder / WEIGHTS_NAME).is_file() or (folder / SAEPAINT_WEIGHTS_NAME).is_file())


def block_of(folder: Path) -> str | None:
    """The block an SAE folder reads: our config's ``block``, else SAEPaint's run name (``unet.<block>_k...``) in
    its path, else a block name anywhere in its path; None when nothing names one."""
    try:
        block = json.loads((folder / CONFIG_NAME).read_text()).get("block")
    except (OSError, ValueError, AttributeError):  # unreadable: loading the SAE will say why
        block = None
    if isinstance(block, str) and block:
        return block
    for part in reversed(folder.parts):
        match = _SAEPAINT_RUN.match(part)
        if match:
            return match.group(1)
    return block_from_name(str(folder)) or None


def block_from_name(text: str) -> str:
    """The last UNet attention block named in ``text`` (``down_blocks.2.attentions.1``...), or ""."""
    found = _BLOCK_IN_NAME.findall(text)
    return found[-1] if found else ""


def find_saes(folder: str | Path, max_depth: int = MAX_DEPTH) -> list[tuple[str | None, Path]]:
    """The SAEs in ``folder`` as (block, SAE folder), by block; the folder itself when it is one SAE.

    Sub-folders are searched ``max_depth`` levels down. Where several SAE folders read one block, the one named
    ``final`` is taken; with no single one so named, an ``SAEError`` lists them. The block is None where nothing
    names it (the caller asks for ``BLOCK=PATH``)."""
    root = Path(folder)
    if not root.is_dir():
        raise SAEError(f"SAE path '{root}' is not a folder")
    if is_sae_folder(root):
        return [(block_of(root), root)]
    candidates: dict[str | None, list[Path]] = {}
    for sae_folder in _sae_folders(root, max_depth):
        candidates.setdefault(block_of(sae_folder), []).append(sae_folder)
    if not candidates:
        raise SAEError(f"SAE path '{root}' holds no SAE in it or {max_depth} levels of folders below it: "
                       f"{SAE_FOLDER_HOLDS}; {describe_folder(root)}")
    found = [(block, _one_for_block(root, block, folders)) for block, folders in candidates.items() if block]
    found.sort(key=lambda item: item[0])
    return found + [(None, f) for f in candidates.get(None, [])]


def _one_for_block(root: Path, block: str, folders: list[Path]) -> Path:
    if len(folders) == 1:
        return folders[0]
    finals = [f for f in folders if f.name == FINAL_NAME]
    if len(finals) == 1:
        return finals[0]
    listed = ", ".join(str(f.relative_to(root)) for f in folders)
    raise SAEError(f"SAE path '{root}' holds {len(folders)} SAEs for block {block}: {listed}; "
                   f"pass the one to use as BLOCK=PATH, e.g. {block}={folders[0]}")


def _sae_folders(root: Path, max_depth: int) -> Iterator[Path]:
    """SAE folders below ``root`` (not ``root`` itself), breadth first, in name order; hidden folders skipped."""
    level = [root]
    for _ in range(max_depth):
        below = []
        for folder in level:
            for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if is_sae_folder(child):
                    yield child
                else:
                    below.append(child)
        level = below


def describe_folder(root: Path, limit: int = 12) -> str:
    """What a folder holds, for an error: its first entries and the SAE folders below it."""
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
    text = f"it holds {', '.join(entries[:limit])}" + (" ..." if len(entries) > limit else "") if entries \
        else "it is empty"
    saes = [str(p.relative_to(root)) for p in _sae_folders(root, MAX_DEPTH)]
    if saes:
        text += f"; SAE folders: {', '.join(saes[:8])}" + (" ..." if len(saes) > 8 else "")
    return text


__all__ = ["MAX_DEPTH", "SAE_FOLDER_HOLDS", "block_from_name", "block_of", "describe_folder", "find_saes",
           "is_sae_folder"]
