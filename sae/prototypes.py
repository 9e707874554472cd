"""Prototypes: what a block's output looks like where a feature fires, for edits that overwrite (``replace``).

A feature's prototype at a block is the block's mean output over the grid cells where the feature fires most,
one vector per denoising step and per batch row (with classifier-free guidance, [uncond, cond]). The cells are
chosen on the last step of each generation, where the feature's activation (conditional half) is in the top
``top`` fraction of its positive activations over all the prompts; the prototype averages the outputs of every
step at those cells, so an edit can replay the whole trajectory of "what is here" from the first step on.

Prototypes are kept for the SAE's own block and for the blocks after it in the same level of the UNet (same grid:
``up_blocks.1.attentions.0`` -> ``up_blocks.1.attentions.{0,1}``): overwriting one block is undone by the next
when that one still reads the old picture from the skip connections, so a ``replace`` edit overwrites all of
them. ``prototypes.safetensors`` beside an SAE holds one tensor per block, [n_features, steps, rows, channels],
and ``counts`` [n_features] (the cells averaged; 0 where a feature never reached its top), with the blocks, the
top fraction and the number of prompts in its metadata.

Computing them takes two passes over the prompts (same seeds, so the same images): the first encodes the last
step's activations to find each feature's threshold, the second sums the outputs over the chosen cells.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .errors import SAEError
from .hooks import block_input, block_output, forward_hooks, site_value
from .model import SAE
from .pipelines import get_block

PROTOTYPES_NAME = "prototypes.safetensors"
_LEVEL_BLOCK = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)")


@dataclass
class Prototypes:
    """Per block (the SAE's first), [n_features, steps, rows, channels]; ``counts`` [n_features]."""

    blocks: list[str]
    values: dict[str, torch.Tensor]
    counts: torch.Tensor
    top: float = 0.1
    prompts: int = 0

    @property
    def steps(self) -> int:
        return self.values[self.blocks[0]].shape[1]

    def has(self, feature: int) -> bool:
        return 0 <= feature < len(self.counts) and bool(self.counts[feature] > 0)

    def concept(self, features: tuple[int, ...], weights: tuple[float, ...]) -> dict[str, torch.Tensor]:
        """The prototype of a weighted group of features, per block [steps, rows, channels]: the mean over all
        their cells, each feature's cells weighted by its weight (features that never reached their top add
        nothing). Raises SAEError when none of them has a prototype."""
        index = torch.tensor(features, dtype=torch.long)
        mix = torch.tensor(weights, dtype=torch.float32).clamp(min=0) * self.counts[index].float()
        if float(mix.sum()) <= 0:
            raise SAEError(f"feature(s) {', '.join(map(str, features))} have no prototype: they never fired in "
                           f"the top {self.top:.0%} of their activations on the {self.prompts} prompts used")
        mix = mix / mix.sum()
        return {block: torch.einsum("f,fsrc->src", mix, values[index].float())
                for block, values in self.values.items()}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder)
        file = path / PROTOTYPES_NAME if path.is_dir() or not path.suffix else path
        file.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"block.{block}": values.half().contiguous() for block, values in self.values.items()}
        tensors["counts"] = self.counts.float().contiguous()
        save_file(tensors, str(file), metadata={"blocks": json.dumps(self.blocks), "top": str(self.top),
                                                 "prompts": str(self.prompts)})
        return file


def load_prototypes(path: str | Path) -> Prototypes | None:
    """The prototypes in an SAE folder (or file), or None where there are none."""
    file = Path(path)
    if file.is_dir():
        file = file / PROTOTYPES_NAME
    if not file.is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata() or {}
            blocks = json.loads(meta["blocks"])
            values = {block: handle.get_tensor(f"block.{block}").float() for block in blocks}
            counts = handle.get_tensor("counts")
    except (SafetensorError, KeyError, json.JSONDecodeError) as exc:
        raise SAEError(f"{file} is not a prototypes file: {exc}") from None
    return Prototypes(blocks, values, counts, float(meta.get("top", 0.1)), int(meta.get("prompts", 0)))


def replaced_blocks(unet, block: str) -> list[str]:
    """``block`` and the transformer blocks after it in the same level (same grid): what a ``replace`` overwrites."""
    get_block(unet, block)
    match = _LEVEL_BLOCK.fullmatch(block)
    if match is None:  # mid_block.attentions.N: the only transformer block of its level
        return [block]
    kind, level, index = match.group(1), int(match.group(2)), int(match.group(3))
    later = []
    for name, _ in unet.named_modules():
        other = _LEVEL_BLOCK.fullmatch(name)
        if other and other.group(1) == kind and int(other.group(2)) == level and int(other.group(3)) > index:
            later.append(name)
    return [block, *sorted(later, key=lambda name: int(name.rsplit(".", 1)[1]))]


@torch.no_grad()
def compute_prototypes(pipe, sae: SAE, prompts: list[str], top: float = 0.1, seed: int = 0,
                       blocks: list[str] | None = None, progress: bool = True, **pipeline_kwargs) -> Prototypes:
    """Prototypes of every feature of ``sae`` (see the module docstring). Prompt i is generated with seed + i and
    ``pipeline_kwargs`` (num_inference_steps, guidance_scale, height, width)."""
    if not 0 < top <= 1:
        raise SAEError(f"top is {top}; it must be in (0, 1]")
    if not prompts:
        raise SAEError("prompts is empty; prototypes need at least one prompt")
    block = sae.config.block or (blocks[0] if blocks else None)
    if not block:
        raise SAEError("the SAE does not say which block it reads; name it first with --block")
    blocks = blocks or replaced_blocks(pipe.unet, block)
    if blocks[0] != block:
        blocks = [block, *[b for b in blocks if b != block]]
    codes = [_last_step_code(pipe, sae, block, prompt, seed + i, pipeline_kwargs)
             for i, prompt in enumerate(tqdm(prompts, desc="prototypes: codes", disable=not progress))]
    thresholds = feature_thresholds(codes, sae.n_features, top)
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(sae.n_features)
    for i, prompt in enumerate(tqdm(prompts, desc="prototypes: outputs", disable=not progress)):
        outputs = _outputs(pipe, blocks, prompt, seed + i, pipeline_kwargs)  # block: [steps, rows, H, W, C]
        chosen = _chosen_cells(codes[i], thresholds, sae.n_features)  # [n_features, cells]
        counts += chosen.sum(1)
        for name, output in outputs.items():
            flat = output.flatten(2, 3)  # [steps, rows, cells, C]
            if flat.shape[2] != chosen.shape[1]:
                raise SAEError(f"block {name!r} has {flat.shape[2]} grid cells but {block!r} has "
                               f"{chosen.shape[1]}; prototypes need blocks of the same grid")
            total = torch.einsum("fn,srnc->fsrc", chosen, flat)
            sums[name] = sums[name] + total if name in sums else total
    means = {name: total / counts.clamp(min=1)[:, None, None, None] for name, total in sums.items()}
    return Prototypes(blocks, means, counts, top, len(prompts))


def feature_thresholds(codes: list[tuple[torch.Tensor, torch.Tensor]], n_features: int, top: float) -> torch.Tensor:
    """Per feature, the value its positive activations (over every code's cells) reach in their top ``top``
    fraction; +inf for a feature that never fired."""
    values = torch.cat([v.flatten() for v, _ in codes]).numpy()
    indices = torch.cat([i.flatten() for _, i in codes]).numpy()
    positive = values > 0
    values, indices = values[positive], indices[positive]
    order = np.lexsort((values, indices))
    values, indices = values[order], indices[order]
    starts = np.searchsorted(indices, np.arange(n_features), side="left")
    ends = np.searchsorted(indices, np.arange(n_features), side="right")
    thresholds = np.full(n_features, np.inf, dtype=np.float32)
    for feature in np.nonzero(ends > starts)[0]:
        thresholds[feature] = np.quantile(values[starts[feature]:ends[feature]], 1 - top, method="lower")
    return torch.from_numpy(thresholds)


def _chosen_cells(code: tuple[torch.Tensor, torch.Tensor], thresholds: torch.Tensor, n_features: int) -> torch.Tensor:
    """[n_features, cells] of 0/1: where each feature's activation reached its threshold."""
    values, indices = code  # [cells, k]
    reached = (values > 0) & (values >= thresholds[indices])
    chosen = torch.zeros(n_features, values.shape[0])
    cells = torch.arange(values.shape[0])[:, None].expand_as(indices)
    chosen[indices[reached], cells[reached]] = 1.0
    return chosen


def _last_step_code(pipe, sae: SAE, block: str, prompt: str, seed: int,
                    pipeline_kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The SAE's top-k code of the block's site at the last UNet call, conditional half: ([cells, k], [cells, k])."""
    last: list[torch.Tensor] = []

    def read(module, args, kwargs, output):
        value = site_value(sae.config.site, block_input(args, kwargs), block_output(output))
        last[:] = [value[-1]]

    with forward_hooks({get_block(pipe.unet, block): read}):
        _generate(pipe, prompt, seed, pipeline_kwargs)
    x = last[0].permute(1, 2, 0).reshape(-1, sae.d_in).to(sae.W_dec.device, sae.W_dec.dtype)
    values, indices = sae.encode_topk(x)
    return values.detach().float().cpu(), indices.cpu()


def _outputs(pipe, blocks: list[str], prompt: str, seed: int, pipeline_kwargs: dict) -> dict[str, torch.Tensor]:
    recorded: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}

    def recorder(name: str):
        def record(module, args, kwargs, output):
            recorded[name].append(block_output(output).permute(0, 2, 3, 1).float().cpu())
        return record

    with forward_hooks({get_block(pipe.unet, name): recorder(name) for name in blocks}):
        _generate(pipe, prompt, seed, pipeline_kwargs)
    return {name: torch.stack(values) for name, values in recorded.items()}


def _generate(pipe, prompt: str, seed: int, pipeline_kwargs: dict) -> None:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    pipe(prompt, generator=generator, output_type="latent", **pipeline_kwargs)
