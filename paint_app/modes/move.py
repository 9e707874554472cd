"""``move``: a part of what the model drew, moved by whole cells, scaled, re-weighted or copied.

The part is the layer's mask M where the model drew it (unshifted; e.g. a map from ``paint_app.decompose``) and
its concept's features, whose weights are *gains* (1 = as drawn). The edit overwrites the painting's own plain
run, its *source* (the same settings without layers, recorded at the SAE's block and every later block of its
grid or finer: ``sae.exemplars.BlockRecorder``). Per step t and recorded block, with R_t the source's output, M'
the map moved by the offset in whole cells of the SAE's grid (finer blocks by the same distance) and s the
strength (the scale):

- B_t, the background: the mean of R_t over the cells where M is 0 (if none, where M is smallest);
- where the part goes (M' > 0): B_t + s (R_t moved - B_t), plus at the SAE's block
  sum_f (g_f - 1) z_f d_f moved (z_f the SAE code of the source, d_f the decoder direction);
- where it was and not where it goes, unless ``copy``: B_t;
- h = h + m (value - h), with m = M' where it goes and M where it was.

Moved off the image, a part is erased. Offset 0 cells, scale 1 and every gain 1 change nothing: the engine
leaves such a layer out, so the image is the painting's without it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sae.exemplars import Recording, feature_codes, shift
from sae.model import SAE

from .base import EditMode


class Move(EditMode):
    name = "move"
    summary = ("moves a part of the image by the layer's offset and scales it by the strength (0 erases it, 1 as "
               "drawn); copy keeps it where it was too")
    uses_source = True
    overwrites = True
    window_is_mask = True
    copyable = True
    every_step = True

    def idle(self, edit, grid=None):
        if not bool(edit.origin.any()):
            return True
        if edit.strength != 1.0 or any(w != 1.0 for w in edit.weights):
            return False
        if grid is None:
            return tuple(edit.offset) == (0, 0)
        return cells(edit, grid) == (0, 0)

    def from_source(self, source: Recording, edit, sae: SAE) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """What the edit writes, per recorded block: (value [steps, rows, C, H, W], its mask on the block's grid);
        nothing when the edit is idle (the engine calls this)."""
        grid = tuple(source.sites.shape[-2:])
        if self.idle(edit, grid):
            return {}
        dy, dx = cells(edit, grid)
        gained = gain_change(source, edit, sae)
        written = {}
        for block, values in source.outputs.items():
            factor = values.shape[-1] // grid[1]
            where = F.adaptive_avg_pool2d(edit.origin.float()[None, None], tuple(values.shape[-2:]))[0, 0]
            written[block] = moved_part(values, where, dy * factor, dx * factor, edit.strength, edit.copy,
                                        gained if block == source.block else None)
        return written

    def written(self, plan, index, edit):
        return plan.pasted[index]

    def places(self, plan, index, edit):
        written = plan.pasted.get(index)
        if not written:
            return [edit.origin, edit.mask]
        return [written[edit.block][1]]


MODE = Move()


def cells(edit, grid: tuple[int, int]) -> tuple[int, int]:
    """The edit's offset in whole cells (dy, dx) of ``grid``, rounded half away from zero."""
    height, width = edit.origin.shape
    dx, dy = edit.offset
    return _round(dy * grid[0] / height), _round(dx * grid[1] / width)


def _round(value: float) -> int:
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def moved_part(values: torch.Tensor, where: torch.Tensor, dy: int, dx: int, scale: float, copy: bool,
               gained: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One block's (value, mask) for a part at ``where`` [H, W] of ``values`` [steps, rows, C, H, W] moved by
    (dy, dx) cells: see the module docstring. ``gained`` [steps, C, H, W]: the gains' change, unmoved."""
    goes = shift(where, dy, dx)
    new = goes > 0
    old = (where > 0) & ~new if not copy else torch.zeros_like(new)
    outside = where == 0 if bool((where == 0).any()) else where == where.min()
    background = values[..., outside].mean(-1)[..., None, None]  # [steps, rows, C, 1, 1]
    value = background + scale * (shift(values, dy, dx) - background)
    if gained is not None:
        value = value + shift(gained, dy, dx)[:, None]
    value = torch.where(new, value, background)
    mask = torch.where(new, goes, torch.where(old, where, torch.zeros_like(where)))
    return value, mask


@torch.no_grad()
def gain_change(source: Recording, edit, sae: SAE) -> torch.Tensor | None:
    """sum_f (g_f - 1) z_f d_f at the SAE's block per step, [steps, C, H, W] (None when every gain is 1)."""
    gains = torch.tensor(edit.weights, dtype=sae.W_dec.dtype, device=sae.W_dec.device) - 1
    if not bool(gains.any()):
        return None
    features = torch.tensor(edit.features, device=sae.W_dec.device)
    directions = sae.W_dec[features]  # [n, C]
    changes = [((feature_codes(sae, site)[..., features] * gains) @ directions).permute(2, 0, 1).float().cpu()
               for site in source.sites]
    return torch.stack(changes)
