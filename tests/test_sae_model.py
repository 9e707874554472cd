"""The SAE module, its files, the SAEPaint converter and hf:// paths (offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_sae

from sae.errors import SAEError
from sae.model import SAE, SAEConfig, load_saepaint, resolve_path


def test_encode_keeps_k_largest_and_decodes_sparsely_like_dense():
    sae = make_sae(16, 48, k=5, seed=3)
    x = torch.randn(7, 3, 16)
    z = sae.encode(x)
    assert z.shape == (7, 3, 48)
    assert ((z > 0).sum(-1) <= 5).all() and ((z > 0).sum(-1) >= 1).all()
    pre = sae.pre_activations(x)
    kth = torch.topk(pre, 5, dim=-1).values[..., -1:]
    assert torch.all((z == 0) | (pre >= kth))
    values, indices = sae.encode_topk(x)
    torch.testing.assert_close(sae.decode_sparse(values, indices), sae.decode(z), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), sae.decode(z), rtol=1e-5, atol=1e-5)


def test_decoder_rows_are_unit_norm_after_reset():
    sae = make_sae(8, 32)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))


def test_save_and_load_round_trip(tmp_path):
    sae = make_sae(12, 40, k=3, block="mid_block.attentions.0", seed=1)
    sae.save_pretrained(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["config.json", "sae.safetensors"]
    loaded = SAE.from_pretrained(tmp_path / "s")
    assert loaded.config.to_dict() == sae.config.to_dict()
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


@pytest.mark.parametrize("data,field", [
    ({"d_in": 8, "n_features": 8, "k": 8}, "'k'"),
    ({"d_in": 8, "n_features": 0, "k": 1}, "'n_features'"),
    ({"d_in": 8, "n_features": 16, "k": 2, "site": "input"}, "'site'"),
    ({"n_features": 16, "k": 2}, "d_in"),
])
def test_bad_config_names_the_field(data, field):
    with pytest.raises(SAEError, match=field):
        SAEConfig.from_dict(data)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    make_sae(8, 16).save_pretrained(tmp_path)
    weights = tmp_path / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(SAEError, match="truncated or corrupted"):
        SAE.from_pretrained(tmp_path)


def test_corrupted_safetensors_is_a_clear_error(tmp_path):
    make_sae(8, 16).save_pretrained(tmp_path)
    (tmp_path / "sae.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(SAEError, match="truncated or corrupted"):
        SAE.from_pretrained(tmp_path)


def test_weights_that_disagree_with_config(tmp_path):
    make_sae(8, 16).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_features"] = 20
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SAEError, match="W_enc.*shape"):
        SAE.from_pretrained(tmp_path)


def test_folder_without_sae_files(tmp_path):
    with pytest.raises(SAEError, match="neither sae.safetensors"):
        SAE.from_pretrained(tmp_path)


# ---- SAEPaint checkpoints -----------------------------------------------------------------------------------------


def write_saepaint(folder: Path, n: int = 40, d: int = 12, k: int = 4, bad_shape: bool = False) -> dict:
    """A checkpoint in SAEPaint's layout: config.json, state_dict.pth {"state_dict": ...}, mean.pt, std.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(5)
    state = {
        "encoder.weight": torch.randn(n, d, generator=generator),
        "decoder.weight": torch.randn(d, n + (1 if bad_shape else 0), generator=generator),
        "pre_bias": torch.randn(d, generator=generator),
        "latent_bias": torch.randn(n, generator=generator),
        "stats_last_nonzero": torch.randint(0, 10, (n,), generator=generator),
    }
    (folder / "config.json").write_text(json.dumps(
        {"n_dirs_local": n, "d_model": d, "k": k, "auxk": 8, "dead_steps_threshold": 5}))
    torch.save({"state_dict": state}, folder / "state_dict.pth")
    torch.save(torch.rand(n, generator=generator) + 0.1, folder / "mean.pt")
    torch.save(torch.rand(n, generator=generator), folder / "std.pt")
    return state


def reference_saepaint_encode(state: dict, x: torch.Tensor, k: int) -> torch.Tensor:
    """SAEPaint's own math (OpenAI's TopK autoencoder): topk of the pre-activations, then ReLU, then decode."""
    pre = (x - state["pre_bias"]) @ state["encoder.weight"].T + state["latent_bias"]
    top = torch.topk(pre, k, dim=-1)
    latents = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
    return latents @ state["decoder.weight"].T + state["pre_bias"], latents


def test_saepaint_checkpoint_encodes_like_the_converted_sae(tmp_path):
    state = write_saepaint(tmp_path / "unet.down_blocks.2.attentions.1_k4_hidden40")
    sae = SAE.from_pretrained(tmp_path / "unet.down_blocks.2.attentions.1_k4_hidden40")
    x = torch.randn(50, 12)
    expected_recon, expected_latents = reference_saepaint_encode(state, x, 4)
    torch.testing.assert_close(sae.encode(x), expected_latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), expected_recon, rtol=1e-4, atol=1e-4)
    mean = torch.load(tmp_path / "unet.down_blocks.2.attentions.1_k4_hidden40" / "mean.pt", weights_only=True)
    torch.testing.assert_close(sae.feature_mean, mean)
    assert sae.config.k == 4 and sae.config.site == "delta"


def test_saepaint_checkpoint_with_wrong_shapes(tmp_path):
    write_saepaint(tmp_path, bad_shape=True)
    with pytest.raises(SAEError, match=r"decoder.weight.*shape \[12, 41\].*requires \[12, 40\]"):
        load_saepaint(tmp_path)


def test_saepaint_loader_never_unpickles_code(tmp_path):
    write_saepaint(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"state_dict": Evil()}, tmp_path / "state_dict.pth")
    with pytest.raises(SAEError, match="weights-only"):
        load_saepaint(tmp_path)
    assert not (tmp_path / "pwned").exists()


# ---- hf:// paths, offline -------------------------------------------------------------------------------------------


def make_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes], revision: str = "a" * 40) -> None:
    """The layout huggingface_hub keeps on disk: refs/main -> snapshot folder with the files."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    for name, content in files.items():
        target = repo / "snapshots" / revision / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def test_hf_path_resolves_from_the_cache_offline(tmp_path):
    source = tmp_path / "src"
    make_sae(8, 16, k=2, block="mid_block.attentions.0").save_pretrained(source)
    files = {f"saes/mid/{p.name}": p.read_bytes() for p in source.iterdir()}
    make_hf_cache(tmp_path / "hub", "someone/sdxl-saes", files)
    code = (
        "from sae.model import SAE\n"
        "sae = SAE.from_pretrained('hf://someone/sdxl-saes/saes/mid')\n"
        "print(sae.config.block, sae.n_features)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["mid_block.attentions.0", "16"]
    missing = "from sae.model import SAE\nSAE.from_pretrained('hf://someone/absent/x')\n"
    result = subprocess.run([sys.executable, "-c", missing], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "SAEError" in result.stderr and "hf://someone/absent/x" in result.stderr


@pytest.mark.parametrize("path", ["hf://only-owner", "hf://", "/no/such/folder"])
def test_bad_paths(path):
    with pytest.raises(SAEError, match="SAE path"):
        resolve_path(path)
