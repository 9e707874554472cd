"""``paste``: a real example instead of a mean. E_t is the output of the feature's top example made again with the
run's settings (``sae.exemplars``) at the SAE's block and every later block of its grid or finer; the mask is
narrowed to the window w where the feature fires in it, both moved by whole cells so the window is centred on the
mask: h = h + m * w * (E_t - h)."""

from __future__ import annotations

import torch

from sae.exemplars import Example

from .base import EditMode, needs_example_error


class Paste(EditMode):
    name = "paste"
    summary = ("pastes the activations of the feature's strongest example, moved onto the painted area, where the "
               "feature fires in it (the strength is not used)")
    needs = "example"
    overwrites = True
    uses_strength = False
    every_step = True
    rank = "paste"

    def can_paint(self, entry, feature):
        return entry.pasteable(feature)

    def lacks(self):
        return f"no example to {self.name} with"

    def needs_text(self, block):
        return (f"mode '{self.name}' needs a top example of the concept that can be made again ({block}: "
                "top_examples.json with seeds beside its SAE, made by `sae top-examples`); it has none.")

    def check(self, plan, index, edit):
        if plan.paste_feature(edit) is None:
            raise needs_example_error(index, edit)

    def from_example(self, example: Example, mask: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """What the edit writes, per block, made from its example and its mask (the engine calls this)."""
        return example.moved(mask)

    def written(self, plan, index, edit):
        return plan.pasted[index]


MODE = Paste()
