"""What an edit mode is: one object saying what it needs, how the page describes it, how the palette ranks concepts
for it, and how it acts on a UNet block (``paint_app.steering`` calls it from its hooks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import ModelError

if TYPE_CHECKING:  # type hints only: steering and concepts import this module
    from ..concepts import BlockConcepts
    from ..steering import Edit, Plan


class EditMode:
    """An edit mode. Subclasses set the class attributes and override what they use.

    Two ways to act on a block:
    - in the SAE's directions (``overwrites = False``): each step the block's output gets ``constant`` (the same
      every step, e.g. ``add``) plus, for a mode with a ``target``, ``m * (target - z_f) d_f`` where ``z_f`` is the
      SAE code of the unedited activations (``set``, ``erase``);
    - by overwriting (``overwrites = True``): at the blocks ``written`` names, the output moves towards a value,
      ``h = h + m * w * (value_t - h)``, where ``w`` is an optional window (``replace``, ``paste``, ``fill``), or
      ``h = h + w * (value_t - h)`` for a mode whose window is its whole mask on each block's grid (``move``).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # what a layer of this mode does, in a phrase the page can show
    needs: ClassVar[str | None] = None  # what a concept must have for this mode: None, "prototype" or "example"
    # overwrites with the painting's own plain run recorded at its block, which the engine makes (``Plan.pasted``)
    uses_source: ClassVar[bool] = False
    overwrites: ClassVar[bool] = False
    window_is_mask: ClassVar[bool] = False  # the window ``written`` gives is the whole mask on the block's grid
    copyable: ClassVar[bool] = False  # a layer of this mode may set ``copy`` (keep what it moves where it was too)
    uses_strength: ClassVar[bool] = True
    every_step: ClassVar[bool] = False  # starts from the first step (a prototype or example replays every step)
    rank: ClassVar[str] = "write"  # the measured score that orders the palette's concepts for this mode

    # -- what a concept needs --------------------------------------------------------------------------------

    def can_paint(self, entry: BlockConcepts, feature: int) -> bool:
        """Whether a layer of this mode can paint ``feature`` of ``entry``'s block."""
        return True

    def lacks(self) -> str:
        """What a concept this mode cannot paint is missing, in a few words (for the palette and notes)."""
        return ""

    def needs_text(self, block: str) -> str:
        """The warning when a concept of ``block`` cannot be painted in this mode: what it needs and how to make it."""
        return ""

    def check(self, plan: Plan, index: int, edit: Edit) -> None:
        """Refuse a plan this mode cannot run (a ModelError naming ``layers[index]``)."""

    def idle(self, edit: Edit, grid: tuple[int, int] | None = None) -> bool:
        """Whether the edit changes nothing (the engine then leaves it out): by default, when its mask is empty.
        ``grid``: its block's grid, once known."""
        return not bool(edit.mask.any())

    def places(self, plan: Plan, index: int, edit: Edit) -> list[torch.Tensor]:
        """Where the edit acts, as masks on any grid (image pixels or a block's): the painted cover holds them."""
        return [edit.mask]

    # -- acting in the SAE's directions ----------------------------------------------------------------------

    def constant(self, edit: Edit, weights: torch.Tensor, sigmas: torch.Tensor,
                 directions: torch.Tensor) -> torch.Tensor | None:
        """The change added at every painted cell and step, [C]; None when the mode adds nothing constant."""
        return None

    def target(self, edit: Edit, weights: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor | None:
        """The value each of the edit's features is set to, [n_features]; None when the mode sets nothing."""
        return None

    # -- acting by overwriting ---------------------------------------------------------------------------------

    def written(self, plan: Plan, index: int, edit: Edit) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Per block it overwrites: (the value by step [steps, rows, C] or [steps, rows, C, H, W], its window)."""
        return {}

    def __repr__(self) -> str:
        return f"<edit mode {self.name}>"


def needs_example_error(index: int, edit: Edit) -> ModelError:
    return ModelError(f"layers[{index}].mode is {edit.mode!r} but feature(s) {', '.join(map(str, edit.features))} "
                      f"of block {edit.block!r} have no top example with a prompt and seed to make again "
                      "(top_examples.json beside the SAE; make it with `sae top-examples`); "
                      "use mode add, set, erase or replace")
