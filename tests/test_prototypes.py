"""Prototypes for ``replace`` edits: what they average, where they are kept, how they are stored and mixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from helpers import make_sae

from sae.capture import capture_activations
from sae.cli import main as sae_main
from sae.errors import SAEError
from sae.prototypes import Prototypes, compute_prototypes, feature_thresholds, load_prototypes, replaced_blocks

BLOCK = "up_blocks.1.attentions.0"  # tiny-random-sd: 32 channels, 16x16 for 64x64 images, followed by .1
PROMPTS = ["a red circle", "a blue square on grass", "two green triangles"]
SETTINGS = {"num_inference_steps": 2, "guidance_scale": 2.0, "height": 64, "width": 64}
CONFIGS = json.loads((Path(__file__).parent / "data" / "unet_configs.json").read_text())


@pytest.fixture(scope="module")
def sae():
    return make_sae(32, 48, k=4, block=BLOCK, seed=3)


def test_replaced_blocks_are_the_block_and_the_later_ones_of_its_level(pipe):
    assert replaced_blocks(pipe.unet, BLOCK) == [BLOCK, "up_blocks.1.attentions.1"]
    assert replaced_blocks(pipe.unet, "up_blocks.1.attentions.1") == ["up_blocks.1.attentions.1"]
    assert replaced_blocks(pipe.unet, "mid_block.attentions.0") == ["mid_block.attentions.0"]
    with init_empty_weights():
        sdxl = UNet2DConditionModel.from_config(CONFIGS["stabilityai/sdxl-turbo"])
    assert replaced_blocks(sdxl, "up_blocks.0.attentions.0") == [f"up_blocks.0.attentions.{i}" for i in range(3)]
    assert replaced_blocks(sdxl, "down_blocks.2.attentions.1") == ["down_blocks.2.attentions.1"]
    with pytest.raises(Exception, match="up_blocks.7"):
        replaced_blocks(sdxl, "up_blocks.7.attentions.0")


def test_thresholds_are_each_features_top_fraction_of_its_positive_values():
    values = torch.tensor([[[1.0, 0.0], [2.0, 5.0]], [[3.0, 0.5], [4.0, 0.0]]])  # two codes, 2 cells, k=2
    indices = torch.tensor([[[0, 1], [0, 1]], [[0, 1], [0, 2]]])
    thresholds = feature_thresholds(list(zip(values, indices)), 4, top=0.5)
    assert thresholds[0] == 2.0  # of 1, 2, 3, 4 the upper half starts at 3; "lower" picks 2 of (2, 3)
    assert thresholds[1] == 0.5  # of 0.5, 5 (the 0 is not a firing)
    assert torch.isinf(thresholds[2]) and torch.isinf(thresholds[3])  # fired only with 0, never


def test_a_prototype_is_the_mean_output_over_the_cells_where_the_feature_tops_on_the_last_step(pipe, sae):
    prototypes = compute_prototypes(pipe, sae, PROMPTS, top=1.0, seed=5, progress=False, **SETTINGS)
    assert prototypes.blocks == [BLOCK, "up_blocks.1.attentions.1"]
    assert prototypes.values[BLOCK].shape == (48, 2, 2, 32)  # features, steps, [uncond, cond], channels
    # independently: capture the delta (for the code) and both outputs, with every CFG row
    sums, count = {b: 0 for b in prototypes.blocks}, torch.zeros(48)
    for i, prompt in enumerate(PROMPTS):
        def run(blocks, site, prompt=prompt, seed=5 + i, **extra):  # a fresh generator per run: same image
            return capture_activations(pipe, blocks, site, prompt=prompt, output_type="latent",
                                       generator=torch.Generator().manual_seed(seed), **SETTINGS, **extra)

        delta = run([BLOCK], "delta")[BLOCK]  # [steps, 1, H, W, C] (cond)
        outputs = run(prototypes.blocks, "output", cond_only=False)
        fires = (sae.encode(delta[-1, 0].reshape(-1, 32)) > 0).float().T  # [features, cells]: top=1 takes all
        count += fires.sum(1)
        for block, output in outputs.items():
            sums[block] = sums[block] + torch.einsum("fn,srnc->fsrc", fires, output.flatten(2, 3))
    assert torch.equal(prototypes.counts, count) and int((count > 0).sum()) > 5
    for block in prototypes.blocks:
        expected = (sums[block] / count.clamp(min=1)[:, None, None, None])
        torch.testing.assert_close(prototypes.values[block], expected, rtol=1e-4, atol=1e-5)


def test_prototypes_round_trip_and_mix_features_by_weight_and_cells(tmp_path, pipe, sae):
    prototypes = compute_prototypes(pipe, sae, PROMPTS[:2], top=0.5, progress=False, **SETTINGS)
    file = prototypes.save(tmp_path)
    loaded = load_prototypes(tmp_path)
    assert file.name == "prototypes.safetensors" and loaded.blocks == prototypes.blocks and loaded.top == 0.5
    assert loaded.prompts == 2 and torch.equal(loaded.counts, prototypes.counts)
    for block in prototypes.blocks:  # stored in fp16
        torch.testing.assert_close(loaded.values[block], prototypes.values[block], rtol=2e-3, atol=2e-3)
    a, b = [int(f) for f in torch.nonzero(loaded.counts)[:2, 0]]
    mixed = loaded.concept((a, b), (1.0, 3.0))
    ca, cb = float(loaded.counts[a]), 3 * float(loaded.counts[b])
    for block, value in mixed.items():
        expected = (ca * loaded.values[block][a] + cb * loaded.values[block][b]) / (ca + cb)
        torch.testing.assert_close(value, expected)
    never = int(torch.nonzero(loaded.counts == 0)[0, 0]) if bool((loaded.counts == 0).any()) else None
    if never is not None:
        assert not loaded.has(never)
        with pytest.raises(SAEError, match=f"{never}.*no prototype"):
            loaded.concept((never,), (1.0,))
    assert load_prototypes(tmp_path / "elsewhere") is None


def test_a_broken_prototypes_file_is_a_clear_error(tmp_path):
    (tmp_path / "prototypes.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SAEError, match="prototypes"):
        load_prototypes(tmp_path)


def test_sae_prototypes_cli_writes_them_beside_the_sae(tmp_path, sae, capsys):
    folder = tmp_path / "sae"
    sae.save_pretrained(folder)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    assert sae_main(["prototypes", "--sae", str(folder), "--model", "tiny-random-sd", "--prompts", str(prompts),
                     "--steps", "2", "--guidance", "2", "--height", "64", "--width", "64", "--device", "cpu"]) == 0
    assert "up_blocks.1.attentions.0, up_blocks.1.attentions.1 (2 steps, 3 prompts)" in capsys.readouterr().out
    assert isinstance(load_prototypes(folder), Prototypes)
    assert sae_main(["prototypes", "--sae", str(folder), "--model", "tiny-random-sd", "--prompts", str(prompts),
                     "--top", "0", "--device", "cpu"]) != 0
    assert "top is 0" in capsys.readouterr().err


def test_an_sae_that_does_not_name_its_block_needs_one(pipe):
    anonymous = make_sae(32, 48, k=4, seed=3)
    with pytest.raises(SAEError, match="does not say which block"):
        compute_prototypes(pipe, anonymous, PROMPTS[:1], progress=False, **SETTINGS)
    prototypes = compute_prototypes(pipe, anonymous, PROMPTS[:1], blocks=[BLOCK], progress=False, **SETTINGS)
    assert prototypes.blocks == [BLOCK]
