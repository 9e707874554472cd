"""Wiring events to handlers with the outputs each handler declares (``@outputs``), recording every event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from .handlers import PaintApp
from .outputs import check_declared, declared, guarded, ordered

Trigger = str | tuple[str, Callable]  # "component.event" ("page.load"), or (a name for it, a listener)


@dataclass(frozen=True)
class Wired:
    """One wired event: its trigger (``component.event``), the handler's name and the event's outputs."""

    trigger: str
    handler: str
    outputs: tuple[str, ...]
    fn: Callable | None = field(default=None, compare=False, repr=False)  # what gradio calls (for tests)


class Wiring:
    """Wires events to ``PaintApp``'s handlers with the outputs each handler declares, and records them."""

    def __init__(self, blocks: gr.Blocks, app: PaintApp, C: dict[str, Any],
                 gpu: Callable[[Callable], Callable] | None) -> None:
        self.blocks, self.app, self.C, self.gpu = blocks, app, C, gpu
        self.events: list[Wired] = []

    def call(self, name: str, engine: bool = True) -> Callable:
        """The handler ``name`` of the app (as bound now), wrapped by ``gpu`` when it runs the model."""
        method = getattr(self.app, name)
        return self.gpu(method) if engine and self.gpu is not None else method

    def outputs_of(self, name: str, reset: tuple[str, ...] = ()) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*declared(getattr(type(self.app), name)), *reset)))

    def wire(self, trigger: Trigger, name: str, inputs: list[str], *, live: bool = False, engine: bool = True,
             bind: tuple = (), reset: tuple[str, ...] = (), **options):
        """Wire ``trigger`` to handler ``name``, called with the values of ``inputs``: with ``live``, the last is
        the "apply on button" box, passed on as ``live``; ``bind`` values go after the first. ``reset`` outputs
        are set to None unless the handler returns them (an upload box emptied, a stale download dropped)."""
        call, handled, names = self.call(name, engine), self.outputs_of(name), self.outputs_of(name, reset)

        def handler(*values):
            args = list(values)
            if live:
                args[-1] = not args[-1]
            args[1:1] = bind
            return shaped({**dict.fromkeys(reset), **guarded(call, *args, names=handled)}, names)

        return self.listen(trigger, name, handler, inputs, names, engine, **options)

    def respond(self, trigger: Trigger, name: str, adapt: Callable[[Callable], Callable], inputs: list[str],
                **options):
        """Wire a handler that reads the event's data: ``adapt(run)`` is the function gradio calls (with the
        values of ``inputs`` and the event), which calls ``run`` with the handler's arguments."""
        call, names = self.call(name), self.outputs_of(name)
        fn = adapt(lambda *args: shaped(guarded(call, *args, names=names), names))
        return self.listen(trigger, name, fn, inputs, names, True, **options)

    def stream(self, name: str, inputs: list[str], engine: bool = True) -> tuple[Callable, list, list]:
        """A generator handler's (function, inputs, outputs) for ``then``, each yielded result checked against its
        declaration (``@outputs``) like a handler's, and recorded as the event ``<name>.stream``."""
        call, names = self.call(name, engine), self.outputs_of(name)

        def handler(*args):
            try:
                for result in call(*args):
                    yield shaped(check_declared(result, names, name), names)
            except Exception as exc:  # noqa: BLE001 - as ``guarded``: a warning, never a dead page
                yield shaped(guarded(_raise, exc, names=names), names)

        missing = [n for n in (*inputs, *names) if n not in self.C]
        if missing:
            raise KeyError(f"handler {name} is wired to {missing}, which the page has no component for")
        self.events.append(Wired(f"{name}.stream", name, names, handler))
        return handler, [self.C[n] for n in inputs], [self.C[n] for n in names]

    def listen(self, trigger: Trigger, name: str, fn: Callable, inputs: list[str], names: tuple[str, ...],
               engine: bool, **options):
        missing = [n for n in (*inputs, *names) if n not in self.C]
        if missing:
            raise KeyError(f"handler {name} is wired to {missing}, which the page has no component for")
        if isinstance(trigger, str):
            component, event = trigger.rsplit(".", 1)
            label, listener = trigger, getattr(self.blocks if component == "page" else self.C[component], event)
        else:
            label, listener = trigger
        self.events.append(Wired(label, name, names, fn))
        options = {**({"concurrency_id": "engine", "concurrency_limit": 1} if engine else {}),
                   "show_progress": "minimal", **options}
        return listener(fn, inputs=[self.C[n] for n in inputs], outputs=[self.C[n] for n in names], **options)


def shaped(result: dict, names: tuple[str, ...]) -> Any:
    """``ordered``, as gradio takes it: the one value itself for an event with one output, else the list."""
    values = ordered(result, names)
    return values[0] if len(names) == 1 else values


def _raise(exc: Exception) -> None:
    raise exc


__all__ = ["Trigger", "Wired", "Wiring"]
