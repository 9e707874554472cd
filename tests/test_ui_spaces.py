"""app.py, the Spaces entry: builds the app on PAINT_APP_MODEL with PAINT_APP_SAE; uses spaces.GPU (with a duration
sized to the model) only when it is importable. tests/test_space.py runs it for real in a fresh venv."""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest

APP = Path(__file__).resolve().parent.parent / "app.py"


def load_app_module(monkeypatch, engine, spaces_module, env: dict | None = None):
    """Import app.py afresh with stand-in loaders (the engine given; no model is loaded) and a given `spaces`."""
    import paint_app.concepts
    import paint_app.models

    asked = []
    monkeypatch.setattr(paint_app.models, "load_model", lambda model, device: asked.append(model) or engine.model)
    monkeypatch.setattr(paint_app.concepts.ConceptLibrary, "load",
                        classmethod(lambda cls, paths, profile, device: asked.append(paths) or engine.concepts))
    monkeypatch.setitem(sys.modules, "spaces", spaces_module)
    for key in ("PAINT_APP_MODEL", "PAINT_APP_SAE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("spaces_app_under_test", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, asked


def test_app_uses_spaces_gpu_when_present(monkeypatch, tiny_engine):
    wrapped, durations = [], []

    def gpu(fn=None, *, duration=60):
        durations.append(duration)

        def wrap(fn):
            wrapped.append(fn)
            return fn
        return wrap

    module, asked = load_app_module(monkeypatch, tiny_engine, types.SimpleNamespace(GPU=gpu))
    assert asked == ["toy", []]  # the toy, with its own SAEs
    assert durations == [module.gpu_seconds(tiny_engine.model.profile)]
    assert isinstance(module.demo, gr.Blocks)
    names = {getattr(fn, "__name__", "") for fn in wrapped}
    assert {"start", "generate", "click_image", "pick_concept", "show_heat"} <= names
    assert len(wrapped) >= 10


def test_app_runs_without_spaces_on_the_model_and_saes_named(monkeypatch, tiny_engine):
    env = {"PAINT_APP_MODEL": "tiny-random-sd", "PAINT_APP_SAE": " saepaint, hf://o/r/sub ,/x/y,"}
    module, asked = load_app_module(monkeypatch, tiny_engine, None, env)  # a None entry makes `import spaces` fail
    assert module.GPU is None and isinstance(module.demo, gr.Blocks)
    assert asked == ["tiny-random-sd", ["saepaint", "hf://o/r/sub", "/x/y"]]


def test_gpu_seconds_grow_with_steps_size_and_guidance_within_zerogpu_bounds(monkeypatch, tiny_engine):
    from paint_app.models import PROFILES

    seconds = load_app_module(monkeypatch, tiny_engine, None)[0].gpu_seconds
    turbo = PROFILES["stabilityai/sdxl-turbo"]
    sd15 = replace(turbo, steps=30, guidance=7.5)
    assert seconds(turbo) == 15  # 1 step, no guidance: the floor
    assert seconds(sd15) == 106  # 10 s + 16 images x 30 steps x 2 (guidance) x 0.1 s
    assert seconds(replace(sd15, width=1024, height=1024)) == 120  # the ceiling


def test_saes_that_cannot_be_served_stop_app_py_with_what_is_allowed(monkeypatch, toy):
    monkeypatch.setenv("PAINT_APP_SAE", "/no/such/saes")
    monkeypatch.delenv("PAINT_APP_MODEL", raising=False)
    spec = importlib.util.spec_from_file_location("spaces_app_bad_saes", APP)
    with pytest.raises(SystemExit) as stopped:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    message = str(stopped.value.code)
    assert message.startswith("app.py: PAINT_APP_SAE='/no/such/saes' cannot be served with 'toy': --sae "
                              "'/no/such/saes': not a folder")
    assert message.endswith("Allowed: comma-separated presets, hf:// URIs or SAE folders, or unset for the "
                            "model's own SAEs")
