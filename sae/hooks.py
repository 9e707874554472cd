"""Reading and replacing a diffusers transformer block's input and output from a forward hook.

A ``Transformer2DModel`` is called as ``block(hidden_states, encoder_hidden_states=..., return_dict=False)`` and
returns ``(sample,)`` or a ``Transformer2DModelOutput``. Read-only recorders use torch's forward hooks
(``forward_hooks``, registered with ``with_kwargs=True`` so the input is found whether it came positionally or by
keyword); hooks that change what a module returns are named ``diffusers.hooks.ModelHook`` objects in the module's
``HookRegistry`` (``attached``), so several compose on one module in the order they were attached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from diffusers.hooks import HookRegistry, ModelHook
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


class BlockHook(ModelHook):
    """A named hook that sees a module's input and output and may replace the output: override ``after``.

    It keeps the input from ``pre_forward`` for ``post_forward`` (no ``new_forward``), so it can be detached while
    hooks attached after it on the same module stay (diffusers' registry re-links a removed hook's neighbours'
    ``forward``, not a ``new_forward`` hook's ``original_forward``)."""

    def pre_forward(self, module: nn.Module, *args, **kwargs):
        self._inputs = (args, kwargs)
        return args, kwargs

    def post_forward(self, module: nn.Module, output):
        args, kwargs = self._inputs
        self._inputs = None
        changed = self.after(module, args, kwargs, output)
        return output if changed is None else changed

    def after(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> object | None:
        """The new output, or None to keep it."""
        return None


@contextmanager
def attached(hooks: list[tuple[nn.Module, str, ModelHook]]) -> Iterator[None]:
    """Attach named hooks to modules (each module's ``HookRegistry``; a later hook wraps an earlier one on the same
    module); they are always detached on exit, last first, even after an error. A hook with a ``new_forward`` must
    be detached after every hook attached later on its module (nest the contexts)."""
    done: list[tuple[nn.Module, str]] = []
    try:
        for module, name, hook in hooks:
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
            done.append((module, name))
        yield
    finally:
        for module, name in reversed(done):
            module._diffusers_hook.remove_hook(name, recurse=False)
            _forget_registry(module)


def named_hooks(module: nn.Module) -> list[str]:
    """The names of the hooks attached to ``module`` and its submodules (``attached``), outermost module first."""
    return [f"{path}:{name}" if path else name for path, sub in module.named_modules()
            for name in getattr(getattr(sub, "_diffusers_hook", None), "hooks", {})]


def _forget_registry(module: nn.Module) -> None:
    """Once a module's registry is empty, leave the module as it was: its class's ``forward``, no registry.

    Removing a registry's last hook puts the module's own bound ``forward`` back as an instance attribute; a
    ``forward`` that another library put there (an offloading wrapper, say) is another function and stays."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or registry.hooks:
        return
    forward = module.__dict__.get("forward")
    if getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is type(module).forward:
        del module.forward
    del module._diffusers_hook
