"""Canvas masks <-> the page's raw masks (and the PNGs it is shown), canvas values, moving regions, uploaded mask pictures, session round trips."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from paint_app import canvas, web_canvas
from paint_app.canvas import CanvasLayer
from paint_app.errors import PaintError
from paint_app.painting import Concept, Painting
from paint_app.session import Layer, Mask, Session


def square_mask(width=64, height=64, box=(10, 20, 30, 40), value=1.0) -> np.ndarray:
    mask = np.zeros((height, width), np.float32)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = value
    return mask


def test_alpha_is_area_averaged_to_image_size():
    layer = np.zeros((128, 128, 4), np.uint8)
    layer[0:2, 0:1, 3] = 255  # one canvas column of a 2x2 block: half of image pixel (0, 0)
    layer[10:20, 10:20, 3] = 128
    mask = canvas.alpha_to_mask(layer, 64, 64)
    assert mask.shape == (64, 64)
    assert mask[0, 0] == pytest.approx(0.5)
    assert mask[6, 6] == pytest.approx(128 / 255, abs=1e-6)
    assert mask[20, 20] == 0


def shown_mask(value: dict) -> np.ndarray:
    """The mask a canvas value shows (a grey PNG data URL at image size), as uint8."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(value["mask"].split(",", 1)[1]))))


def test_canvas_mask_round_trip_is_exact_and_masks_compare_with_tolerance():
    """Server mask -> canvas value (PNG at image size, shown enlarged) -> the page's raw bytes at canvas size ->
    mask."""
    mask = square_mask(value=0.6)
    layer = CanvasLayer(Concept("b", feature=1), mask, name="a")
    value = web_canvas.canvas_value(None, [layer], 0, 64, 64, "#ff2d95")
    assert value["layer"] == layer.uid and value["scale"] == 2
    enlarged = np.repeat(np.repeat(shown_mask(value), 2, axis=0), 2, axis=1)
    sent = web_canvas.encode_mask(enlarged)
    assert (sent["width"], sent["height"], len(base64.b64decode(sent["data"]))) == (128, 128, 128 * 128)
    back = web_canvas.decode_mask(sent, 64, 64)
    assert not canvas.masks_differ(back, mask)
    moved = back.copy()
    moved[0, 0] = 0.1
    assert canvas.masks_differ(moved, mask)
    with pytest.raises(PaintError, match="shape"):
        canvas.alpha_to_mask(np.zeros((2, 2, 2, 2)), 64, 64)


def test_canvas_value_shows_the_active_layer_unshifted_and_tints_the_others():
    base = Image.new("RGB", (64, 64), (0, 0, 0))
    active = CanvasLayer(Concept("b", feature=1), square_mask(), name="a", offset=(5, 0), color="#00ff00")
    other = CanvasLayer(Concept("b", feature=2), square_mask(box=(40, 40, 50, 50)), name="o", color="#ff0000")
    value = web_canvas.canvas_value(base, [active, other], 0, 64, 64, "#ff2d95")
    assert value["offset"] == [5, 0] and value["color"] == "#ff2d95"
    assert np.array_equal(shown_mask(value) / 255.0, square_mask())  # the page moves it by the offset itself
    background = np.asarray(Image.open(io.BytesIO(base64.b64decode(value["background"].split(",", 1)[1]))))
    assert background[45, 45, 0] > 100  # the other layer tinted red
    assert background[5, 5].sum() == 0
    empty = web_canvas.canvas_value(base, [], -1, 64, 64, "#ff2d95", hint="pick a concept")
    assert empty["layer"] is None and empty["mask"] is None and empty["hint"] == "pick a concept"


def test_the_pages_mask_is_area_averaged_to_the_session_files_levels_and_checked():
    alpha = np.zeros((128, 192), np.uint8)  # a 96x64 image shown at scale 2
    alpha[0, 0] = 255  # a quarter of image pixel (0, 0)
    alpha[10:12, 10:12] = [[200, 200], [200, 13]]  # (3 * 200 + 13) / 4 = 153.25 levels
    mask = web_canvas.decode_mask(web_canvas.encode_mask(alpha), 96, 64)
    assert mask.shape == (64, 96) and mask.dtype == np.float32
    assert mask[0, 0] == np.float32(64 / 255.0) and mask[5, 5] == np.float32(153 / 255.0)  # 63.75, 153.25 rounded
    same = web_canvas.decode_mask(web_canvas.encode_mask(alpha[::2, ::2]), 96, 64)  # scale 1
    assert same[5, 5] == np.float32(200 / 255.0)
    good = web_canvas.encode_mask(alpha)
    for bad, message in (([1, 2], "'mask' is list"), ({**good, "width": 190}, "'mask' is 190x128 pixels"),
                         ({**good, "data": good["data"][:-4]}, "'mask.data' holds 24573 bytes"),
                         ({**good, "data": 7}, "'mask.data' is a int"), ({**good, "height": None}, "'mask.height'")):
        with pytest.raises(PaintError, match=message):
            web_canvas.decode_mask(bad, 96, 64)


def test_the_page_script_and_template_ship_with_the_package():
    assert "trigger(\"input\"" in web_canvas.script() and "pc-view" in web_canvas.template()
    assert "toDataURL" not in web_canvas.script()  # strokes send raw bytes, not pictures
    assert ".pc-view" in web_canvas.style()


def test_place_at_moves_the_centre_of_mass_and_nudge_clamps():
    mask = square_mask(box=(10, 10, 20, 20))
    dx, dy = canvas.place_at(mask, 40, 30)
    assert (dx, dy) == (25, 15)
    with pytest.raises(PaintError, match="nothing painted"):
        canvas.place_at(np.zeros((64, 64), np.float32), 1, 1)
    assert canvas.nudge((60, 0), 10, -70, 64, 64) == (64, -64)


def test_mask_from_image_converts_modes_and_sizes_with_notes():
    rgb = Image.new("RGB", (100, 50), (255, 255, 255))
    mask, notes = canvas.mask_from_image(rgb, 64, 64)
    assert mask.shape == (64, 64) and mask.min() == pytest.approx(1.0)
    assert any("RGB" in n for n in notes) and any("100x50" in n for n in notes)
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.putpixel((3, 4), (0, 0, 0, 255))
    mask, notes = canvas.mask_from_image(rgba, 64, 64)
    assert notes == [] and mask[4, 3] == 1.0 and mask.sum() == 1.0


def test_canvas_layer_session_round_trip():
    layer = CanvasLayer(Concept.of_mix("mid_block.attentions.0", {3: 1.0, 7: 0.5}), square_mask(value=0.5),
                        name="mix", mode="set", strength=2.5, step_range=(1, 3), offset=(2, -3), enabled=False,
                        cond_only=True)
    painting = Painting(model="tiny-random-sd", steps=4, layers=[layer])
    parsed = Session.from_json(Session.of(painting).to_json()).to_painting().layers[0]
    back = CanvasLayer.of(parsed, "#123456")
    assert back.concept == Concept("mid_block.attentions.0", mix=((3, 1.0), (7, 0.5)))
    assert back.mode == "set" and back.strength == 2.5 and back.color == "#123456"
    assert back.step_range == (1, 3) and back.offset == (2, -3) and back.enabled is False
    assert back.cond_only is True and back.name == "mix"
    assert np.abs(back.mask - layer.mask).max() <= 1 / 255
    rects = Layer(block="b", mask=Mask(rects=[[0, 0, 8, 8]]), factor=2)
    unnamed = CanvasLayer.of(rects.to_painted(64, 64), "#000000")
    assert unnamed.concept == Concept("b", factor=2) and unnamed.name == "b factor 2"


def test_resize_mask_and_colours():
    mask = square_mask()
    assert canvas.resize_mask(mask, 32, 32).shape == (32, 32)
    assert canvas.resize_mask(mask, 128, 96).shape == (96, 128)
    layers = [CanvasLayer(Concept("b", feature=i), mask, name=str(i), color=canvas.next_color([])) for i in range(2)]
    assert canvas.next_color(layers[:1]) != layers[0].color
    assert canvas.display_scale(64, 64) >= 2 and canvas.display_scale(1024, 512) == 1
