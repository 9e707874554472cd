"""A newcomer's first minute, in a real browser on the embedded default: the app opens on the toy model with a
layer that paints, and brushing it over part of the canvas turns that part of the image its colour."""

from __future__ import annotations

import numpy as np
import pytest
from test_browser import open_page, output_src, pick_row, shown_image, stroke, upload, wait_new_output, wait_text

from paint_app.toyworld.judges import classify_pixels
from paint_app.toyworld.world import COLOUR_NAMES

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def toy_server(one_torch_thread, tmp_path_factory):
    """The painting app on the shipped toy model, as `paint-app` starts it, on a free port."""
    from conftest import free_port

    from paint_app.engine import load_engine
    from paint_app.ui import LAUNCH_OPTIONS, build_app

    blocks = build_app(load_engine("toy", [], "cpu"), workdir=tmp_path_factory.mktemp("toy-sessions"))
    blocks.queue()
    _, url, _ = blocks.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                              quiet=True, **LAUNCH_OPTIONS)
    yield url
    blocks.close()


def brush_top_left(page) -> None:
    """Two strokes of the widest brush (a third of the image) across the top left of the canvas."""
    page.locator("#canvas .pc-size").fill("21")
    for fy in (0.2, 0.35):
        stroke(page, (0.08, fy), (0.42, fy))


def settle(page) -> str:
    """Wait until repaints have stopped (the output unchanged for 1.5 s, 20 s at most; each stroke of a brush
    gesture repaints, and on a busy machine the last may land after the first was awaited, with its own status
    line); returns the output's src."""
    src, unchanged = output_src(page), 0
    for _ in range(40):
        page.wait_for_timeout(500)
        current = output_src(page)
        unchanged, src = (unchanged + 1 if current == src else 0), current
        if unchanged >= 3:
            break
    return src


def brush_and_search(page, words: str, kind: str = "features") -> tuple[np.ndarray, str]:
    """Brush the first layer over the top left, wait for its repaints to settle (a late repaint's status would
    replace the search's), then search the palette's ``kind`` for ``words``; returns (the image before brushing,
    the output's src after the repaints)."""
    before = shown_image(page)
    old = output_src(page)
    brush_top_left(page)
    wait_new_output(page, old)
    old = settle(page)
    page.get_by_role("tab", name="Palette").click()
    if kind != "features":
        page.locator("#palette-kind").get_by_label(kind).check()
    page.fill("#palette-search textarea", words)
    page.press("#palette-search textarea", "Enter")
    wait_text(page, "#status", "found")
    return before, old


def settled_image(page, screenshot) -> np.ndarray:
    """The shown image once repaints have stopped (``settle``)."""
    settle(page)
    page.screenshot(path=screenshot, full_page=True)
    return shown_image(page)


def assert_blue_where_brushed_only(before: np.ndarray, after: np.ndarray, colour: str = "blue") -> None:
    """Blue (``colour``) inside both strokes' reach (a little in from their edges), and the rest of the image kept
    (the app's default) beyond it."""
    brushed = np.zeros((64, 64), bool)
    brushed[4:30, 4:28] = True
    index = COLOUR_NAMES.index(colour)
    assert (classify_pixels(before) == index)[brushed].mean() < 0.05 < 0.5 < \
        (classify_pixels(after) == index)[brushed].mean()
    assert np.array_equal(after[:, 48:], before[:, 48:])


def test_the_first_layer_paints_blue_where_the_brush_went(chromium, toy_server, screenshots):
    page = open_page(chromium, toy_server, layer_text="blue")
    try:
        assert page.locator("h1").inner_text().endswith("toy")
        before = shown_image(page)
        old = output_src(page)
        brush_top_left(page)
        wait_new_output(page, old)
        wait_text(page, "#timing", "Repainted in")
        after = settled_image(page, screenshots / "toy-first-stroke.png")
    finally:
        page.context.close()
    assert_blue_where_brushed_only(before, after)


def test_a_layer_switched_to_replace_paints_the_features_prototype(chromium, toy_server, screenshots):
    """The palette's first blue feature of the late 16x16 block, made a ``replace`` layer (which moves the layer
    to every step): the brushed region takes the feature's prototype (blue), the rest of the image stays the
    plain one."""
    page = open_page(chromium, toy_server, layer_text="blue")
    try:
        before, old = brush_and_search(page, "blue")
        pick_row(page, "up_blocks.1.attentions.0", "blue")
        wait_text(page, "#layer-info", "feature")
        old = wait_new_output(page, old)
        page.locator("#mode").get_by_label("replace").check()
        wait_text(page, "#layer-info", "replaces its block's activations")
        wait_new_output(page, old)
        wait_text(page, "#status", "Replace acts on every step")
        assert page.locator("#step-start input").input_value() == ""  # was the toy's default start, 2
        after = settled_image(page, screenshots / "toy-replace.png")
    finally:
        page.context.close()
    assert_blue_where_brushed_only(before, after)


def test_a_recipe_from_the_palette_sets_the_layers_edit_and_paints_its_colour(chromium, toy_server, screenshots):
    """The palette's *recipes* list: yellow's recipe on the late 16x16 block (a ``replace`` of its best replacer,
    every step) becomes the brushed layer's concept, mode and steps, and the brushed region turns yellow with the
    rest of the image the plain one."""
    page = open_page(chromium, toy_server, layer_text="blue")
    try:
        before, old = brush_and_search(page, "yellow", "recipes")
        pick_row(page, "up_blocks.1.attentions.0", "yellow: replace feature")
        wait_text(page, "#layer-info", "replaces its block's activations")
        assert page.locator("#layer-info").inner_text().startswith("yellow")
        wait_new_output(page, old)
        assert page.locator("#mode input:checked").input_value() == "replace"
        assert page.locator("#step-start input").input_value() == ""  # every step
        after = settled_image(page, screenshots / "toy-recipe.png")
    finally:
        page.context.close()
    assert_blue_where_brushed_only(before, after, "yellow")


def test_paste_from_the_mode_radio_and_a_shipped_paste_session(chromium, toy_server, screenshots, tmp_path):
    """The first layer, brushed, switched to ``paste`` with the Mode radio (every step; its example is made and
    pasted); then the shipped `striped_paste_top_left.json` opened: the page shows exactly what `paint-app render`
    makes of it, and its rectangle is judged striped."""
    from PIL import Image

    from paint_app import cli
    from paint_app.toyworld import SESSIONS_DIR
    from paint_app.toyworld.bench import rect_mask
    from paint_app.toyworld.judges import Judges

    session = SESSIONS_DIR / "striped_paste_top_left.json"
    page = open_page(chromium, toy_server, layer_text="blue")
    try:
        old = output_src(page)
        brush_top_left(page)
        wait_new_output(page, old)
        old = settle(page)
        page.locator("#mode").get_by_label("paste").check()
        wait_text(page, "#status", "Paste acts on every step")
        wait_text(page, "#layer-info", "pastes the activations")
        old = wait_new_output(page, old)
        upload(page, "#session-upload", session)
        wait_new_output(page, old)
        wait_text(page, "#layer-info", "feature 182")
        shown = settled_image(page, screenshots / "toy-paste.png")
    finally:
        page.context.close()
    out = tmp_path / "striped.png"
    assert cli.main(["render", str(session), "--out", str(out), "--device", "cpu"]) == 0
    rendered = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(shown, rendered)
    assert Judges.load().texture(rendered, rect_mask([0, 0, 32, 32]))[0] == "striped"
