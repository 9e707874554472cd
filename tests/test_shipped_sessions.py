"""The shipped session files render to the same pixels as when they were made (pinned by SHA-256 of the RGB bytes).

These hashes were taken before the "one house" redesign; a refactor that changes a single pixel of any of them
fails here. Re-pin only for a deliberate change of the model, its SAEs or the steering math, and say so."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from paint_app.session import load_session

PINNED = {
    "red_factor_left_half": "437dea0ba77c678fabe6f241fdec8efb3d80f0c54550a97dede6fa34ba935ca9",
    "red_feature_left_half": "bef1c806a91a5e65318385ed5a988f5e05915d86ea1e31e551a7e96af067d197",
    "red_replace_left_half": "6490157236cbdc802d5b9d3783639fe05e3f235657b37da158faaba605f68b9d",
    "striped_paste_top_left": "a070d5c262a9f108cc13700721aec5585ba6cc3bee435c7364519d4674e794d9",
}


@pytest.fixture(scope="module")
def toy_engine():
    from paint_app.engine import load_engine

    return load_engine("toy", [], "cpu")


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_session_renders_to_pinned_pixels(toy_engine, name):
    from paint_app.toyworld import SESSIONS_DIR

    image = toy_engine.generate(load_session(SESSIONS_DIR / f"{name}.json"))
    digest = hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()
    assert digest == PINNED[name]


def test_every_shipped_session_is_pinned():
    from paint_app.toyworld import SESSIONS_DIR

    assert {path.stem for path in SESSIONS_DIR.glob("*.json")} == set(PINNED)
