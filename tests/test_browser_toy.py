"""A newcomer's first minute, in a real browser on the embedded default: the app opens on the toy model with a
layer that paints, and brushing it over part of the canvas turns that part of the image its colour; typing a word
and picking the first concept tile paints that concept (a colour, a texture, a shape), with a prompt or without;
the page fits a 1366x768 screen. The *Advanced* section's table, modes and shipped sessions still work."""

from __future__ import annotations

import numpy as np
import pytest
from test_browser import (
    download_session,
    open_advanced,
    open_page,
    output_src,
    pick_row,
    search_tiles,
    shown_image,
    stroke,
    tile,
    upload,
    wait_new_output,
    wait_text,
)

from paint_app.session import Session
from paint_app.toyworld.judges import classify_pixels
from paint_app.toyworld.world import COLOUR_NAMES

pytestmark = pytest.mark.browser


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
    open_advanced(page, "Palette")
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
        open_advanced(page, "Layer")
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
        open_advanced(page, "Layer")
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
        open_advanced(page, "Layer")
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


def brush_box(page) -> None:
    """Two strokes of a 16-px brush across the lower right of the canvas, away from the default scene's circle:
    a region of about 31x29 px (PaintBench paints boxes of 24 or 32)."""
    page.locator("#canvas .pc-size").fill("16")
    for fy in (0.62, 0.82):
        stroke(page, (0.56, fy), (0.8, fy))


def painted_mask(page, tmp_path) -> np.ndarray:
    """The active layer's mask as the page holds it: from the session the page downloads."""
    session = Session.from_json(download_session(page, tmp_path, "painted.json").read_text())
    return session.layers[0].mask_array(64, 64)


def assert_painted_there_only(before: np.ndarray, after: np.ndarray, mask: np.ndarray, kind: str, word: str) -> None:
    """Where the brush went (the mask at half strength or more) the toy's judge sees ``word`` (it did not before);
    beyond 4 px of the stroke no pixel's colour moved (PaintBench's leakage: by more than 40 of 255), and beyond
    two latent cells (8 px) the pixels are exactly the plain image's (keep the rest of the image: the touched latent
    cells follow the painted run, and the pasted-back plain pixels blend over one more cell)."""
    from scipy.ndimage import binary_dilation

    from paint_app.toyworld.bench import leakage
    from paint_app.toyworld.judges import Judges

    judges = Judges.load()
    core, stroke_pixels = mask >= 0.5, mask > 0
    assert core.sum() > 300, core.sum()
    assert judges.judge(kind, before, core)[0] != word
    assert judges.judge(kind, after, core)[0] == word, judges.judge(kind, after, core)
    assert leakage(before, after, stroke_pixels, margin=4) == 0.0
    far = ~binary_dilation(stroke_pixels, structure=np.ones((3, 3), bool), iterations=8)  # 8 px any direction
    moved = np.abs(after.astype(int) - before.astype(int)).max(axis=2)
    assert far.sum() > 1500 and not moved[far].any(), np.argwhere(moved * far)[:10].tolist()


def paint_first_tile(page, word: str) -> tuple[np.ndarray, np.ndarray]:
    """Type ``word``, click the FIRST tile, brush the box with real mouse events; (before, after) images."""
    before = shown_image(page)
    search_tiles(page, word)
    first = page.locator("#tiles .pt-tile").first
    assert first.get_attribute("data-name") == word  # the first tile for a word is that word
    first.locator(".pt-pick").click()
    wait_text(page, "#layer-info", f"{word} —")
    old = output_src(page)
    brush_box(page)
    wait_new_output(page, old)
    settle(page)
    return before, shown_image(page)


@pytest.mark.parametrize("word, kind", [("red", "colour"), ("striped", "texture"), ("triangle", "shape")])
def test_the_first_tile_for_a_word_paints_it_where_the_brush_went(chromium, toy_server, screenshots, tmp_path,
                                                                   word, kind):
    page = open_page(chromium, toy_server, layer_text="blue")
    try:
        before, after = paint_first_tile(page, word)
        page.screenshot(path=screenshots / f"toy-tile-{word}.png", full_page=True)
        mask = painted_mask(page, tmp_path)
    finally:
        page.context.close()
    assert_painted_there_only(before, after, mask, kind, word)


def test_an_empty_prompt_paints_the_picked_concept(chromium, toy_server, screenshots, tmp_path):
    """No prompt: the model's own (unconditional) picture, and the first tile for 'red' painted where brushed."""
    page = open_page(chromium, toy_server, layer_text="blue")
    try:
        old = output_src(page)
        page.fill("#prompt textarea", "")
        page.click("#generate")
        wait_new_output(page, old)
        assert page.locator("#prompt textarea").input_value() == ""
        before, after = paint_first_tile(page, "red")
        page.screenshot(path=screenshots / "toy-empty-prompt.png", full_page=True)
        mask = painted_mask(page, tmp_path)
        session = Session.from_json((tmp_path / "painted.json").read_text())
    finally:
        page.context.close()
    assert session.prompt == ""
    assert_painted_there_only(before, after, mask, "colour", "red")


def test_the_page_fits_a_1366x768_screen(chromium, toy_server, screenshots):
    """Canvas, image and concept tiles (with their pictures) inside the viewport without scrolling; the screenshot
    after painting the first tile for 'striped' is the README's picture of the page."""

    page = open_page(chromium, toy_server, layer_text="blue", viewport={"width": 1366, "height": 768})
    try:
        page.wait_for_selector('#tiles .pt-root[data-token]:not([data-token=""])[data-pending="0"]', state="attached")
        paint_first_tile(page, "striped")
        search_tiles(page, "")
        page.wait_for_selector('#tiles .pt-root[data-pending="0"]', state="attached")
        assert page.evaluate("window.scrollY") == 0
        boxes = {name: page.locator(selector).bounding_box() for name, selector in (
            ("canvas", "#canvas canvas.pc-view"), ("image", "#output img"), ("search", "#tile-search input"),
            ("first tile", "#tiles .pt-tile >> nth=0"), ("eighth tile", "#tiles .pt-tile >> nth=7"),
            ("stack", "#stack .ps-row >> nth=0"), ("prompt", "#prompt textarea"), ("generate", "#generate"))}
        for name, box in boxes.items():
            assert box is not None and box["x"] >= 0 and box["y"] >= 0, name
            assert box["x"] + box["width"] <= 1366 and box["y"] + box["height"] <= 768, (name, box)
        assert boxes["canvas"]["width"] >= 250 and boxes["image"]["width"] >= 250
        assert tile(page, "red").locator("img.pt-icon").count() == 1  # pictures, not placeholders
        path = screenshots / "page-1366x768.png"
        page.screenshot(path=path)
    finally:
        page.context.close()
