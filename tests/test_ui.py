"""Every handler of the page, called as Python: good input does its job, bad input warns and keeps the painting."""

from __future__ import annotations

import base64
import io
import json
import warnings

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from paint_app import web_canvas
from paint_app.painting import Choice, Concept
from paint_app.session import Session
from paint_app.ui import PaintApp, TabState, build_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BLOCK = "down_blocks.0.attentions.0"
MID = "mid_block.attentions.0"


def canvas_mask(value: dict) -> np.ndarray:
    """The active layer's mask as the canvas shows it, at canvas resolution (uint8, nearest upscaling)."""
    scale, width, height = value["scale"], value["width"], value["height"]
    if value["mask"] is None:
        return np.zeros((height * scale, width * scale), np.uint8)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(value["mask"].split(",", 1)[1]))))
    return np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)


def stroke_value(app: PaintApp, state: TabState, box=(4, 4, 30, 60), alpha=255) -> dict:
    """The page's edit after painting a rectangle (in image pixels) on the active layer at opacity ``alpha``."""
    value = app.editor(state)
    mask = canvas_mask(value)
    x0, y0, x1, y1 = (v * value["scale"] for v in box)
    mask[y0:y1, x0:x1] = alpha
    return {"kind": "stroke", "layer": value["layer"], "width": value["width"], "height": value["height"],
            "offset": value["offset"], "mask": web_canvas.encode_mask(mask)}


def canvas_mask_of(edit: dict) -> np.ndarray:
    """The canvas-resolution mask a stroke edit carries (uint8 [H, W])."""
    mask = edit["mask"]
    return np.frombuffer(base64.b64decode(mask["data"]), np.uint8).reshape(mask["height"], mask["width"])


def pixels(image) -> np.ndarray:
    return np.asarray(image, np.int16)


def painted(app, state) -> dict:
    return app.canvas_edit(state, stroke_value(app, state), True)


def test_start_makes_an_image_a_layer_and_a_palette(app, state):
    assert state.base is not None and state.output is state.base
    assert len(state.layers) == 1 and state.active == 0 and state.layers[0].is_empty()
    fresh = app.new_state()
    result = app.start(fresh)
    assert result["prompt"] == "a red circle on grass" and result["width"] == 64
    assert result["palette_table"][0][:4] == ["feature", BLOCK, 0, "red thing"]
    value = result["editor"]
    assert (value["width"], value["height"], value["scale"]) == (64, 64, 2) and value["layer"] == fresh.layers[0].uid
    background = Image.open(io.BytesIO(base64.b64decode(value["background"].split(",", 1)[1])))
    assert background.size == (64, 64) and canvas_mask(value).shape == (128, 128)


def test_a_stroke_repaints_and_an_unchanged_canvas_does_nothing(app, state):
    result = painted(app, state)
    assert "Repainted in" in result["timing"] and "editor" not in result  # the canvas already shows the stroke
    assert np.abs(pixels(state.output) - pixels(state.base)).max() > 0
    assert state.layers[0].mask[10, 10] == 1.0 and state.layers[0].mask[10, 40] == 0.0
    assert app.canvas_edit(state, stroke_value(app, state), True) == {}
    saved = Session.from_json(open(app.download_session(state)["session_download"]).read())
    assert np.array_equal(pixels(app.engine.generate(saved)), pixels(state.output))


def test_a_soft_stroke_renders_the_same_from_its_downloaded_session(app, state):
    """Masks hold the session file's 256 levels, so a stroke whose canvas pixels average to a level between
    them still renders to the shown pixels from the downloaded session."""
    value = app.editor(state)
    mask = canvas_mask(value)
    mask[8:40, 8:40] = 200
    mask[9:40:2, 9:40:2] = 13  # image pixels of (200 * 3 + 13) / 4 = 153.25 levels
    app.canvas_edit(state, {**stroke_value(app, state), "mask": web_canvas.encode_mask(mask)}, True)
    assert state.layers[0].mask[10, 10] == pytest.approx(153 / 255)
    saved = Session.from_json(open(app.session_file(state)).read())
    assert np.array_equal(saved.layers[0].mask_array(64, 64), state.layers[0].mask)
    assert np.array_equal(pixels(app.engine.generate(saved)), pixels(state.output))


def test_a_stroke_repaints_without_image_codecs_or_file_writes(app, state, monkeypatch):
    """The repaint path: the canvas's raw mask in, the engine's painting, the image out; no PNG encode or decode
    and no file written (downloads are built when clicked)."""
    import builtins
    from pathlib import Path

    import paint_app.session

    def refuse(*args, **kwargs):
        raise AssertionError("a repaint encoded or decoded a picture or wrote a file")

    stroke, soft = stroke_value(app, state), stroke_value(app, state, box=(20, 20, 50, 40), alpha=90)
    soft["mask"] = web_canvas.encode_mask(np.maximum(*(canvas_mask_of(m) for m in (stroke, soft))))
    for target, name in ((Image.Image, "save"), (Image, "open"), (paint_app.session, "encode_png_mask"),
                         (paint_app.session, "decode_png_mask"), (paint_app.session, "save_text"),
                         (builtins, "open"), (Path, "write_text"), (Path, "write_bytes"), (Path, "open"),
                         (Path, "mkdir")):
        monkeypatch.setattr(target, name, refuse)
    before = state.output
    result = app.canvas_edit(state, stroke, True)
    assert "Repainted in" in result["timing"] and np.abs(pixels(state.output) - pixels(before)).max() > 0
    result = app.canvas_edit(state, soft, True)  # a second stroke, at 90 / 255
    assert "Repainted in" in result["timing"] and state.layers[0].mask[30, 30] == pytest.approx(90 / 255)
    monkeypatch.undo()
    assert app.session_file(state)  # the session is written when it is asked for


def test_apply_on_button_keeps_strokes_until_apply(app, state):
    result = app.canvas_edit(state, stroke_value(app, state), False)
    assert "output" not in result and state.output is state.base and not state.layers[0].is_empty()
    applied = app.apply(state)
    assert np.abs(pixels(applied["output"]) - pixels(state.base)).max() > 0


def test_an_empty_mask_is_said_and_not_regenerated(app, state):
    with pytest.warns(UserWarning, match="Nothing is painted"):
        result = app.apply(state)
    assert "output" not in result
    painted(app, state)
    empty = stroke_value(app, state, box=(0, 0, 64, 64), alpha=0)
    with pytest.warns(UserWarning, match="nothing painted now"):
        result = app.canvas_edit(state, empty, True)
    assert result["output"] is state.base and result["timing"].startswith("Plain image")


def test_painting_without_a_layer_warns(app, state):
    stroke = stroke_value(app, state)
    state.layers.clear()
    state.active = -1
    with pytest.warns(UserWarning, match="deleted before the edit arrived"):
        result = app.canvas_edit(state, stroke, True)
    assert "output" not in result and result["editor"]["layer"] is None
    with pytest.warns(UserWarning, match="no layer to paint on"):
        result = app.canvas_edit(state, {**stroke, "layer": None}, True)
    assert "output" not in result


def test_a_stroke_lands_on_the_layer_it_was_painted_on(app, state):
    """A stroke still in flight when another layer becomes active paints the layer it names."""
    stroke = stroke_value(app, state)
    app.add_layer(state)
    assert state.active == 1
    app.canvas_edit(state, stroke, True)
    assert not state.layers[0].is_empty() and state.layers[1].is_empty()


def test_dragging_a_region_sets_the_offset_and_keeps_the_mask(app, state):
    painted(app, state)
    mask, first = state.layers[0].mask.copy(), state.output
    value = app.editor(state)
    result = app.canvas_edit(state, {"kind": "move", "layer": value["layer"], "width": 64, "height": 64,
                                     "offset": [20, -3], "mask": None}, True)
    assert state.layers[0].offset == (20, -3) and np.array_equal(state.layers[0].mask, mask)
    assert "offset (20, -3)" in result["layer_info"] and np.abs(pixels(result["output"]) - pixels(first)).max() > 0
    far = app.canvas_edit(state, {"kind": "move", "layer": value["layer"], "width": 64, "height": 64,
                                  "offset": [500, 0], "mask": None}, True)
    assert state.layers[0].offset == (64, 0) and "offset (64, 0)" in far["layer_info"]
    assert app.editor(state)["offset"] == [64, 0]


@pytest.mark.parametrize("edit, message", [
    ("not an edit", "expected an object"),
    ({"kind": "smudge"}, "'kind' is 'smudge'; allowed: stroke, move"),
    ({"kind": "stroke", "layer": 3, "width": 64, "height": 64}, "'layer' is 3"),
    ({"kind": "stroke", "layer": None, "width": "wide", "height": 64}, "'width' is 'wide'"),
    ({"kind": "move", "layer": None, "width": 64, "height": 64, "offset": [1]}, "'offset' is \\[1\\]"),
    ({"kind": "move", "layer": None, "width": 64, "height": 64, "offset": [float("nan"), 0]},
     "'offset' is nan; allowed: a whole number"),
    ({"kind": "stroke", "layer": None, "width": 64, "height": 64, "mask": "data:image/png;base64,AAAA"},
     "'mask' is str; allowed: an object with 'width', 'height' and 'data'"),
    ({"kind": "stroke", "layer": None, "width": 64, "height": 64, "mask": {"width": 128, "height": 128}},
     "'mask' is an object with \\['height', 'width'\\]; allowed"),
    ({"kind": "stroke", "layer": None, "width": 64, "height": 64,
      "mask": {"width": 100, "height": 128, "data": ""}}, "'mask' is 100x128 pixels; allowed: the image's 64x64 "
                                                          "times a whole scale from 1 to 64"),
    ({"kind": "stroke", "layer": None, "width": 64, "height": 64,
      "mask": {"width": "wide", "height": 128, "data": ""}}, "'mask.width' is 'wide'"),
    ({"kind": "stroke", "layer": None, "width": 64, "height": 64, "mask": {"width": 128, "height": 128,
                                                                           "data": "not base64!"}},
     "'mask.data' is not valid base64"),
    ({"kind": "stroke", "layer": None, "width": 64, "height": 64, "mask": {"width": 128, "height": 128,
                                                                           "data": "AAAA"}},
     "'mask.data' holds 3 bytes; allowed: one per canvas pixel, 128x128 = 16384"),
])
def test_bad_canvas_edits_warn_and_keep_the_layers(app, state, edit, message):
    painted(app, state)
    mask, output = state.layers[0].mask.copy(), state.output
    with pytest.warns(UserWarning, match=message):
        result = app.canvas_edit(state, edit, True)
    assert set(result) == {"status"} and np.array_equal(state.layers[0].mask, mask) and state.output is output


def test_an_edit_from_a_canvas_of_another_size_is_dropped(app, state):
    stroke = stroke_value(app, state)
    app.generate(state, "a red circle", "", 0, 4, 0, 128, 64)
    with pytest.warns(UserWarning, match="showed a 64x64 image but the image is now 128x64"):
        result = app.canvas_edit(state, stroke, True)
    assert state.layers[0].is_empty() and result["editor"]["width"] == 128


def test_generate_validates_and_keeps_the_painting_on_bad_input(app, state):
    painted(app, state)
    before = state.output
    with pytest.warns(UserWarning, match="width is 65"):
        result = app.generate(state, "a red circle", "", 1, 4, 0, 65, 64)
    assert set(result) == {"status"} and state.output is before
    with pytest.warns(UserWarning, match="seed is 'x'"):
        app.generate(state, "a red circle", "", "x", 4, 0, 64, 64)
    result = app.generate(state, "a blue square on sand", "", 7, 3, 0, 64, 64)
    assert state.settings.seed == 7 and state.settings.steps == 3 and result["prompt_notes"] == ""
    assert np.abs(pixels(state.output) - pixels(state.base)).max() > 0  # the layer still acts


def test_generate_points_out_unknown_words_and_truncation(app, state):
    with pytest.warns(UserWarning, match="does not know.*zebra"):
        result = app.generate(state, "a zebra on grass", "", 0, 4, 0, 64, 64)
    assert "zebra" in result["prompt_notes"]
    with pytest.warns(UserWarning, match="truncated"):
        result = app.generate(state, " ".join(["red"] * 100), "", 0, 4, 0, 64, 64)
    assert "output" in result


def test_a_new_size_resizes_the_layers(app, state):
    painted(app, state)
    app.generate(state, "a red circle", "", 0, 4, 0, 128, 64)
    assert state.layers[0].mask.shape == (64, 128) and state.output.size == (128, 64)


def test_layer_settings_validate_and_repaint(app, state):
    painted(app, state)
    first = state.output
    with pytest.warns(UserWarning, match="strength is 1000; allowed: a number from -100 to 100"):
        result = app.set_strength(state, 1000, True)
    assert result["strength"] == 4.0 and state.layers[0].strength == 4.0 and state.output is first
    result = app.set_strength(state, 9, True)
    assert state.layers[0].strength == 9 and np.abs(pixels(result["output"]) - pixels(first)).max() > 0
    assert app.set_strength(state, 9, True) == {}
    with pytest.warns(UserWarning, match="mode is 'paint'"):
        app.set_mode(state, "paint", True)
    app.set_mode(state, "erase", True)
    assert state.layers[0].mode == "erase"
    with pytest.warns(UserWarning, match="mode 'replace' needs a prototype.*keeps its mode 'erase'"):
        app.set_mode(state, "replace", True)
    assert state.layers[0].mode == "erase"
    with pytest.warns(UserWarning, match="mode 'paste' needs a top example.*sae top-examples.*keeps its mode 'erase'"):
        app.set_mode(state, "paste", True)
    with pytest.warns(UserWarning, match="mode 'fill' needs a top example.*keeps its mode 'erase'"):
        app.set_mode(state, "fill", True)
    assert state.layers[0].mode == "erase"
    with pytest.warns(UserWarning, match="step range is \\[3, 2\\]"):
        app.set_step_range(state, 3, 2, True)
    app.set_step_range(state, 1, 3, True)
    assert state.layers[0].step_range == (1, 3)
    app.set_step_range(state, None, None, True)
    assert state.layers[0].step_range is None
    result = app.set_enabled(state, False, True)
    assert result["output"] is state.base


def test_layers_add_select_delete_clear(app, state):
    painted(app, state)
    state.layers[0].mode = "replace"  # e.g. from a session made where the SAEs had prototypes; these have none
    result = app.pick_concept(state, ["feature", MID, 1, "blue thing", ""], True)
    assert state.layers[0].block == MID and state.layers[0].name == "blue thing"
    assert state.layers[0].mode == "add" and "no prototype to replace with" in result["status"]
    state.layers[0].mode = "paste"
    result = app.pick_concept(state, ["feature", MID, 1, "blue thing", ""], True)
    assert state.layers[0].mode == "add" and "no example to paste" in result["status"]
    app.add_layer(state)
    assert len(state.layers) == 2 and state.active == 1 and state.layers[1].concept.to_dict() == {"feature": 1}
    assert state.layers[1].name == "blue thing (2)"
    result = app.select_layer(state, 0)
    assert result["stack"]["active"] == state.layers[0].uid and result["editor"]["layer"] == state.layers[0].uid
    assert canvas_mask(result["editor"]).any()
    with pytest.warns(UserWarning, match="layer is 5"):
        app.select_layer(state, 5)
    result = app.clear_layer(state, True)
    assert result["output"] is state.base and state.layers[0].is_empty()
    with pytest.warns(UserWarning, match="nothing to clear"):
        app.clear_layer(state, True)
    app.delete_layer(state, True)
    assert len(state.layers) == 1 and state.active == 0
    app.delete_layer(state, True)
    with pytest.warns(UserWarning, match="no layer to delete"):
        app.delete_layer(state, True)


def test_moving_a_region_stores_an_offset(app, state):
    with pytest.warns(UserWarning, match="no region to move"):
        app.nudge(state, "right", 4, True)
    painted(app, state)
    before = state.output
    result = app.nudge(state, "right", 8, True)
    assert state.layers[0].offset == (8, 0) and "offset (8, 0)" in result["layer_info"]
    assert np.abs(pixels(result["output"]) - pixels(before)).max() > 0
    assert "download" not in result and Session.from_json(open(app.session_file(state)).read()).layers[0].offset == (8, 0)
    with pytest.warns(UserWarning, match="move step is 0"):
        app.nudge(state, "up", 0, True)
    app.click_image(state, 50, 10, "move", True)
    assert state.layers[0].offset == (50 - 17, 10 - 32)
    app.reset_offset(state, True)
    assert state.layers[0].offset == (0, 0)


def test_mask_upload_adapts_odd_pictures_and_refuses_non_images(app, state, tmp_path):
    picture = tmp_path / "mask.jpg"
    Image.new("CMYK", (100, 80), (0, 0, 0, 0)).save(picture)
    with pytest.warns(UserWarning, match="100x80; resized"):
        result = app.upload_mask(state, str(picture), True)
    assert state.layers[0].mask.shape == (64, 64) and state.layers[0].mask.min() > 0.9
    assert "output" in result
    broken = tmp_path / "mask.png"
    broken.write_text("not a picture")
    with pytest.warns(UserWarning, match="not a readable image"):
        result = app.upload_mask(state, str(broken), True)
    assert state.layers[0].mask.min() > 0.9 and set(result) == {"status"}


def test_palette_lists_the_best_painters_first_with_their_write_scores(app, state):
    from sae.labels import Label

    labels = app.engine.concepts.blocks[BLOCK].labels
    saved = dict(labels)
    try:
        for feature, write in ((1, 0.3), (3, 0.9), (5, 0.5)):
            labels[feature] = Label("blue thing", 1.0 - write, "ground-truth", write)
        rows = app.search(state, "blue", BLOCK, "features")["palette_table"]
        assert [(row[2], row[5]) for row in rows] == [(3, "0.90"), (5, "0.50"), (1, "0.30")]
    finally:
        labels.clear()
        labels.update(saved)
    rows = app.search(state, "blue", BLOCK, "features")["palette_table"]
    assert rows and all(row[5] == "" for row in rows)  # labels without write scores show none


def test_a_replace_layers_palette_lists_the_best_replacers_first(app, state):
    import torch

    from sae.labels import Label
    from sae.prototypes import Prototypes

    entry = app.engine.concepts.blocks[BLOCK]
    saved_labels, saved_prototypes = dict(entry.labels), entry.prototypes
    n = entry.sae.n_features
    counts = torch.zeros(n)
    counts[[1, 3, 5]] = 1.0  # 7 has no prototype
    entry.prototypes = Prototypes([BLOCK], {BLOCK: torch.zeros(n, 1, 1, entry.sae.d_in)}, counts)
    try:
        for feature, write, replace in ((1, 0.9, 0.5), (3, 0.5, None), (5, 0.3, 1.0), (7, 0.95, None)):
            entry.labels[feature] = Label("blue thing", 0.5, "ground-truth", write, replace)
        rows = app.search(state, "blue", BLOCK, "features")["palette_table"]
        assert [row[2] for row in rows] == [7, 1, 3, 5]  # an add layer: by write score
        state.layers[0].mode = "replace"
        rows = app.search(state, "blue", BLOCK, "features")["palette_table"]
        assert [(row[2], row[6]) for row in rows] == [(5, "yes, 100%"), (1, "yes, 50%"), (3, "yes"), (7, "")]
        entry.labels[3] = Label("blue thing", 0.9, "ground-truth", 0.5)
        state.layers[0].mode = "paste"  # no examples here: by how well the feature reads its label
        assert [row[2] for row in app.search(state, "blue", BLOCK, "features")["palette_table"]][0] == 3
    finally:
        entry.labels.clear()
        entry.labels.update(saved_labels)
        entry.prototypes = saved_prototypes


def test_a_recipe_row_paints_its_edit_with_its_mode_strength_and_steps(app, state):
    from sae.recipes import Edit, Recipes

    entry = app.engine.concepts.blocks[BLOCK]
    entry.recipes = Recipes({"blue thing": [Edit("set", feature=3, strength=7.0, step_range=[1, 3], score=0.75),
                                            Edit("add", feature=1, score=0.5)],
                             "red thing": [Edit("add", factor=1, strength=4.0, step_range=[2, 99], score=0.25)]})
    try:
        rows = app.search(state, "thing", "all blocks", "recipes")["palette_table"]
        assert [(row[0], row[1], row[3], row[5]) for row in rows] == [
            ("recipe", BLOCK, "blue thing: set feature 3", "75%"), ("recipe", BLOCK, "red thing: add factor 1", "25%")]
        painted(app, state)
        result = app.pick_concept(state, rows[0], True)
        layer = state.layers[0]
        assert (layer.concept.to_dict(), layer.mode, layer.strength, layer.step_range) == ({"feature": 3}, "set", 7.0,
                                                                                             (1, 3))
        assert "output" in result and "judged right in 75%" in result["status"]
        app.pick_concept(state, rows[1], True)  # steps beyond the session's: every step
        assert (layer.concept.to_dict(), layer.mode, layer.strength, layer.step_range) == ({"factor": 1}, "add", 4.0,
                                                                                             None)
        with pytest.warns(UserWarning, match="recipe is 5"):
            app.pick_concept(state, ["recipe", BLOCK, 5, "nothing"], True)
        assert layer.concept.to_dict() == {"factor": 1}
    finally:
        entry.recipes = None
    with pytest.warns(UserWarning, match="recipe is 0"):
        app.pick_concept(state, ["recipe", BLOCK, 0, "blue thing"], True)
    with pytest.warns(UserWarning, match="No recipes in down_blocks.0.attentions.0: a recipe is the edit measured"):
        assert app.search(state, "", BLOCK, "recipes")["palette_table"] == []


def test_palette_search_pick_and_preview(app, state):
    result = app.search(state, "blue", "all blocks", "features")
    assert {row[1] for row in result["palette_table"]} == {BLOCK, MID}
    assert all(row[3] == "blue thing" for row in result["palette_table"])
    with pytest.warns(UserWarning, match="No features label holds all of the words 'zebra'.*red thing"):
        result = app.search(state, "zebra", "all blocks", "features")
    assert result["palette_table"] == []
    with pytest.warns(UserWarning, match="block is 'nowhere'"):
        app.search(state, "", "nowhere", "features")
    assert len(app.search(state, "", MID, "factors")["palette_table"]) == 3
    painted(app, state)
    result = app.pick_concept(state, ["factor", MID, 2, "factor 2", ""], True)
    assert state.layers[0].concept.to_dict() == {"factor": 2} and "output" in result
    preview = app.preview(state)
    assert preview["preview"].width > 128 and preview["examples"] and "factor 2" in preview["palette_info"]
    with pytest.warns(UserWarning, match="palette row"):
        app.pick_concept(state, ["feature", BLOCK, "x"], True)


def test_inspector_lists_features_shows_heat_and_makes_a_layer(app, state):
    painted(app, state)
    result = app.click_image(state, 10, 30, "inspect", True)
    assert result["inspect_table"][0][:2] == [BLOCK, 0] and result["inspect_table"][0][2] == "red thing"
    assert result["factor_table"]
    heat = app.show_heat(state, result["inspect_table"][0])
    assert heat["heat"].size[0] >= 128 and "red thing" in heat["inspect_info"]
    made = app.layer_from_selected(state, "erase", True)
    assert len(state.layers) == 2 and state.layers[1].mode == "erase" and state.layers[1].mask[:, :20].mean() > 0.3
    assert "output" in made
    with pytest.warns(UserWarning, match="inside the image"):
        app.inspect(state, 99, 3)
    with pytest.warns(UserWarning, match="inspector row"):
        app.show_heat(state, ["x"])


def test_factor_weights_are_edited_and_saved_as_a_concept(app, state):
    key = app.factor_choices()[0][1]
    rows = app.pick_factor(state, key)["factor_weights"]
    assert rows and all(0 < row[2] <= 1 for row in rows)
    with pytest.warns(UserWarning, match="weights row 1: weight is -1"):
        app.save_factor(state, key, [[rows[0][0], "", -1]], "mine")
    with pytest.warns(UserWarning, match="concept name"):
        app.save_factor(state, key, rows, "")
    with pytest.warns(UserWarning, match="factor is 'nope'"):
        app.pick_factor(state, "nope")
    edited = [[rows[0][0], "", 2.0], [rows[1][0], "", 0]]
    app.save_factor(state, key, edited, "my mix")
    assert state.custom == [Choice(Concept.of_mix(BLOCK, {rows[0][0]: 2.0}), "my mix", source="mine")]
    listed = app.search(state, "mix", "all blocks", "mine")["palette_table"]
    assert listed == [["mine", BLOCK, 0, "my mix", "", "", "", "", ""]]
    app.pick_concept(state, listed[0], True)
    assert state.layers[0].concept == Concept.of_mix(BLOCK, {rows[0][0]: 2.0})


def test_keep_outside_is_on_by_default_toggles_repaint_and_travels_with_the_session(app, state, tmp_path):
    painted(app, state)
    kept = state.output
    assert state.keep_outside and json.loads(open(app.session_file(state)).read())["keep_outside"] is True
    result = app.set_keep_outside(state, False, True)
    assert "Repainted in" in result["timing"] and not state.keep_outside
    assert np.abs(pixels(result["output"]) - pixels(kept)).max() > 0
    assert app.set_keep_outside(state, False, True) == {}
    saved = app.session_file(state)
    assert "keep_outside" not in json.loads(open(saved).read())
    other = app.new_state()
    assert other.keep_outside
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app.start(other)
    result = app.load_session_file(other, saved)
    assert result["keep_outside"] is False and not other.keep_outside
    assert np.array_equal(pixels(other.output), pixels(state.output))


def test_sessions_round_trip_and_bad_files_change_nothing(app, state, tmp_path):
    painted(app, state)
    app.nudge(state, "down", 4, True)
    saved = app.session_file(state)
    other = app.new_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app.start(other)
    result = app.load_session_file(other, saved)
    assert np.array_equal(pixels(other.output), pixels(state.output))
    assert other.layers[0].offset == (0, 4) and result["prompt"] == state.settings.prompt
    before = other.output
    cases = {"text.json": "this is not json", "bad.json": json.dumps({"version": 1, "width": 63, "height": 64,
                                                                       "steps": 4}),
             "model.json": json.dumps({"version": 1, "model": "toy", "width": 64, "height": 64, "steps": 4}),
             "block.json": json.dumps({"version": 1, "model": "tiny-random-sd", "width": 64, "height": 64,
                                       "steps": 4, "layers": [{"block": "up_blocks.1.attentions.0", "feature": 1,
                                                               "mask": {"rects": [[0, 0, 8, 8]]}}]}),
             "replace.json": json.dumps({"version": 1, "model": "tiny-random-sd", "width": 64, "height": 64,
                                         "steps": 4, "layers": [{"block": BLOCK, "feature": 1, "mode": "replace",
                                                                 "mask": {"rects": [[0, 0, 8, 8]]}}]})}
    expected = {"text.json": "not valid JSON", "bad.json": "width is 63", "model.json": "this app runs",
                "block.json": "no SAE is loaded", "replace.json": "mode is 'replace' but the SAE .* no prototypes"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.warns(UserWarning, match=expected[name]):
            result = app.load_session_file(other, str(tmp_path / name))
        assert set(result) == {"status"} and "kept" in result["status"] and other.output is before


def test_tabs_never_share_layers(app):
    first, second = app.new_state(), app.new_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app.start(first)
        app.start(second)
    app.pick_concept(second, ["feature", MID, 1, "blue thing", ""], True)
    painted(app, first)
    assert second.layers[0].is_empty() and second.output is second.base
    assert first.layers[0].block == BLOCK and second.layers[0].block == MID
    assert first.tab_id != second.tab_id and app.session_file(first) != app.session_file(second)


def test_dice_and_build_app(app, tiny_engine):
    seeds = {app.dice()["seed"] for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s < 2**31 for s in seeds)
    blocks = build_app(tiny_engine)
    assert isinstance(blocks, gr.Blocks) and isinstance(blocks.paint_app, PaintApp)
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert {"canvas", "output", "palette-table", "inspect-table", "download", "session-upload", "tiles", "stack",
            "found", "tile-search", "advanced", "settings"} <= ids


def test_unexpected_errors_become_warnings_not_crashes():
    from paint_app.ui.outputs import guarded

    def broken(*args):
        raise RuntimeError("boom")

    with pytest.warns(UserWarning, match="Something went wrong \\(RuntimeError: boom\\)"):
        result = guarded(broken)
    assert "kept" in result["status"]


def test_sessions_name_saes_unless_they_ship_with_the_model(app, tiny_sae_paths):
    from dataclasses import replace
    from pathlib import Path

    assert app.sae_sources() == sorted(tiny_sae_paths)
    shipped = PaintApp(app.engine, app.workdir)
    shipped.profile = replace(app.profile, sae_dir=Path(tiny_sae_paths[0]).parent)
    assert shipped.sae_sources() == []


def started_with_profile(tiny_engine, tmp_path, **changes) -> tuple[PaintApp, TabState]:
    """An app on a copy of the tiny engine whose model profile has ``changes``, and a tab it has started."""
    import copy
    import dataclasses

    engine = copy.copy(tiny_engine)
    engine.model = dataclasses.replace(tiny_engine.model,
                                       profile=dataclasses.replace(tiny_engine.model.profile, **changes))
    app = PaintApp(engine, tmp_path)
    state = app.new_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app.start(state)
    return app, state


@pytest.mark.parametrize("wanted, expected", [
    ({"block": BLOCK, "factor": "factor 2"}, (BLOCK, {"factor": 2}, "factor 2")),
    ({"block": MID, "feature": 1}, (MID, {"feature": 1}, "blue thing")),
    ({"block": "up_blocks.9.attentions.0", "factor": "factor 2"}, None),  # its SAE is not loaded
    ({"block": BLOCK, "factor": "no such label"}, None),
    ({"block": BLOCK, "feature": 10_000}, None),
])
def test_the_first_layer_paints_the_models_chosen_concept_if_it_is_loaded(tiny_engine, tmp_path, wanted, expected):
    app, state = started_with_profile(tiny_engine, tmp_path, layer_concept=wanted)
    engine = app.engine
    if expected is None:  # else the feature that best reads its label, as without a choice
        best = max(engine.concepts.feature_rows(), key=lambda r: r["score"])
        expected = (best["block"], {"feature": best["feature"]}, best["label"])
    layer = state.layers[0]
    assert (layer.block, layer.concept.to_dict(), layer.name) == expected
    app.add_layer(state)
    assert (state.layers[1].block, state.layers[1].concept.to_dict()) == expected[:2]


def test_new_layers_start_with_the_models_layer_defaults(tiny_engine, tmp_path):
    app, state = started_with_profile(tiny_engine, tmp_path, layer_strength=16.0, layer_step_range=(1, 3))
    assert (state.layers[0].strength, state.layers[0].step_range) == (16.0, (1, 3))
    app.generate(state, "a red circle", "", 0, 2, 0, 64, 64)  # 2 steps: the default range no longer fits
    app.add_layer(state)
    assert (state.layers[1].strength, state.layers[1].step_range) == (16.0, None)
