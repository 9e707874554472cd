"""sae.exemplars: a feature's example made again, its firing window, and moving both onto a mask."""

from __future__ import annotations

import pytest
import torch
from helpers import make_sae

from sae.errors import SAEError
from sae.exemplars import Example, box_centre, firing_window, pasteable_record, record_example, shift


def test_shift_moves_the_last_two_dimensions_and_fills_with_zeros():
    values = torch.arange(16.0).reshape(1, 4, 4)
    moved = shift(values, 1, -2)
    assert torch.equal(moved[0, 1:, :2], values[0, :3, 2:])
    assert moved[0, 0].abs().sum() == 0 and moved[0, :, 2:].abs().sum() == 0
    assert torch.equal(shift(values, 0, 0), values)
    assert shift(values, 4, 0).abs().sum() == 0


def test_the_firing_window_is_the_connected_region_of_the_strongest_cell():
    activation = torch.zeros(6, 6)
    activation[1, 1:3] = 1.0
    activation[2, 2] = 3.0  # the peak, joined to the row above
    activation[4, 4] = 2.0  # fires, but apart
    window = firing_window(activation)
    assert window.sum() == 3 and window[2, 2] == 1 and window[4, 4] == 0
    assert firing_window(torch.zeros(6, 6)).sum() == 0


def test_an_example_is_moved_so_its_window_is_centred_on_the_mask_and_finer_blocks_move_as_far():
    window = torch.zeros(8, 8)
    window[1:3, 1:3] = 1.0  # box centre (2, 2) in cells of 8x8
    coarse = torch.randn(2, 2, 4, 8, 8)  # [steps, rows, C, H, W]
    fine = torch.randn(2, 2, 4, 16, 16)
    example = Example(7, "a red circle", 3, window, {"coarse": coarse, "fine": fine})
    mask = torch.zeros(64, 64)
    mask[32:64, 32:64] = 1.0  # box centre (6, 6) in cells of 8x8
    moved = example.moved(mask)
    values, moved_window = moved["coarse"]
    assert box_centre(moved_window > 0) == (6.0, 6.0)
    assert torch.equal(values[..., 5:7, 5:7], coarse[..., 1:3, 1:3])
    fine_values, fine_window = moved["fine"]
    assert box_centre(fine_window > 0) == (12.0, 12.0) and fine_window.sum() == 16
    assert torch.equal(fine_values[..., 10:14, 10:14], fine[..., 2:6, 2:6])
    with pytest.raises(SAEError, match="mask is empty"):
        example.moved(torch.zeros(64, 64))


def test_an_example_fills_with_its_mean_over_the_window_at_each_step_on_every_grid():
    window = torch.zeros(8, 8)
    window[1:3, 1:3] = 1.0
    coarse = torch.randn(2, 2, 4, 8, 8)
    fine = torch.randn(2, 2, 4, 16, 16)
    filled = Example(7, "a pink circle", 3, window, {"coarse": coarse, "fine": fine}).filled(torch.ones(64, 64))
    values, window = filled["coarse"]
    assert values.shape == (2, 2, 4) and window is None  # one value per step and row, written at every cell
    torch.testing.assert_close(values, coarse[..., 1:3, 1:3].mean((-2, -1)))
    fine_values, fine_window = filled["fine"]
    assert fine_values.shape == (2, 2, 4) and fine_window is None
    torch.testing.assert_close(fine_values, fine[..., 2:6, 2:6].mean((-2, -1)))
    with pytest.raises(SAEError, match="mask is empty"):
        Example(7, "a", 3, window, {"coarse": coarse}).filled(torch.zeros(64, 64))


def test_a_record_can_be_pasted_only_with_a_prompt_and_a_seed():
    assert pasteable_record(None) is None
    assert pasteable_record([{"prompt": "a red circle", "prompt_id": 3}]) is None  # made before seeds were kept
    record = {"prompt": "a red circle", "prompt_id": 3, "seed": 3}
    assert pasteable_record([{"prompt": "", "seed": 1}, record]) == record


def test_record_example_keeps_the_sae_block_and_every_later_block_of_its_grid_or_finer(pipe):
    block = "up_blocks.0.attentions.1"  # 8x8, 64 channels; after it: up_blocks.1.attentions.{0,1} at 16x16
    sae = make_sae(64, 64, k=8, block=block, seed=3)
    record = {"prompt": "a red circle", "seed": 5, "step": 1}
    example = None
    for feature in range(sae.n_features):  # a random SAE: the first feature that fires in this example
        try:
            example = record_example(pipe, sae, block, feature, record, num_inference_steps=2, guidance_scale=2.0,
                                     height=64, width=64)
            break
        except SAEError as exc:
            assert "does not fire in its example" in str(exc)
    assert example is not None and example.window.shape == (8, 8) and example.window.sum() >= 1
    assert sorted(example.outputs) == [block, "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
    assert example.outputs[block].shape == (2, 2, 64, 8, 8)  # [steps, CFG rows, C, H, W]
    assert example.outputs["up_blocks.1.attentions.1"].shape == (2, 2, 32, 16, 16)
    again = record_example(pipe, sae, block, example.feature, record, num_inference_steps=2, guidance_scale=2.0,
                           height=64, width=64)
    assert torch.equal(again.window, example.window)
    torch.testing.assert_close(again.outputs[block], example.outputs[block])


def test_record_example_on_an_sdxl_pipeline_keeps_every_later_block_of_its_grid_or_finer():
    """SDXL's pipeline (pooled text, time ids) makes the example the same way; from the mid block (8x8) every up
    block follows."""
    from sae.pipelines import build_tiny_pipeline, get_block

    pipe = build_tiny_pipeline("tiny-random-sdxl")
    pipe.set_progress_bar_config(disable=True)
    block = "mid_block.attentions.0"
    sae = make_sae(get_block(pipe.unet, block).config.in_channels, 64, k=8, block=block, seed=1)
    example = record_example(pipe, sae, block, 0, {"prompt": "a red circle", "seed": 1}, num_inference_steps=2,
                             guidance_scale=2.0, height=64, width=64)
    ups = [name for name, _ in pipe.unet.named_modules() if name.startswith("up_blocks.") and ".attentions." in name
           and name.count(".") == 3]
    assert sorted(example.outputs) == sorted([block, *ups])
    assert all(values.shape[:2] == (2, 2) and values.shape[-1] >= 8 for values in example.outputs.values())
