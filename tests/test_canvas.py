"""Editor layers -> masks, masks -> editor layers, moving regions, uploaded mask pictures, session round trips."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from paint_app import canvas
from paint_app.canvas import CanvasLayer
from paint_app.errors import PaintError
from paint_app.session import Layer, Mask, Session, shift


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


def test_editor_layer_round_trip_is_exact_and_masks_compare_with_tolerance():
    mask = square_mask(value=0.6)
    rgba = canvas.mask_to_rgba(mask, 2, "#ff2d95")
    assert rgba.shape == (128, 128, 4) and tuple(rgba[40, 20, :3]) == (255, 45, 149)
    back = canvas.alpha_to_mask(rgba, 64, 64)
    assert not canvas.masks_differ(back, mask)
    moved = back.copy()
    moved[0, 0] = 0.1
    assert canvas.masks_differ(moved, mask)


def test_editor_mask_merges_layers_and_reports_none_without_layers():
    first = np.zeros((64, 64, 4), np.uint8)
    second = np.zeros((64, 64, 4), np.uint8)
    first[0:4, 0:4, 3] = 100
    second[0:2, 0:2, 3] = 200
    mask = canvas.editor_mask({"background": None, "layers": [first, second], "composite": None}, 64, 64)
    assert mask[0, 0] == pytest.approx(200 / 255) and mask[3, 3] == pytest.approx(100 / 255)
    assert canvas.editor_mask({"background": None, "layers": [], "composite": None}, 64, 64) is None
    assert canvas.editor_mask(None, 64, 64) is None
    with pytest.raises(PaintError, match="shape"):
        canvas.alpha_to_mask(np.zeros((2, 2, 2, 2)), 64, 64)


def test_editor_value_shows_active_layer_moved_and_tints_the_others():
    base = Image.new("RGB", (64, 64), (0, 0, 0))
    active = CanvasLayer("a", "b", {"feature": 1}, square_mask(), offset=(5, 0), color="#00ff00")
    other = CanvasLayer("o", "b", {"feature": 2}, square_mask(box=(40, 40, 50, 50)), color="#ff0000")
    value = canvas.editor_value(base, [active, other], 0, 64, 64, "#ff2d95")
    scale = canvas.display_scale(64, 64)
    assert value["background"].size == (64 * scale, 64 * scale)
    shown = canvas.alpha_to_mask(value["layers"][0], 64, 64)
    assert shown[25, 15 + 5] == 1.0 and shown[25, 10] == 0.0  # moved right by 5
    background = np.asarray(value["background"])
    assert background[45 * scale, 45 * scale, 0] > 100  # the other layer tinted red
    assert background[5, 5].sum() == 0


def test_apply_edit_keeps_the_part_moved_out_of_the_image():
    old = square_mask(box=(50, 10, 64, 20))  # touches the right edge
    offset = (10, 0)  # columns 54..63 are pushed out of the image
    shown = shift(old, offset)
    shown[10:20, 0:5] = 0.5  # a new stroke at the left edge, inside the visible region of the moved frame
    new = canvas.apply_edit(old, shown, offset)
    assert np.array_equal(new[:, 54:], old[:, 54:])  # out of view: kept
    assert new[15, 0] == 0.0  # x=0 maps to x=-10 of the painted frame: outside, nothing
    back = shift(new, offset)
    assert np.allclose(back[10:20, 60:64], 1.0)
    assert np.array_equal(canvas.apply_edit(old, shown, (0, 0)), shown)


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
    layer = CanvasLayer("mix", "mid_block.attentions.0", {"features": {3: 1.0, 7: 0.5}}, square_mask(value=0.5),
                        mode="set", strength=2.5, step_range=(1, 3), offset=(2, -3), enabled=False,
                        extra={"cond_only": True})
    session = Session(model="tiny-random-sd", steps=4, layers=[layer.to_session_layer()])
    parsed = Session.from_json(session.to_json()).layers[0]
    back = CanvasLayer.from_session_layer(parsed, 64, 64, "#123456")
    assert back.concept == {"features": {3: 1.0, 7: 0.5}} and back.mode == "set" and back.strength == 2.5
    assert back.step_range == (1, 3) and back.offset == (2, -3) and back.enabled is False
    assert back.extra == {"cond_only": True} and back.name == "mix"
    assert np.abs(back.mask - layer.mask).max() <= 1 / 255
    rects = Layer(block="b", mask=Mask(rects=[[0, 0, 8, 8]]), factor=2)
    assert CanvasLayer.from_session_layer(rects, 64, 64, "#000000").concept == {"factor": 2}


def test_resize_mask_and_colours():
    mask = square_mask()
    assert canvas.resize_mask(mask, 32, 32).shape == (32, 32)
    assert canvas.resize_mask(mask, 128, 96).shape == (96, 128)
    layers = [CanvasLayer(str(i), "b", {"feature": i}, mask, color=canvas.next_color([])) for i in range(2)]
    assert canvas.next_color(layers[:1]) != layers[0].color
    assert canvas.display_scale(64, 64) >= 2 and canvas.display_scale(1024, 512) == 1
