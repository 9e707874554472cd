"""``fill``: the ``paste`` example averaged over its window at each step, written over the whole mask:
h = h + m * (mean_w E_t - h); like ``replace`` with one real object's value (a colour in one piece) instead of a
mean over many images' cells."""

from __future__ import annotations

from .paste import Paste


class Fill(Paste):
    name = "fill"
    summary = ("fills the painted area with the activations of the feature's strongest example, averaged over where "
               "it fires there (the strength is not used)")
    rank = "fill"

    def from_example(self, example, mask):
        return example.filled(mask)


MODE = Fill()
