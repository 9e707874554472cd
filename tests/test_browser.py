"""The page in a real browser: Debian's chromium driven by Playwright, against the app served on tiny-random-sd.

One page walks through the main flow in order (open, generate, paint, inspect, the Advanced palette table,
move, the layer stack, sessions, a broken upload); a second test paints from two browser contexts at once.
Screenshots land in test-output/screenshots/. The painter's page itself (tiles, keys, the stack's eye and
amount) is tested in test_browser_page.py, the toy model's concepts in test_browser_toy.py.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from paint_app import cli
from paint_app.session import Session

pytestmark = pytest.mark.browser

WAIT_MS = 60_000
BLOCK = "down_blocks.0.attentions.0"
MID = "mid_block.attentions.0"


def open_page(browser, url: str, layer_text: str = "thing", viewport: dict | None = None):
    """A new page on ``url``, once the image, the first layer (its info holding ``layer_text``) and the canvas
    are there."""
    context = browser.new_context(viewport=viewport or {"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.wait_for_selector("#output img")
    page.wait_for_function("t => document.querySelector('#layer-info')?.innerText.includes(t)", arg=layer_text)
    page.wait_for_selector("#canvas .pc-root[data-layer]:not([data-layer=''])", state="attached")
    return page


def output_src(page) -> str:
    return page.locator("#output img").get_attribute("src")


def wait_new_output(page, old_src: str) -> str:
    page.wait_for_function("old => { const i = document.querySelector('#output img'); return i && i.src !== old; }",
                           arg=old_src)
    return output_src(page)


def shown_image(page, size: int = 64) -> np.ndarray:
    """The pixels of the displayed image at the image's own size: the page shows it enlarged by a whole factor
    (nearest neighbour), which this checks before undoing it."""
    body = page.request.get(output_src(page)).body()
    shown = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    scale = shown.shape[1] // size
    native = shown[::scale, ::scale]
    assert np.array_equal(np.repeat(np.repeat(native, scale, axis=0), scale, axis=1), shown)
    return native


def canvas_point(page, fx: float, fy: float) -> tuple[float, float]:
    """A point of the canvas, (fx, fy) as fractions of its width and height."""
    drawing = page.locator("#canvas canvas.pc-view")
    drawing.scroll_into_view_if_needed()
    box = drawing.bounding_box()
    return box["x"] + fx * box["width"], box["y"] + fy * box["height"]


def stroke(page, start: tuple[float, float], end: tuple[float, float], steps: int = 12) -> None:
    """Paint with real mouse events: press, drag in small moves, release."""
    x0, y0 = canvas_point(page, *start)
    x1, y1 = canvas_point(page, *end)
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, steps + 1):
        page.mouse.move(x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps)
    page.mouse.up()


def click_image(page, fx: float, fy: float) -> None:
    image = page.locator("#output img")
    image.scroll_into_view_if_needed()
    box = image.bounding_box()
    side = min(box["width"], box["height"])
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    page.mouse.click(left + fx * side, top + fy * side)


def pick_row(page, block: str, label: str) -> None:
    """Click the label cell of the palette row of ``block`` labelled ``label``."""
    row = page.locator("#palette-table [role=row]", has_text=block).filter(has_text=label).first
    row.locator("[role=gridcell]", has_text=label).first.click()


ADVANCED_TABS = {"Layer": "#mode", "Palette": "#palette-search", "Inspector": "#inspect-info",
                 "Factors": "#factor-pick"}


def open_advanced(page, tab: str) -> None:
    """Unfold the *Advanced* section (folded on a new page) and show its tab ``tab`` (waiting for its first
    component)."""
    advanced = page.locator("#advanced")
    button = advanced.get_by_role("tab", name=tab, exact=True).first
    if not button.is_visible():
        advanced.locator("button.label-wrap").first.click()
    button.click()
    page.locator(ADVANCED_TABS[tab]).first.wait_for(state="visible")


def tile(page, name: str):
    """The concept tile named ``name`` in the tile grid."""
    return page.locator(f'#tiles .pt-tile[data-name="{name}"]')


def search_tiles(page, words: str) -> None:
    """Type ``words`` in the concept search (key by key, as a person types; the tiles follow each key) and wait
    for the tiles found for them."""
    box = page.locator("#tile-search input")
    box.click()
    box.press("End")
    for _ in box.input_value():
        box.press("Backspace")
    if words:
        box.press_sequentially(words)
    page.wait_for_selector(f'#tiles .pt-root[data-query="{" ".join(words.split())}"]', state="attached")


def stack_row(page, name: str):
    """The layer stack's row of the layer named ``name``."""
    return page.locator(f'#stack .ps-row[data-name="{name}"]')


def wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => document.querySelector(s)?.innerText.includes(t)", arg=[selector, text])


def download_session(page, folder, name: str, button: str = "#download"):
    """Click a download button: its handler writes the file then (not on repaints) and the page hands it over."""
    path = folder / name
    with page.expect_download() as download:
        page.click(button)
    download.value.save_as(path)
    return path


def upload(page, selector: str, path) -> None:
    """Upload a file the way a person does: click the drop zone, pick the file in the chooser."""
    with page.expect_file_chooser() as chooser:
        page.locator(f"{selector} button.upload-container").click()
    chooser.value.set_files(str(path))


def wait_toast(page, text: str) -> None:
    """Wait for a warning toast (gr.Warning) holding ``text``."""
    page.locator(".toast-body", has_text=text).first.wait_for(state="visible")


@pytest.fixture(scope="module")
def page(chromium, app_server):
    page = open_page(chromium, app_server.url)
    yield page
    page.context.close()


def test_open_and_generate(page, screenshots):
    assert page.locator("h1").inner_text().endswith("tiny-random-sd")
    page.screenshot(path=screenshots / "01-opened.png", full_page=True)
    before = shown_image(page)
    old = output_src(page)
    page.fill("#prompt textarea", "a blue square on sand")
    page.fill("#seed input", "7")
    page.click("#generate")
    wait_new_output(page, old)
    assert np.abs(shown_image(page).astype(int) - before).max() > 0
    page.screenshot(path=screenshots / "02-generated.png", full_page=True)


def test_a_stroke_changes_the_image_and_undo_takes_it_back(page, screenshots):
    before = shown_image(page)
    old = output_src(page)
    stroke(page, (0.15, 0.3), (0.45, 0.8))
    old = wait_new_output(page, old)
    wait_text(page, "#timing", "Repainted in")
    assert np.abs(shown_image(page).astype(int) - before).max() > 0
    assert "nothing painted" not in page.locator("#layer-info").inner_text()
    page.click("#canvas .pc-undo")
    old = wait_new_output(page, old)
    wait_text(page, "#layer-info", "nothing painted")
    assert np.array_equal(shown_image(page), before)
    page.click("#canvas [data-tool=eraser]")
    page.click("#canvas [data-tool=brush]")
    page.locator("#canvas .pc-opacity").fill("50")  # a soft brush: the mask is half strength
    stroke(page, (0.15, 0.3), (0.45, 0.8))
    wait_new_output(page, old)
    page.screenshot(path=screenshots / "03-painted.png", full_page=True)


def test_clicking_the_image_lists_features(page, screenshots):
    click_image(page, 0.25, 0.55)
    page.wait_for_selector("#found .pf-tile")
    assert page.locator('#found .pf-tile[data-name="red thing"]').count() == 1
    open_advanced(page, "Inspector")
    wait_text(page, "#inspect-info", "strongest features")
    table = page.locator("#inspect-table").inner_text()
    assert BLOCK in table and "red thing" in table
    page.locator("#inspect-table [role=gridcell]", has_text="red thing").first.click()
    wait_text(page, "#inspect-info", "Heatmap of")
    page.wait_for_selector("#heat img")
    page.screenshot(path=screenshots / "04-inspector.png", full_page=True)


def test_palette_search_and_pick(page, screenshots):
    open_advanced(page, "Palette")
    page.fill("#palette-search textarea", "zebra")
    page.press("#palette-search textarea", "Enter")
    wait_toast(page, "No features label holds all of the words 'zebra'")
    page.fill("#palette-search textarea", "blue")
    page.press("#palette-search textarea", "Enter")
    wait_text(page, "#status", "2 features found")
    old = output_src(page)
    pick_row(page, MID, "blue thing")
    wait_text(page, "#layer-info", "blue thing")
    assert MID in page.locator("#layer-info").inner_text()
    wait_new_output(page, old)  # the painted layer now paints the new concept
    page.wait_for_selector("#preview img")
    page.screenshot(path=screenshots / "05-palette.png", full_page=True)


def test_move_a_layer(page, screenshots):
    old = output_src(page)
    page.click("#canvas [data-tool=move]")
    stroke(page, (0.5, 0.5), (0.75, 0.5))  # drag the region a quarter of the canvas (16 px) right
    wait_text(page, "#layer-info", "offset (16, 0)")
    old = wait_new_output(page, old)
    page.screenshot(path=screenshots / "06-dragged.png", full_page=True)
    page.click("#canvas [data-tool=brush]")
    open_advanced(page, "Layer")
    page.click("#move-reset")
    wait_text(page, "#layer-info", "offset (0, 0)")
    old = wait_new_output(page, old)
    page.fill("#move-step input", "8")
    page.click("#move-right")
    wait_text(page, "#layer-info", "offset (8, 0)")
    wait_new_output(page, old)
    page.screenshot(path=screenshots / "06-moved.png", full_page=True)


def test_a_new_layer_and_picking_layers_in_the_stack(page, screenshots):
    first = page.locator("#canvas .pc-root").get_attribute("data-layer")
    page.click("#add-layer")
    wait_text(page, "#layer-info", "blue thing (2)")
    page.wait_for_function("old => document.querySelector('#canvas .pc-root').dataset.layer !== old", arg=first)
    stack_row(page, "blue thing (2)").wait_for()
    stack_row(page, "blue thing").locator(".ps-name").click()
    page.wait_for_function("old => document.querySelector('#canvas .pc-root').dataset.layer === old", arg=first)
    page.wait_for_selector(f'#stack .ps-root[data-active="{first}"]', state="attached")
    assert "blue thing (2)" not in page.locator("#layer-info").inner_text()
    assert "offset (8, 0)" in page.locator("#layer-info").inner_text()
    page.screenshot(path=screenshots / "06-layers.png", full_page=True)


def test_keep_the_rest_of_the_image_toggles_and_repaints(page):
    box = page.locator("#keep-outside input")
    assert box.is_checked()
    old = output_src(page)
    box.uncheck()
    old = wait_new_output(page, old)
    unkept = shown_image(page)
    box.check()
    wait_new_output(page, old)
    assert np.abs(shown_image(page).astype(int) - unkept).max() > 0


def test_downloaded_session_renders_to_the_shown_pixels(page, tmp_path):
    path = download_session(page, tmp_path, "session.json")
    session = Session.from_json(path.read_text())
    assert session.layers[0].offset == (8, 0) and session.layers[0].block == MID and session.seed == 7
    assert 0.45 < session.layers[0].mask_array(64, 64).max() < 0.55  # painted at 50% opacity
    assert session.keep_outside  # the page's default, so the render below goes through the blending too
    out = tmp_path / "render.png"
    # `paint-app render` itself (its console-script entry point), in this process to save the start-up time of
    # another Python: it loads its own pipeline and the SAEs the session names, sharing nothing with the server.
    assert cli.main(["render", str(path), "--out", str(out), "--device", "cpu"]) == 0
    rendered = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(rendered, shown_image(page))
    image = download_session(page, tmp_path, "image.png", "#download-image")
    assert np.array_equal(np.asarray(Image.open(image).convert("RGB")), rendered)


def test_a_broken_session_warns_and_the_page_keeps_working(page, screenshots, tmp_path):
    before = output_src(page)
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "width": 64, "height": 64, "steps": 4, "layers": [{"block": 3}]')
    upload(page, "#session-upload", broken)
    wait_toast(page, "not valid JSON")
    wait_text(page, "#status", "kept")
    page.screenshot(path=screenshots / "07-broken-session.png", full_page=True)
    assert output_src(page) == before
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"version": 1, "model": "tiny-random-sd", "width": 64, "height": 64, "steps": 4,
                                   "layers": [{"block": MID, "feature": 1, "strength": 1e9,
                                               "mask": {"rects": [[0, 0, 8, 8]]}}]}))
    upload(page, "#session-upload", invalid)
    wait_toast(page, "strength is 1000000000")
    stroke(page, (0.6, 0.1), (0.9, 0.2))  # still paints
    wait_new_output(page, before)


def test_two_contexts_paint_at_once_and_get_their_own_images(page, chromium, app_server, tmp_path, screenshots):
    """The module's page (its layer paints 'blue thing' on the mid block) and a fresh context (its first layer
    paints 'red thing' on down_blocks.0) stroke one right after the other; each gets the image of its own layers."""
    other = open_page(chromium, app_server.url)
    try:
        pages = {"a": page, "b": other}
        olds = {name: output_src(p) for name, p in pages.items()}
        stroke(page, (0.1, 0.4), (0.5, 0.6))
        stroke(other, (0.5, 0.1), (0.9, 0.9))
        for name, p in pages.items():
            wait_new_output(p, olds[name])
            wait_text(p, "#timing", "Repainted in")
        time.sleep(0.5)  # a later repaint of the same tab (latest stroke wins) would replace the image
        images = {}
        for name, p in pages.items():
            session = Session.from_json(download_session(p, tmp_path, f"{name}.json").read_text())
            images[name] = shown_image(p)
            expected = app_server.app.engine.generate(session).convert("RGB")
            assert np.array_equal(np.asarray(expected), images[name])
            p.screenshot(path=screenshots / f"08-context-{name}.png", full_page=True)
            blocks = {(layer.block, layer.feature) for layer in session.layers}
            mask = session.layers[0].mask_array(64, 64)
            if name == "a":
                assert blocks == {(MID, 1)} and mask[:, :32].sum() > mask[:, 32:].sum() / 4
            else:
                assert blocks == {(BLOCK, 0)} and mask[:, 32:].sum() > 2 * mask[:, :32].sum()
        assert not np.array_equal(images["a"], images["b"])
    finally:
        other.context.close()
