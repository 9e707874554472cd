"""Feature maps read during a generation: same pixels, hooks removed, edits visible, points, factors, heatmaps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from paint_app import explore
from paint_app.errors import PaintError
from paint_app.painting import Concept
from paint_app.session import Session
from sae.hooks import named_hooks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BLOCK = "down_blocks.0.attentions.0"


def plain(**kwargs) -> Session:
    data = {"version": 1, "model": "tiny-random-sd", "prompt": "a red circle on grass", "seed": 3, "width": 64,
            "height": 64, "steps": 4, "guidance": 0.0, "layers": []}
    data.update(kwargs)
    return Session.from_dict(data)


def painted(feature: int = 5, rect=(0, 0, 32, 64), strength: float = 12.0, **kwargs) -> Session:
    layer = {"block": BLOCK, "feature": feature, "strength": strength, "mask": {"rects": [list(rect)]}}
    return plain(layers=[layer], **kwargs)


def hook_count(unet) -> int:
    """Torch hooks and named hooks on the UNet and its blocks."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules()) + len(named_hooks(unet))


@pytest.fixture(scope="module")
def painted_maps(tiny_engine):
    return explore.capture_feature_maps(tiny_engine, painted())


def test_capture_gives_the_same_pixels_and_leaves_no_hook(tiny_engine, painted_maps):
    image, maps = painted_maps
    assert np.array_equal(np.asarray(image), np.asarray(tiny_engine.generate(painted())))
    assert hook_count(tiny_engine.pipeline.unet) == 0
    assert set(maps.blocks) == {BLOCK, "mid_block.attentions.0"}
    assert maps.blocks[BLOCK].grid == (16, 16) and maps.blocks["mid_block.attentions.0"].grid == (8, 8)


def test_capture_of_a_kept_outside_painting_reads_only_the_painted_run(tiny_engine):
    """keep_outside needs the plain run; whether it is cached yet or not, the maps are those of the painted run."""
    from paint_app.engine import Engine

    fresh, warmed = (Engine(tiny_engine.model, tiny_engine.concepts) for _ in range(2))
    session = painted(keep_outside=True)
    warmed.generate(plain())
    image, maps = explore.capture_feature_maps(fresh, session)
    warm_image, warm_maps = explore.capture_feature_maps(warmed, session)
    assert np.array_equal(np.asarray(image), np.asarray(warm_image))
    for block in maps.blocks:
        assert np.array_equal(maps.blocks[block].values, warm_maps.blocks[block].values), block


def test_capture_with_guidance_reads_the_conditional_row(tiny_engine):
    image, maps = explore.capture_feature_maps(tiny_engine, plain(guidance=3.0, negative_prompt="blue"), [BLOCK])
    assert np.array_equal(np.asarray(image), np.asarray(tiny_engine.generate(plain(guidance=3.0,
                                                                                    negative_prompt="blue"))))
    assert list(maps.blocks) == [BLOCK] and maps.blocks[BLOCK].values.shape[:2] == (16, 16)


def test_painted_feature_shows_where_it_was_painted(tiny_engine, painted_maps):
    _, maps = painted_maps
    heat = explore.heatmap(maps, BLOCK, 5)
    assert heat.shape == (64, 64)
    assert heat[:, :24].mean() > 3 * heat[:, 40:].mean()
    names = [(r["block"], r["feature"]) for r in explore.top_features_at(tiny_engine, maps, 10, 30)]
    assert names[0] == (BLOCK, 5)
    outside = [(r["block"], r["feature"]) for r in explore.top_features_at(tiny_engine, maps, 60, 30, n=3)]
    assert (BLOCK, 5) not in outside


def test_capture_errors_are_clean_and_hooks_are_removed(tiny_engine):
    bad = plain(layers=[{"block": BLOCK, "feature": 999, "mask": {"rects": [[0, 0, 8, 8]]}}])
    with pytest.raises(PaintError, match="999"):
        explore.capture_feature_maps(tiny_engine, bad)
    assert hook_count(tiny_engine.pipeline.unet) == 0


def test_points_outside_the_image_are_refused(tiny_engine, painted_maps):
    _, maps = painted_maps
    with pytest.raises(PaintError, match="inside the image"):
        explore.top_features_at(tiny_engine, maps, 64, 3)


def test_factors_at_a_point_are_ranked(tiny_engine, painted_maps):
    _, maps = painted_maps
    rows = explore.top_factors_at(tiny_engine, maps, 10, 30)
    assert rows and all(r["value"] > 0 for r in rows)
    assert [r["value"] for r in rows] == sorted((r["value"] for r in rows), reverse=True)
    assert rows[0]["label"].startswith("factor")


def test_heatmap_overlay_and_region(painted_maps):
    image, maps = painted_maps
    heat = explore.heatmap(maps, BLOCK, 5)
    overlay = explore.heatmap_overlay(image, heat, scale=2)
    assert overlay.size == (128, 128)
    pixels = np.asarray(overlay, np.float32)
    assert pixels[64, 20, 0] - pixels[64, 20, 1] > pixels[64, 120, 0] - pixels[64, 120, 1]
    region = explore.region_of(maps, BLOCK, 5)
    assert region[:, :24].mean() > 0.5 and region[:, 44:].max() == 0
    with pytest.raises(PaintError, match="not active anywhere"):
        explore.region_of(maps, BLOCK, max(set(range(64)) - set(maps.blocks[BLOCK].indices.ravel().tolist())))
    with pytest.raises(PaintError, match="feature maps exist for"):
        explore.heatmap(maps, "up_blocks.1.attentions.0", 0)


def test_output_site_sae_is_read_too(tmp_path):
    from helpers import make_sae, save_sae

    from paint_app.engine import load_engine

    folder = save_sae(tmp_path / BLOCK, make_sae(32, 16, block=BLOCK, site="output"))
    engine = load_engine("tiny-random-sd", [str(folder)], "cpu")
    _, maps = explore.capture_feature_maps(engine, plain())
    assert maps.blocks[BLOCK].values.max() > 0


def test_explore_cache_preview_and_examples(tiny_engine):
    cache = explore.ExploreCache(tiny_engine, probe_seeds=(0,))
    first = cache.preview(Concept(BLOCK, feature=0), 4.0)
    assert first.size == (64 * 2 + 2, 64)
    assert cache.preview(Concept(BLOCK, feature=0), 4.0) is first
    assert not np.array_equal(np.asarray(first)[:, :64], np.asarray(first)[:, 66:])
    assert cache.probe_prompts()[0] == "" and "red thing" in cache.probe_prompts()
    examples = cache.top_examples(BLOCK, {0: 1.0}, n=2)
    assert 1 <= len(examples) <= 2
    assert isinstance(examples[0][0], Image.Image) and "peak" in examples[0][1]
    peaks = [float(caption.rsplit(" ", 1)[1]) for _, caption in examples]
    assert peaks == sorted(peaks, reverse=True)
