"""The session file: parse, validate, save; every bad input names its field."""

from __future__ import annotations

import base64
import copy
import json

import numpy as np
import pytest

from paint_app.errors import SessionError
from paint_app.session import Session, encode_png_mask, load_session, shift


def valid() -> dict:
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    return {
        "version": 1, "model": "tiny-random-sd", "prompt": "a red circle on grass", "negative_prompt": "",
        "seed": 3, "width": 64, "height": 64, "steps": 4, "guidance": 0.0,
        "layers": [
            {"name": "red", "block": "down_blocks.0.attentions.0", "feature": 17, "mode": "add", "strength": 4.0,
             "step_range": [0, 4], "mask": {"png": encode_png_mask(ramp)}, "offset": [3, -2]},
            {"name": "mix", "block": "mid_block.attentions.0", "features": {"1": 1.0, "40": 0.5}, "mode": "set",
             "strength": 2.0, "mask": {"rects": [[0, 0, 32, 64]]}, "cond_only": True},
            {"name": "f", "block": "mid_block.attentions.0", "factor": 2, "mode": "erase", "enabled": False,
             "mask": {"rects": [[10, 10, 20, 20]]}},
        ],
    }


def test_round_trip(tmp_path):
    session = Session.from_dict(valid())
    session.save(tmp_path / "s.json")
    again = load_session(tmp_path / "s.json")
    assert again.to_dict() == session.to_dict()
    assert again.layers[1].features == {1: 1.0, 40: 0.5} and again.layers[1].cond_only
    assert again.layers[2].factor == 2 and not again.layers[2].enabled
    assert again.layers[0].offset == (3, -2) and again.layers[0].step_range == (0, 4)


def test_a_layers_amount_round_trips_and_is_left_out_at_full():
    data = valid()
    data["layers"][0]["amount"] = 0.25
    session = Session.from_dict(data)
    assert session.layers[0].amount == 0.25 and session.to_dict()["layers"][0]["amount"] == 0.25
    assert "amount" not in session.to_dict()["layers"][1]
    assert session.to_painting().layers[0].amount == 0.25


@pytest.mark.parametrize("mode", ["replace", "paste"])
def test_overwriting_modes_round_trip(tmp_path, mode):
    data = valid()
    data["layers"][0]["mode"] = mode
    Session.from_dict(data).save(tmp_path / "s.json")
    assert load_session(tmp_path / "s.json").layers[0].mode == mode


def test_png_mask_and_offset():
    session = Session.from_dict(valid())
    mask = session.layers[0].mask_array(64, 64)
    assert mask.shape == (64, 64) and mask.dtype == np.float32
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    np.testing.assert_allclose(mask[:-2, 3:], ramp[2:, :-3], atol=1 / 255)  # moved right 3 and up 2
    assert (mask[:, :3] == 0).all() and (mask[-2:, :] == 0).all()
    rects = session.layers[1].mask_array(64, 64)
    assert rects[:, :32].min() == 1.0 and rects[:, 32:].max() == 0.0


def test_shift_drops_what_leaves_the_image():
    array = np.arange(16, dtype=np.float32).reshape(4, 4)
    moved = shift(array, (1, 1))
    assert moved[1:, 1:].tolist() == array[:-1, :-1].tolist() and moved[0].sum() == 0 and moved[:, 0].sum() == 0
    assert shift(array, (-4, 0)).sum() == 0


def grey_png_b64(width: int, height: int) -> str:
    return encode_png_mask(np.ones((height, width), np.float32))


def set_path(data: dict, path: str, value) -> dict:
    data = copy.deepcopy(data)
    target = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = keys[-1]
    if value is DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return data


DELETE = object()
BAD = [
    ("layers.0.amount", 1.5, r"layers\[0\]\.amount is 1\.5; allowed: a finite number from 0 to 1"),
    ("version", 2, "version"),
    ("version", None, "version"),
    ("model", "", "model"),
    ("prompt", 42, "prompt"),
    ("prompt", "x" * 5000, "prompt"),
    ("negative_prompt", ["a"], "negative_prompt"),
    ("width", -64, "width"),
    ("width", 100000, "width"),
    ("width", 60, "width"),
    ("height", 0, "height"),
    ("steps", 0, "steps"),
    ("steps", 10**6, "steps"),
    ("steps", 2.5, "steps"),
    ("seed", -1, "seed"),
    ("guidance", float("nan"), "guidance"),
    ("layers", {"a": 1}, "layers"),
    ("layers.0.block", "", r"layers\[0\].block"),
    ("layers.0.feature", -3, r"layers\[0\].feature"),
    ("layers.0.feature", "17", r"layers\[0\].feature"),
    ("layers.0.mode", "paint", r"layers\[0\].mode.*add, set, erase, replace, paste"),
    ("layers.0.strength", float("nan"), r"layers\[0\].strength"),
    ("layers.0.strength", float("inf"), r"layers\[0\].strength"),
    ("layers.0.strength", 1e9, r"layers\[0\].strength"),
    ("layers.0.step_range", [3, 1], r"layers\[0\].step_range"),
    ("layers.0.step_range", [0, 99], r"layers\[0\].step_range"),
    ("layers.0.step_range", [-1, 2], r"layers\[0\].step_range"),
    ("layers.0.mask", {"png": "not base64!!"}, r"layers\[0\].mask.png"),
    ("layers.0.mask", {"png": base64.b64encode(b"not a png").decode()}, r"layers\[0\].mask.png.*not a readable image"),
    ("layers.0.mask", {"png": grey_png_b64(32, 64)}, r"layers\[0\].mask.png is 32x64.*64x64"),
    ("layers.0.mask", {"rects": [[0, 0, 65, 10]]}, r"layers\[0\].mask.rects\[0\]"),
    ("layers.0.mask", {"rects": [[10, 0, 5, 10]]}, r"layers\[0\].mask.rects\[0\]"),
    ("layers.0.mask", {"rects": [[0, 0, 10]]}, r"layers\[0\].mask.rects\[0\]"),
    ("layers.0.mask", {}, r"layers\[0\].mask"),
    ("layers.0.mask", DELETE, r"layers\[0\].mask"),
    ("layers.0.offset", [1.5, 0], r"layers\[0\].offset"),
    ("layers.0.offset", [1000, 0], r"layers\[0\].offset"),
    ("layers.0.enabled", "yes", r"layers\[0\].enabled"),
    ("layers.1.features", {}, r"layers\[1\].features"),
    ("layers.1.features", {"x": 1.0}, r"layers\[1\].features key"),
    ("layers.1.features", {"3": float("nan")}, r"layers\[1\].features"),
    ("layers.2.factor", 1.5, r"layers\[2\].factor"),
]


@pytest.mark.parametrize("path,value,match", BAD, ids=[f"{p}={v!r}"[:40] for p, v, _ in BAD])
def test_bad_input_names_the_field(path, value, match):
    with pytest.raises(SessionError, match=match) as info:
        Session.from_dict(set_path(valid(), path, value))
    assert "allowed" in str(info.value) or "x" in str(info.value)


def test_two_concepts_in_one_layer():
    data = valid()
    data["layers"][0]["factor"] = 1
    with pytest.raises(SessionError, match=r"layers\[0\] names feature, factor.*exactly one"):
        Session.from_dict(data)


def test_not_json_and_not_an_object(tmp_path):
    with pytest.raises(SessionError, match="not valid JSON"):
        Session.from_json("{nope")
    with pytest.raises(SessionError, match="session is"):
        Session.from_json("[1, 2]")
    with pytest.raises(SessionError, match="cannot be read"):
        load_session(tmp_path / "missing.json")


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    session = Session.from_dict(valid())
    target = tmp_path / "s.json"
    session.save(target)
    before = target.read_text()
    monkeypatch.setattr(Session, "to_json", lambda self: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        session.save(target)
    assert target.read_text() == before and json.loads(before)["seed"] == 3
