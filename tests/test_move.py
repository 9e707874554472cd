"""The ``move`` mode: a part of the painting's own plain run moved, scaled, re-weighted or copied, checked against
activations computed by hand from a recording of that run; the no-op rule; sessions; a toy object moved."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_sae_folder
from scipy import ndimage

from paint_app.concepts import ConceptLibrary
from paint_app.engine import Engine
from paint_app.errors import ModelError, PaintError, SessionError
from paint_app.models import load_model
from paint_app.painting import Concept, Layer, Painting
from paint_app.session import Session
from sae.exemplars import shift
from sae.hooks import block_input, block_output, site_value
from sae.pipelines import get_block

BLOCK = "down_blocks.0.attentions.0"  # 32 channels, 16x16 grid for 64x64 images: a cell is 4 pixels
FEATURES = (3, 5)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("move-saes")
    tiny_sae_folder(root, BLOCK, 32)
    model = load_model("tiny-random-sd", device="cpu")
    return Engine(model, ConceptLibrary.load([str(root / BLOCK)], model.profile))


def part_mask() -> np.ndarray:
    """Grid cells rows 4-7, columns 4-7 (pixels 16-31), fully covered."""
    mask = np.zeros((64, 64), np.float32)
    mask[16:32, 16:32] = 1.0
    return mask


def painting(*layers: Layer, **kwargs) -> Painting:
    settings = dict(model="tiny-random-sd", prompt="a red circle on grass", seed=3, width=64, height=64, steps=3,
                    guidance=0.0)
    settings.update(kwargs)
    return Painting(**settings, layers=list(layers))


def move_layer(offset=(12, 0), strength: float = 1.0, gains=(1.0, 1.0), copy: bool = False, **kwargs) -> Layer:
    concept = Concept.of_mix(BLOCK, dict(zip(FEATURES, gains)))
    return Layer(concept, part_mask(), mode="move", strength=strength, offset=offset, copy=copy, **kwargs)


def outputs(engine: Engine, painted: Painting) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per step, the block's (input, output) as the rest of the UNet sees it (after the edits)."""
    engine.make_sources(painted)  # the recording run, before our hook
    seen = []
    handle = get_block(engine.pipeline.unet, BLOCK).register_forward_hook(
        lambda m, args, kwargs, out: seen.append((block_input(args, kwargs).clone(), block_output(out).clone())),
        with_kwargs=True)
    try:
        engine.generate(painted, replay=False)
    finally:
        handle.remove()
    return seen


@pytest.fixture(scope="module")
def recorded(engine):
    """The plain run at the block, by step: (input, output) [1, C, 16, 16]."""
    return outputs(engine, painting())


def background(output: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """The mean output over the cells the part does not touch, [rows, C, 1, 1]."""
    outside = torch.from_numpy(mask.reshape(16, 4, 16, 4).max(axis=(1, 3)) == 0)
    return output[..., outside].mean(-1)[..., None, None]


NEW = (slice(4, 8), slice(7, 11))  # the part moved by 12 px = 3 cells to the right
OLD = (slice(4, 8), slice(4, 7))  # where it was and is not now
ELSEWHERE = (slice(9, 16), slice(0, 16))


def at(tensor: torch.Tensor, cells) -> torch.Tensor:
    return tensor[..., cells[0], cells[1]]


@pytest.mark.parametrize("strength", [1.0, 0.0, 2.0])
def test_a_move_writes_the_scaled_part_where_it_goes_and_the_background_where_it_was(engine, recorded, strength):
    edited = outputs(engine, painting(move_layer(strength=strength)))
    assert len(edited) == len(recorded) == 3
    for (_, plain), (_, new) in zip(recorded, edited):
        b = background(plain, part_mask())
        expected = b + strength * (shift(plain, 0, 3) - b)
        torch.testing.assert_close(at(new, NEW), at(expected, NEW), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(at(new, OLD), at(b.expand_as(plain), OLD), rtol=1e-5, atol=1e-5)
    # nothing is written elsewhere: at the first step the block's input is the plain run's, so are those cells
    assert torch.equal(at(edited[0][1], ELSEWHERE), at(recorded[0][1], ELSEWHERE))
    assert not torch.equal(at(edited[1][1], NEW), at(recorded[1][1], NEW))


def test_a_copy_keeps_the_part_where_it_was(engine, recorded):
    edited = outputs(engine, painting(move_layer(copy=True)))
    for (_, plain), (_, new) in zip(recorded[:1], edited[:1]):
        assert torch.equal(at(new, OLD), at(plain, OLD))
        b = background(plain, part_mask())
        torch.testing.assert_close(at(new, NEW), at(b + (shift(plain, 0, 3) - b), NEW), rtol=1e-5, atol=1e-5)


def test_gains_change_the_part_by_its_features_directions(engine, recorded):
    sae = engine.concepts.blocks[BLOCK].sae
    edited = outputs(engine, painting(move_layer(gains=(3.0, 0.0))))
    for (h_in, plain), (_, new) in zip(recorded, edited):
        site = site_value(sae.config.site, h_in, plain)[-1].permute(1, 2, 0)  # [16, 16, C]
        z = sae.encode(site)[..., list(FEATURES)]  # [16, 16, 2]
        change = (z * torch.tensor([2.0, -1.0])) @ sae.W_dec[list(FEATURES)]  # (g - 1) z d
        b = background(plain, part_mask())
        expected = b + (shift(plain, 0, 3) - b) + shift(change.permute(2, 0, 1), 0, 3)[None]
        torch.testing.assert_close(at(new, NEW), at(expected, NEW), rtol=1e-4, atol=1e-4)


def test_moved_off_the_image_a_part_is_erased(engine, recorded):
    edited = outputs(engine, painting(move_layer(offset=(-64, 0))))
    plain = recorded[0][1]
    b = background(plain, part_mask())
    torch.testing.assert_close(at(edited[0][1], (slice(4, 8), slice(4, 8))),
                               b.expand(-1, -1, 4, 4), rtol=1e-5, atol=1e-5)
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[4:8, 4:8] = False
    assert torch.equal(edited[0][1][..., outside], plain[..., outside])


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_an_idle_move_layer_changes_no_byte(engine):
    add = Layer(Concept(BLOCK, feature=1), part_mask(), strength=8.0, offset=(24, 24))
    for idle in (move_layer(offset=(0, 0)), move_layer(offset=(1, -1), copy=True)):  # 1 px: 0 cells
        for others in ([], [add]):
            for keep in (False, True):
                alone = engine.generate(painting(*others, keep_outside=keep))
                assert np.array_equal(pixels(engine.generate(painting(*others, idle, keep_outside=keep))),
                                      pixels(alone))
    assert engine.plan(painting(move_layer(offset=(0, 0)))).edits == []


def test_keep_outside_holds_the_image_beyond_both_places(engine):
    plain = pixels(engine.generate(painting()))
    moved = pixels(engine.generate(painting(move_layer(offset=(24, 16)), keep_outside=True)))
    plan = engine.plan(painting(move_layer(offset=(24, 16))))
    assert [edit.origin.sum() for edit in plan.edits] == [16 * 16]
    near = np.zeros((64, 64), bool)
    near[8:56, 8:64] = True  # both places (16-32 and 32-48 / 40-56), with a latent cell around them
    assert np.array_equal(moved[~near], plain[~near])
    assert not np.array_equal(moved[near], plain[near])


def test_a_session_with_a_move_layer_renders_the_same_bytes(engine, tmp_path):
    painted = painting(move_layer(offset=(-8, 12), strength=1.5, gains=(2.0, 1.0), copy=True),
                       move_layer(offset=(8, 0)))
    session = Session.of(painted)
    data = session.to_dict()
    assert data["layers"][0]["copy"] is True and "copy" not in data["layers"][1]
    session.save(tmp_path / "moved.json")
    again = Session.from_json((tmp_path / "moved.json").read_text())
    assert [layer.copy for layer in again.to_painting().layers] == [True, False]
    assert again.to_painting().fingerprint() == painted.fingerprint()
    assert np.array_equal(pixels(engine.generate(again)), pixels(engine.generate(painted)))
    copied = painting(move_layer(copy=True))
    assert copied.fingerprint() != painting(move_layer()).fingerprint()


def test_copy_with_another_mode_and_a_block_without_an_sae_are_refused(engine):
    data = {"version": 1, "model": "tiny-random-sd", "width": 64, "height": 64, "steps": 2,
            "layers": [{"block": BLOCK, "feature": 1, "mode": "add", "copy": True, "mask": {"rects": [[0, 0, 8, 8]]}}]}
    with pytest.raises(SessionError, match=r"layers\[0\]\.copy is True; allowed: true only with mode move"):
        Session.from_dict(data)
    data["layers"][0]["copy"] = "yes"
    with pytest.raises(SessionError, match=r"layers\[0\]\.copy is 'yes'; allowed: true or false"):
        Session.from_dict(data)
    wrong = Layer(Concept(BLOCK, feature=1), part_mask(), mode="set", copy=True)
    with pytest.raises(PaintError, match=r"layers\[0\]\.copy is true with mode 'set'; allowed: true only with mode move"):
        engine.generate(painting(wrong))
    elsewhere = Layer(Concept("mid_block.attentions.0", feature=1), part_mask(), mode="move", offset=(16, 0))
    with pytest.raises((ModelError, PaintError), match="mid_block.attentions.0"):
        engine.generate(painting(elsewhere))
    with pytest.raises(ModelError, match="no SAE is loaded for that block"):
        engine.source(painting(), "mid_block.attentions.0")


def test_feature_maps_of_a_move_painting_see_its_run_only(engine):
    from paint_app.explore import capture_feature_maps

    moved = painting(move_layer(offset=(8, 4)), seed=21)
    image, first = capture_feature_maps(engine, moved, [BLOCK])  # the source made first, unseen
    again, second = capture_feature_maps(engine, moved, [BLOCK])  # the source cached
    assert np.array_equal(pixels(image), pixels(again))
    assert np.array_equal(first.blocks[BLOCK].values, second.blocks[BLOCK].values)


def test_the_source_is_recorded_once_with_the_plain_run(engine):
    moved = painting(move_layer(offset=(4, 4)), seed=11)
    calls = []
    handle = get_block(engine.pipeline.unet, BLOCK).register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        engine.generate(moved)
        first = len(calls)
        engine.generate(painting(move_layer(offset=(8, 8)), seed=11, keep_outside=True))
    finally:
        handle.remove()
    assert first == 2 * 3  # the recording (the plain run) and the painted run
    assert len(calls) == first + 3  # the source and the plain run keep_outside needs are cached


def test_a_toy_object_moved_by_half_the_image_is_there_and_gone_from_where_it_was(toy):
    """On the toy model's 8x8 block with the rest of the image kept: the red circle the model drew on the left,
    dragged 32 px right, is red there and background where it was; erased (scale 0) it is gone; copied it is at
    both places; beyond both places (and a latent cell around them) the image is the plain one."""
    from paint_app.toyworld.judges import colour_fractions, foreground, judge_colour

    engine = Engine(toy, ConceptLibrary.load([], toy.profile))
    settings = dict(model="toy", prompt="a red circle on the left", seed=1, steps=toy.profile.steps,
                    guidance=toy.profile.guidance, keep_outside=True)
    plain = pixels(engine.generate(Painting(**settings)))
    drawn = foreground(plain)
    assert judge_colour(plain, drawn)[0] == "red" and drawn[:, 32:].sum() == 0
    cells = np.kron(drawn.reshape(8, 8, 8, 8).any(axis=(1, 3)), np.ones((8, 8))) > 0  # the object's cells
    goes, gone = np.roll(drawn, 32, axis=1), drawn & ~np.roll(drawn, 32, axis=1)
    beyond = ~ndimage.binary_dilation(cells | np.roll(cells, 32, axis=1), iterations=4)  # a latent cell is 4 px

    def moved(**edit) -> np.ndarray:
        layer = Layer(Concept.of_mix("up_blocks.0.attentions.1", {0: 1.0}), cells.astype(np.float32), mode="move",
                      **edit)
        return pixels(engine.generate(Painting(**settings, layers=[layer])))

    there = moved(offset=(32, 0))
    assert colour_fractions(there, goes)["red"] > 0.6
    assert foreground(there)[gone].mean() < 0.15
    assert np.array_equal(there[beyond], plain[beyond])
    erased = moved(offset=(0, 0), strength=0.0)
    assert foreground(erased)[drawn].mean() < 0.15
    both = moved(offset=(32, 0), copy=True)
    assert colour_fractions(both, goes)["red"] > 0.6 and colour_fractions(both, drawn)["red"] > 0.6
