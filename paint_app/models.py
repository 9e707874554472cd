"""Model profiles (default size, steps, guidance, SAE blocks and their roles) and ``load_model``.

Loading itself (short names, hub ids, local folders, device and dtype policy, the tiny random pipelines) lives in
``sae.pipelines``; this module adds what the app needs on top: a profile per model family and the SAEs shipped
with a model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sae.errors import SAEError
from sae.pipelines import TINY_NAMES, BlockInfo, known_model_names, load_diffusers_pipeline, unet_blocks

from .errors import ModelError
from .toyworld import TOY_DIR

__all__ = ["BlockProfile", "ModelProfile", "LoadedModel", "PROFILES", "load_model", "model_names", "profile_for",
           "TOY_DIR", "TINY_NAMES"]


@dataclass(frozen=True)
class BlockProfile(BlockInfo):
    """A block that carries SAEs, with the role it plays (as found by Surkov et al. for SDXL-Turbo)."""

    role: str = ""


@dataclass(frozen=True)
class ModelProfile:
    name: str
    family: str  # "sd" or "sdxl"
    width: int
    height: int
    steps: int
    guidance: float
    blocks: tuple[BlockProfile, ...] = ()
    sae_dir: Path | None = None  # a folder whose subfolders are SAEs shipped with the model
    layer_strength: float = 4.0  # what a new layer in the app starts with
    layer_step_range: tuple[int, int] | None = None
    layer_concept: dict | None = None  # {"block", and "factor" (a factor's label) or "feature" (an index)}

    def block(self, name: str) -> BlockProfile:
        for block in self.blocks:
            if block.name == name:
                return block
        raise ModelError(f"block is {name!r}; model {self.name} has blocks: {', '.join(b.name for b in self.blocks)}")


_SDXL_BLOCKS_512 = (
    BlockProfile("down_blocks.2.attentions.1", 1280, (16, 16), "composition"),
    BlockProfile("mid_block.attentions.0", 1280, (16, 16), "spatial relations"),
    BlockProfile("up_blocks.0.attentions.0", 1280, (16, 16), "local detail"),
    BlockProfile("up_blocks.0.attentions.1", 1280, (16, 16), "colour and style"),
)
# SD 1.x/2.x UNets: four levels, the last down block and the first up block have no attention.
_SD_BLOCKS_512 = (
    BlockProfile("down_blocks.2.attentions.1", 1280, (16, 16), "composition"),
    BlockProfile("mid_block.attentions.0", 1280, (8, 8), "spatial relations"),
    BlockProfile("up_blocks.1.attentions.0", 1280, (16, 16), "local detail"),
    BlockProfile("up_blocks.1.attentions.1", 1280, (16, 16), "colour and style"),
)
_TINY_BLOCKS = (
    BlockProfile("down_blocks.0.attentions.0", 32, (16, 16), "fine, early"),
    BlockProfile("down_blocks.1.attentions.0", 64, (8, 8), "coarse"),
    BlockProfile("mid_block.attentions.0", 64, (8, 8), "coarse"),
    BlockProfile("up_blocks.0.attentions.0", 64, (8, 8), "coarse, late"),
    BlockProfile("up_blocks.0.attentions.1", 64, (8, 8), "coarse, late"),
    BlockProfile("up_blocks.1.attentions.0", 32, (16, 16), "fine, late"),
    BlockProfile("up_blocks.1.attentions.1", 32, (16, 16), "fine, last"),
)
_SD15 = ModelProfile("stable-diffusion-v1-5/stable-diffusion-v1-5", "sd", 512, 512, 30, 7.5, _SD_BLOCKS_512)

PROFILES: dict[str, ModelProfile] = {
    "stabilityai/sdxl-turbo": ModelProfile("stabilityai/sdxl-turbo", "sdxl", 512, 512, 1, 0.0, _SDXL_BLOCKS_512),
    "stabilityai/sd-turbo": ModelProfile("stabilityai/sd-turbo", "sd", 512, 512, 1, 0.0, _SD_BLOCKS_512),
    "stabilityai/stable-diffusion-xl-base-1.0": ModelProfile(
        "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", 1024, 1024, 30, 5.0,
        tuple(replace(b, grid=(32, 32)) for b in _SDXL_BLOCKS_512)),
    _SD15.name: _SD15,
    "runwayml/stable-diffusion-v1-5": replace(_SD15, name="runwayml/stable-diffusion-v1-5"),
    "tiny-random-sd": ModelProfile("tiny-random-sd", "sd", 64, 64, 4, 0.0, _TINY_BLOCKS),
    "tiny-random-sdxl": ModelProfile("tiny-random-sdxl", "sdxl", 64, 64, 4, 0.0, _TINY_BLOCKS),
}


@dataclass
class LoadedModel:
    """A pipeline with its name and profile, ready for the engine."""

    name: str
    pipeline: object
    profile: ModelProfile
    device: torch.device
    dtype: torch.dtype


def load_model(name_or_path: str, device: str | torch.device | None = "auto",
               dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Load a pipeline by short name (``toy``, ``tiny-random-sd``, ``tiny-random-sdxl``), hub id or local path.

    ``toy`` is the embedded default, package data in ``paint_app.toyworld.TOY_DIR`` (``$PAINT_APP_TOY_DIR`` if set).
    """
    if not _could_be_model(name_or_path):  # said here: sae lists the toy only where this package is installed
        raise ModelError(f"model is {name_or_path!r}; allowed: a short name ({', '.join(model_names())}), a hub id "
                         "(owner/name) or a local diffusers folder")
    if name_or_path == "toy" and not (TOY_DIR / "model_index.json").exists():
        raise ModelError(f"model 'toy' is not built: {TOY_DIR} has no model_index.json; "
                         "train it with `python -m paint_app.toyworld.train`")
    try:
        pipe = load_diffusers_pipeline(str(TOY_DIR) if name_or_path == "toy" else name_or_path, device=device,
                                       dtype=dtype)
    except SAEError as exc:
        raise ModelError(str(exc)) from None
    return LoadedModel(name_or_path, pipe, profile_for(name_or_path, pipe), pipe.unet.device, pipe.unet.dtype)


def model_names() -> tuple[str, ...]:
    """The short names a model loads by: the toy (known here whether or not the package is installed, as on a
    Space, where ``sae.models`` entry points are not registered), then those ``sae`` knows."""
    return tuple(dict.fromkeys(("toy", *known_model_names())))


def _could_be_model(name: str) -> bool:
    return not isinstance(name, str) or name in model_names() or Path(name).expanduser().exists() \
        or re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None


def profile_for(name: str, pipe) -> ModelProfile:
    """The known profile of ``name``, else one derived from the pipeline (its UNet's transformer blocks).

    A model folder may hold ``paint_app.json`` with ``width``, ``height``, ``steps``, ``guidance``, ``blocks``
    (the names of the blocks that carry SAEs, with optional roles) and ``sae_dir`` (relative to the folder).
    """
    if name in PROFILES:
        return PROFILES[name]
    root = Path(getattr(pipe.config, "_name_or_path", "") or ".")
    defaults = _read_defaults(root)
    family = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"
    scale = getattr(pipe, "vae_scale_factor", 8)
    size = int(pipe.unet.config.sample_size) * scale
    width, height = int(defaults.get("width", size)), int(defaults.get("height", size))
    turbo = "turbo" in name
    all_blocks = {b.name: b for b in unet_blocks(pipe.unet, height, width, scale)}
    roles = defaults.get("blocks") or {}
    if isinstance(roles, list):
        roles = {block: "" for block in roles}
    chosen = [BlockProfile(b.name, b.channels, b.grid, roles.get(b.name, "")) for b in all_blocks.values()
              if not roles or b.name in roles]
    sae_dir = root / defaults["sae_dir"] if "sae_dir" in defaults else None
    if sae_dir is None and name == "toy":
        sae_dir = TOY_DIR / "saes"
    steps = int(defaults.get("steps", 1 if turbo else 30))
    layer_values = defaults.get("layer_defaults") or {}
    strength, step_range = _layer_defaults(layer_values, steps, root)
    concept = _layer_concept(layer_values.get("concept"), root)
    return ModelProfile(name, family, width, height, steps, float(defaults.get("guidance", 0.0 if turbo else 7.5)),
                        tuple(chosen), sae_dir, strength, step_range, concept)


def _layer_defaults(values: dict, steps: int, root: Path) -> tuple[float, tuple[int, int] | None]:
    """``layer_defaults`` of ``paint_app.json``: the strength and step range a new layer starts with, checked as a
    session layer's are."""
    from .errors import SessionError
    from .session import MAX_STRENGTH, _number, _parse_step_range

    where = f"'{root / 'paint_app.json'}': layer_defaults."
    try:
        strength = _number(values, "strength", where, -MAX_STRENGTH, MAX_STRENGTH, 4.0)
        step_range = values.get("step_range")
        if step_range is not None:
            step_range = _parse_step_range(step_range, f"{where}step_range", steps)
    except SessionError as exc:
        raise ModelError(str(exc)) from None
    return strength, step_range


def _layer_concept(value, root: Path) -> dict | None:
    """``layer_defaults.concept`` of ``paint_app.json``: what the app's first layer paints, as
    ``{"block": ..., "factor": "<a factor's label>"}`` or ``{"block": ..., "feature": <index>}``."""
    if value is None:
        return None
    where = f"'{root / 'paint_app.json'}': layer_defaults.concept"
    allowed = 'allowed: {"block": "<block name>", "factor": "<factor label>"} or {"block": ..., "feature": <index>}'
    if not isinstance(value, dict) or not isinstance(value.get("block"), str) or \
            len(value) != 2 or not ("factor" in value or "feature" in value):
        raise ModelError(f"{where} is {value!r}; {allowed}")
    if "factor" in value and not (isinstance(value["factor"], str) and value["factor"]):
        raise ModelError(f"{where}.factor is {value['factor']!r}; allowed: a factor's label (text)")
    if "feature" in value and (not isinstance(value["feature"], int) or isinstance(value["feature"], bool)
                               or value["feature"] < 0):
        raise ModelError(f"{where}.feature is {value['feature']!r}; allowed: a feature index (an integer >= 0)")
    return dict(value)


def _read_defaults(root: Path) -> dict:
    file = root / "paint_app.json"
    if not file.exists():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"'{file}' is not valid JSON: {exc}") from None
