"""Concepts in this image, called as Python: find the image's parts, pick one (a move layer, selected, the canvas on
the Move tool showing its map), pick it again (no second layer), drag it with the canvas's move edit, scale,
copy and erase it from its stack row; bad input warns naming the field and keeps the painting; a session with
parts reloads. On tiny-random-sd, and on the toy, where a red circle the model drew moves, is copied and is erased."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_ui import BLOCK

from paint_app.decompose import DEFAULT_PARTS
from paint_app.toyworld.judges import classify_pixels, colour_fractions
from paint_app.toyworld.world import COLOUR_NAMES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pick(app, state, index: int = 0, live: bool = True) -> dict:
    part = state.parts[index]
    return app.part_action(state, {"action": "pick", "index": index, "name": part.name, "token": state.parts_token},
                           live)


def drag(app, state, offset: tuple[int, int]) -> dict:
    """The canvas's edit after dragging the active layer with the Move tool."""
    width, height = app.size(state)
    return app.canvas_edit(state, {"kind": "move", "layer": state.active_layer().uid, "width": width,
                                   "height": height, "offset": list(offset), "mask": None}, True)


def snapshot(state) -> tuple:
    return ([(layer.uid, layer.mode, layer.strength, layer.offset, layer.mask.tobytes()) for layer in state.layers],
            state.active, state.output, state.parts_token)


def test_bad_input_warns_naming_the_field_and_keeps_the_painting(app, state):
    fresh = app.new_state()
    with pytest.warns(UserWarning, match="image: there is none yet"):
        result = app.find_parts(fresh, None, 4)
    assert set(result) == {"status"} and fresh.parts == [] and fresh.layers == []
    before = snapshot(state)
    for block, count, message in ((None, 9, "parts is 9; allowed: a whole number from 2 to 8"),
                                  (None, 1, "parts is 1; allowed"), (None, "two", "parts is 'two'"),
                                  (None, 2.5, "parts is 2.5"), ("nope", 3, "block is 'nope'; allowed: down_blocks")):
        with pytest.warns(UserWarning, match=message):
            result = app.find_parts(state, block, count)
        assert set(result) == {"status"} and "kept" in result["status"]
        assert snapshot(state) == before
    with pytest.warns(UserWarning, match="'token' is 7"):
        app.part_action(state, {"action": "pick", "index": 0, "name": "x", "token": 7})
    assert snapshot(state) == before


def test_parts_are_listed_picked_as_a_move_layer_once_and_dragged(app, state):
    plain, layers = state.output, len(state.layers)
    result = app.find_parts(state, BLOCK, 3)
    strip = result["parts"]
    assert len(state.parts) == 3 == len(strip["parts"]) and strip["token"] == state.parts_token
    assert all(item["name"] and item["icon"].startswith("data:image/png") and not item["picked"]
               for item in strip["parts"])
    assert BLOCK in strip["head"] and state.parts_key[1:] == (BLOCK, 3)
    part = state.parts[0]
    result = pick(app, state, 0)
    layer = state.active_layer()
    assert len(state.layers) == layers + 1 and state.active == len(state.layers) - 1
    assert layer.mode == "move" and layer.strength == 1.0 and layer.offset == (0, 0) and not layer.copy
    # named after the part (numbered when another layer has that name already)
    assert layer.name in (part.name, *(f"{part.name} ({n})" for n in range(2, 9))) and layer.concept.block == BLOCK
    assert np.array_equal(layer.mask, part.mask(*app.size(state)))
    assert result["editor"]["tool"] == "move" and result["editor"]["layer"] == layer.uid  # the canvas shows its map
    assert result["parts"]["parts"][0]["picked"]
    row = next(row for row in result["stack"]["layers"] if row["id"] == layer.uid)
    assert row["scale"] == 1.0 and row["copy"] is False and row["icon"].startswith("data:image/png")
    assert state.output is plain  # as drawn: nothing to repaint
    # picking it again selects its layer; no second one
    app.select_layer(state, 0)
    result = pick(app, state, 0)
    assert len(state.layers) == layers + 1 and state.active_layer() is layer and result["editor"]["tool"] == "move"
    # dragged with the Move tool: the image follows
    width, height = app.size(state)
    result = drag(app, state, (width // 2, height // 3))
    assert layer.offset == (width // 2, height // 3) and "output" in result
    assert np.abs(np.asarray(state.output, np.int16) - np.asarray(plain, np.int16)).max() > 0
    moved = state.output
    # its stack row: scale 0 erases (another image), copy keeps it where it was too
    result = app.stack_action(state, {"action": "scale", "layer": layer.uid, "value": 0})
    assert layer.strength == 0.0 and "erased" in result["status"] and state.output is not moved
    assert "scale 0" in result["layer_info"]
    app.stack_action(state, {"action": "scale", "layer": layer.uid, "value": 1})
    result = app.stack_action(state, {"action": "copy", "layer": layer.uid, "on": True})
    assert layer.copy and next(r for r in result["stack"]["layers"] if r["id"] == layer.uid)["copy"] is True
    with pytest.warns(UserWarning, match="'value' is 9; allowed: a scale from 0"):
        app.stack_action(state, {"action": "scale", "layer": layer.uid, "value": 9})
    with pytest.warns(UserWarning, match="'action' is 'copy' but layer .* is not a part"):
        app.stack_action(state, {"action": "copy", "layer": state.layers[0].uid, "on": True})
    assert layer.strength == 1.0 and state.layers[0].mode != "move"


def test_a_session_with_parts_reloads_with_its_move_layers(app, state):
    app.find_parts(state, BLOCK, 2)
    pick(app, state, 1)
    layer = state.active_layer()
    drag(app, state, (16, 0))
    app.stack_action(state, {"action": "copy", "layer": layer.uid, "on": True})
    app.stack_action(state, {"action": "scale", "layer": layer.uid, "value": 1.5})
    shown = np.asarray(state.output)
    saved = app.download_session(state)["session_download"]
    again = app.new_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app.start(again)
    result = app.load_session_file(again, saved)
    loaded = again.layers[-1]
    assert (loaded.mode, loaded.offset, loaded.strength, loaded.copy, loaded.name) == ("move", (16, 0), 1.5, True,
                                                                                       layer.name)
    assert np.array_equal(loaded.mask, layer.mask) and np.array_equal(np.asarray(again.output), shown)
    assert next(r for r in result["stack"]["layers"] if r["id"] == loaded.uid)["scale"] == 1.5


def test_refresh_follows_a_new_image_only_once_parts_were_shown(app, state):
    assert app.refresh_parts(state, BLOCK, 2) == {}  # never asked for: nothing made
    app.find_parts(state, BLOCK, 2)
    assert app.refresh_parts(state, BLOCK, 2) == {}  # the same image: the same parts
    token = state.parts_token
    app.generate(state, "", "", 5, 4, 0, 64, 64)
    result = app.refresh_parts(state, BLOCK, 2)
    assert state.parts_token == token + 1 and len(result["parts"]["parts"]) == 2 and "status" not in result


# -- the toy: the model drew a red circle at the top left --------------------------------------------------------


@pytest.fixture(scope="module")
def toy_app(tmp_path_factory):
    from paint_app.engine import load_engine
    from paint_app.ui import PaintApp

    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield PaintApp(load_engine("toy", [], "cpu"), tmp_path_factory.mktemp("toy-parts"))
    mp.undo()


def test_on_the_toy_a_drawn_circle_moves_is_copied_and_scale_0_erases_it(toy_app):
    app, state = toy_app, toy_app.new_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app.start(state)
        app.generate(state, "a red circle at the top left on grass", "", 0, 8, 3.0, 64, 64)
    red = classify_pixels(np.asarray(state.output)) == COLOUR_NAMES.index("red")
    assert red[:32, :32].sum() > 200 and red[32:, :].sum() + red[:, 32:].sum() < 20  # drawn where asked
    app.find_parts(state, None, DEFAULT_PARTS)  # the page's defaults
    overlap = [(part.mask(64, 64) > 0.25)[red].mean() for part in state.parts]
    pick(app, state, int(np.argmax(overlap)))
    drag(app, state, (32, 32))
    image = np.asarray(state.output)
    there = np.roll(red, (32, 32), axis=(0, 1))
    assert colour_fractions(image, there)["red"] >= 0.7 and colour_fractions(image, red)["red"] <= 0.1
    app.stack_action(state, {"action": "copy", "layer": state.active_layer().uid, "on": True})
    image = np.asarray(state.output)
    assert colour_fractions(image, there)["red"] >= 0.7 and colour_fractions(image, red)["red"] >= 0.7
    app.stack_action(state, {"action": "copy", "layer": state.active_layer().uid, "on": False})
    app.stack_action(state, {"action": "scale", "layer": state.active_layer().uid, "value": 0})
    assert colour_fractions(np.asarray(state.output), red)["background"] >= 0.8


def test_the_inspectors_maps_of_the_plain_image_are_reused(app, state, monkeypatch):
    """Nothing painted: the maps the inspector captured are of the image as generated, so finding its parts makes
    no generation."""
    from paint_app.ui import parts

    assert not state.has_paint()
    app.click_image(state, 10, 30, "inspect", True)
    assert state.maps is not None

    def no_capture(*args, **kwargs):
        raise AssertionError("the image was generated again")

    monkeypatch.setattr(parts, "capture_feature_maps", no_capture)
    result = app.find_parts(state, BLOCK, 2)
    assert len(result["parts"]["parts"]) == 2 and state.parts_maps[1] is state.maps


def test_a_parts_make_up_is_edited_and_applied_back_to_its_layer(app, state):
    """The Factors tab's table holds the selected part's features with their gains; applied, the layer's gains
    change and the image follows; a feature not of the part, or a layer that is no part, is refused."""
    app.find_parts(state, BLOCK, 3)
    pick(app, state, 0)
    layer, before = state.active_layer(), state.output
    rows = app.edit_part(state)["factor_weights"]
    assert [row[0] for row in rows] == list(layer.concept.weights) and all(row[2] == 1.0 for row in rows)
    result = app.apply_gains(state, [[rows[0][0], rows[0][1], 3.0]], True)
    assert state.active_layer() is layer and layer.concept.weights[rows[0][0]] == 3.0
    assert all(w == 1.0 for f, w in layer.concept.weights.items() if f != rows[0][0])
    assert "output" in result and state.output is not before
    kept = dict(layer.concept.weights)
    other = next(f for f in range(app.engine.concepts.get(BLOCK).sae.n_features) if f not in kept)
    with pytest.warns(UserWarning, match=f"feature {other} is not one of part"):
        app.apply_gains(state, [[other, "", 2.0]], True)
    assert layer.concept.weights == kept
    app.add_layer(state)
    with pytest.warns(UserWarning, match="not a part of the image"):
        app.edit_part(state)
