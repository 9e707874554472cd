"""A newcomer's first minute, in a real browser on the embedded default: the app opens on the toy model with a
layer that paints, and brushing it over part of the canvas turns that part of the image its colour."""

from __future__ import annotations

import numpy as np
import pytest
from test_browser import open_page, output_src, shown_image, stroke, wait_new_output, wait_text

from paint_app.toyworld.judges import classify_pixels
from paint_app.toyworld.world import COLOUR_NAMES

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def toy_server(one_torch_thread, tmp_path_factory):
    """The painting app on the shipped toy model, as `paint-app` starts it, on a free port."""
    from conftest import free_port

    from paint_app.cli import load_engine
    from paint_app.ui import LAUNCH_OPTIONS, build_app

    blocks = build_app(load_engine("toy", [], "cpu"), workdir=tmp_path_factory.mktemp("toy-sessions"))
    blocks.queue()
    _, url, _ = blocks.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                              quiet=True, **LAUNCH_OPTIONS)
    yield url
    blocks.close()


def test_the_first_layer_paints_blue_where_the_brush_went(chromium, toy_server, screenshots):
    page = open_page(chromium, toy_server, layer_text="blue")
    try:
        assert page.locator("h1").inner_text().endswith("toy")
        before = shown_image(page)
        old = output_src(page)
        page.locator("#canvas .pc-size").fill("21")  # the widest brush: a third of the image
        for fy in (0.2, 0.35):
            stroke(page, (0.08, fy), (0.42, fy))
        wait_new_output(page, old)
        wait_text(page, "#timing", "Repainted in")
        page.wait_for_timeout(1500)  # the newest stroke's repaint wins; let it land
        after = shown_image(page)
        page.screenshot(path=screenshots / "toy-first-stroke.png", full_page=True)
    finally:
        page.context.close()
    blue = COLOUR_NAMES.index("blue")
    painted = np.zeros((64, 64), bool)
    painted[4:30, 4:28] = True  # inside both strokes' reach, a little in from their edges
    blue_before, blue_after = classify_pixels(before) == blue, classify_pixels(after) == blue
    assert blue_before[painted].mean() < 0.05 < 0.5 < blue_after[painted].mean()
    assert np.array_equal(after[:, 48:], before[:, 48:])  # the rest of the image is kept (the app's default)
