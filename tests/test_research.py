"""The finished experiments in ``research/`` (activation patching, prototype replacement, exemplars) on the toy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paint_app.toyworld import SAES_DIR
from paint_app.toyworld.judges import Judges


def test_research_is_apart_from_the_installed_package():
    import importlib.util

    import research.exemplars

    assert importlib.util.find_spec("paint_app.toyworld.patching") is None
    assert importlib.util.find_spec("paint_app.toyworld.prototypes") is None
    with pytest.raises(SystemExit) as exit_info:
        research.exemplars.main(["--help"])
    assert exit_info.value.code == 0


def test_patching_replays_a_block_and_the_last_block_carries_the_colour(toy):
    from research.patching import Patcher, ceilings

    block = "up_blocks.1.attentions.1"
    patcher = Patcher(toy.pipeline, [block], steps=8, guidance=3.0, size=64)
    own, run = patcher.record("a blue square", 7)
    assert len(run[block]) == 8  # one UNet call a step, CFG batched
    assert np.array_equal(patcher.patched("a blue square", 7, block, 0, run), own)
    cells = torch.zeros(16, 16)
    cells[4:12, 2:8] = 1
    # a run's mean difference with itself is zero: adding it changes nothing
    assert np.array_equal(patcher.patched("a blue square", 7, block, 0, run, cells, "mean_added", run), own)
    with pytest.raises(ValueError, match="allowed: values, mean, mean_added"):
        patcher.patched("a blue square", 7, block, 0, run, cells, "median")
    [row] = ceilings(toy.pipeline, Judges.load(), [("blue", "purple", "square", 7)], 8, 3.0, 64, blocks=[block])
    assert (row.block, row.grid, row.pairs) == (block, 16, 1)
    assert row.wholesale == 1.0  # the object takes the donor caption's colour
    # on its object's left-half cells: the donor's values, or their mean set there, recolour the object; the same
    # mean reached by adding the difference of the two runs' means does not (the block holds colour as a value)
    assert (row.left_pairs, row.left_half, row.mean_replaced, row.mean_added) == (1, 1.0, 1.0, 0.0)


def test_weighted_sums_give_every_grid_the_mean_over_the_same_pixels():
    from research.prototypes import weighted_sums

    recording = {"fine": [torch.full((2, 3, 16, 16), 5.0)], "coarse": [torch.full((2, 3, 8, 8), 5.0)],
                 "finer": [torch.full((2, 3, 32, 32), 5.0)]}
    cells = torch.zeros(16, 16)
    cells[2:6, 4:10] = 1
    means = {b: total / cells.sum() for b, total in weighted_sums(recording, cells).items()}
    assert all(torch.allclose(m, torch.full((1, 2, 3), 5.0)) for m in means.values())


def test_prototype_replacement_paints_a_colour_in_the_rectangle_and_keeps_the_rest(toy):
    from research.prototypes import LATE_BLOCKS, PrototypePainter, colour_prototypes, paint_colours

    painter = PrototypePainter(toy.pipeline, list(LATE_BLOCKS), steps=8, guidance=3.0, size=64)
    prototypes = colour_prototypes(painter, "red", n_scenes=2)
    # one vector per UNet call (step) and CFG half, of each block's width
    assert {b: tuple(p.shape) for b, p in prototypes.items()} == {
        "up_blocks.0.attentions.1": (8, 2, 64), "up_blocks.1.attentions.0": (8, 2, 32),
        "up_blocks.1.attentions.1": (8, 2, 32)}
    [kept] = paint_colours(painter, Judges.load(), {"red": prototypes}, k=1, keep=True)
    [free] = paint_colours(painter, Judges.load(), {"red": prototypes}, k=1, keep=False)
    assert kept.success == 1.0  # PaintBench's first red trial: judged red inside the rectangle
    # the app's "keep the rest" holds the rest exactly; left free, the painted run moves pixels far from it
    assert kept.far_leakage == 0.0 < free.far_leakage


def test_shifting_cells_to_a_colour_mean_recolours_and_to_their_own_changes_nothing(toy):
    from paint_app.toyworld.bench import rect_mask, region_rect
    from paint_app.toyworld.evaluate import object_region
    from research.patching import grid_cells, region_mean
    from research.prototypes import PrototypePainter, colour_prototypes

    blocks = ["up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
    painter = PrototypePainter(toy.pipeline, blocks, steps=8, guidance=3.0, size=64, how="shift")
    image, run = painter.record("a blue square", 7)
    mask = rect_mask(region_rect(object_region(image)))
    cells = grid_cells(mask, 16)
    own_means = {b: torch.stack([region_mean(o, cells)[..., 0, 0] for o in run[b]]) for b in blocks}
    unchanged = painter.painted("a blue square", 7, own_means, mask)
    assert np.abs(unchanged.astype(int) - image.astype(int)).max() <= 1  # float rounding at most
    judges = Judges.load()
    assert judges.colour(image, mask)[0] == "blue"
    red = painter.painted("a blue square", 7, colour_prototypes(painter, "red", n_scenes=2), mask)
    assert judges.colour(red, mask)[0] == "red"
    with pytest.raises(ValueError, match="allowed: set, shift"):
        PrototypePainter(toy.pipeline, blocks, steps=8, guidance=3.0, size=64, how="add")


def test_background_prototypes_erase_each_colour_on_its_first_erase_trial(toy):
    from paint_app.toyworld.world import BACKGROUND_NAMES, COLOUR_NAMES
    from research.prototypes import LATE_BLOCKS, PrototypePainter, background_prototypes, erase_colours

    painter = PrototypePainter(toy.pipeline, list(LATE_BLOCKS), steps=8, guidance=3.0, size=64)
    backgrounds = background_prototypes(painter, n_scenes=1)
    assert sorted(backgrounds) == sorted(BACKGROUND_NAMES)
    results = erase_colours(painter, Judges.load(), backgrounds, k=1)
    assert [r.colour for r in results] == list(COLOUR_NAMES)
    assert all(r.success == 1.0 and r.far_leakage == 0.0 for r in results)  # colour gone, the rest kept


def test_prototypes_chosen_by_an_sae_feature_need_a_labelled_feature(toy, tmp_path):
    import shutil

    from research.prototypes import PrototypePainter, sae_prototypes
    from sae.labels import Label, save_labels

    blocks = ["up_blocks.0.attentions.1", "up_blocks.1.attentions.0"]
    painter = PrototypePainter(toy.pipeline, blocks, steps=8, guidance=3.0, size=64)
    shipped = SAES_DIR / "up_blocks.1.attentions.0"
    chosen = sae_prototypes(painter, shipped, ["red", "blue"], n_prompts=3, top=0.5)
    assert {c: {b: tuple(p.shape) for b, p in protos.items()} for c, protos in chosen.items()} == {
        c: {"up_blocks.0.attentions.1": (8, 2, 64), "up_blocks.1.attentions.0": (8, 2, 32)} for c in ("red", "blue")}
    assert not torch.allclose(chosen["red"]["up_blocks.1.attentions.0"], chosen["blue"]["up_blocks.1.attentions.0"])
    for name in ("config.json", "sae.safetensors"):
        shutil.copy2(shipped / name, tmp_path / name)
    save_labels(tmp_path, {0: Label("red", 0.5, "ground-truth")})
    with pytest.raises(ValueError, match="has no feature labelled purple"):
        sae_prototypes(painter, tmp_path, ["red", "purple"], n_prompts=1)


def test_benchmarks_name_unknown_blocks_and_bad_counts(toy, capsys):
    from research.patching import load_with_blocks, unknown_blocks

    assert unknown_blocks(toy.pipeline.unet, ["up_blocks.1.attentions.0"], 64) is None
    problem = unknown_blocks(toy.pipeline.unet, ["up_blocks.9.attentions.0"], 64)
    assert problem.startswith("--blocks names up_blocks.9.attentions.0; this UNet's transformer blocks are: ")
    assert "up_blocks.1.attentions.1" in problem
    assert load_with_blocks("toy", ["up_blocks.9.attentions.0"]) == (None, problem)
    from research.prototypes import main

    with pytest.raises(SystemExit):
        main(["--scenes", "0"])
    assert "--scenes is 0; allowed: an integer >= 1" in capsys.readouterr().err
