"""The painter's page as Python: concept tiles (search, pick, erase, pictures), the layer stack (select, eye,
amount, delete) and the inspector's concepts ("erase this here", "paint more of this"), on tiny-random-sd (SAEs
with labels and factors but no recipes) and, where a measured recipe matters, on the toy model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_ui import BLOCK, MID, painted, pixels

from paint_app.painting import Choice, Concept
from paint_app.ui import TabState

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def click(state: TabState, name: str, action: str = "pick") -> dict:
    """What the tile grid sends when the tile named ``name`` (or its erase button) is clicked."""
    index = [tile.name for tile in state.tiles].index(name)
    return {"action": action, "index": index, "name": name, "token": state.tiles_token}


def test_start_shows_every_concept_as_a_tile_and_the_stack(app, state):
    result = app.start(app.new_state())
    names = [tile["name"] for tile in result["tiles"]["tiles"]]
    assert {"red thing", "blue thing", "striped"} <= set(names)
    tile = result["tiles"]["tiles"][names.index("red thing")]
    assert tile["paintable"] and not tile["measured"] and tile["note"].startswith("not measured")
    assert result["tiles"]["pending"] == sum(t["icon"] is None and t["paintable"] for t in result["tiles"]["tiles"])
    stack = result["stack"]
    assert [row["name"] for row in stack["layers"]] == [state.layers[0].name]
    assert stack["layers"][0]["amount"] == 100 and stack["layers"][0]["enabled"] and stack["layers"][0]["active"]


def test_a_search_lists_the_tiles_for_a_word_and_says_what_to_try_when_none(app, state):
    result = app.find_tiles(state, "  blue ")
    assert [tile["name"] for tile in result["tiles"]["tiles"]] == ["blue thing"]
    assert result["tiles"]["query"] == "blue" and "1 concept for 'blue'" in result["status"]
    result = app.find_tiles(state, "zebra")
    assert result["tiles"]["tiles"] == [] and "No concept matches 'zebra'. Try: " in result["tiles"]["empty"]
    assert "red thing" in result["tiles"]["empty"]
    with pytest.warns(UserWarning, match="concept search is 300 characters; allowed: at most 200"):
        result = app.find_tiles(state, "x" * 300)
    assert set(result) == {"status"} and state.tiles_query == "zebra"


def test_pictures_are_made_lazily_streamed_and_cached(app, state):
    app.cache._icons.clear()  # as on a fresh engine
    grid = app.find_tiles(state, "thing")["tiles"]
    assert grid["pending"] == 2 and all(tile["icon"] is None for tile in grid["tiles"])  # names first
    waiting = app.new_state()  # a tab that opened meanwhile: its grid was sent with the pictures pending
    assert app.find_tiles(waiting, "thing")["tiles"]["pending"] == 2
    streamed = app.fill_icons(state)
    assert streamed and streamed[-1]["tiles"]["pending"] == 0 and "stack" in streamed[-1]  # layers show them too
    icons = [tile["icon"] for tile in streamed[-1]["tiles"]["tiles"]]
    assert all(icon.startswith("data:image/png;base64,") for icon in icons)
    sent = app.fill_icons(waiting)  # made once per engine: nothing left to make, the waiting tab gets them
    assert len(sent) == 1 and sent[0]["tiles"]["pending"] == 0 and "stack" in sent[0]
    other = app.new_state()
    app.find_tiles(other, "thing")
    assert app.tile_grid(other)["pending"] == 0  # another tab shows them at once


def test_an_icon_is_the_tiles_edit_over_the_middle_of_the_neutral_scene(app):
    tile = app.engine.concepts.tiles("red thing", profile=app.profile)[0]
    icon = app.cache.icon(tile)
    plain = app.engine.generate(app.cache.neutral_settings()).convert("RGB")
    crop = plain.crop((8, 8, 56, 56))
    assert icon.size == crop.size == (48, 48)
    changed = np.abs(pixels(icon) - pixels(crop)).max(axis=2) > 0
    assert changed[12:36, 12:36].any() and not changed[:6].any() and not changed[:, :6].any()  # the rest kept


def test_picking_a_tile_paints_its_edit_on_the_active_layer(app, state):
    painted(app, state)
    app.find_tiles(state, "blue")
    tile = state.tiles[0]
    result = app.tile_action(state, click(state, "blue thing"), True)
    layer = state.layers[0]
    assert layer.concept == tile.choice.concept and layer.name == "blue thing"
    recipe = tile.choice.recipe
    assert (layer.mode, layer.strength, layer.step_range) == (recipe.mode, recipe.strength, recipe.step_range)
    assert "output" in result and result["stack"]["layers"][0]["name"] == "blue thing"
    state.layers.clear()
    state.active = -1
    app.tile_action(state, click(state, "blue thing"), True)  # no layer: a new one
    assert len(state.layers) == 1 and state.layers[0].concept == tile.choice.concept


def test_a_tiles_measured_recipe_sets_mode_strength_and_fitted_steps(app, state):
    from sae.recipes import Edit, Recipes

    entry = app.engine.concepts.blocks[BLOCK]
    entry.recipes = Recipes({"striped": [Edit("set", feature=2, strength=7.0, step_range=[1, 3], score=0.75)],
                             "red thing": [Edit("add", factor=1, strength=4.0, step_range=[2, 99], score=0.5)]})
    try:
        app.find_tiles(state, "")
        names = [tile.name for tile in state.tiles]
        assert names[:2] == ["striped", "red thing"]  # measured first, by score
        assert state.tiles[0].measured and "75%" in state.tiles[0].note
        app.tile_action(state, click(state, "striped"), True)
        layer = state.layers[0]
        assert (layer.concept, layer.mode, layer.strength, layer.step_range) == (Concept(BLOCK, feature=2), "set",
                                                                               7.0, (1, 3))
        result = app.tile_action(state, click(state, "red thing"), True)  # steps past the session's: every step
        assert (layer.concept, layer.mode, layer.strength, layer.step_range) == (Concept(BLOCK, factor=1), "add",
                                                                               4.0, None)
        assert "judged right in 50%" in result["status"]
    finally:
        entry.recipes = None


def test_erasing_a_tile_is_a_new_erase_layer_of_its_concept(app, state):
    painted(app, state)
    first = state.layers[0]
    app.find_tiles(state, "red")
    result = app.tile_action(state, click(state, "red thing", "erase"), True)
    assert len(state.layers) == 2 and state.active == 1 and state.layers[0] is first
    layer = state.layers[1]
    assert layer.mode == "erase" and layer.name == "erase red thing" and layer.strength >= 0
    assert layer.concept == state.tiles[0].choice.concept and layer.is_empty()
    assert result["editor"]["layer"] == layer.uid and result["stack"]["layers"][1]["sub"] == "erase · nothing painted"
    painted(app, state)  # painting the erase layer repaints
    assert not layer.is_empty()


@pytest.mark.parametrize("data, message", [
    ("pick", "concept tile: expected an object, got str"),
    ({"action": "paint"}, "concept tile: 'action' is 'paint'; allowed: pick, erase"),
    ({"action": "pick", "index": 0, "name": "red thing", "token": 999}, "'token' is 999 but the tiles shown now"),
    ({"action": "pick", "index": 99, "name": "red thing", "token": None}, "'index' is 99; allowed: a whole number"),
    ({"action": "pick", "index": 0, "name": "green", "token": None}, "'name' is 'green'; the tile there is"),
])
def test_bad_tile_clicks_warn_and_keep_the_layers(app, state, data, message):
    painted(app, state)
    app.find_tiles(state, "red thing")
    if isinstance(data, dict) and data.get("token") is None:
        data = {**data, "token": state.tiles_token}
    before = [(layer.concept, layer.mode) for layer in state.layers]
    with pytest.warns(UserWarning, match=message):
        result = app.tile_action(state, data, True)
    assert set(result) == {"status"} and "layers are kept" in result["status"]
    assert [(layer.concept, layer.mode) for layer in state.layers] == before


def test_an_unpaintable_tile_says_why_and_cannot_be_picked(app, state, monkeypatch):
    from paint_app.concepts import ConceptLibrary, Tile

    blocked = Tile("glass", Choice(Concept(BLOCK, feature=5), "glass"), False, "cannot be painted", False,
                   "no recipe or feature")
    original = ConceptLibrary.tiles
    monkeypatch.setattr(ConceptLibrary, "tiles", lambda self, *a, **k: [blocked, *original(self, *a, **k)])
    grid = app.find_tiles(state, "")["tiles"]
    assert grid["tiles"][0] == {"name": "glass", "note": "cannot be painted", "measured": False, "paintable": False,
                                "why_not": "no recipe or feature", "icon": None}
    assert all(sent == {} or sent["tiles"]["tiles"][0]["icon"] is None for sent in app.fill_icons(state))
    with pytest.warns(UserWarning, match="'glass' cannot be painted on this model: no recipe or feature"):
        result = app.tile_action(state, click(state, "glass"), True)
    assert set(result) == {"status"} and state.layers[0].concept != blocked.choice.concept


def test_the_users_own_concepts_are_tiles(app, state):
    key = app.factor_choices()[0][1]
    rows = app.pick_factor(state, key)["factor_weights"]
    result = app.save_factor(state, key, [[rows[0][0], "", 2.0]], "my mix")
    assert result["tile_search"] == "my mix" and [t["name"] for t in result["tiles"]["tiles"]] == ["my mix"]
    app.tile_action(state, click(state, "my mix"), True)
    assert state.layers[0].concept == Concept.of_mix(BLOCK, {rows[0][0]: 2.0}) and state.layers[0].mode == "add"


def test_the_stack_selects_switches_off_sets_the_amount_and_deletes(app, state):
    painted(app, state)
    first, full = state.layers[0], state.output
    app.add_layer(state)
    second = state.layers[1]
    result = app.stack_action(state, {"action": "select", "layer": first.uid}, True)
    assert state.active == 0 and result["editor"]["layer"] == first.uid and result["stack"]["active"] == first.uid
    result = app.stack_action(state, {"action": "amount", "layer": first.uid, "value": 40}, True)
    assert first.amount == pytest.approx(0.4) and result["stack"]["layers"][0]["amount"] == 40
    half = state.output
    assert np.abs(pixels(half) - pixels(full)).max() > 0 and np.abs(pixels(half) - pixels(state.base)).max() > 0
    result = app.stack_action(state, {"action": "eye", "layer": first.uid, "on": False}, True)
    assert not first.enabled and result["output"] is state.base and result["stack"]["layers"][0]["enabled"] is False
    assert "editor" in result  # the canvas shows the layers that are on
    app.stack_action(state, {"action": "eye", "layer": first.uid, "on": True}, True)
    app.stack_action(state, {"action": "amount", "layer": first.uid, "value": 100}, True)
    assert np.array_equal(pixels(state.output), pixels(full))
    result = app.stack_action(state, {"action": "delete", "layer": second.uid}, True)  # not the active one
    assert state.layers == [first] and state.active == 0 and [r["id"] for r in result["stack"]["layers"]] == [first.uid]
    app.stack_action(state, {"action": "delete", "layer": first.uid}, True)
    assert state.layers == [] and state.active == -1 and state.output is state.base


@pytest.mark.parametrize("data, message", [
    (["eye"], "layer stack: expected an object, got list"),
    ({"action": "hide", "layer": "x"}, "'action' is 'hide'; allowed: select, eye, amount, delete"),
    ({"action": "eye", "layer": "gone", "on": False}, "'layer' is 'gone'; allowed: the id of one of the 1 layers"),
    ({"action": "eye", "layer": None, "on": "no"}, "'on' is 'no'; allowed: true or false"),
    ({"action": "amount", "layer": None, "value": 120}, "'value' is 120; allowed: a number from 0 to 100"),
    ({"action": "amount", "layer": None, "value": "lots"}, "'value' is 'lots'"),
])
def test_bad_stack_actions_warn_and_keep_the_layers(app, state, data, message):
    painted(app, state)
    if isinstance(data, dict) and data.get("layer") is None:
        data = {**data, "layer": state.layers[0].uid}
    with pytest.warns(UserWarning, match=message):
        result = app.stack_action(state, data, True)
    assert set(result) == {"status", "stack"} and state.layers[0].enabled and state.layers[0].amount == 1.0


def test_the_inspector_shows_concepts_as_tiles_and_erases_or_paints_more_in_one_click(app, state):
    painted(app, state)
    result = app.click_image(state, 10, 30, "inspect", True)
    found = result["found"]
    assert found["items"] and found["items"][0]["name"] == "red thing" and found["items"][0]["value"].endswith("typical")
    assert len({item["name"] for item in found["items"]}) == len(found["items"])  # one per name
    assert result["inspect_table"]  # the tables stay, under Advanced
    item = state.found[0]
    assert item.region.shape == (64, 64) and item.region[:, :20].mean() > 0.3
    before = state.output
    erase = app.found_action(state, {"action": "erase", "index": 0, "name": "red thing", "token": found["token"]}, True)
    layer = state.layers[-1]
    assert layer.mode == "erase" and layer.name == "erase red thing" and layer.concept == Concept(BLOCK, feature=0)
    assert np.array_equal(layer.mask, item.region) and "output" in erase
    assert np.abs(pixels(state.output) - pixels(before)).max() > 0
    more = app.found_action(state, {"action": "more", "index": 0, "name": "red thing", "token": found["token"]}, True)
    layer = state.layers[-1]
    tile = app.engine.concepts.tiles("red thing", profile=app.profile)[0]
    assert layer.name == "more red thing" and layer.concept == tile.choice.concept and layer.mode == "add"
    assert np.array_equal(layer.mask, item.region) and more["stack"]["active"] == layer.uid
    with pytest.warns(UserWarning, match="inspector: 'token' is 0 but the concepts shown now are"):
        app.found_action(state, {"action": "erase", "index": 0, "name": "red thing", "token": 0}, True)
    with pytest.warns(UserWarning, match="inspector: 'action' is 'zap'; allowed: erase, more"):
        app.found_action(state, {"action": "zap"}, True)


def test_an_empty_prompt_paints(app, state):
    result = app.generate(state, "", "", 0, 4, 0, 64, 64)
    assert "output" in result and state.settings.prompt == ""
    app.find_tiles(state, "red")
    app.tile_action(state, click(state, "red thing"), True)
    before = state.output
    result = painted(app, state)
    assert "Repainted in" in result["timing"] and np.abs(pixels(state.output) - pixels(before)).max() > 0


def test_the_layer_amount_travels_with_the_session(app, state):
    painted(app, state)
    app.stack_action(state, {"action": "amount", "layer": state.layers[0].uid, "value": 55}, True)
    other = app.new_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app.start(other)
    app.load_session_file(other, app.session_file(state))
    assert other.layers[0].amount == pytest.approx(0.55)
    assert np.array_equal(pixels(other.output), pixels(state.output))
    assert MID in app.block_choices()
