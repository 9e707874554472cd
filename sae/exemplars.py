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
``BlockRecorder`` is the recording itself, for any generation: the app's ``move`` mode records a painting's own
plain run with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


@dataclass
class Recording:
    """One generation as an SAE's block and the blocks after it saw it: per recorded block its output at every step
    [steps, rows, C, H, W] (float32, CPU), and the SAE block's site (what its SAE reads) at every step, conditional
    row, [steps, C, H, W] (the block's dtype, CPU)."""

    block: str
    outputs: dict[str, torch.Tensor]
    sites: torch.Tensor


class BlockRecorder:
    """Records, while ``attached``, the output of ``block`` and of every transformer block after it in a UNet call
    whose grid is as fine or finer, and the SAE's site at ``block`` (``site``: "output" or "delta")."""

    def __init__(self, unet: torch.nn.Module, block: str, site: str) -> None:
        get_block(unet, block)
        self.unet = unet
        self.block = block
        self.site = site
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self.sites: list[torch.Tensor] = []
        self._seen_block = False

    @contextmanager
    def attached(self) -> Iterator[BlockRecorder]:
        modules = {name: module for name, module in self.unet.named_modules() if _BLOCK_NAME.fullmatch(name)}
        handle = self.unet.register_forward_pre_hook(self._start_call)
        try:
            with forward_hooks({module: self._recorder(name) for name, module in modules.items()}):
                yield self
        finally:
            handle.remove()

    def _start_call(self, module, args) -> None:
        self._seen_block = False

    def _recorder(self, name: str):
        def record_output(module, args, kwargs, output):
            h = block_output(output)
            if name == self.block:
                self._seen_block = True
                self.sites.append(site_value(self.site, block_input(args, kwargs), h)[-1].detach().cpu())
            if self._seen_block and h.shape[-1] >= self.sites[-1].shape[-1]:  # after the block, as fine or finer
                self.outputs.setdefault(name, []).append(h.float().cpu())
        return record_output

    def recording(self) -> Recording:
        """What was recorded, stacked by step (blocks that did not run at every step are left out)."""
        if not self.sites:
            raise SAEError(f"block {self.block!r} never ran in the recorded generation")
        steps = len(self.sites)
        return Recording(self.block, {name: torch.stack(values) for name, values in self.outputs.items()
                                      if len(values) == steps}, torch.stack(self.sites))


@torch.no_grad()
def record_example(pipe, sae: SAE, block: str, feature: int, record: dict, **pipeline_kwargs) -> Example:
    """Generate ``record``'s prompt with its seed and ``pipeline_kwargs`` (num_inference_steps, guidance_scale,
    height, width) and return the feature's ``Example`` (see the module docstring)."""
    recorder = BlockRecorder(pipe.unet, block, sae.config.site)
    generator = torch.Generator(device="cpu").manual_seed(int(record["seed"]))
    with recorder.attached():
        pipe(prompt=record["prompt"], generator=generator, output_type="latent", **pipeline_kwargs)
    if not recorder.sites:
        raise SAEError(f"block {block!r} never ran while making the example of feature {feature}")
    recording = recorder.recording()
    maps = [feature_map(sae, site, feature) for site in recording.sites]
    window = firing_window(torch.stack(maps).clamp(min=0).sum(0))
    if not bool(window.any()):
        raise SAEError(f"feature {feature} does not fire in its example ({record['prompt']!r}, seed "
                       f"{record['seed']}) made again at these settings; there is nothing to paste")
    return Example(feature, record["prompt"], int(record["seed"]), window, recording.outputs)


def feature_codes(sae: SAE, site: torch.Tensor) -> torch.Tensor:
    """The SAE code of one step's site [C, H, W]: [H, W, n_features]."""
    return sae.encode(site.permute(1, 2, 0).to(sae.W_dec.device, sae.W_dec.dtype))


def feature_map(sae: SAE, site: torch.Tensor, feature: int) -> torch.Tensor:
    """Where one feature fires at one step: its code over the site's grid, [H, W] float32 on the CPU."""
    return feature_codes(sae, site)[..., feature].float().cpu()


def firing_window(activation: torch.Tensor) -> torch.Tensor:
    """The connected cells around the strongest cell where the (summed) activation is positive ([H, W] of 0/1);
    all zeros when it never fires."""
    if float(activation.max()) <= 0:
        return torch.zeros_like(activation)
    labels, _ = ndimage.label((activation > 0).numpy())
    peak = np.unravel_index(int(activation.argmax()), activation.shape)
    return torch.from_numpy(labels == labels[peak]).float()
