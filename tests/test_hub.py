"""hf:// URIs, folders of SAEs and presets, offline: a Hugging Face cache laid out in a temporary folder."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import make_sae, tiny_sae_folder

from paint_app.cli import main
from paint_app.concepts import ConceptLibrary
from paint_app.errors import ModelError
from paint_app.models import PROFILES
from paint_app.presets import DEFAULT_PRESETS, PRESETS, default_sae_paths
from sae import hub
from sae.errors import SAEError
from sae.locate import find_saes

TINY = PROFILES["tiny-random-sd"]
SDXL = PROFILES["stabilityai/sdxl-turbo"]
TINY_BLOCKS = {"down_blocks.0.attentions.0": 32, "mid_block.attentions.0": 64}
REV = "0123456789abcdef0123456789abcdef01234567"
OTHER_REV = "f" * 40


def run_name(block: str) -> str:
    """SAEPaint's folder name for a training run on ``block``."""
    return f"unet.{block}_k10_hidden5120_auxk256_bs4096_lr0.0001"


def write_saepaint(folder: Path, d: int, n: int = 16, k: int = 4, seed: int = 0) -> Path:
    """A checkpoint as SAEPaint saves it: config.json, torch.save({"state_dict": ...}), CPU mean.pt and std.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    state = {"encoder.weight": torch.randn(n, d, generator=generator),
             "decoder.weight": torch.randn(d, n, generator=generator),
             "pre_bias": torch.randn(d, generator=generator), "latent_bias": torch.randn(n, generator=generator)}
    (folder / "config.json").write_text(json.dumps(
        {"n_dirs_local": n, "d_model": d, "k": k, "auxk": 8, "dead_steps_threshold": 2441}))
    torch.save({"state_dict": state}, folder / "state_dict.pth")
    torch.save(torch.rand(n, generator=generator) + 0.5, folder / "mean.pt")
    torch.save(torch.rand(n, generator=generator), folder / "std.pt")
    return folder


def saepaint_runs(root: Path, blocks: dict[str, int], final: bool = True) -> Path:
    for i, (block, d) in enumerate(blocks.items()):
        write_saepaint(root / run_name(block) / ("final" if final else ""), d, seed=i)
    return root


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty huggingface_hub cache in ``tmp_path``, offline. huggingface_hub reads HF_HUB_CACHE and
    HF_HUB_OFFLINE into ``constants`` at import, and ``snapshot_download`` reads those constants at each call."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_repo(cache: Path, repo_type: str, repo_id: str, source: Path, revision: str = REV,
               main: str | None = REV) -> None:
    """The files under ``source`` as huggingface_hub keeps a snapshot: blobs by hash, links to them under
    ``snapshots/<revision>``, and ``refs/main`` holding the commit the main branch points at."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        content = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = repo / "snapshots" / revision / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    if main is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(main)


# ---- URIs ---------------------------------------------------------------------------------------------------------

GOOD = [
    ("hf://owner/name", ("model", "owner/name", None, "")),
    ("hf://models/owner/name/saes/mid", ("model", "owner/name", None, "saes/mid")),
    ("hf://datasets/owner/name@v1.0", ("dataset", "owner/name", "v1.0", "")),
    ("hf://spaces/owner/name/checkpoints", ("space", "owner/name", None, "checkpoints")),
    (f"hf://owner/name@{REV}/checkpoints/a", ("model", "owner/name", REV, "checkpoints/a")),
    ("hf://owner/name@refs/pr/3/sae", ("model", "owner/name", "refs/pr/3", "sae")),
]
BAD = [
    ("hf://", "Empty body"),
    ("hf://x", "'namespace/name'"),
    ("hf://spaces/x", "'namespace/name'"),
    ("hf://owner/name@", "Empty revision"),
    ("hf://owner/name@/sae", "Empty revision"),
    ("hf://space/owner/name", "plural"),
    ("hf://owner/name/a//b", "empty segments"),
]


def fallback(text: str) -> hub.HubPath:
    return hub.HubPath(*hub._parse_fallback(text, "hf URI"))


@pytest.mark.parametrize("parse", [hub.parse_uri, fallback], ids=["huggingface_hub", "fallback"])
@pytest.mark.parametrize("text, expected", GOOD)
def test_every_uri_form_parses(parse, text, expected):
    uri = parse(text)
    assert (uri.repo_type, uri.repo_id, uri.revision, uri.path) == expected
    assert hub.parse_uri(str(uri)) == uri  # the canonical form reads back the same


@pytest.mark.parametrize("parse", [hub.parse_uri, fallback], ids=["huggingface_hub", "fallback"])
@pytest.mark.parametrize("text, reason", BAD)
def test_a_bad_uri_says_which_part_is_wrong(parse, text, reason):
    with pytest.raises(SAEError, match=f"hf URI '{text}': .*{reason}.*the form is hf://"):
        parse(text)


@pytest.mark.parametrize("text", ["hf://buckets/owner/name", "hf://kernels/owner/name"])
def test_only_repositories_that_hold_files_are_allowed(text):
    with pytest.raises(SAEError, match="not a repository SAEs can be read from; allowed: models/, datasets/, spaces/"):
        hub.parse_uri(text)


# ---- hub caches, offline ------------------------------------------------------------------------------------------


def test_a_space_folder_of_saepaint_checkpoints_loads_every_block(hub_cache, tmp_path):
    cache_repo(hub_cache, "space", "owner/paint-space", saepaint_runs(tmp_path / "space" / "checkpoints",
                                                                       TINY_BLOCKS).parent)
    uri = "hf://spaces/owner/paint-space/checkpoints"
    library = ConceptLibrary.load([uri], TINY)
    assert {block: entry.sae.d_in for block, entry in library.blocks.items()} == TINY_BLOCKS
    assert sorted(entry.source for entry in library.blocks.values()) == [f"{b}={uri}" for b in sorted(TINY_BLOCKS)]
    again = ConceptLibrary.load([entry.source for entry in library.blocks.values()], TINY)  # as a session names them
    assert sorted(again.blocks) == sorted(TINY_BLOCKS)


def test_a_model_repo_at_a_revision(hub_cache, tmp_path):
    saepaint_runs(tmp_path / "old" / "checkpoints", TINY_BLOCKS)
    (tmp_path / "new" / "docs").mkdir(parents=True)
    (tmp_path / "new" / "docs" / "card.json").write_text("{}")
    cache_repo(hub_cache, "model", "owner/saes", tmp_path / "old", revision=REV, main=None)
    cache_repo(hub_cache, "model", "owner/saes", tmp_path / "new", revision=OTHER_REV, main=OTHER_REV)
    folder = hub.resolve_uri(f"hf://owner/saes@{REV}/checkpoints")
    assert [block for block, _ in find_saes(folder)] == sorted(TINY_BLOCKS)
    library = ConceptLibrary.load([f"hf://models/owner/saes@{REV}/checkpoints"], TINY)
    assert sorted(library.blocks) == sorted(TINY_BLOCKS)
    with pytest.raises(SAEError, match=r"the model owner/saes has no folder 'checkpoints'; "
                                       r"in the local cache, it holds docs/"):
        hub.resolve_uri("hf://owner/saes/checkpoints")  # main is the newer commit, without them


def test_a_path_not_in_the_repo_lists_what_was_found(hub_cache, tmp_path):
    saepaint_runs(tmp_path / "repo" / "checkpoints", TINY_BLOCKS)
    cache_repo(hub_cache, "model", "owner/saes", tmp_path / "repo")
    assert sorted(ConceptLibrary.load(["hf://owner/saes"], TINY).blocks) == sorted(TINY_BLOCKS)  # a whole repo
    with pytest.raises(SAEError) as error:
        hub.resolve_uri("hf://owner/saes/sae")
    message = str(error.value)
    assert "hf URI 'hf://owner/saes/sae': the model owner/saes has no folder 'sae'; in the local cache, it holds " \
           "checkpoints/;" in message
    assert f"SAE folders: checkpoints/{run_name('down_blocks.0.attentions.0')}/final" in message
    with pytest.raises(ModelError, match="could not be read from the Hugging Face Hub or its local cache"):
        ConceptLibrary.load(["hf://owner/absent"], TINY)


def test_online_the_hub_file_list_says_what_a_repo_holds():
    files = [".gitattributes", "README.md", "app.py", "checkpoints/unet.mid_block.attentions.0_k10/final/config.json",
             "checkpoints/unet.mid_block.attentions.0_k10/final/state_dict.pth", "docs/a.json"]
    assert hub._describe_files(files) == ("it holds .gitattributes, README.md, app.py, checkpoints/, docs/; "
                                          "SAE folders: checkpoints/unet.mid_block.attentions.0_k10/final")


# ---- folders of SAEs ----------------------------------------------------------------------------------------------


def test_folders_of_saes_are_named_by_block(tmp_path):
    saepaint_runs(tmp_path / "ckpt", TINY_BLOCKS)
    assert [(b, f.relative_to(tmp_path)) for b, f in find_saes(tmp_path / "ckpt")] == [
        (b, Path("ckpt", run_name(b), "final")) for b in sorted(TINY_BLOCKS)]
    make_sae(8, 16, block="up_blocks.1.attentions.1").save_pretrained(tmp_path / "ours" / "a" / "whatever")
    assert find_saes(tmp_path / "ours") == [("up_blocks.1.attentions.1", tmp_path / "ours" / "a" / "whatever")]
    one = tmp_path / "ckpt" / run_name("mid_block.attentions.0") / "final"
    assert find_saes(one) == [("mid_block.attentions.0", one)]  # an SAE folder is a set of one


def test_several_saes_for_one_block(tmp_path):
    block = "mid_block.attentions.0"
    run = tmp_path / run_name(block)
    write_saepaint(run / "final", 64)
    write_saepaint(run / "step_1000", 64)
    assert find_saes(tmp_path) == [(block, run / "final")]
    write_saepaint(tmp_path / f"unet.{block}_k20_hidden5120" / "final", 64)
    with pytest.raises(SAEError, match=f"holds 3 SAEs for block {block}: .*step_1000.*k20.*; pass the one to use as "
                                       f"BLOCK=PATH"):
        find_saes(tmp_path)


def test_a_folder_with_no_sae_says_what_an_sae_folder_holds(tmp_path):
    (tmp_path / "empty" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ModelError, match=r"holds no SAE .*config.json with sae.safetensors \(ours\), or config.json "
                                         r"with state_dict.pth, mean.pt and std.pt .*it holds deep/, notes.txt"):
        ConceptLibrary.load([str(tmp_path / "empty")], TINY)


def test_a_local_folder_of_saes_with_a_block_picked(tmp_path):
    root = saepaint_runs(tmp_path / "ckpt", TINY_BLOCKS)
    library = ConceptLibrary.load([f"mid_block.attentions.0={root}"], TINY)
    assert list(library.blocks) == ["mid_block.attentions.0"]
    with pytest.raises(ModelError, match="has no SAE for block up_blocks.0.attentions.0; it has SAEs for: "
                                         "down_blocks.0.attentions.0, mid_block.attentions.0"):
        ConceptLibrary.load([f"up_blocks.0.attentions.0={root}"], TINY)


def test_an_sae_of_the_wrong_width_names_both_sizes_and_the_block(tmp_path):
    write_saepaint(tmp_path / run_name("down_blocks.0.attentions.0") / "final", 64)
    with pytest.raises(ModelError, match="the SAE for block down_blocks.0.attentions.0 reads vectors of size 64, but "
                                         "block down_blocks.0.attentions.0 of tiny-random-sd has 32 channels"):
        ConceptLibrary.load([str(tmp_path)], TINY)


# ---- presets ------------------------------------------------------------------------------------------------------


def sdxl_runs(root: Path, blocks) -> Path:
    return saepaint_runs(root, {block: 1280 for block in blocks})


def test_the_saepaint_preset_from_the_space_or_else_the_model_repo(hub_cache, tmp_path, caplog):
    preset = PRESETS[DEFAULT_PRESETS["stabilityai/sdxl-turbo"]]
    assert preset.model == "stabilityai/sdxl-turbo" and preset.blocks == tuple(b.name for b in SDXL.blocks)
    # The Space, under its real id, with SAEPaint's checkpoints/<run>/final:
    sdxl_runs(tmp_path / "space" / "checkpoints", preset.blocks)
    cache_repo(hub_cache, "space", "surokpro2/Unboxing_SDXL_with_SAEs", tmp_path / "space")
    with caplog.at_level(logging.INFO, logger="paint_app.presets"):
        library = ConceptLibrary.load([], SDXL)  # no --sae: the model's default preset
    assert caplog.messages == ["paint-app: no --sae given; using preset 'saepaint' (SAEPaint's four SDXL-Turbo SAEs)"]
    assert sorted(library.blocks) == sorted(preset.blocks)
    assert all(e.sae.n_features == 16 and e.sae.d_in == 1280 for e in library.blocks.values())
    space = "spaces--surokpro2--Unboxing_SDXL_with_SAEs"
    assert all(space in str(folder) for _, folder in library._located["saepaint"])


def test_the_preset_falls_back_to_the_model_repo_and_a_missing_block_is_named(hub_cache, tmp_path):
    preset = PRESETS["saepaint"]
    sdxl_runs(tmp_path / "space" / "checkpoints", preset.blocks[:3])  # a Space with one block missing
    cache_repo(hub_cache, "space", "surokpro2/Unboxing_SDXL_with_SAEs", tmp_path / "space")
    sdxl_runs(tmp_path / "repo", preset.blocks)  # the model repo: runs at its top level, and another variant
    write_saepaint(tmp_path / "repo" / "unet.mid_block.attentions.0_k20_hidden10240" / "final", 1280)
    cache_repo(hub_cache, "model", "surokpro2/sdxl-saes", tmp_path / "repo")
    library = ConceptLibrary.load(["saepaint"], SDXL)
    assert sorted(library.blocks) == sorted(preset.blocks)
    assert [e.source for e in library.blocks.values()] == [f"{block}=saepaint" for block in preset.blocks]
    assert all("models--surokpro2--sdxl-saes" in str(folder) for _, folder in library._located["saepaint"])

    (hub_cache / "models--surokpro2--sdxl-saes" / "refs" / "main").write_text(OTHER_REV)  # gone from the cache
    with pytest.raises(ModelError) as error:
        ConceptLibrary.load(["saepaint"], SDXL)
    message = str(error.value)
    assert "--sae 'saepaint': preset 'saepaint' (SAEPaint's four SDXL-Turbo SAEs) was found at none of" in message
    assert ("[hf://spaces/surokpro2/Unboxing_SDXL_with_SAEs/checkpoints] no SAE for block(s) up_blocks.0.attentions.1;"
            " found SAEs for: down_blocks.2.attentions.1, mid_block.attentions.0, up_blocks.0.attentions.0") in message
    assert "[one folder per block, e.g. hf://surokpro2/sdxl-saes/unet.down_blocks.2" in message


def test_an_unknown_preset_lists_the_presets_and_a_local_folder_of_that_name_wins(tmp_path, monkeypatch):
    with pytest.raises(ModelError,
                       match=r"^--sae 'saepain': not a folder, an hf:// URI or a preset; presets: saepaint$"):
        ConceptLibrary.load(["saepain"], TINY)
    monkeypatch.chdir(tmp_path)
    tiny_sae_folder(tmp_path / "saepaint")
    library = ConceptLibrary.load(["saepaint"], TINY)
    assert list(library.blocks) == ["down_blocks.0.attentions.0"]


def test_the_default_preset_is_only_for_a_model_without_sae_paths(caplog):
    with caplog.at_level(logging.INFO, logger="paint_app.presets"):
        assert default_sae_paths("stabilityai/sdxl-turbo", ["x"]) == ["x"]
        assert default_sae_paths("tiny-random-sd", []) == []
        assert caplog.messages == []
        assert default_sae_paths("stabilityai/sdxl-turbo", []) == ["saepaint"]
    assert caplog.messages == ["paint-app: no --sae given; using preset 'saepaint' (SAEPaint's four SDXL-Turbo SAEs)"]


def test_paint_app_features_with_a_hub_folder_of_saes(hub_cache, tmp_path, capsys):
    ours = tmp_path / "repo" / "saes"
    for block, channels in TINY_BLOCKS.items():
        tiny_sae_folder(ours, block, channels)
    cache_repo(hub_cache, "model", "owner/tiny-saes", tmp_path / "repo")
    assert main(["features", "--model", "tiny-random-sd", "--sae", "hf://owner/tiny-saes/saes", "--search",
                 "striped", "--features", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(row["block"], row["feature"], row["label"]) for row in rows} == {
        (block, 2, "striped") for block in TINY_BLOCKS}
    assert main(["features", "--model", "tiny-random-sd", "--sae", "saepain"]) == 2
    assert "paint-app: error: --sae 'saepain': not a folder, an hf:// URI or a preset" in capsys.readouterr().err
