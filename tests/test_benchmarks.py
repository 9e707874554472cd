"""The benchmark scripts keep working: ``benchmarks/full_size.py`` builds and measures a scaled-down copy of the
SDXL-Turbo configs (the same code path as the full-size run, tiny sizes); its full-size configs are the
published architecture (parameter counts on the meta device, nothing allocated)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def script(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def full_size():
    return script("full_size")


@pytest.fixture(scope="module")
def engine(full_size, tmp_path_factory):
    built = full_size.build_pipeline(full_size.TINY, torch.device("cpu"), torch.float32)
    return full_size.build_engine(built, full_size.TINY, torch.device("cpu"), tmp_path_factory.mktemp("saes"))


def test_full_size_configs_are_the_published_architecture(full_size):
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    makers = {
        "unet": lambda: UNet2DConditionModel(**full_size.UNET_CONFIG),
        "vae": lambda: AutoencoderKL(**full_size.VAE_CONFIG),
        "tiny_vae": lambda: AutoencoderTiny(**full_size.TAESDXL_CONFIG),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**full_size.TEXT_ENCODER_CONFIG)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**full_size.TEXT_ENCODER_2_CONFIG)),
    }
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in make().parameters()) for name, make in makers.items()}
    # SDXL's UNet, its VAE, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text towers, TAESDXL
    assert counts == {"unet": 2_567_463_684, "vae": 83_653_863, "tiny_vae": 2_445_063,
                      "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}


def test_the_scaled_down_engine_has_sdxl_turbos_blocks_and_steers(full_size, engine):
    from paint_app.models import PROFILES

    assert [b.name for b in engine.model.profile.blocks] == [b.name for b in PROFILES[full_size.MODEL].blocks]
    assert sorted(engine.concepts.blocks) == sorted(full_size.SAE_BLOCKS)
    size = full_size.TINY.size
    plain = np.asarray(engine.generate(full_size.plain_painting(full_size.MODEL, size), replay=False))
    steered_painting = full_size.steered_painting(full_size.MODEL, full_size.SAE_BLOCKS, size)
    assert [layer.mode for layer in steered_painting.layers] == ["add", "set", "erase", "add"]
    steered = np.asarray(engine.generate(steered_painting, replay=False))
    assert np.abs(steered.astype(int) - plain).max() > 0  # the steered run is not the plain one timed twice
    stacked = full_size.stacked_painting(full_size.MODEL, full_size.STACKED_BLOCK, 16, size)
    plan = engine.plan(stacked)
    assert len(plan.edits) == 16 and plan.blocks() == [full_size.STACKED_BLOCK]


def test_full_size_script_runs_scaled_down(full_size, tmp_path, capsys):
    out = tmp_path / "figures.json"
    assert full_size.main(["--scale", "tiny", "--repeats", "1", "--layer-counts", "1,16", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for name in ("plain_s", "steered_s", "repaint_s", "text_encoding_s", "tiny_vae_decode_s", "png_s"):
        assert figures[name] > 0, name
    split = figures["splits"]["repaint"]
    assert 0 < split["unet"] < figures["repaint_s"] and 0 < split["vae"] < figures["repaint_s"]
    assert split["rest"] >= 0  # the timed parts fit inside the repaint's total
    assert sorted(figures["stacked"]) == ["1", "16"] and figures["stacked"]["16"]["ratio"] > 0
    assert figures["memory"]["peak_rss_gib"] > 0
    assert figures["parameters"]["unet"] < 10_000_000  # scaled down: never a full-size build in the tests
    printed = capsys.readouterr().out
    assert "steered, 4 layers on 2 blocks" in printed and "16 layers on down_blocks.2.attentions.1" in printed


def test_full_size_names_bad_arguments(full_size, capsys):
    with pytest.raises(SystemExit):
        full_size.main(["--layer-counts", "1,0"])
    assert "--layer-counts is '1,0'; allowed: integers >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        full_size.main(["--repeats", "0"])
    assert "--repeats is 0; allowed: an integer >= 1" in capsys.readouterr().err


def test_setting_edits_on_one_block_act_in_one_pass_as_each_alone():
    """The edits of one block (add, set, erase, a mix; one on the conditional half only; a feature named twice)
    change the block as the sum of each edit alone: the one-pass product is the per-edit math."""
    from helpers import make_sae

    from paint_app.steering import BlockEditor, Edit, StepCounter

    sae = make_sae(32, 64, k=4, block="b")
    generator = torch.Generator().manual_seed(0)
    masks = [torch.rand(64, 64, generator=generator) * (torch.rand(64, 64, generator=generator) > 0.3)
             for _ in range(6)]
    edits = [Edit("b", (3,), masks[0], strength=4.0, mode="add"),
             Edit("b", (5, 9), masks[1], (1.0, 0.5), strength=2.0, mode="set"),
             Edit("b", (7,), masks[2], mode="erase"),
             Edit("b", (5,), masks[3], strength=1.0, mode="set", cond_only=True),
             Edit("b", (1, 2), masks[4], (1.0, 0.5), strength=3.0, mode="add"),
             Edit("b", (11,), masks[5], mode="erase", cond_only=True)]
    h_in, h_out = torch.randn(2, 32, 16, 16, generator=generator), torch.randn(2, 32, 16, 16, generator=generator)
    together = BlockEditor(edits, sae, StepCounter(), cfg=True).delta(h_out, h_in, tuple(range(len(edits))))
    alone = sum(BlockEditor([edit], sae, StepCounter(), cfg=True).delta(h_out, h_in, (0,)) for edit in edits)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert together.abs().max() > 0 and together[0].abs().max() > 0  # the unconditional row is edited too
