"""app.py, the Spaces entry: builds the app on the default model; uses spaces.GPU only when it is importable."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import gradio as gr

APP = Path(__file__).resolve().parent.parent / "app.py"


def load_app_module(monkeypatch, engine, spaces_module):
    """Import app.py afresh with a stand-in engine loader (the toy model may not be built) and a given `spaces`."""
    import paint_app.engine

    asked = []
    monkeypatch.setattr(paint_app.engine, "load_engine", lambda model, saes, device: asked.append(model) or engine)
    monkeypatch.setitem(sys.modules, "spaces", spaces_module)
    monkeypatch.delenv("PAINT_APP_MODEL", raising=False)
    spec = importlib.util.spec_from_file_location("spaces_app_under_test", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, asked


def test_app_uses_spaces_gpu_when_present(monkeypatch, tiny_engine):
    wrapped = []

    def gpu(fn):
        wrapped.append(fn)
        return fn

    module, asked = load_app_module(monkeypatch, tiny_engine, types.SimpleNamespace(GPU=gpu))
    assert asked == ["toy"] and module.GPU is gpu
    assert isinstance(module.demo, gr.Blocks)
    names = {getattr(fn, "__name__", "") for fn in wrapped}
    assert {"start", "generate", "click_image", "pick_concept", "show_heat"} <= names
    assert len(wrapped) >= 10


def test_app_runs_without_spaces(monkeypatch, tiny_engine):
    module, _ = load_app_module(monkeypatch, tiny_engine, None)  # a None entry makes `import spaces` fail
    assert module.GPU is None and isinstance(module.demo, gr.Blocks)
