"""`paint-app prepare` on tiny-random-sd: a planted word becomes a feature's label the palette finds; resume after an
interruption; a full disk; the time estimate; CLIP words from a tiny random CLIP; the palette's "run prepare" hint;
the shipped prompt set."""

from __future__ import annotations

import errno
import io
import json
import re
import string

import pytest
import torch
from helpers import make_sae

from paint_app import prepare as prep
from paint_app.concepts import ConceptLibrary
from paint_app.errors import PaintError
from paint_app.models import PROFILES, load_model
from sae.capture import capture_activations
from sae.labels import word_association_labels

MODEL = "tiny-random-sd"
BLOCK = "mid_block.attentions.0"  # 64 channels, an 8x8 grid
OTHER = "down_blocks.0.attentions.0"  # 32 channels
STEPS = 2
WORD = "dog"  # one token of tiny-random-sd's tokenizer, as are the other words here
PLANTED = 5  # the feature made to fire on the prompts holding WORD
PROMPTS = [
    "a dog in the grass", "a red dog", "a big dog with a star", "a painting of a dog", "a dog and the sky",
    "a small striped dog", "a cat in the grass", "a red car", "a big house with a star", "a painting of a tree",
    "a flower and the sky", "a small striped circle", "a green square", "a pink triangle", "a white cat on sand",
    "a photo of water",
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def own_cache_folder(tmp_path, monkeypatch):
    """No test reads or writes the user's cache folder."""
    monkeypatch.delenv("PAINT_APP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _block_deltas(pipe) -> list[torch.Tensor]:
    """Per prompt, the block's delta at every step and cell [steps x cells, C], generated as prepare generates
    (its steps, size and seed = prompt id)."""
    deltas = []
    for i, prompt in enumerate(PROMPTS):
        acts = capture_activations(pipe, [BLOCK], "delta", prompt=prompt, num_inference_steps=STEPS, height=64,
                                   width=64, guidance_scale=0.0, output_type="latent",
                                   generator=torch.Generator().manual_seed(i))[BLOCK]
        deltas.append(acts.reshape(-1, acts.shape[-1]))
    return deltas


def _separating_direction(positives: list[torch.Tensor], negatives: torch.Tensor) -> torch.Tensor:
    """A unit direction on which some cell of every positive prompt lies above every negative cell: a logistic
    regression between each positive prompt's best cell (re-chosen once) and all negative cells."""
    from sklearn.linear_model import LogisticRegression

    direction = torch.cat(positives).mean(0) - negatives.mean(0)
    for _ in range(2):
        best = torch.stack([p[(p @ direction).argmax()] for p in positives])
        x = torch.cat([best, negatives]).numpy()
        y = [1] * len(best) + [0] * len(negatives)
        fit = LogisticRegression(C=100.0, class_weight="balanced", max_iter=2000).fit(x, y)
        direction = torch.nn.functional.normalize(torch.tensor(fit.coef_[0], dtype=torch.float32), dim=0)
    return direction


@pytest.fixture(scope="module")
def sae_paths(tmp_path_factory) -> list[str]:
    """Two unlabelled SAEs; on BLOCK, feature PLANTED reads a direction on which some cell of every prompt holding
    WORD lies above every cell of the other prompts, with its threshold in that gap, so it fires on WORD's prompts
    only (checked here on the activations; the test then checks what prepare makes of it)."""
    pipe = load_model(MODEL, device="cpu").pipeline
    pipe.set_progress_bar_config(disable=True)
    deltas = _block_deltas(pipe)
    has_word = [WORD in p.split() for p in PROMPTS]
    direction = _separating_direction([d for d, h in zip(deltas, has_word) if h],
                                      torch.cat([d for d, h in zip(deltas, has_word) if not h]))
    low = float(max((d @ direction).max() for d, h in zip(deltas, has_word) if not h))
    high = float(min((d @ direction).max() for d, h in zip(deltas, has_word) if h))
    assert high - low > 0.1, "the planted direction must separate the word's prompts (the test's construction)"
    sae = make_sae(64, 32, block=BLOCK, seed=3)
    with torch.no_grad():
        sae.b_pre.zero_()
        sae.W_enc[PLANTED] = 50 * direction
        sae.b_enc[PLANTED] = -50 * (low + high) / 2
    root = tmp_path_factory.mktemp("prepare-saes")
    sae.save_pretrained(root / BLOCK)
    make_sae(32, 32, block=OTHER, seed=4).save_pretrained(root / OTHER)
    return [str(root / BLOCK), str(root / OTHER)]


@pytest.fixture
def prompts_file(tmp_path):
    file = tmp_path / "prompts.txt"
    file.write_text("\n".join(PROMPTS) + "\n")
    return file


def _options(sae_paths, prompts_file, cache, **kwargs) -> prep.PrepareOptions:
    return prep.PrepareOptions(MODEL, sae_paths, prompts_file=str(prompts_file), steps=STEPS, cache=cache and str(cache),
                               device="cpu", chunk_size=6, progress=False, **kwargs)


def _results(entries: dict) -> dict:
    return {block: {name: (folder / name).read_text() for name in ("labels.json", "top_examples.json")}
            for block, folder in entries.items()}


def test_a_planted_word_labels_its_feature_and_the_palette_finds_it(sae_paths, prompts_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PAINT_APP_CACHE", str(tmp_path / "cache"))
    before = ConceptLibrary.load(sae_paths, PROFILES[MODEL])
    assert not before.tiles(WORD) and not any(e.labels for e in before.blocks.values())

    out = io.StringIO()
    entries = prep.prepare(_options(sae_paths, prompts_file, None), out=out)
    printed = out.getvalue()
    assert re.search(rf"{len(PROMPTS)} prompts x {STEPS} step\(s\) on 2 SAE\(s\); one image took \d+\.\d\d s, so about "
                     r"\d+ s \(prompts x seconds per image\)", printed), printed
    assert set(entries) == {BLOCK, OTHER} and all(str(f).startswith(str(tmp_path / "cache")) for f in entries.values())

    library = ConceptLibrary.load(sae_paths, PROFILES[MODEL])  # the SAE folders have no labels: the cache's are read
    planted = library.blocks[BLOCK].labels[PLANTED]
    assert planted.label.split()[0] == WORD and planted.score == pytest.approx(1.0), planted
    rows = library.feature_rows(search=WORD)
    assert (BLOCK, PLANTED) in {(r["block"], r["feature"]) for r in rows}
    tiles = library.tiles(WORD, profile=PROFILES[MODEL])
    assert tiles and any(t.choice.concept.block == BLOCK and t.choice.concept.feature == PLANTED for t in tiles)

    examples = library.blocks[BLOCK].examples[PLANTED]
    assert {r["prompt"] for r in examples} == {p for p in PROMPTS if WORD in p.split()}  # it fires on those prompts only
    first = examples[0]
    assert first["seed"] == first["prompt_id"] and PROMPTS[first["prompt_id"]] == first["prompt"]
    assert 0 <= first["step"] < STEPS and 0 <= first["row"] < 8 and 0 <= first["col"] < 8
    assert library.blocks[BLOCK].pasteable(PLANTED)

    again = io.StringIO()
    prep.prepare(_options(sae_paths, prompts_file, None), out=again)
    assert "already done" in again.getvalue()


def test_an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(sae_paths, prompts_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PAINT_APP_CACHE", str(tmp_path / "resumed"))
    whole = _results(prep.prepare(_options(sae_paths, prompts_file, tmp_path / "whole"), out=io.StringIO()))

    write, written = prep.write_chunk, []

    def interrupted(file, tensors):
        if "chunk_00001" in file.name:
            raise KeyboardInterrupt("stopped by the test")
        write(file, tensors)
        written.append(file.name)

    monkeypatch.setattr(prep, "write_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(_options(sae_paths, prompts_file, tmp_path / "resumed"), out=io.StringIO())
    assert written == ["chunk_00000.safetensors"] * 2  # chunk 0 of both SAEs, nothing of chunk 1
    assert ConceptLibrary.load(sae_paths, PROFILES[MODEL]).blocks[BLOCK].labels == {}  # unfinished: not used

    monkeypatch.setattr(prep, "write_chunk", write)
    collect, chunks = prep.collect_chunk, []
    monkeypatch.setattr(prep, "collect_chunk", lambda run, ids, size: chunks.append(ids[0]) or collect(run, ids, size))
    entries = prep.prepare(_options(sae_paths, prompts_file, tmp_path / "resumed"), out=io.StringIO())
    assert chunks == [6, 12]  # chunk 0 (prompts 0-5) was not made again
    assert _results(entries) == whole
    assert not any((folder / "chunks").exists() for folder in entries.values())


def test_a_full_disk_stops_with_a_clear_error_and_removes_the_partial_entry(sae_paths, prompts_file, tmp_path,
                                                                            monkeypatch):
    write = prep.write_chunk

    def full(file, tensors):
        if "chunk_00001" in file.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        write(file, tensors)

    monkeypatch.setattr(prep, "write_chunk", full)
    cache = tmp_path / "cache"
    with pytest.raises(PaintError, match=rf"disk holding the prepare cache '{re.escape(str(cache))}' is full.*needs "
                                         r"about \d+\.\d [KM]B there.*Removed the unfinished cache entries"):
        prep.prepare(_options(sae_paths, prompts_file, cache), out=io.StringIO())
    assert list((cache / "prepare").rglob("*")) == [next((cache / "prepare").iterdir())]  # the model's folder only


def test_the_cli_names_a_bad_field(sae_paths, tmp_path, capsys):
    from paint_app.cli import main

    base = ["prepare", "--model", MODEL, "--sae", sae_paths[0], "--cache", str(tmp_path), "--device", "cpu"]
    assert main(base + ["--prompts", str(tmp_path / "missing.txt")]) == 2
    assert "prompts file" in capsys.readouterr().err
    assert main(base + ["--limit", "0"]) == 2
    assert "--limit is 0; it must be >= 1" in capsys.readouterr().err


def test_the_palette_says_what_to_run_before_prepare(tmp_path, monkeypatch, sae_paths):
    from helpers import checking

    from paint_app.engine import load_engine
    from paint_app.ui import PaintApp

    monkeypatch.setenv("PAINT_APP_CACHE", str(tmp_path / "empty-cache"))
    app = checking(PaintApp(load_engine(MODEL, sae_paths, "cpu"), tmp_path / "sessions"))
    state = app.new_state()
    assert "These SAEs have no words yet: run `paint-app prepare" in app.start(state)["status"]  # on page load
    result = app.find_tiles(state, "dog")
    assert "These SAEs have no words yet: run `paint-app prepare --model tiny-random-sd --sae " in result["status"]
    assert re.search(r"\(about \d+ minutes? on this machine: 3000 prompts\)", result["status"]), result["status"]
    assert "These SAEs have no words yet" in result["tiles"]["empty"]


def _tiny_clip(folder) -> None:
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPTokenizer,
        CLIPVisionConfig,
    )

    chars = string.ascii_lowercase + string.digits + "-,.'"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    text = CLIPTextConfig(vocab_size=len(tokens), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=8)) \
        .save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)


def test_clip_adds_its_best_words_for_each_features_picture(tmp_path, prompts_file, monkeypatch):
    from paint_app.explore import ExploreCache

    sae = make_sae(64, 8, k=2, block=BLOCK, seed=5)
    sae.save_pretrained(tmp_path / "sae")
    clip = tmp_path / "clip"
    clip.mkdir()
    _tiny_clip(clip)
    cache = tmp_path / "cache"
    options = prep.PrepareOptions(MODEL, [str(tmp_path / "sae")], prompts_file=str(prompts_file), steps=1,
                                  cache=str(cache), device="cpu", progress=False)
    plain = prep.load_labels(next(iter(prep.prepare(options, out=io.StringIO()).values())))
    out = io.StringIO()
    options.clip = str(clip)
    folder = next(iter(prep.prepare(options, out=out).values()))
    labels = prep.load_labels(folder)
    assert re.search(r"CLIP words added to \d+ features", out.getvalue())
    fired = sorted(prep.load_top_examples(folder))
    assert fired and len(list((folder / "icons").glob("*.png"))) == len(fired)  # the pictures CLIP saw are kept

    monkeypatch.setenv("PAINT_APP_CACHE", str(cache))  # a later session, serving from that cache
    engine = prep._engine(prep.open_run(options))
    monkeypatch.setattr(engine, "generate", lambda *a, **k: pytest.fail("a kept picture was made again"))
    images = [prep.prepared_icon(ExploreCache(engine), prep.feature_choice(engine, BLOCK, f)) for f in fired]
    vocabulary = sorted(set().union(*(prep.prompt_words(p) for p in PROMPTS)))
    scores = prep.clip_scores(clip, images, vocabulary)
    for feature, row in zip(fired, scores):
        best = [vocabulary[i] for i in row.topk(prep.CLIP_WORDS).indices.tolist()]
        words = labels[feature].label.split()
        assert all(word in words for word in best), (feature, labels[feature], best)
        if feature in plain:
            assert words[: len(plain[feature].label.split())] == plain[feature].label.split()
        else:
            assert labels[feature].source == "clip"

    with pytest.raises(PaintError, match="--clip .* is not a folder with CLIP weights"):
        prep.clip_scores(tmp_path, images, vocabulary)


def test_specificity_beats_frequency():
    """A feature that fires on every 'dog' prompt (all photos) and weakly on a photo of a cat: 'dog' labels it, not
    'photo', which every one of its top prompts holds but so do most others (a lift-only score picked 'photo')."""
    prompts = [f"a photo of a {w}" for w in ("dog", "dog", "dog", "cat", "car", "tree", "house", "cup", "lamp")] + \
              [f"a drawing of a {w}" for w in ("boat", "fish", "bird")]
    strongest = torch.tensor([[1.0 if "dog" in p else 0.0] for p in prompts])
    strongest[3, 0] = 0.5  # a photo of a cat, weakly
    labels = word_association_labels(strongest, prompts, top_fraction=0.4, min_top=3)
    assert labels[0].label == "dog"


def test_the_shipped_prompt_set_is_what_the_module_makes():
    from paint_app.prompt_set import COUNT, PROMPTS_FILE, build_prompts, subjects

    shipped = PROMPTS_FILE.read_text().splitlines()
    assert shipped == build_prompts() and len(shipped) == COUNT == len(set(shipped))
    for subject in ("dog", "watercolor", "castle", "red"):
        assert sum(subject in p.split() for p in shipped) >= 10
    counts = [sum(f" {s}" in f" {p}" for p in shipped) for s in subjects()]
    assert min(counts) >= 10  # subjects are dealt round-robin: each in about 3000 / 170 prompts or more


def test_another_write_error_names_the_cache_and_keeps_the_finished_chunks(sae_paths, prompts_file, tmp_path,
                                                                           monkeypatch):
    write = prep.write_chunk

    def refused(file, tensors):
        if "chunk_00001" in file.name:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        write(file, tensors)

    monkeypatch.setattr(prep, "write_chunk", refused)
    with pytest.raises(PaintError, match=rf"cannot write the prepare cache '{re.escape(str(tmp_path))}'"):
        prep.prepare(_options(sae_paths, prompts_file, tmp_path), out=io.StringIO())
    assert len(list(tmp_path.rglob("chunk_00000.safetensors"))) == 2  # kept for the rerun
