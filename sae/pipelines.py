"""Load any diffusers SD/SDXL pipeline by name, hub id or local path, with a device/dtype policy.

Built-in names:
- ``tiny-random-sd`` / ``tiny-random-sdxl``: tiny, randomly initialised, deterministic pipelines built in code,
  for tests, benchmarks and quick checks. No files, no network.
- any other short name is looked up in the entry-point group ``sae.models``: a package registers a model with
  ``[project.entry-points."sae.models"] name = "package.module:function"``, where the function returns
  ``{"path": <local diffusers folder or hub id>, "defaults": {"width", "height", "steps", "guidance"}}``
  (paint-app registers its embedded default, ``toy``, this way). ``sae`` itself knows no model's files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import torch

from .errors import SAEError
from .tokenizer import make_word_tokenizer

MODELS_GROUP = "sae.models"
TINY_NAMES = ("tiny-random-sd", "tiny-random-sdxl")
TINY_WORDS = (
    "a an the and of on in at with top bottom left right middle center red green blue yellow orange purple white "
    "black grey pink brown circle square triangle star striped dotted plain grass sand sky water photo painting "
    "cat dog house tree car flower big small"
).split()


@dataclass(frozen=True)
class BlockInfo:
    """A UNet transformer block: its module name, channel width and grid (rows, cols) at a given image size."""

    name: str
    channels: int
    grid: tuple[int, int]


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu. An explicit device that is not present is an error."""
    text = str(device or "auto")
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not re.fullmatch(r"(cpu|cuda(:\d+)?|mps)", text):
        raise SAEError(f"device is {text!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise SAEError(f"device is {text!r} but no CUDA device is available; use --device cpu or auto")
    if text == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SAEError("device is 'mps' but MPS is not available; use --device cpu or auto")
    return torch.device(text)


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """fp16 on cuda, fp32 elsewhere, unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise SAEError(f"dtype is {dtype!r}; allowed: auto, {', '.join(table)}")
    return table[dtype]


def registered_models() -> dict[str, object]:
    """The short names registered in the entry-point group ``sae.models``, with their entry points."""
    return {point.name: point for point in entry_points(group=MODELS_GROUP)}


def known_model_names() -> tuple[str, ...]:
    """Every short name: the built-in tiny pipelines, then the registered models."""
    return TINY_NAMES + tuple(sorted(set(registered_models()) - set(TINY_NAMES)))


def resolve_model(name_or_path: str) -> dict:
    """``{"path": ..., "defaults": {...}}`` of a model: a registered short name's entry point, called; anything
    else (a built-in tiny name, a hub id, a local folder) is its own path, with no defaults."""
    points = registered_models()
    if name_or_path in TINY_NAMES or name_or_path not in points:
        return {"path": name_or_path, "defaults": {}}
    try:
        found = points[name_or_path].load()()
    except Exception as exc:  # noqa: BLE001 - whatever the registering package raises, named here
        raise SAEError(f"model {name_or_path!r} (entry point {points[name_or_path].value!r} of group "
                       f"{MODELS_GROUP!r}) could not be resolved: {exc}") from None
    if not isinstance(found, dict) or not isinstance(found.get("path"), str | Path) \
            or not isinstance(found.get("defaults", {}), dict):
        raise SAEError(f"model {name_or_path!r}: entry point {points[name_or_path].value!r} returned {found!r}; "
                       'allowed: {"path": <local folder or hub id>, "defaults": {width, height, steps, guidance}}')
    return {"path": str(found["path"]), "defaults": dict(found.get("defaults") or {})}


def model_defaults(name_or_path: str) -> dict:
    """The generation defaults (width, height, steps, guidance) a registered model asks for; {} for any other."""
    return resolve_model(name_or_path)["defaults"]


def load_diffusers_pipeline(name_or_path: str, device: str | torch.device | None = "auto",
                            dtype: str | torch.dtype | None = None):
    """Load a pipeline by short name (``tiny-random-sd``, ``tiny-random-sdxl`` or one registered in ``sae.models``,
    such as paint-app's ``toy``), hub id or local path."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise SAEError(f"model is {name_or_path!r}; give a short name ({', '.join(known_model_names())}), "
                       "a hub id (owner/name) or a local folder")
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)
    if name_or_path in TINY_NAMES:
        pipe = build_tiny_pipeline(name_or_path)
    else:
        pipe = _from_pretrained(resolve_model(name_or_path)["path"], torch_dtype)
    pipe.to(torch_device)
    if pipe.unet.dtype != torch_dtype:
        pipe.to(dtype=torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _from_pretrained(path_or_id: str, torch_dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    local = Path(path_or_id).expanduser()
    if not local.exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", path_or_id):
        raise SAEError(f"model is {path_or_id!r}: not a built-in name or a registered model "
                       f"({', '.join(known_model_names())}), not an existing folder and not a hub id of the form owner/name")
    # diffusers renamed torch_dtype to dtype; the old name still works on older releases.
    kwargs = {"dtype" if _diffusers_takes_dtype() else "torch_dtype": torch_dtype}
    if torch_dtype == torch.float16 and not local.exists():
        kwargs["variant"] = "fp16"
    try:
        try:
            pipe = DiffusionPipeline.from_pretrained(str(local) if local.exists() else path_or_id, **kwargs)
        except (ValueError, OSError) as exc:
            if "variant" not in kwargs or "variant" not in str(exc):
                raise
            kwargs.pop("variant")
            pipe = DiffusionPipeline.from_pretrained(path_or_id, **kwargs)
    except (OSError, ValueError) as exc:
        raise SAEError(f"model {path_or_id!r} could not be loaded: {exc}") from None
    if not hasattr(pipe, "unet"):
        raise SAEError(f"model {path_or_id!r} is a {type(pipe).__name__}; sae reads UNet pipelines (SD/SDXL)")
    return pipe


def _diffusers_takes_dtype() -> bool:
    from diffusers.utils import deprecation_utils

    return hasattr(deprecation_utils, "_resolve_dtype")


_BLOCK_NAME = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.attentions\.\d+|mid_block\.attentions\.\d+")


def unet_blocks(unet, height: int, width: int, vae_scale: int = 8) -> tuple[BlockInfo, ...]:
    """Every transformer block of a UNet with its channel width and grid at height x width pixels."""
    n_levels = len(unet.config.block_out_channels)
    latent_h, latent_w = height // vae_scale, width // vae_scale
    blocks = []
    for name, module in unet.named_modules():
        match = _BLOCK_NAME.fullmatch(name)
        if not match:
            continue
        if match.group(1) == "down_blocks":
            level = int(match.group(2))
        elif match.group(1) == "up_blocks":
            level = n_levels - 1 - int(match.group(2))
        else:
            level = n_levels - 1
        grid = (-(-latent_h // 2**level), -(-latent_w // 2**level))
        blocks.append(BlockInfo(name, int(module.config.in_channels), grid))
    return tuple(blocks)


def get_block(unet, name: str) -> torch.nn.Module:
    """The UNet submodule called ``name``, or a SAEError listing the transformer blocks."""
    if isinstance(name, str) and _BLOCK_NAME.fullmatch(name):
        try:
            return unet.get_submodule(name)
        except AttributeError:
            pass
    valid = [n for n, _ in unet.named_modules() if _BLOCK_NAME.fullmatch(n)]
    raise SAEError(f"block is {name!r}; this UNet's transformer blocks are: {', '.join(valid)}")


# ----------------------------------------------------------------------------------------------------------------
# Tiny random pipelines, in the manner of diffusers' own tests.


def build_tiny_pipeline(name: str = "tiny-random-sd"):
    """A deterministic, randomly initialised tiny SD or SDXL pipeline (64x64 images), built with no files."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if name not in TINY_NAMES:
        raise SAEError(f"model is {name!r}; tiny pipelines are {', '.join(TINY_NAMES)}")
    xl = name == "tiny-random-sdxl"
    tokenizer = make_word_tokenizer(TINY_WORDS)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64 if xl else 32, attention_head_dim=(2, 4), norm_num_groups=8,
            use_linear_projection=xl,
            **({"addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                "projection_class_embeddings_input_dim": 80} if xl else {}),
        )
        torch.manual_seed(1)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            norm_num_groups=8, sample_size=64,
        )
        torch.manual_seed(2)
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config) if xl else None
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing", steps_offset=1)
    for module in (unet, vae, text_encoder, text_encoder_2):
        if module is not None:
            module.eval()
    if xl:
        return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                         force_zeros_for_empty_prompt=True)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
