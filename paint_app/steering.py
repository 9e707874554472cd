"""Edits, plans, and the hooks that apply them to a UNet's blocks (docs/modes.md).

An ``Edit`` is one concept painted on one block: its features with weights, a soft mask in image pixels, and its
mode (``paint_app.modes``: each mode says how it acts). A ``Plan`` holds every edit of one generation with what the
modes need (the SAEs, prototypes, examples, the plain run's recording for ``move``). ``apply_plan`` attaches named
hooks (``sae.hooks.attached``): a ``StepCounter`` on the UNet, and per block with edits a ``BlockEditor`` (modes
acting in the SAE's directions: add, set, erase) and/or a ``BlockReplacer`` (modes overwriting the block: replace,
paste, fill, move), in that order. All edits on a block are computed from the unedited activations and add up.
With ``keep_outside`` the engine also blends, after every step, the latents with the unpainted run's outside
the painted cover c (the latent cells any edit touches: ``EditMode.places``): x = c * x + (1 - c) * x_unpainted,
and pastes the unpainted pixels back outside c (``paste_outside``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.hooks import ModelHook
from PIL import Image

from sae.exemplars import pasteable_record
from sae.hooks import BlockHook, attached, block_input, block_output, replace_block_output, site_value
from sae.model import SAE
from sae.pipelines import get_block
from sae.prototypes import Prototypes

from .errors import ModelError, PaintError
from .modes import MODES, NAMES, EditMode


@dataclass
class Edit:
    """One concept painted on one block: its features with weights, a soft mask in image pixels, how it acts."""

    block: str
    features: tuple[int, ...]
    mask: torch.Tensor  # [height, width] float in [0, 1], image pixels
    weights: tuple[float, ...] = ()  # w_f per feature; empty means 1.0 each
    strength: float = 1.0
    mode: str = "add"
    step_range: tuple[int, int] | None = None  # [start, end) of denoising steps; None means every step
    cond_only: bool = False  # with classifier-free guidance, act on the conditional half only
    origin: torch.Tensor | None = None  # the mask before its offset (``move``: where the part was); None: ``mask``
    offset: tuple[int, int] = (0, 0)  # (dx, dy) pixels from ``origin`` to ``mask``
    copy: bool = False  # ``move``: keep the part where it was too

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PaintError(f"mode is {self.mode!r}; allowed: {', '.join(NAMES)}")
        if self.copy and not self.how.copyable:
            raise PaintError(f"copy is true with mode {self.mode!r}; allowed: true only with mode "
                             f"{' or '.join(name for name, mode in MODES.items() if mode.copyable)}")
        if self.origin is None:
            self.origin = self.mask
        if not self.features:
            raise PaintError("an edit needs at least one feature")
        if not self.weights:
            self.weights = (1.0,) * len(self.features)
        if len(self.weights) != len(self.features):
            raise PaintError(f"an edit has {len(self.features)} features but {len(self.weights)} weights")
        if not math.isfinite(self.strength):
            raise PaintError(f"strength is {self.strength!r}; it must be a finite number")
        if self.mask.ndim != 2:
            raise PaintError(f"mask must be 2-D [height, width], got shape {list(self.mask.shape)}")

    @property
    def how(self) -> EditMode:
        """The edit's mode object."""
        return MODES[self.mode]

    def active_at(self, step: int) -> bool:
        return self.step_range is None or self.step_range[0] <= step < self.step_range[1]


@dataclass
class Plan:
    """Every edit of one generation, with the SAE of each block that has edits."""

    edits: list[Edit] = field(default_factory=list)
    saes: dict[str, SAE] = field(default_factory=dict)
    prototypes: dict[str, Prototypes] = field(default_factory=dict)  # by SAE block, for ``replace`` edits
    steps: int | None = None  # denoising steps of the run (maps a step to a prototype's step)
    # for ``paste`` edits, by the edit's index: per block, (the example's outputs moved [steps, rows, C, H, W],
    # its window moved [H, W]) (``sae.exemplars.Example.moved``); for ``fill`` edits (its window mean [steps,
    # rows, C], None) (``Example.filled``); for ``move`` edits (the value [steps, rows, C, H, W], its mask on the
    # block's grid) (``Move.from_source``); the engine makes them
    pasted: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor | None]]] = field(default_factory=dict)
    examples: dict[str, dict[int, list[dict]]] = field(default_factory=dict)  # by SAE block: top-example records

    def paste_feature(self, edit: Edit) -> int | None:
        """The feature a ``paste`` or ``fill`` edit writes an example of: its heaviest feature with a pasteable
        record."""
        records = self.examples.get(edit.block) or {}
        usable = [(w, f) for f, w in zip(edit.features, edit.weights) if w > 0 and pasteable_record(records.get(f))]
        return max(usable, key=lambda pair: (pair[0], -pair[1]))[1] if usable else None

    def blocks(self) -> list[str]:
        """The blocks with edits that act in their SAE's directions (``BlockEditor``)."""
        return sorted({edit.block for edit in self.edits if not edit.how.overwrites})

    def replaced(self) -> dict[str, list[tuple[Edit, torch.Tensor, torch.Tensor | None]]]:
        """Per block that overwriting edits write: (edit, what it writes there, window): a prototype or a fill's
        window mean [steps, rows, C] and no window, or an example [steps, rows, C, H, W] and its window [H, W]."""
        result: dict[str, list[tuple[Edit, torch.Tensor, torch.Tensor | None]]] = {}
        for i, edit in enumerate(self.edits):
            for block, (written, window) in edit.how.written(self, i, edit).items():
                result.setdefault(block, []).append((edit, written, window))
        return result

    def first_step(self, steps: int) -> int:
        """The first denoising step any edit acts on (``steps`` when there are no edits)."""
        return min((edit.step_range[0] if edit.step_range else 0 for edit in self.edits), default=steps)

    def validate(self) -> None:
        for i, edit in enumerate(self.edits):
            sae = self.saes.get(edit.block)
            if sae is None:
                raise ModelError(f"layers[{i}].block is {edit.block!r} but no SAE is loaded for that block; "
                                 f"SAEs are loaded for: {', '.join(sorted(self.saes)) or 'no block'}")
            for feature in edit.features:
                sae.check_feature(feature, f"layers[{i}] feature")
            edit.how.check(self, i, edit)


def grid_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Area-average an image-pixel mask to a block's grid, so a thin stroke gives a small value, not nothing."""
    if tuple(mask.shape) == tuple(grid):
        return mask.float()
    return F.adaptive_avg_pool2d(mask.float()[None, None], grid)[0, 0]


def painted_cover(plan: Plan, grid: tuple[int, int]) -> torch.Tensor:
    """The latent cells any edit of the plan touches, [H, W] of 0 or 1.

    Touched at all, not how strongly: a soft mask already scales its edit inside the UNet, and blending a
    half-painted cell half-way back to the unpainted run at every step would shrink the edit far more than half.
    """
    cover = torch.zeros(grid, dtype=torch.bool)
    for i, edit in enumerate(plan.edits):
        for place in edit.how.places(plan, i, edit):
            cover |= grid_mask(place, grid) > 0
    return cover.float()


def keep_outside(latents: torch.Tensor, unpainted: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Latents that follow the painted run where ``cover`` is 1 and the unpainted run where it is 0.

    Applied after every denoising step, this keeps an edit's side effects (through self-attention, convolutions
    and GroupNorm statistics, which see the whole image) out of the unpainted area, as blended latent diffusion
    does for inpainting; the edit itself still acts on the UNet's activations inside the mask.
    """
    cover = cover.to(latents.device, latents.dtype)
    return cover * latents + (1 - cover) * unpainted.to(latents.device, latents.dtype)


def paste_outside(painted: Image.Image, unpainted: Image.Image, cover: torch.Tensor) -> Image.Image:
    """The painted image where ``cover`` (on the latent grid) is 1, the unpainted image where it is 0, blended
    over about one latent cell at the edge (the cover upsampled bilinearly to pixels).

    The VAE decoder's GroupNorm statistics span the whole latent, so a strongly painted region tints the decoded
    rest of the image even when its latents are the unpainted run's; pasting the unpainted pixels back removes
    that tint (as inpainting tools do), and leaves the pixels beyond that edge exactly the plain image's.
    """
    size = (painted.height, painted.width)
    alpha = F.interpolate(cover.float()[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    alpha = alpha.clamp(0, 1).numpy()[..., None]
    out = alpha * np.asarray(painted.convert("RGB"), np.float32) + \
        (1 - alpha) * np.asarray(unpainted.convert("RGB"), np.float32)
    return Image.fromarray(np.rint(out).astype(np.uint8))


class StepCounter(ModelHook):
    """Counts UNet calls: the n-th call of a generation is denoising step n (one call per step, CFG batched)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    @property
    def step(self) -> int:
        return self.calls - 1

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


class BlockEditor(BlockHook):
    """The hook of one block that applies its edits acting in the SAE's directions to the block's output.

    What does not change between denoising steps (directions, targets, masks on the grid, the summed constant
    changes) is computed once per generation; only modes with a ``target`` (set, erase) need the SAE code of each
    step's activations.
    """

    def __init__(self, edits: list[Edit], sae: SAE, counter: StepCounter, cfg: bool) -> None:
        super().__init__()
        self.edits = edits
        self.sae = sae
        self.counter = counter
        self.cfg = cfg
        param = sae.W_dec
        with torch.no_grad():
            self.features = [torch.tensor(e.features, device=param.device) for e in edits]
            weights = [torch.tensor(e.weights, dtype=param.dtype, device=param.device) for e in edits]
            sigmas = [sae.feature_mean[f] for f in self.features]
            self.directions = [param[f] for f in self.features]  # [n_e, C]
            self.constants = [e.how.constant(e, w, s, d) for e, w, s, d in zip(edits, weights, sigmas, self.directions)]
            self.targets = [e.how.target(e, w, s) for e, w, s in zip(edits, weights, sigmas)]
        self._cache: dict[tuple, torch.Tensor] = {}

    def after(self, module, args, kwargs, output):
        active = tuple(i for i, e in enumerate(self.edits) if e.active_at(self.counter.step))
        if not active:
            return None
        h_out = block_output(output)
        delta = self.delta(h_out, block_input(args, kwargs), active)
        return replace_block_output(output, h_out + delta.to(h_out.dtype))

    @torch.no_grad()
    def delta(self, h_out: torch.Tensor, h_in: torch.Tensor, active: tuple[int, ...]) -> torch.Tensor:
        """The summed change of the active edits, shaped like ``h_out`` [batch, C, H, W], in the SAE's dtype."""
        batch, _, height, width = h_out.shape
        delta = self._added(active, batch, height, width)
        setting = [i for i in active if self.targets[i] is not None]
        if setting:
            delta = delta.clone()
            self._add_settings(delta, h_out, h_in, setting)
        return delta.permute(0, 3, 1, 2)

    def _add_settings(self, delta: torch.Tensor, h_out: torch.Tensor, h_in: torch.Tensor,
                      setting: list[int]) -> None:
        """Add the edits with a target to ``delta`` [b, H, W, C], all in one pass whatever their number: the SAE
        encodes the cells they cover once, and their features' changes are one product with the stacked directions."""
        sae = self.sae
        batch, height, width = delta.shape[:3]
        cells = self._covered(tuple(setting), height, width)  # [H, W] bool
        x = site_value(sae.config.site, h_in, h_out).permute(0, 2, 3, 1)[:, cells]  # [b, n_cells, C]
        values, indices = sae.encode_topk(x.to(sae.W_dec.device, sae.W_dec.dtype))
        features, targets, directions, weights = self._stacked(tuple(setting), batch, height, width)
        z = (values[:, :, None, :] * (indices[:, :, None, :] == features[:, None])).sum(-1)  # [b, n_cells, F]
        delta[:, cells] += ((targets - z) * weights) @ directions

    def _stacked(self, setting: tuple[int, ...], batch: int, height: int,
                 width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The setting edits' features side by side (F in all, an edit's feature once per edit that names it):
        their indices [F], targets [F], directions [F, C], and weights [b, n_cells, F] (the edit's mask at each
        covered cell, 0 on the rows it does not act on)."""
        key = ("stacked", setting, batch, height, width)
        if key not in self._cache:
            cells = self._covered(setting, height, width)
            param = self.sae.W_dec
            weights = []
            for i in setting:
                rows = torch.zeros(batch, 1, 1, dtype=param.dtype, device=param.device)
                rows[self._rows(self.edits[i], batch)] = 1
                mask = self._grid(i, height, width)[cells][None, :, None]
                weights.append((rows * mask).expand(batch, mask.shape[1], len(self.features[i])))
            self._cache[key] = (torch.cat([self.features[i] for i in setting]),
                                torch.cat([self.targets[i] for i in setting]),
                                torch.cat([self.directions[i] for i in setting]), torch.cat(weights, dim=-1))
        return self._cache[key]

    def _covered(self, setting: tuple[int, ...], height: int, width: int) -> torch.Tensor:
        key = ("covered", setting, height, width)
        if key not in self._cache:
            self._cache[key] = torch.stack([self._grid(i, height, width) > 0 for i in setting]).any(0)
        return self._cache[key]

    def _added(self, active: tuple[int, ...], batch: int, height: int, width: int) -> torch.Tensor:
        """Sum of the active edits' constant changes, [batch, H, W, C]; the same at every step with the same active
        set."""
        key = (active, batch, height, width)
        if key not in self._cache:
            param = self.sae.W_dec
            total = torch.zeros(batch, height, width, self.sae.d_in, dtype=param.dtype, device=param.device)
            for i in active:
                if self.constants[i] is not None:
                    total[self._rows(self.edits[i], batch)] += self._grid(i, height, width)[..., None] * \
                        self.constants[i]
            self._cache[key] = total
        return self._cache[key]

    def _rows(self, edit: Edit, batch: int) -> slice:
        """The batch rows an edit acts on: all, or with CFG ([uncond, cond]) optionally the cond half only."""
        return slice(batch // 2, batch) if (self.cfg and edit.cond_only) else slice(0, batch)

    def _grid(self, index: int, height: int, width: int) -> torch.Tensor:
        key = ("mask", index, height, width)
        if key not in self._cache:
            param = self.sae.W_dec
            self._cache[key] = grid_mask(self.edits[index].mask, (height, width)).to(param.device, param.dtype)
        return self._cache[key]


class BlockReplacer(BlockHook):
    """The hook of one block that overwriting edits write: in each edit's mask (narrowed to its window, if it has
    one), the output moves to what the edit writes for the step (h = h + m * (p_t - h)), edits in order, after any
    other edit of the block."""

    def __init__(self, edits: list[tuple[Edit, torch.Tensor, torch.Tensor | None]], counter: StepCounter, cfg: bool,
                 steps: int | None) -> None:
        super().__init__()
        self.edits = edits
        self.counter = counter
        self.cfg = cfg
        self.steps = steps
        self._masks: dict[tuple, torch.Tensor] = {}

    def prototype_step(self, prototype: torch.Tensor) -> int:
        """The prototype's step for the run's step: the same index, or the same fraction of a different count."""
        stored, step = prototype.shape[0], self.counter.step
        if self.steps is None or self.steps == stored:
            return min(max(step, 0), stored - 1)
        return min(stored - 1, round(step * (stored - 1) / max(1, self.steps - 1)))

    @torch.no_grad()
    def after(self, module, args, kwargs, output):
        active = [i for i, (edit, _, _) in enumerate(self.edits) if edit.active_at(self.counter.step)]
        if not active:
            return None
        h = block_output(output)
        batch, _, height, width = h.shape
        h = h.clone()
        for index in active:
            edit, written, window = self.edits[index]
            value = written[self.prototype_step(written)].to(h.device, h.dtype)  # [rows, C] or [rows, C, H, W]
            if value.ndim == 2:
                value = value[:, :, None, None]
            if value.shape[0] != batch:  # made with CFG, used without (or the reverse): the conditional row
                value = value[-1:].expand(batch, *value.shape[1:])
            rows = slice(batch // 2, batch) if (self.cfg and edit.cond_only) else slice(0, batch)
            mask = self._mask(index, edit, window, height, width, h)
            h[rows] += mask * (value[rows] - h[rows])
        return replace_block_output(output, h)

    def _mask(self, index: int, edit: Edit, window: torch.Tensor | None, height: int, width: int,
              like: torch.Tensor) -> torch.Tensor:
        key = (index, height, width)
        if key not in self._masks:
            mask = window.float() if edit.how.window_is_mask else grid_mask(edit.mask, (height, width))
            if window is not None and not edit.how.window_is_mask:
                mask = mask * window.to(mask.dtype)
            self._masks[key] = mask.to(like.device, like.dtype)
        return self._masks[key]


@contextmanager
def apply_plan(unet: torch.nn.Module, plan: Plan, cfg: bool = False) -> Iterator[StepCounter]:
    """The plan's hooks on the planned blocks only (none when the plan is empty); always removed on exit."""
    if not plan.edits:
        yield StepCounter()
        return
    plan.validate()
    missing = [i for i, edit in enumerate(plan.edits)
               if (edit.how.needs == "example" or edit.how.uses_source) and i not in plan.pasted]
    if missing:
        edit = plan.edits[missing[0]]
        made = "source (the plain run recorded at its block)" if edit.how.uses_source else "example"
        raise ModelError(f"layers[{missing[0]}].mode is {edit.mode!r} but its {made} was not made "
                         "(Engine.generate makes it)")
    counter = StepCounter()
    hooks: list[tuple[torch.nn.Module, str, ModelHook]] = [(unet, "paint-app.steps", counter)]
    for block in plan.blocks():
        module = _block_module(unet, block)
        sae = plan.saes[block]
        channels = getattr(getattr(module, "config", None), "in_channels", sae.d_in)
        if channels != sae.d_in:
            raise ModelError(f"the SAE for block {block!r} reads vectors of size {sae.d_in}, "
                             f"but that block has {channels} channels; use an SAE trained on this model's block")
        edits = [edit for edit in plan.edits if edit.block == block and not edit.how.overwrites]
        hooks.append((module, "paint-app.edits", BlockEditor(edits, sae, counter, cfg)))
    for block, edits in plan.replaced().items():
        module = _block_module(unet, block)
        channels = getattr(getattr(module, "config", None), "in_channels", None)
        prototypes = [written for edit, written, _ in edits if edit.how.needs == "prototype"]
        if channels is not None and prototypes and channels != prototypes[0].shape[-1]:
            raise ModelError(f"the prototypes for block {block!r} have {prototypes[0].shape[-1]} channels, but that "
                             f"block has {channels}; make them with this model (`sae prototypes`)")
        hooks.append((module, "paint-app.overwrites", BlockReplacer(edits, counter, cfg, plan.steps)))
    with attached(hooks):
        yield counter


def _block_module(unet: torch.nn.Module, block: str) -> torch.nn.Module:
    try:
        return get_block(unet, block)
    except Exception as exc:
        raise ModelError(str(exc)) from None
