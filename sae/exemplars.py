"""Examples to paste: a feature's strongest example made again, with the activations a ``paste`` edit moves.

A ``paste`` edit copies what a real generation holds where a feature fires. The feature's top example (its prompt
and seed, ``top_examples.json``) is generated again with the run's own settings, recording, at every step, the
output of the SAE's block and of every transformer block after it whose grid is as fine or finer: the rest of
the UNet's picture of that place. The *window* is where the feature fires in it: the connected cells
(4-neighbours) around its strongest cell where it fires at any step (its activation summed over the steps,
conditional half). The whole trajectory, not one step: a shape's feature can fire on one part of the object at
one step and on more of it at another (on the toy's 8x8 block: triangle 19% -> 75%, shape 45% -> 58%).
``Example.moved`` moves window and activations by whole cells of the SAE's grid (finer blocks by the same
distance) so the window's box is centred on the mask's box; the edit then overwrites them there
(``paint_app.steering``). Moved, not resized: a resized pattern loses its period (``research/exemplars.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .errors import SAEError
from .hooks import block_input, block_output, forward_hooks, site_value
from .model import SAE
from .pipelines import _BLOCK_NAME, get_block


@dataclass
class Example:
    """One feature's example: the window [h, w] on the SAE's grid and per pasted block [steps, rows, C, H, W]."""

    feature: int
    prompt: str
    seed: int
    window: torch.Tensor
    outputs: dict[str, torch.Tensor]

    def moved(self, mask: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per block: (its outputs, its window), moved so the window's box is centred on the box of ``mask``
        ([height, width] in image pixels, area-averaged to the SAE's grid); cells moved in from outside are 0."""
        grid = tuple(self.window.shape)
        covered = F.adaptive_avg_pool2d(mask.float()[None, None], grid)[0, 0] > 0
        if not bool(covered.any()):
            raise SAEError("the mask is empty; there is nowhere to paste the example")
        dy, dx = (round(a - b) for a, b in zip(box_centre(covered), box_centre(self.window > 0)))
        moved = {}
        for block, values in self.outputs.items():
            factor = values.shape[-1] // grid[1]
            window = self.window.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
            moved[block] = (shift(values, dy * factor, dx * factor), shift(window, dy * factor, dx * factor))
        return moved

    def filled(self, mask: torch.Tensor) -> dict[str, tuple[torch.Tensor, None]]:
        """Per block: (its outputs averaged over the window at each step [steps, rows, C], no window): what a
        ``fill`` edit writes at every cell of the mask, as a ``replace`` edit writes its prototype (``mask`` is
        only checked for being non-empty)."""
        if not bool((mask > 0).any()):
            raise SAEError("the mask is empty; there is nowhere to fill with the example")
        grid = tuple(self.window.shape)
        filled = {}
        for block, values in self.outputs.items():
            factor = values.shape[-1] // grid[1]
            window = (self.window > 0).repeat_interleave(factor, 0).repeat_interleave(factor, 1).to(values.dtype)
            mean = (values * window).sum((-2, -1)) / window.sum()
            filled[block] = (mean, None)
        return filled


def box_centre(cells: torch.Tensor) -> tuple[float, float]:
    """The centre (row, col) of the bounding box of the true cells, in cells."""
    rows, cols = torch.nonzero(cells, as_tuple=True)
    return (float(rows.min() + rows.max() + 1) / 2, float(cols.min() + cols.max() + 1) / 2)


def shift(values: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``values`` moved by (dy, dx) cells along its last two dimensions, zero where nothing moved in."""
    height, width = values.shape[-2:]
    out = torch.zeros_like(values)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    source_rows, target_rows = _spans(dy, height)
    source_cols, target_cols = _spans(dx, width)
    out[..., target_rows, target_cols] = values[..., source_rows, source_cols]
    return out


def _spans(offset: int, size: int) -> tuple[slice, slice]:
    return (slice(0, size - offset), slice(offset, size)) if offset >= 0 else (slice(-offset, size),
                                                                              slice(0, size + offset))


def pasteable_record(records: list[dict] | None) -> dict | None:
    """A feature's strongest top-example record that can be made again (it has a prompt and a seed)."""
    return next((r for r in records or [] if r.get("prompt") and isinstance(r.get("seed"), int)), None)


@torch.no_grad()
def record_example(pipe, sae: SAE, block: str, feature: int, record: dict, **pipeline_kwargs) -> Example:
    """Generate ``record``'s prompt with its seed and ``pipeline_kwargs`` (num_inference_steps, guidance_scale,
    height, width) and return the feature's ``Example`` (see the module docstring)."""
    get_block(pipe.unet, block)
    modules = {name: module for name, module in pipe.unet.named_modules() if _BLOCK_NAME.fullmatch(name)}
    outputs: dict[str, list[torch.Tensor]] = {}
    maps: list[torch.Tensor] = []
    seen_sae_block = [False]

    def start_call(module, args):
        seen_sae_block[0] = False

    def recorder(name: str):
        def record_output(module, args, kwargs, output):
            h = block_output(output)
            if name == block:
                seen_sae_block[0] = True
                value = site_value(sae.config.site, block_input(args, kwargs), h)[-1]  # conditional half [C, H, W]
                code = sae.encode(value.permute(1, 2, 0).to(sae.W_dec.device, sae.W_dec.dtype))
                maps.append(code[..., feature].float().cpu())
            if seen_sae_block[0] and h.shape[-1] >= maps[-1].shape[-1]:  # after the SAE's block, as fine or finer
                outputs.setdefault(name, []).append(h.float().cpu())
        return record_output

    generator = torch.Generator(device="cpu").manual_seed(int(record["seed"]))
    handle = pipe.unet.register_forward_pre_hook(start_call)
    try:
        with forward_hooks({module: recorder(name) for name, module in modules.items()}):
            pipe(prompt=record["prompt"], generator=generator, output_type="latent", **pipeline_kwargs)
    finally:
        handle.remove()
    if not maps:
        raise SAEError(f"block {block!r} never ran while making the example of feature {feature}")
    window = firing_window(torch.stack(maps).clamp(min=0).sum(0))
    if not bool(window.any()):
        raise SAEError(f"feature {feature} does not fire in its example ({record['prompt']!r}, seed "
                       f"{record['seed']}) made again at these settings; there is nothing to paste")
    return Example(feature, record["prompt"], int(record["seed"]), window,
                   {name: torch.stack(values) for name, values in outputs.items() if len(values) == len(maps)})


def firing_window(activation: torch.Tensor) -> torch.Tensor:
    """The connected cells around the strongest cell where the (summed) activation is positive ([H, W] of 0/1);
    all zeros when it never fires."""
    if float(activation.max()) <= 0:
        return torch.zeros_like(activation)
    labels, _ = ndimage.label((activation > 0).numpy())
    peak = np.unravel_index(int(activation.argmax()), activation.shape)
    return torch.from_numpy(labels == labels[peak]).float()
