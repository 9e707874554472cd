"""The math of an edit, checked at the block: raw output (hook before the plan's) vs edited output (hook after)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_sae

from paint_app.errors import ModelError, PaintError
from paint_app.steering import Edit, Plan, apply_plan, grid_mask, keep_outside, painted_cover, paste_outside
from sae.hooks import BlockHook, attached, block_input, block_output, named_hooks
from sae.pipelines import get_block
from sae.prototypes import Prototypes

BLOCK = "down_blocks.0.attentions.0"  # 32 channels, 16x16 grid for 64x64 images


@pytest.fixture(scope="module")
def sae():
    return make_sae(32, 64, k=4, block=BLOCK, seed=7)


def soft_mask() -> torch.Tensor:
    """A 64x64 mask: a full rectangle, a half-covered column of cells, a soft ramp, zero elsewhere."""
    mask = np.zeros((64, 64), np.float32)
    mask[8:40, 4:24] = 1.0
    mask[8:40, 24:26] = 1.0  # half of each cell in grid column 6
    mask[48:60, 32:64] = np.linspace(0.1, 0.9, 32, dtype=np.float32)[None, :]
    return torch.from_numpy(mask)


def area_average(mask: torch.Tensor, cell: int = 4) -> torch.Tensor:
    """Independent of grid_mask: mean over each cell x cell block of pixels."""
    array = mask.numpy()
    rows, cols = array.shape[0] // cell, array.shape[1] // cell
    return torch.from_numpy(array.reshape(rows, cell, cols, cell).mean(axis=(1, 3)))


class Recorder(BlockHook):
    """A named hook recording the block's input and output as it is at that place in the block's hook chain."""

    def __init__(self, into: list) -> None:
        super().__init__()
        self.into = into

    def after(self, module, args, kwargs, output):
        self.into.append((block_input(args, kwargs).clone(), block_output(output).clone()))


def run(pipe, plan: Plan, steps: int = 1, guidance: float = 0.0, block: str = BLOCK):
    """Generate once; return per UNet call the block's (input, raw output, edited output).

    The raw output is read by a named hook attached before the plan's (so inside them); the edited one by a torch
    forward hook, which runs after the module's whole forward, named hooks included."""
    module = get_block(pipe.unet, block)
    raw, edited = [], []
    with attached([(module, "test.raw", Recorder(raw))]), apply_plan(pipe.unet, plan, cfg=guidance > 1):
        last = module.register_forward_hook(lambda m, a, k, o: edited.append(block_output(o).clone()),
                                            with_kwargs=True)
        try:
            pipe("a red circle", num_inference_steps=steps, guidance_scale=guidance, width=64, height=64,
                 generator=torch.Generator().manual_seed(0))
        finally:
            last.remove()
    return [(h_in, h_out, new) for (h_in, h_out), new in zip(raw, edited)]


def to_cells(tensor: torch.Tensor) -> torch.Tensor:
    """[batch, C, H, W] -> [batch, H, W, C]."""
    return tensor.permute(0, 2, 3, 1)


def test_grid_mask_is_the_area_average():
    mask = soft_mask()
    torch.testing.assert_close(grid_mask(mask, (16, 16)), area_average(mask))
    assert 0 < float(grid_mask(mask, (16, 16))[3, 6]) == pytest.approx(0.5)


def test_painted_cover_holds_every_touched_cell_and_keep_outside_blends_by_it():
    left, soft = torch.zeros(64, 64), torch.zeros(64, 64)
    left[:, :16] = 1.0
    soft[:32, 48:] = 0.5  # a half-strength brush
    soft[40, 40] = 0.2  # one faint pixel: a sixteenth of its cell
    plan = Plan([Edit(BLOCK, (1,), left), Edit(BLOCK, (2,), soft)], {})
    cover = painted_cover(plan, (16, 16))
    expected = torch.zeros(16, 16)
    expected[:, :4] = expected[:8, 12:] = expected[10, 10] = 1.0
    assert torch.equal(cover, expected)
    painted, unpainted = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    half = cover.clone()
    half[:8, 12:] = 0.5
    kept = keep_outside(painted, unpainted, half)
    assert torch.equal(kept[..., :4], painted[..., :4]) and torch.equal(kept[..., 4:10], unpainted[..., 4:10])
    torch.testing.assert_close(kept[..., :8, 12:], (painted[..., :8, 12:] + unpainted[..., :8, 12:]) / 2)


def test_paste_outside_keeps_the_unpainted_pixels_beyond_one_cell_of_the_cover():
    from PIL import Image

    painted = Image.fromarray(np.full((64, 64, 3), 200, np.uint8))
    unpainted = Image.fromarray(np.full((64, 64, 3), 10, np.uint8))
    cover = torch.zeros(16, 16)
    cover[:, :8] = 1.0
    out = np.asarray(paste_outside(painted, unpainted, cover))
    assert (out[:, :30] == 200).all() and (out[:, 34:] == 10).all()
    assert ((10 < out[:, 30:34]) & (out[:, 30:34] < 200)).all()  # a soft edge, about one cell wide


def test_add_changes_only_masked_cells_by_m_s_sigma_d(pipe, sae):
    mask = soft_mask()
    plan = Plan([Edit(BLOCK, (5,), mask, strength=3.0, mode="add")], {BLOCK: sae})
    (_, h_out, new), = run(pipe, plan)
    diff = to_cells(new - h_out)[0]
    m = area_average(mask)
    expected = m[..., None] * (3.0 * sae.feature_mean[5] * sae.W_dec[5]).detach()
    torch.testing.assert_close(diff, expected, rtol=1e-4, atol=1e-5)
    assert torch.all(diff[m == 0] == 0), "cells outside the mask must be bit-identical"
    assert torch.all(diff[m > 0].abs().sum(-1) > 0)


def test_factor_add_uses_weighted_sum_of_directions(pipe, sae):
    mask = torch.ones(64, 64)
    plan = Plan([Edit(BLOCK, (1, 2, 3), mask, weights=(1.0, 0.5, 0.25), strength=2.0)], {BLOCK: sae})
    (_, h_out, new), = run(pipe, plan)
    w = torch.tensor([1.0, 0.5, 0.25])
    direction = ((w * sae.feature_mean[[1, 2, 3]]) @ sae.W_dec[[1, 2, 3]]).detach()
    torch.testing.assert_close(to_cells(new - h_out)[0], (2.0 * direction).expand(16, 16, 32), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode,strength", [("set", 2.5), ("erase", 7.0)])
def test_set_and_erase_move_only_feature_f_and_keep_the_error(pipe, sae, mode, strength):
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1.0
    with torch.no_grad():
        (h_in, h_out, _), = run(pipe, Plan())
        x = to_cells(h_out - h_in)[0]
        z = sae.encode(x)
    feature = int(torch.mode(z.argmax(-1).flatten()).values)  # a feature active in many cells
    plan = Plan([Edit(BLOCK, (feature,), mask, strength=strength, mode=mode)], {BLOCK: sae})
    (_, h_out2, new), = run(pipe, plan)
    assert torch.equal(h_out2, h_out)
    target = 0.0 if mode == "erase" else strength * float(sae.feature_mean[feature])
    m = area_average(mask)[..., None]
    expected_change = m * (target - z[..., feature:feature + 1]) * sae.W_dec[feature].detach()
    torch.testing.assert_close(to_cells(new - h_out)[0], expected_change, rtol=1e-4, atol=1e-5)
    # error-preserving: in masked cells the new site value is decode(z with z_f := target) + the old SAE error
    with torch.no_grad():
        x_new = to_cells(new - h_in)[0]
        z_target = z.clone()
        z_target[..., feature] = target
        error = x - sae.decode(z)
        torch.testing.assert_close(x_new[:, :8], (sae.decode(z_target) + error)[:, :8], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x_new[:, 8:], x[:, 8:])
    assert bool((z[:, :8, feature] > 0).any()), "the test needs cells where the feature is active"


def test_edits_on_one_block_add_up(pipe, sae):
    left, right = torch.zeros(64, 64), torch.zeros(64, 64)
    left[:, :40] = 1.0
    right[:, 24:] = 0.5
    one = Plan([Edit(BLOCK, (3,), left, strength=1.0)], {BLOCK: sae})
    two = Plan([Edit(BLOCK, (9,), right, strength=-2.0)], {BLOCK: sae})
    both = Plan(one.edits + two.edits, {BLOCK: sae})
    (_, h, a), = run(pipe, one)
    (_, _, b), = run(pipe, two)
    (_, _, ab), = run(pipe, both)
    torch.testing.assert_close(ab - h, (a - h) + (b - h), rtol=1e-5, atol=1e-6)


def test_step_range_limits_the_steps_an_edit_acts_on(pipe, sae):
    plan = Plan([Edit(BLOCK, (4,), torch.ones(64, 64), strength=2.0, step_range=(1, 3))], {BLOCK: sae})
    calls = run(pipe, plan, steps=4)
    assert len(calls) == 4
    changed = [bool((new != h_out).any()) for _, h_out, new in calls]
    assert changed == [False, True, True, False]


def test_cfg_edits_both_halves_by_default_or_cond_only(pipe, sae):
    mask = torch.ones(64, 64)
    for cond_only, expected in ((False, [True, True]), (True, [False, True])):
        plan = Plan([Edit(BLOCK, (4,), mask, strength=2.0, cond_only=cond_only)], {BLOCK: sae})
        (_, h_out, new), = run(pipe, plan, guidance=3.0)
        assert h_out.shape[0] == 2
        assert [bool((new[i] != h_out[i]).any()) for i in range(2)] == expected


def test_output_site_sae_reads_the_block_output(pipe):
    sae = make_sae(32, 64, k=4, block=BLOCK, seed=2, site="output")
    mask = torch.ones(64, 64)
    plan = Plan([Edit(BLOCK, (0,), mask, mode="erase")], {BLOCK: sae})
    (_, h_out, new), = run(pipe, plan)
    with torch.no_grad():
        z = sae.encode(to_cells(h_out)[0])
        expected = -z[..., :1] * sae.W_dec[0]
    torch.testing.assert_close(to_cells(new - h_out)[0], expected, rtol=1e-4, atol=1e-5)


def count_hooks(module: torch.nn.Module) -> int:
    """Torch hooks and named hooks on the module and its submodules."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()) + len(named_hooks(module))


def test_hooks_only_on_planned_blocks_and_none_without_edits(pipe, sae):
    before = count_hooks(pipe.unet)
    with apply_plan(pipe.unet, Plan(), cfg=False):
        assert count_hooks(pipe.unet) == before
    plan = Plan([Edit(BLOCK, (1,), torch.ones(64, 64))], {BLOCK: sae})
    with apply_plan(pipe.unet, plan):
        assert named_hooks(pipe.unet) == ["paint-app.steps", f"{BLOCK}:paint-app.edits"]
        assert count_hooks(pipe.unet) == before + 2  # the block's hook and the step counter
    assert count_hooks(pipe.unet) == before
    assert "forward" not in pipe.unet.__dict__ and "forward" not in get_block(pipe.unet, BLOCK).__dict__


def test_an_exception_inside_generation_leaves_no_hook(pipe, sae):
    def explode(pipeline, step, timestep, kwargs):
        raise RuntimeError(f"boom at step {step}")

    plan = Plan([Edit(BLOCK, (1,), torch.ones(64, 64))], {BLOCK: sae})
    with pytest.raises(RuntimeError, match="boom"):
        with apply_plan(pipe.unet, plan):
            pipe("a red circle", num_inference_steps=3, width=64, height=64, callback_on_step_end=explode)
    assert count_hooks(pipe.unet) == 0


def test_plan_errors_name_the_problem(pipe, sae):
    mask = torch.ones(64, 64)
    with pytest.raises(ModelError, match="no SAE is loaded"):
        with apply_plan(pipe.unet, Plan([Edit(BLOCK, (1,), mask)], {})):
            pass
    with pytest.raises(ValueError, match="features 0..63"):
        with apply_plan(pipe.unet, Plan([Edit(BLOCK, (64,), mask)], {BLOCK: sae})):
            pass
    wide = make_sae(64, 32, block=BLOCK)
    with pytest.raises(ModelError, match="size 64.*32 channels"):
        with apply_plan(pipe.unet, Plan([Edit(BLOCK, (1,), mask)], {BLOCK: wide})):
            pass
    with pytest.raises(PaintError, match="mode is 'paint'"):
        Edit(BLOCK, (1,), mask, mode="paint")
    with pytest.raises(PaintError, match="strength"):
        Edit(BLOCK, (1,), mask, strength=float("nan"))
    assert count_hooks(pipe.unet) == 0


LATE, LATER = "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"  # one level: 32 channels at 16x16


def late_prototypes(steps: int = 2) -> Prototypes:
    generator = torch.Generator().manual_seed(0)
    values = {block: torch.randn(64, steps, 2, 32, generator=generator) for block in (LATE, LATER)}
    counts = torch.zeros(64)
    counts[3], counts[9] = 10.0, 30.0
    return Prototypes([LATE, LATER], values, counts)


@pytest.mark.parametrize("stored_steps", [2, 4])
def test_replace_moves_the_block_and_the_later_ones_of_its_level_to_the_prototype(pipe, stored_steps):
    sae = make_sae(32, 64, k=4, block=LATE, seed=2)
    prototypes = late_prototypes(stored_steps)
    mask = soft_mask()
    edit = Edit(LATE, (3, 9), mask, weights=(1.0, 1.0), strength=5.0, mode="replace")
    plan = Plan([edit], {LATE: sae}, {LATE: prototypes}, steps=2)
    m = area_average(mask)[..., None]
    for block in (LATE, LATER):
        calls = run(pipe, plan, steps=2, guidance=2.0, block=block)
        assert len(calls) == 2
        for step, (_, h_out, new) in enumerate(calls):
            stored = step * (stored_steps - 1)  # run steps 0, 1 -> the stored first and last
            value = (10 * prototypes.values[block][3, stored] + 30 * prototypes.values[block][9, stored]) / 40
            expected = (1 - m) * to_cells(h_out) + m * value[:, None, None, :]  # per CFG row, strength unused
            torch.testing.assert_close(to_cells(new), expected, rtol=1e-4, atol=1e-4)
            assert torch.equal(to_cells(new)[:, m[..., 0] == 0], to_cells(h_out)[:, m[..., 0] == 0])


def test_replace_comes_after_the_blocks_other_edits(pipe):
    sae = make_sae(32, 64, k=4, block=LATE, seed=2)
    left, right = torch.zeros(64, 64), torch.zeros(64, 64)
    left[:, :32], right[:, 32:] = 1.0, 1.0
    plan = Plan([Edit(LATE, (9,), right, mode="replace"), Edit(LATE, (5,), torch.ones(64, 64), strength=2.0)],
                {LATE: sae}, {LATE: late_prototypes()}, steps=1)
    (_, h_out, new), = run(pipe, plan, steps=1, guidance=2.0, block=LATE)
    added = (2.0 * sae.feature_mean[5] * sae.W_dec[5]).detach()
    torch.testing.assert_close(to_cells(new - h_out)[:, :, :8], added.expand(2, 16, 8, 32), rtol=1e-4, atol=1e-5)
    value = late_prototypes().values[LATE][9, 0]
    torch.testing.assert_close(to_cells(new)[:, :, 8:], value[:, None, None, :].expand(2, 16, 8, 32))


def test_replace_without_prototypes_is_a_clear_error(pipe):
    sae = make_sae(32, 64, k=4, block=LATE, seed=2)
    edit = Edit(LATE, (3,), torch.ones(64, 64), mode="replace")
    with pytest.raises(ModelError, match=r"layers\[0\]\.mode is 'replace'.*no prototypes.*sae prototypes"):
        run(pipe, Plan([edit], {LATE: sae}), block=LATE)
    never = Edit(LATE, (4,), torch.ones(64, 64), mode="replace")
    with pytest.raises(ModelError, match=r"feature\(s\) 4 .* have no prototype"):
        run(pipe, Plan([never], {LATE: sae}, {LATE: late_prototypes()}), block=LATE)


def test_replace_edits_keep_their_own_masks_and_steps(pipe):
    sae = make_sae(32, 64, k=4, block=LATE, seed=2)
    left, right = torch.zeros(64, 64), torch.zeros(64, 64)
    left[:, :32], right[:, 32:] = 1.0, 1.0
    plan = Plan([Edit(LATE, (3,), left, mode="replace", step_range=(0, 1)),
                 Edit(LATE, (9,), right, mode="replace", step_range=(1, 2))],
                {LATE: sae}, {LATE: late_prototypes()}, steps=2)
    values = late_prototypes().values[LATE]
    for step, (_, h_out, new) in enumerate(run(pipe, plan, steps=2, guidance=2.0, block=LATE)):
        painted, kept = (slice(0, 8), slice(8, 16)) if step == 0 else (slice(8, 16), slice(0, 8))
        feature = 3 if step == 0 else 9
        torch.testing.assert_close(to_cells(new)[:, :, painted],
                                   values[feature, step][:, None, None, :].expand(2, 16, 8, 32))
        assert torch.equal(to_cells(new)[:, :, kept], to_cells(h_out)[:, :, kept])


def test_paste_overwrites_the_mask_inside_the_window_with_the_moved_example(pipe):
    sae = make_sae(32, 64, k=4, block=LATE, seed=2)
    generator = torch.Generator().manual_seed(4)
    example = {block: torch.randn(2, 2, 32, 16, 16, generator=generator) for block in (LATE, LATER)}
    window = torch.zeros(16, 16)
    window[4:12, 2:10] = 1.0
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1.0  # the left half: cells 0-7 of each row
    edit = Edit(LATE, (3,), mask, strength=5.0, mode="paste")
    plan = Plan([edit], {LATE: sae}, steps=2, examples={LATE: {3: [{"prompt": "a red circle", "seed": 1}]}},
                pasted={0: {block: (values, window) for block, values in example.items()}})
    for block in (LATE, LATER):
        calls = run(pipe, plan, steps=2, guidance=2.0, block=block)
        for step, (_, h_out, new) in enumerate(calls):
            inside = (slice(4, 12), slice(2, 8))  # the window's cells within the left half
            torch.testing.assert_close(new[:, :, inside[0], inside[1]], example[block][step][:, :, inside[0], inside[1]])
            kept = torch.ones(16, 16, dtype=torch.bool)
            kept[inside] = False
            assert torch.equal(new[:, :, kept], h_out[:, :, kept])  # outside the mask or the window: untouched


def test_fill_overwrites_the_whole_mask_with_the_examples_window_mean(pipe):
    from sae.exemplars import Example

    sae = make_sae(32, 64, k=4, block=LATE, seed=2)
    generator = torch.Generator().manual_seed(5)
    outputs = {block: torch.randn(2, 2, 32, 16, 16, generator=generator) for block in (LATE, LATER)}
    window = torch.zeros(16, 16)
    window[4:12, 10:14] = 1.0  # outside the mask: a fill writes the window's mean, wherever the window is
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1.0
    example = Example(3, "a pink circle", 1, window, outputs)
    plan = Plan([Edit(LATE, (3,), mask, mode="fill")], {LATE: sae}, steps=2,
                examples={LATE: {3: [{"prompt": "a pink circle", "seed": 1}]}}, pasted={0: example.filled(mask)})
    for block in (LATE, LATER):
        for step, (_, h_out, new) in enumerate(run(pipe, plan, steps=2, guidance=2.0, block=block)):
            mean = outputs[block][step][..., 4:12, 10:14].mean((-2, -1))[..., None, None]
            torch.testing.assert_close(new[..., :8], mean.expand(2, 32, 16, 8))
            assert torch.equal(new[..., 8:], h_out[..., 8:])  # outside the mask: untouched
    with pytest.raises(ModelError, match=r"layers\[0\]\.mode is 'fill' but its example was not made"):
        run(pipe, Plan([Edit(LATE, (3,), mask, mode="fill")], {LATE: sae},
                       examples={LATE: {3: [{"prompt": "a", "seed": 1}]}}), block=LATE)


def test_paste_needs_an_example_to_make_and_the_engine_to_make_it(pipe):
    sae = make_sae(32, 64, k=4, block=LATE, seed=2)
    edit = Edit(LATE, (3,), torch.ones(64, 64), mode="paste")
    with pytest.raises(ModelError, match=r"layers\[0\]\.mode is 'paste' but feature\(s\) 3 .*no top example"):
        run(pipe, Plan([edit], {LATE: sae}, examples={LATE: {3: [{"prompt": "a red circle"}]}}), block=LATE)
    with pytest.raises(ModelError, match="its example was not made"):
        run(pipe, Plan([edit], {LATE: sae}, examples={LATE: {3: [{"prompt": "a", "seed": 1}]}}), block=LATE)
    plan = Plan([Edit(LATE, (3, 5), torch.ones(64, 64), weights=(0.5, 2.0), mode="paste")], {LATE: sae},
                examples={LATE: {3: [{"prompt": "a", "seed": 1}], 5: [{"prompt": "b", "seed": 2}]}})
    assert plan.paste_feature(plan.edits[0]) == 5  # the heaviest feature with an example
