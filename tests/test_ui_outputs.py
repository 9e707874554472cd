"""Every key a handler returns is an output of each event it is wired to.

Two halves: statically, each wired event's outputs are its handler's ``@outputs`` declaration (plus the boxes it
resets) and name components of the page; dynamically, a scenario calls every wired handler, on good and bad
input, through a wrapper that fails on a key the declaration lacks (``tests/test_ui.py`` runs all its tests through
the same wrapper). A stray key is caught, and on the page becomes the generic warning instead of being dropped.
"""

from __future__ import annotations

import warnings

import gradio as gr
import numpy as np
import pytest
from helpers import checking
from PIL import Image
from test_ui import BLOCK, MID, stroke_value

from paint_app.ui import PaintApp, UndeclaredOutput, build_app, outputs
from paint_app.ui.outputs import check_declared, declared, declared_handlers, guarded, ordered

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def page(tiny_engine, tmp_path_factory) -> gr.Blocks:
    return build_app(tiny_engine, workdir=tmp_path_factory.mktemp("outputs-sessions"))


def wired_handlers(page) -> set[str]:
    return {event.handler for event in page.paint_wiring}


def test_every_event_updates_what_its_handler_declares(page):
    app = page.paint_app
    ids = {block._id for block in page.blocks.values()}
    assert len(page.paint_wiring) == 49  # as many events as the page wires (a forgotten one shows here)
    for event in page.paint_wiring:
        handler = getattr(type(app), event.handler)
        names = declared(handler)
        assert event.outputs[:len(names)] == names, event
        assert set(event.outputs[len(names):]) <= {"mask_upload", "session_upload", "session_download",
                                                   "image_download"}, event
    # the page's dependencies hold exactly the recorded outputs, in that order
    for dependency in page.fns.values():
        wired = [e for e in page.paint_wiring if e.fn is dependency.fn]
        if wired:
            assert [block._id for block in dependency.outputs] == [page.paint_components[n]._id
                                                                 for n in wired[0].outputs]
            assert all(block._id in ids for block in dependency.outputs)
    assert {"start", "canvas_edit", "pick_concept", "download_session", "load_session_file", "find_tiles",
            "fill_icons", "tile_action", "stack_action", "found_action"} <= wired_handlers(page)


def every_handler_once(app: PaintApp, tmp_path) -> None:
    """A tab's life touching every wired handler, with good and bad values."""
    state = app.new_state()
    app.dice()
    app.start(state)
    app.generate(state, "a red circle", "", "x", 4, 0, 64, 64)
    app.generate(state, "a zebra on grass", "", 3, 4, 0, 64, 64)
    app.canvas_edit(state, "not an edit", True)
    app.canvas_edit(state, stroke_value(app, state), True)
    app.canvas_edit(state, stroke_value(app, state), False)
    app.canvas_edit(state, {**stroke_value(app, state), "width": 32}, True)
    app.apply(state)
    app.fill_icons(state)
    app.find_tiles(state, "zebra")
    app.find_tiles(state, "x" * 300)
    app.find_tiles(state, "blue")
    app.fill_icons(state)
    app.tile_action(state, {"action": "pick", "index": 0, "name": state.tiles[0].name, "token": state.tiles_token})
    app.tile_action(state, {"action": "erase", "index": 0, "name": state.tiles[0].name, "token": state.tiles_token})
    app.tile_action(state, {"action": "pick", "index": 0, "name": "nope", "token": -1})
    app.tile_action(state, "not an action")
    app.stack_action(state, {"action": "eye", "layer": state.layers[0].uid, "on": False})
    app.stack_action(state, {"action": "amount", "layer": state.layers[0].uid, "value": 50})
    app.stack_action(state, {"action": "amount", "layer": state.layers[0].uid, "value": 500})
    app.stack_action(state, {"action": "select", "layer": state.layers[0].uid})
    app.stack_action(state, {"action": "delete", "layer": state.layers[-1].uid})
    app.stack_action(state, {"action": "fly", "layer": "x"})
    app.select_layer(state, 7)
    app.add_layer(state)
    app.select_layer(state, 0)
    app.set_mode(state, "paint", True)
    app.set_mode(state, "replace", True)
    app.set_mode(state, "set", True)
    app.set_strength(state, 1e9, True)
    app.set_strength(state, 6, True)
    app.set_step_range(state, 3, 1, True)
    app.set_step_range(state, 1, 3, True)
    app.set_enabled(state, False, True)
    app.set_enabled(state, True, False)
    app.set_keep_outside(state, False, True)
    picture = tmp_path / "mask.png"
    Image.new("L", (80, 64), 255).save(picture)
    app.upload_mask(state, str(picture), True)
    app.upload_mask(state, str(tmp_path / "missing.png"), True)
    app.nudge(state, "right", 0, True)
    app.nudge(state, "right", 4, True)
    app.reset_offset(state, True)
    app.click_image(state, 10, 30, "inspect", True)
    app.click_image(state, 40, 20, "move", True)
    app.search(state, "zebra", "all blocks", "features")
    rows = app.search(state, "blue", "all blocks", "features")["palette_table"]
    app.pick_concept(state, ["feature", BLOCK, "x"], True)
    app.pick_concept(state, rows[0], True)
    app.preview(state)
    table = app.click_image(state, 10, 30, "inspect", True)["inspect_table"]
    app.found_action(state, {"action": "more", "index": 0, "name": state.found[0].name, "token": state.found_token})
    app.found_action(state, {"action": "erase", "index": 0, "name": state.found[0].name, "token": state.found_token})
    app.found_action(state, {"action": "erase", "index": 99, "name": "x", "token": state.found_token})
    app.show_heat(state, ["x"])
    app.show_heat(state, table[0])
    app.layer_from_selected(state, "paint", True)
    app.layer_from_selected(state, "erase", True)
    key = app.factor_choices()[0][1]
    weights = app.pick_factor(state, key)["factor_weights"]
    app.pick_factor(state, "nope")
    app.save_factor(state, key, weights, "")
    app.save_factor(state, key, weights, "my mix")
    app.clear_layer(state, True)
    app.delete_layer(state, True)
    app.download_session(app.new_state())
    app.download_image(app.new_state())
    saved = app.download_session(state)["session_download"]
    assert app.download_image(state)["image_download"].endswith(".png")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    app.load_session_file(state, str(broken))
    app.load_session_file(state, saved)
    app.pick_concept(state, ["feature", MID, 1, "blue thing", ""], True)
    app.find_parts(app.new_state(), None, 3)  # no image yet
    app.find_parts(state, None, 9)
    app.find_parts(state, BLOCK, 2)
    app.part_action(state, {"action": "pick", "index": 0, "name": state.parts[0].name, "token": state.parts_token})
    app.part_action(state, {"action": "pick", "index": 5, "name": "x", "token": state.parts_token})
    app.stack_action(state, {"action": "scale", "layer": state.layers[-1].uid, "value": 0})
    app.stack_action(state, {"action": "copy", "layer": state.layers[-1].uid, "on": True})
    gains = app.edit_part(state)["factor_weights"]
    app.apply_gains(state, [[gains[0][0], gains[0][1], 2.0]], True)
    app.apply_gains(state, [[99999, "", 2.0]], True)
    app.edit_part(app.new_state())
    app.refresh_parts(state, BLOCK, 2)
    app.generate(state, "a red circle", "", 4, 4, 0, 64, 64)
    app.refresh_parts(state, BLOCK, 2)


def test_every_wired_handler_returns_only_declared_outputs(page, tiny_engine, tmp_path):
    app = checking(PaintApp(tiny_engine, tmp_path / "sessions"))
    called: set[str] = set()
    for name in declared_handlers(PaintApp):
        checked = getattr(app, name)

        def recording(*args, _checked=checked, _name=name, **kwargs):
            called.add(_name)
            return _checked(*args, **kwargs)

        setattr(app, name, recording)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        every_handler_once(app, tmp_path)  # raises UndeclaredOutput on a stray key
    assert wired_handlers(page) <= called, wired_handlers(page) - called


def test_a_stray_key_is_caught_and_becomes_the_generic_warning(page, monkeypatch):
    """The check can fail: a handler returning a key it did not declare."""
    app = page.paint_app

    @outputs("palette_table", "status")
    def search(self, state, text, block, kind):
        return {"palette_table": [], "status": "", "palete_table": []}  # a typo'd key

    monkeypatch.setattr(PaintApp, "search", search)
    with pytest.raises(UndeclaredOutput, match="search returned palete_table, which its outputs"):
        checking(PaintApp(app.engine, app.workdir)).search(app.new_state(), "", None, "features")
    with pytest.raises(UndeclaredOutput, match="palete_table"):
        ordered({"palete_table": []}, ("palette_table", "status"))
    with pytest.warns(UserWarning, match="Something went wrong \\(UndeclaredOutput: search returned palete_table"):
        result = guarded(search.__get__(app), app.new_state(), "", None, "features",
                         names=declared(search))
    assert set(result) == {"status"} and "kept" in result["status"]
    assert check_declared({"status": ""}, ("status",)) == {"status": ""}


def test_the_wired_function_turns_a_stray_key_into_a_warning(tiny_engine, tmp_path, monkeypatch):
    @outputs("palette_table", "status")
    def search(self, state, text, block, kind):
        return {"palette_table": [], "stray": 1}

    monkeypatch.setattr(PaintApp, "search", search)
    page = build_app(tiny_engine, workdir=tmp_path)
    wired = next(e for e in page.paint_wiring if e.trigger == "search.click")
    with pytest.warns(UserWarning, match="UndeclaredOutput: search returned stray"):
        values = wired.fn(page.paint_app.new_state(), "blue", "all blocks", "features")
    assert len(values) == 2 and "Something went wrong" in values[1]  # the table skipped, the status says why
    assert not isinstance(values[0], list) and np.ndim(values[0]) == 0
