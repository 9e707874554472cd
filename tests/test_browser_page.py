"""The painter's page in a real browser (Debian's chromium, Playwright) on tiny-random-sd: the keyboard's tools,
brush size and undo (never while typing in a text box), the layer stack's eye and amount, and a tile's "erase"
as a layer of its own. The toy model's concepts, painted from the first tile for a word, are in
test_browser_toy.py."""

from __future__ import annotations

import numpy as np
import pytest
from test_browser import (
    output_src,
    search_tiles,
    shown_image,
    stack_row,
    stroke,
    tile,
    wait_new_output,
    wait_text,
)

pytestmark = pytest.mark.browser


@pytest.fixture
def page(chromium, app_server):
    from test_browser import open_page

    page = open_page(chromium, app_server.url)
    yield page
    page.context.close()


def canvas_data(page, key: str) -> str:
    return page.locator("#canvas .pc-root").get_attribute(f"data-{key}")


def test_keys_pick_tools_size_and_undo_but_not_while_typing(page, screenshots):
    assert "B brush" in page.locator("#canvas .pc-keys").inner_text().replace("\n", " ")
    assert canvas_data(page, "current") == "brush"
    page.locator("#canvas canvas.pc-view").hover()
    for key, tool in (("e", "eraser"), ("m", "move"), ("b", "brush"), ("E", "eraser"), ("b", "brush")):
        page.keyboard.press(key)
        assert canvas_data(page, "current") == tool, key
    assert page.locator("#canvas [data-tool=brush]").get_attribute("class") == "pc-on"
    size = int(canvas_data(page, "size"))
    page.keyboard.press("]")
    page.keyboard.press("]")
    page.keyboard.press("[")
    assert int(canvas_data(page, "size")) == size + 1 == int(page.locator("#canvas .pc-size").input_value())
    # typing in a text box types, and leaves the tools alone
    page.locator("#prompt textarea").click()
    page.keyboard.type(" bem[")
    assert page.locator("#prompt textarea").input_value().endswith(" bem[")
    assert canvas_data(page, "current") == "brush" and int(canvas_data(page, "size")) == size + 1
    page.locator("#tile-search input").click()
    page.keyboard.press("e")
    assert canvas_data(page, "current") == "brush"
    # Ctrl+Z undoes the last stroke (and Cmd+Z, Meta on a Mac)
    before = shown_image(page)
    old = output_src(page)
    page.locator("#title").click()  # focus leaves the text box
    stroke(page, (0.2, 0.3), (0.6, 0.7))
    old = wait_new_output(page, old)
    wait_text(page, "#timing", "Repainted in")
    assert np.abs(shown_image(page).astype(int) - before).max() > 0
    page.keyboard.press("Control+z")
    old = wait_new_output(page, old)
    wait_text(page, "#layer-info", "nothing painted")
    assert np.array_equal(shown_image(page), before)
    stroke(page, (0.2, 0.3), (0.6, 0.7))
    old = wait_new_output(page, old)
    page.keyboard.press("Meta+z")
    wait_new_output(page, old)
    wait_text(page, "#layer-info", "nothing painted")
    page.screenshot(path=screenshots / "page-keys.png", full_page=True)


def test_the_stacks_eye_and_amount_switch_a_layer_off_and_scale_it(page, screenshots):
    before = shown_image(page)
    old = output_src(page)
    stroke(page, (0.1, 0.3), (0.7, 0.6))
    old = wait_new_output(page, old)
    wait_text(page, "#timing", "Repainted in")
    full = shown_image(page)
    row = stack_row(page, "red thing")
    assert row.locator(".ps-eye").inner_text() == "on"
    row.locator(".ps-eye").click()  # off: the plain image
    old = wait_new_output(page, old)
    assert np.array_equal(shown_image(page), before)
    stack_row(page, "red thing").locator(".ps-eye.ps-off").wait_for()
    stack_row(page, "red thing").locator(".ps-eye").click()  # on again: the same painted pixels
    old = wait_new_output(page, old)
    assert np.array_equal(shown_image(page), full)
    slider = stack_row(page, "red thing").locator(".ps-amount input")
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)  # a real click at the middle
    old = wait_new_output(page, old)
    wait_text(page, "#status", "acts at")
    amount = int(stack_row(page, "red thing").locator(".ps-value").inner_text().rstrip("%"))
    assert 35 <= amount <= 65
    half = shown_image(page)
    assert np.abs(half.astype(int) - before).max() > 0 and np.abs(half.astype(int) - full).max() > 0
    page.screenshot(path=screenshots / "page-stack.png", full_page=True)


def test_a_tiles_erase_is_a_layer_of_its_own_and_deleting_it_in_the_stack(page):
    search_tiles(page, "blue")
    tile(page, "blue thing").locator(".pt-erase").click()
    stack_row(page, "erase blue thing").wait_for()
    wait_text(page, "#layer-info", "erase blue thing")
    assert page.locator("#stack .ps-row").count() == 2
    assert "erase" in stack_row(page, "erase blue thing").locator(".ps-name").inner_text()
    first = stack_row(page, "red thing").get_attribute("data-layer")
    stack_row(page, "erase blue thing").locator(".ps-delete").click()
    page.wait_for_function("() => document.querySelectorAll('#stack .ps-row').length === 1")
    page.wait_for_selector(f'#stack .ps-root[data-active="{first}"]', state="attached")


def test_the_inspector_erases_a_concept_there_or_paints_more_of_it_in_one_click(page, screenshots):
    from test_browser import click_image

    old = output_src(page)
    stroke(page, (0.1, 0.3), (0.5, 0.6))
    old = wait_new_output(page, old)
    wait_text(page, "#timing", "Repainted in")
    painted = shown_image(page)
    click_image(page, 0.25, 0.45)
    found = page.locator('#found .pf-tile[data-name="red thing"]')
    found.wait_for()
    assert "typical" in found.locator(".pf-value").inner_text()
    found.locator(".pf-erase").click()
    stack_row(page, "erase red thing").wait_for()
    old = wait_new_output(page, old)
    assert np.abs(shown_image(page).astype(int) - painted).max() > 0
    wait_text(page, "#layer-info", "erase red thing")
    page.locator('#found .pf-tile[data-name="red thing"] .pf-more').click()
    stack_row(page, "more red thing").wait_for()
    wait_new_output(page, old)
    assert page.locator("#stack .ps-row").count() == 3
    page.screenshot(path=screenshots / "page-inspector.png", full_page=True)
