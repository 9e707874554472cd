"""Moving what the model drew, in a real browser (Debian's chromium, Playwright) on the toy: generate a red circle
at the top left, find the image's parts, pick the circle's part (the canvas switches to the Move tool and shows
its map), drag it with real mouse events to the bottom right, and the circle is there in the image and gone from
where it was; its stack row's *erase* removes it."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from test_browser import open_page, output_src, shown_image, stack_row, stroke, wait_new_output, wait_text

from paint_app.toyworld.judges import classify_pixels, colour_fractions
from paint_app.toyworld.world import COLOUR_NAMES
from paint_app.ui.parts import FADE

pytestmark = pytest.mark.browser

PROMPT = "a red circle at the top left on grass"


def part_pictures(page) -> list[tuple[str, np.ndarray]]:
    """Each part tile's name and picture (the image, the rest faded), at the image's size."""
    pictures = []
    for card in page.locator("#parts .pp-tile").all():
        data = card.locator("img.pp-pic").get_attribute("src").split(",", 1)[1]
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        scale = picture.shape[1] // 64
        pictures.append((card.get_attribute("data-name"), picture[::scale, ::scale]))
    return pictures


def test_a_part_the_model_drew_is_dragged_with_the_mouse_and_the_image_follows(chromium, toy_server, screenshots):
    page = open_page(chromium, toy_server, layer_text="blue")
    try:
        old = output_src(page)
        page.locator("#prompt textarea").fill(PROMPT)
        page.locator("#generate").click()
        old = wait_new_output(page, old)
        image = shown_image(page)
        red = classify_pixels(image) == COLOUR_NAMES.index("red")
        assert red[:32, :32].sum() > 200 and red[32:].sum() + red[:, 32:].sum() < 20  # drawn where asked
        page.locator("#find-parts").click()
        page.wait_for_selector('#parts .pp-root:not([data-count="0"])', state="attached")
        wait_text(page, "#status", "parts of the image")
        # the circle's part: how much of the circle its picture shows unfaded (1 the image itself, 0 faded away)
        faded = np.abs(image * (1 - FADE) + 255 * FADE - image).sum(-1)
        shares = {name: np.clip(1 - np.abs(picture.astype(int) - image).sum(-1) / np.maximum(faded, 1), 0, 1)[red].mean()
                  for name, picture in part_pictures(page)}
        name = max(shares, key=shares.get)
        assert shares[name] >= 0.6, shares
        page.locator(f'#parts .pp-tile[data-name="{name}"]').click()
        stack_row(page, name).wait_for()
        page.wait_for_selector('#canvas .pc-root[data-current="move"]', state="attached")
        wait_text(page, "#layer-info", name)
        assert page.locator("#stack .ps-row").count() == 2
        page.locator(f'#parts .pp-tile[data-name="{name}"]').click()  # again: its layer, not a second one
        page.wait_for_selector(f'#parts .pp-tile.pp-picked[data-name="{name}"]', state="attached")
        assert page.locator("#stack .ps-row").count() == 2
        assert shown_image(page).tolist() == image.tolist()  # as drawn until moved
        stroke(page, (0.2, 0.17), (0.7, 0.67))  # with the Move tool on: a drag  # half the image right and down
        old = wait_new_output(page, old)
        wait_text(page, "#layer-info", "offset (32, 32)")
        moved = shown_image(page)
        there = np.roll(red, (32, 32), axis=(0, 1))
        assert colour_fractions(moved, there)["red"] >= 0.7, colour_fractions(moved, there)
        assert colour_fractions(moved, red)["red"] <= 0.1, colour_fractions(moved, red)
        page.screenshot(path=screenshots / "page-parts-moved.png", full_page=True)
        stack_row(page, name).locator(".ps-erase-part").click()  # scale 0
        wait_new_output(page, old)
        wait_text(page, "#layer-info", "scale 0")
        assert colour_fractions(shown_image(page), there)["red"] <= 0.1
    finally:
        page.context.close()
