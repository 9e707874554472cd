"""Reading and replacing a diffusers transformer block's input and output from a forward hook.

A ``Transformer2DModel`` is called as ``block(hidden_states, encoder_hidden_states=..., return_dict=False)`` and
returns ``(sample,)`` or a ``Transformer2DModelOutput``. Hooks are registered with ``with_kwargs=True`` so the
input is found whether it came positionally or by keyword.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

ForwardHook = Callable[[nn.Module, tuple, dict, object], object]


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def block_output(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def replace_block_output(output: object, sample: torch.Tensor) -> object:
    """``output`` with its sample replaced, in the same structure."""
    if isinstance(output, torch.Tensor):
        return sample
    if isinstance(output, tuple):
        return (sample, *output[1:])
    output.sample = sample
    return output


def site_value(site: str, h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """What an SAE reads at a block: the update ``h_out - h_in`` (site ``delta``) or ``h_out`` (site ``output``)."""
    return h_out - h_in if site == "delta" else h_out


@contextmanager
def forward_hooks(hooks: dict[nn.Module, ForwardHook]) -> Iterator[None]:
    """Register forward hooks (with kwargs) on modules; they are always removed on exit, even after an error."""
    handles = []
    try:
        for module, hook in hooks.items():
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
