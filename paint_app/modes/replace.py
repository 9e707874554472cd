"""``replace``: h = h + m * (p_t - h) at the SAE's block and the later blocks of its level, where p_t is the
concept's prototype at step t (``sae.prototypes``: the block's mean output where its features fire most)."""

from __future__ import annotations

from ..errors import ModelError
from .base import EditMode


class Replace(EditMode):
    name = "replace"
    summary = "replaces its block's activations with the concept's prototype (the strength is not used)"
    needs = "prototype"
    overwrites = True
    uses_strength = False
    every_step = True
    rank = "replace"

    def can_paint(self, entry, feature):
        return entry.replaceable(feature)

    def lacks(self):
        return "no prototype to replace with (`sae prototypes`)"

    def needs_text(self, block):
        return (f"mode 'replace' needs a prototype of the concept ({block}: prototypes.safetensors beside its SAE, "
                "made by `sae prototypes`); it has none.")

    def check(self, plan, index, edit):
        prototypes = plan.prototypes.get(edit.block)
        if prototypes is None:
            raise ModelError(f"layers[{index}].mode is 'replace' but the SAE for block {edit.block!r} has no "
                             "prototypes.safetensors; make them with `sae prototypes --sae <SAE folder> --model "
                             "<model> --prompts <file>`, or use mode add, set or erase")
        if not any(prototypes.has(f) and w > 0 for f, w in zip(edit.features, edit.weights)):
            raise ModelError(f"layers[{index}].mode is 'replace' but feature(s) "
                             f"{', '.join(map(str, edit.features))} of block {edit.block!r} have no prototype (they "
                             "never fired strongly on the prompts the prototypes were made from); "
                             "use mode add, set or erase")

    def written(self, plan, index, edit):
        concept = plan.prototypes[edit.block].concept(edit.features, edit.weights)
        return {block: (prototype, None) for block, prototype in concept.items()}


MODE = Replace()
