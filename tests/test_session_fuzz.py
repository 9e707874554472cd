"""Fuzzed session files: every mutation of a valid file parses or is refused with a SessionError naming the field.

Hypothesis mutates the shipped toy sessions and a session with every kind of layer (types, ranges, NaN/Infinity,
huge and negative numbers, nested junk, missing and extra keys, mask PNGs of the wrong size, truncated or with a
huge declared size, non-base64 text, broken JSON text). Never another exception, never a hang (a deadline per
example), never a large allocation (traced per parse; a PNG bomb in a fresh process, by its peak RSS). A few
mutations that parse are rendered on the toy engine: an image, or a PaintError that names the field.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import subprocess
import sys
import textwrap
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from paint_app.errors import PaintError
from paint_app.session import Session, encode_png_mask
from paint_app.toyworld import SESSIONS_DIR

pytestmark = pytest.mark.timeout(240)

# Reproducible in CI: the same examples every run, nothing written into the repository.
FUZZ = settings(derandomize=True, database=None, deadline=2000, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PARSE_EXAMPLES = 2000
RENDER_EXAMPLES = 30
PARSE_PEAK_BYTES = 8 * 2**20  # traced per parse; the hostile files here are all under a megabyte of JSON
BOMB_RSS_BYTES = 40 * 2**20  # decoding the 12000x12000 bomb would take 144 MB
SIZE_FIELDS = {"width", "height", "steps"}  # other fields' limits depend on these


def png(width: int, height: int, mode: str = "L", fill: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), fill).save(buffer, format="PNG")
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def declaring(raw: bytes, width: int, height: int) -> bytes:
    """``raw`` (a PNG) with its header rewritten to declare width x height (a valid CRC; the data unchanged)."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + raw[24:29]
    return raw[:8] + chunk(b"IHDR", ihdr) + raw[33:]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def layered() -> dict:
    """A toy session with a PNG mask, a weighted mix, a factor, and every optional layer field."""
    data = json.loads((SESSIONS_DIR / "red_feature_left_half.json").read_text())
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    data["layers"] += [
        {"name": "ramp", "block": "down_blocks.0.attentions.0", "feature": 3, "mode": "set", "strength": 2.0,
         "mask": {"png": encode_png_mask(ramp)}, "offset": [5, -3], "step_range": [0, 4], "amount": 0.5},
        {"name": "mix", "block": "up_blocks.0.attentions.1", "features": {"1": 1.0, "40": -0.5}, "mode": "erase",
         "mask": {"rects": [[0, 0, 16, 16], [32, 32, 64, 48]]}, "cond_only": True, "enabled": False},
        {"name": "factor", "block": "up_blocks.1.attentions.0", "factor": 24, "mode": "replace",
         "mask": {"rects": [[8, 8, 56, 56]]}},
    ]
    return data


SEEDS = [json.loads(path.read_text()) for path in sorted(SESSIONS_DIR.glob("*.json"))] + [layered()]
GOOD_PNG = png(64, 64)
MASK_TEXTS = st.one_of(
    st.sampled_from([b64(png(64, 64, mode)) for mode in ("L", "LA", "RGBA", "RGB", "P", "1", "I;16")]),
    st.builds(lambda w, h, mode: b64(png(w, h, mode)), st.sampled_from([1, 8, 32, 63, 65, 128]),
              st.sampled_from([8, 64, 100]), st.sampled_from(["L", "RGBA"])),
    st.builds(lambda cut: b64(GOOD_PNG[:cut]), st.integers(0, len(GOOD_PNG) - 1)),  # truncated
    st.builds(lambda w, h: b64(declaring(GOOD_PNG, w, h)),  # huge (or zero) declared sizes, 64x64 of data
              st.sampled_from([0, 1, 64, 20000, 2**31 - 1, 2**32 - 1]), st.sampled_from([0, 64, 12000, 2**32 - 1])),
    st.builds(lambda w: b64(declaring(png(8, 8), 64, 64)) if w else b64(declaring(png(640, 640), 64, 64)),
              st.booleans()),  # the header agrees with the session, the data does not
    st.builds(lambda at, byte: b64(GOOD_PNG[:at] + bytes([byte]) + GOOD_PNG[at + 1:]),  # one corrupted byte
              st.integers(0, len(GOOD_PNG) - 1), st.integers(0, 255)),
    st.binary(max_size=64).map(b64),
    st.text(max_size=40),  # mostly not base64
    st.just(b64(png(64, 64, fill=0)) + "\n"),
    st.sampled_from(["", "=", "iVBORw0KGgo=", b64(b"GIF89a" + bytes(40)), b64(b"\x89PNG\r\n\x1a\n")]),
)
NUMBERS = st.one_of(
    st.integers(), st.integers(-2**70, 2**70),
    st.sampled_from([0, -1, 1, 7, 8, 9, 63, 64, 65, 2048, 2049, 2**31, 2**63 - 1, 2**63, 2**64, 10**30, 10**400,
                     -10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.0, 1e308, 5e-324, 0.5, 2.5, 64.0]),
)
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
HOSTILE = st.one_of(
    JUNK, NUMBERS,
    st.builds(lambda text: {"png": text}, MASK_TEXTS),
    st.builds(lambda rects: {"rects": rects}, st.lists(st.lists(NUMBERS, max_size=5), max_size=3)),
    st.integers(3990, 4010).map(lambda n: "ab" * (n // 2) + "a" * (n % 2)),  # around the prompt's limit
    st.dictionaries(st.sampled_from(["1", "01", "-1", "x", "1e3", " 7", "9" * 5000, "１７"]), NUMBERS, max_size=3),
    st.sampled_from(["", "toy", "add", "paste", "fill", "up_blocks.1.attentions.0", [0, 8], [8, 0], [-64, 64]]),
)
EXTRA_KEYS = st.sampled_from(["feature", "factor", "features", "png", "rects", "copy", "zzz", "__class__", ""])


def paths(value, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value: the keys and indices from the root."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, prefix + (index,))
    return found


def field_name(path: tuple) -> str:
    """A path as the error messages name it: layers[0].mask.png."""
    name = ""
    for key in path:
        name += f"[{key}]" if isinstance(key, int) else (f".{key}" if name else str(key))
    return name


def mutate(data: dict, draw) -> tuple[dict, list[str]]:
    """1-3 mutations of a copy of ``data``; returns it and the fields mutated."""
    data = copy.deepcopy(data)
    changed = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(data)))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "extra", "png"]))
        layers = data.get("layers") if isinstance(data, dict) else None
        if op == "png" and isinstance(layers, list) and layers and all(isinstance(x, dict) for x in layers):
            index = draw(st.integers(0, len(layers) - 1))  # a PNG mask case on a layer that is otherwise intact
            layers[index]["mask"] = {"png": draw(MASK_TEXTS)}
            changed.append(f"layers[{index}].mask")
            continue
        if not path:  # the root itself
            if op == "replace":
                data = draw(HOSTILE)
                return data, ["session"]
            op = "extra"
        target = parent[path[-1]] if path else data
        if op == "extra" and isinstance(target, dict):
            key = draw(EXTRA_KEYS)
            target[key] = draw(HOSTILE)
            changed.append(field_name(path + (key,)))
        elif op == "delete" and path:
            del parent[path[-1]]
            changed.append(field_name(path))
        elif path:
            parent[path[-1]] = draw(HOSTILE)
            changed.append(field_name(path))
    return data, changed


def text_mutation(text: str, draw) -> str:
    """Damage to the JSON text itself: cut short, junk spliced in, a huge number, deep nesting."""
    kind = draw(st.sampled_from(["cut", "splice", "digits", "nest"]))
    at = draw(st.integers(0, len(text)))
    if kind == "cut":
        return text[:at]
    if kind == "splice":
        return text[:at] + draw(st.sampled_from(["\x00", "NaN", "}", "\ud800", "[" * 200, "1e999", "\\u0000"])) + text[at:]
    if kind == "digits":
        return text.replace('"seed": 0', '"seed": ' + "9" * draw(st.sampled_from([19, 400, 4300, 4301, 9000])))
    depth = draw(st.sampled_from([10, 900, 5000, 100_000]))
    return text.replace('"layers": [', '"layers": [' + "[" * depth + "]" * depth + ",", 1)


def named(message: str) -> str:
    """The field an error message names: the words before ' is ' or ' names '."""
    match = re.match(r"(.+?)(?: key)? (?:is|names) ", message)
    assert match, f"the message names no field: {message!r}"
    return match.group(1)


def related(name: str, changed: list[str]) -> bool:
    if name in ("session", "session file") or any(c in SIZE_FIELDS and name.startswith("layers") for c in changed):
        return True
    return any(name == c or name.startswith(c + ".") or name.startswith(c + "[") or c.startswith(name + ".")
               or c.startswith(name + "[") or c == "session" for c in changed)


def check_parse(text: str, changed: list[str] | None) -> Session | None:
    """Parse; a refusal must be a SessionError naming the mutated field (any field for damaged text)."""
    tracemalloc.start()  # the parse only: tracing hypothesis's own drawing would make the test 6x slower
    try:
        session = Session.from_json(text)
    except PaintError as exc:
        message = str(exc)
        name = named(message)
        assert re.fullmatch(r"session( file)?|[a-z_]+(\[\d+\])?(\..+)?", name), message
        if changed is not None:
            assert related(name, changed), f"{message!r} does not name one of the fields changed, {changed}"
        session = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PARSE_PEAK_BYTES, f"parsing took {peak / 2**20:.1f} MB"
    if session is not None:  # what parses saves and parses back to the same session
        assert Session.from_json(session.to_json()).to_dict() == session.to_dict()
    return session


@settings(FUZZ, max_examples=PARSE_EXAMPLES)
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_a_mutated_session_parses_or_names_the_field(seed, data):
    mutated, changed = mutate(seed, data.draw)
    check_parse(json.dumps(mutated), changed)  # NaN and Infinity are written as JSON allows through Python


@settings(FUZZ, max_examples=300)
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_damaged_json_text_is_refused_or_parses(seed, data):
    check_parse(text_mutation(json.dumps(seed), data.draw), None)


def test_seeds_are_valid():
    for seed in SEEDS:
        assert Session.from_dict(seed).to_dict()["layers"]


@pytest.mark.parametrize("width,height", [(20000, 20000), (12000, 12000), (65, 64), (2**32 - 1, 1)])
def test_a_png_declaring_another_size_is_refused_before_decoding(width, height):
    data = copy.deepcopy(SEEDS[-1])
    data["layers"][1]["mask"] = {"png": b64(declaring(GOOD_PNG, width, height))}
    with pytest.raises(PaintError, match=rf"layers\[1\]\.mask\.png is {width}x{height} pixels; allowed: the "
                       r"session's width x height, 64x64"):
        Session.from_dict(data)


BOMB_SCRIPT = textwrap.dedent("""
    import base64, json, resource, sys, zlib
    from paint_app.errors import SessionError
    from paint_app.session import Session

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    def bomb(side):  # an 8-bit grey PNG of side x side zeros: a few hundred kB that decode to side**2 bytes
        packer, rows, body = zlib.compressobj(1), bytes((side + 1) * 100), []
        for _ in range(side // 100):
            body.append(packer.compress(rows))
        body.append(packer.flush())
        header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
        return b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b"")

    data = json.loads(sys.argv[1])
    files = [json.dumps({**data, "layers": [{**data["layers"][0], "mask": {"png": base64.b64encode(bomb(side)).decode()}}]})
             for side in map(int, sys.argv[2:])]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    messages = []
    for text in files:
        try:
            Session.from_json(text)
        except SessionError as exc:
            messages.append(str(exc))
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(json.dumps({"grown": grown, "messages": messages}))
""")


def test_a_png_bomb_is_refused_without_decoding_it():
    """12000x12000 (under PIL's bomb limit: it would decode 144 MB) and 20000x20000 (over it): peak RSS stays flat."""
    command = [sys.executable, "-c", BOMB_SCRIPT, json.dumps(SEEDS[0]), "12000", "20000"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [m.split(";")[0] for m in result["messages"]] == [
        "layers[0].mask.png is 12000x12000 pixels", "layers[0].mask.png is 20000x20000 pixels"]
    assert result["grown"] < BOMB_RSS_BYTES, f"peak RSS grew by {result['grown'] / 2**20:.0f} MB"


# Renders: mutations of the layers that keep the file small enough to draw (64x64, 8 steps on the toy).
LAYER_VALUES = {
    "block": st.sampled_from(["up_blocks.1.attentions.0", "down_blocks.0.attentions.0", "up_blocks.0.attentions.1",
                              "mid_block.attentions.0", "down_blocks.9.attentions.0", "nope"]),
    "feature": st.one_of(st.integers(0, 300), st.sampled_from([2**31, 4095, 4096])),
    "factor": st.one_of(st.integers(0, 40), st.just(2**31)),
    "features": st.dictionaries(st.integers(0, 5000).map(str), st.floats(-100, 100), min_size=1, max_size=4),
    "mode": st.sampled_from(["add", "set", "erase", "replace", "paste", "fill"]),
    "strength": st.floats(-100, 100),
    "amount": st.floats(0, 1),
    "step_range": st.sampled_from([[0, 8], [0, 1], [7, 8], [2, 8]]),
    "offset": st.tuples(st.integers(-64, 64), st.integers(-64, 64)).map(list),
    "enabled": st.booleans(),
    "cond_only": st.booleans(),
    "mask": st.one_of(st.builds(lambda x, y, w, h: {"rects": [[x, y, min(64, x + w), min(64, y + h)]]},
                                st.integers(0, 63), st.integers(0, 63), st.integers(1, 64), st.integers(1, 64)),
                      st.builds(lambda seed: {"png": encode_png_mask(np.random.default_rng(seed).random((64, 64)))},
                                st.integers(0, 100))),
}
CONCEPT_KEYS = ("feature", "factor", "features")


@pytest.fixture(scope="module")
def toy_engine():
    import torch

    from paint_app.engine import load_engine

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_engine("toy", [], "cpu")
    torch.set_num_threads(before)


@settings(FUZZ, max_examples=RENDER_EXAMPLES, deadline=None)
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_a_mutated_session_that_parses_renders_or_names_the_field(toy_engine, seed, data):
    mutated = copy.deepcopy(seed)
    mutated["prompt"] = data.draw(st.sampled_from(["", "a blue square", "x" * 4000, "ünïcödé 🎨", "\x00"]))
    mutated["seed"] = data.draw(st.sampled_from([0, 2**63 - 1]))
    for layer in data.draw(st.lists(st.sampled_from(mutated["layers"]), min_size=1, max_size=2)):
        for key in data.draw(st.lists(st.sampled_from(sorted(LAYER_VALUES)), min_size=1, max_size=4, unique=True)):
            if key in CONCEPT_KEYS:
                for other in CONCEPT_KEYS:
                    layer.pop(other, None)
            layer[key] = data.draw(LAYER_VALUES[key])
    session = Session.from_json(json.dumps(mutated))  # every value above is one the parser allows
    try:
        image = toy_engine.generate(session)
    except PaintError as exc:
        assert re.search(r"layers\[\d+\]|block|feature|factor|mode", str(exc)), str(exc)
    else:
        assert image.size == (session.width, session.height)
