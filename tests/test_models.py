"""Model loading and profiles; the real UNet configs are instantiated on the meta device (no weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from paint_app.errors import ModelError
from paint_app.models import PROFILES, load_model, profile_for
from sae.pipelines import build_tiny_pipeline, get_block, pick_device, pick_dtype, unet_blocks

CONFIGS = json.loads((Path(__file__).parent / "data" / "unet_configs.json").read_text())
REAL_MODELS = [name for name in CONFIGS if not name.startswith("_")]


def meta_block_shapes(config: dict, height: int, width: int, blocks: list[str]) -> dict[str, tuple]:
    """Run the full-size UNet forward on the meta device and record each block's output shape."""
    config = dict(config)
    dims, scale = config.pop("_text_dims"), config.pop("_vae_scale")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    modules = dict(unet.named_modules())
    shapes: dict[str, tuple] = {}
    handles = [modules[name].register_forward_hook(lambda m, a, o, n=name: shapes.__setitem__(n, tuple(o[0].shape)))
               for name in blocks]
    extra = {}
    if "pooled" in dims:
        extra["added_cond_kwargs"] = {"text_embeds": torch.zeros(1, dims["pooled"], device="meta"),
                                      "time_ids": torch.zeros(1, dims["time_ids"], device="meta")}
    with torch.no_grad():
        unet(torch.zeros(1, 4, height // scale, width // scale, device="meta"), torch.tensor(1, device="meta"),
             encoder_hidden_states=torch.zeros(1, 77, dims["cross"], device="meta"), **extra)
    for handle in handles:
        handle.remove()
    derived = {b.name: b for b in unet_blocks(unet, height, width, scale)}
    return shapes, derived


@pytest.mark.parametrize("name", REAL_MODELS)
def test_profile_blocks_match_the_real_unet(name):
    profile = PROFILES[name]
    shapes, derived = meta_block_shapes(CONFIGS[name], profile.height, profile.width, [b.name for b in profile.blocks])
    for block in profile.blocks:
        assert shapes[block.name] == (1, block.channels, *block.grid), block.name
        assert derived[block.name].channels == block.channels and derived[block.name].grid == block.grid
    assert len(profile.blocks) == 4


def test_sdxl_turbo_profile_is_saepaints_setting():
    profile = PROFILES["stabilityai/sdxl-turbo"]
    assert (profile.width, profile.height, profile.steps, profile.guidance) == (512, 512, 1, 0.0)
    assert [b.name for b in profile.blocks] == ["down_blocks.2.attentions.1", "mid_block.attentions.0",
                                                 "up_blocks.0.attentions.0", "up_blocks.0.attentions.1"]
    assert PROFILES["stabilityai/stable-diffusion-xl-base-1.0"].steps > 1


@pytest.mark.parametrize("name", ["tiny-random-sd", "tiny-random-sdxl"])
def test_tiny_pipelines_are_deterministic_and_match_their_profile(name):
    first, second = build_tiny_pipeline(name), build_tiny_pipeline(name)
    for key, tensor in first.unet.state_dict().items():
        assert torch.equal(tensor, second.unet.state_dict()[key]), key
    profile = PROFILES[name]
    derived = {b.name: b for b in unet_blocks(first.unet, profile.height, profile.width, first.vae_scale_factor)}
    for block in profile.blocks:
        assert derived[block.name].channels == block.channels and derived[block.name].grid == block.grid


def test_tiny_pipeline_building_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_pipeline("tiny-random-sd")
    assert torch.equal(torch.rand(3), expected)


def test_load_model_by_name_and_from_a_saved_folder(tmp_path):
    loaded = load_model("tiny-random-sd", device="cpu")
    assert loaded.profile.name == "tiny-random-sd" and loaded.device.type == "cpu" and loaded.dtype == torch.float32
    loaded.pipeline.save_pretrained(tmp_path / "pipe")
    (tmp_path / "pipe" / "paint_app.json").write_text(json.dumps(
        {"width": 64, "height": 64, "steps": 3, "guidance": 2.0, "blocks": {"mid_block.attentions.0": "coarse"}}))
    again = load_model(str(tmp_path / "pipe"), device="cpu")
    profile = again.profile
    assert (profile.steps, profile.guidance, profile.family) == (3, 2.0, "sd")
    assert [(b.name, b.channels, b.grid, b.role) for b in profile.blocks] == [
        ("mid_block.attentions.0", 64, (8, 8), "coarse")]
    assert (profile.layer_strength, profile.layer_step_range) == (4.0, None)


@pytest.mark.parametrize("layer_defaults, expected", [
    ({"strength": 16, "step_range": [1, 3]}, (16.0, (1, 3), None)),
    ({"strength": 500}, "layer_defaults.strength is 500; allowed: a finite number from -100 to 100"),
    ({"step_range": [2, 9]}, "layer_defaults.step_range is \\[2, 9\\]; allowed: .* <= steps \\(3\\)"),
    ({"step_range": [True, 3]}, "layer_defaults.step_range is \\[True, 3\\]; allowed: .* <= steps \\(3\\)"),
    ({"concept": {"block": "b", "factor": "blue"}}, (4.0, None, {"block": "b", "factor": "blue"})),
    ({"concept": {"block": "b", "feature": 7}}, (4.0, None, {"block": "b", "feature": 7})),
    ({"concept": "blue"}, "layer_defaults.concept is 'blue'; allowed: \\{\"block\""),
    ({"concept": {"block": "b", "factor": "x", "feature": 1}}, "layer_defaults.concept is .*; allowed:"),
    ({"concept": {"block": "b", "factor": 3}}, "layer_defaults.concept.factor is 3; allowed: a factor's label"),
    ({"concept": {"block": "b", "feature": -1}}, "layer_defaults.concept.feature is -1; allowed: a feature index"),
])
def test_a_model_folder_sets_the_defaults_of_new_layers(tmp_path, layer_defaults, expected):
    load_model("tiny-random-sd", device="cpu").pipeline.save_pretrained(tmp_path / "pipe")
    (tmp_path / "pipe" / "paint_app.json").write_text(json.dumps({"steps": 3, "layer_defaults": layer_defaults}))
    if isinstance(expected, str):
        with pytest.raises(ModelError, match=expected):
            load_model(str(tmp_path / "pipe"), device="cpu")
    else:
        profile = load_model(str(tmp_path / "pipe"), device="cpu").profile
        assert (profile.layer_strength, profile.layer_step_range, profile.layer_concept) == expected


def test_derived_profile_lists_every_transformer_block():
    pipe = build_tiny_pipeline("tiny-random-sdxl")
    profile = profile_for("my-own-model", pipe)
    assert profile.family == "sdxl" and len(profile.blocks) == 7


@pytest.mark.parametrize("name,match", [
    ("", "model is ''"),
    ("no such thing at all", r"allowed: a short name \(toy, tiny-random-sd, tiny-random-sdxl"),
    ("/definitely/not/here", r"model is '/definitely/not/here'; allowed: a short name \(toy,"),
])
def test_bad_model_names(name, match):
    with pytest.raises(ModelError, match=match):
        load_model(name, device="cpu")


def test_device_and_dtype_policy():
    assert pick_device("cpu").type == "cpu"
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError, match="device is 'tpu'"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            pick_device("cuda")


def test_unknown_block_lists_the_valid_ones():
    pipe = build_tiny_pipeline("tiny-random-sd")
    with pytest.raises(ValueError, match="down_blocks.0.attentions.0"):
        get_block(pipe.unet, "down_blocks.9.attentions.0")
