"""generate(session): identical to the plain pipeline without edits, deterministic, thread-safe, steered with edits."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import make_sae, save_sae, tiny_sae_folder

from paint_app.concepts import ConceptLibrary
from paint_app.engine import Engine
from paint_app.errors import ModelError, PaintError
from paint_app.models import load_model
from paint_app.session import Session

BLOCK = "down_blocks.0.attentions.0"


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("saes")
    tiny_sae_folder(root, BLOCK, 32)
    tiny_sae_folder(root, "mid_block.attentions.0", 64)
    return root


@pytest.fixture(scope="module")
def engine(sae_dir):
    model = load_model("tiny-random-sd", device="cpu")
    return Engine(model, ConceptLibrary.load([str(p) for p in sorted(sae_dir.iterdir())], model.profile))


def session(model: str = "tiny-random-sd", layers: list | None = None, **kwargs) -> Session:
    data = {"version": 1, "model": model, "prompt": "a red circle on grass", "seed": 5, "width": 64, "height": 64,
            "steps": 4, "guidance": 0.0, "layers": layers or []}
    data.update(kwargs)
    return Session.from_dict(data)


def layer(feature: int = 1, block: str = BLOCK, rect=(0, 0, 32, 64), **kwargs) -> dict:
    return {"block": block, "feature": feature, "strength": 8.0, "mask": {"rects": [list(rect)]}, **kwargs}


def pixels(image) -> np.ndarray:
    return np.asarray(image)


@pytest.mark.parametrize("name", ["tiny-random-sd", "tiny-random-sdxl"])
@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_no_edits_is_bit_identical_to_the_plain_pipeline(name, guidance):
    model = load_model(name, device="cpu")
    engine = Engine(model)
    ours = engine.generate(session(name, guidance=guidance, negative_prompt="blurry" if guidance else ""))
    plain = model.pipeline("a red circle on grass", negative_prompt="blurry" if guidance else None,
                           num_inference_steps=4, guidance_scale=guidance, width=64, height=64,
                           generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(pixels(ours), pixels(plain))


def test_layers_with_empty_masks_or_disabled_change_nothing(engine):
    plain = pixels(engine.generate(session()))
    disabled = session(layers=[layer(enabled=False)])
    assert np.array_equal(pixels(engine.generate(disabled)), plain)
    assert engine.plan(disabled).edits == []


def test_a_layers_amount_scales_its_mask(engine):
    """Amount 0 paints nothing; a half amount is the mask at half strength, on the session's 256 levels."""
    plain = pixels(engine.generate(session()))
    assert np.array_equal(pixels(engine.generate(session(layers=[layer(amount=0.0)]))), plain)
    half, full = (engine.generate(session(layers=[layer(amount=a)])) for a in (0.5, 1.0))
    assert not np.array_equal(pixels(half), plain) and not np.array_equal(pixels(half), pixels(full))
    edit = engine.plan(session(layers=[layer(amount=0.5)])).edits[0]
    assert float(edit.mask.max()) == pytest.approx(128 / 255)


def test_same_session_twice_gives_identical_bytes(engine):
    painted = session(layers=[layer(1), layer(2, "mid_block.attentions.0", (16, 16, 48, 48), mode="set")])
    first, second = engine.generate(painted).tobytes(), engine.generate(painted).tobytes()
    assert first == second
    assert first != engine.generate(session()).tobytes(), "the edits must change the image"


def test_factor_and_mix_layers(engine):
    plain = pixels(engine.generate(session()))
    factor = {"block": BLOCK, "factor": 1, "strength": 10.0, "mask": {"rects": [[0, 0, 64, 64]]}}
    mix = {"block": BLOCK, "features": {"1": 1.0, "2": 0.5}, "strength": 10.0, "mask": {"rects": [[0, 0, 64, 64]]}}
    assert not np.array_equal(pixels(engine.generate(session(layers=[factor]))), plain)
    assert not np.array_equal(pixels(engine.generate(session(layers=[mix]))), plain)


def test_four_threads_give_the_bytes_of_sequential_renders(engine):
    sessions = [session(seed=s, layers=[layer(s, rect=(8 * s, 0, 8 * s + 16, 64))]) for s in range(4)]
    expected = [engine.generate(s).tobytes() for s in sessions]
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for _ in range(2):
                results[index] = engine.generate(sessions[index]).tobytes()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert [results[i] for i in range(4)] == expected
    assert len(set(expected)) == 4


def test_prompt_embeddings_are_cached(engine):
    first = engine.generate_timed(session(prompt="a blue square"))
    second = engine.generate_timed(session(prompt="a blue square", seed=9))
    assert not first.prompt_cached and second.prompt_cached


def test_bad_layers_name_the_field(engine, tmp_path):
    cases = [
        (layer(block="up_blocks.1.attentions.1"), r"layers\[0\].block.*no SAE is loaded"),
        (layer(feature=64), r"layers\[0\].feature is 64.*0..63"),
        ({"block": BLOCK, "factor": 7, "mask": {"rects": [[0, 0, 8, 8]]}}, r"layers\[0\].factor is 7.*0..2"),
        ({"block": BLOCK, "features": {"99": 1.0}, "mask": {"rects": [[0, 0, 8, 8]]}}, r"features key is 99"),
    ]
    for bad, match in cases:
        with pytest.raises(PaintError, match=match):
            engine.generate(session(layers=[bad]))
    with pytest.raises(PaintError, match="model is 'tiny-random-sdxl'"):
        engine.generate(session("tiny-random-sdxl"))


def test_factor_without_factors_file(tmp_path):
    model = load_model("tiny-random-sd", device="cpu")
    save_sae(tmp_path / "plain", make_sae(32, 16, block=BLOCK))
    engine = Engine(model, ConceptLibrary.load([str(tmp_path / "plain")], model.profile))
    with pytest.raises(ModelError, match=r"layers\[0\].factor is 0 but block .* has no factors file"):
        engine.generate(session(layers=[{"block": BLOCK, "factor": 0, "mask": {"rects": [[0, 0, 8, 8]]}}]))


def test_sae_that_does_not_fit_the_block(tmp_path):
    model = load_model("tiny-random-sd", device="cpu")
    save_sae(tmp_path / "wide", make_sae(64, 16, block=BLOCK))
    with pytest.raises(ModelError, match="size 64.*has 32 channels"):
        ConceptLibrary.load([str(tmp_path / "wide")], model.profile)
    save_sae(tmp_path / "nowhere", make_sae(32, 16))
    with pytest.raises(ModelError, match="BLOCK=PATH"):
        ConceptLibrary.load([str(tmp_path / "nowhere")], model.profile)
    library = ConceptLibrary.load([f"{BLOCK}={tmp_path / 'nowhere'}"], model.profile)
    assert list(library.blocks) == [BLOCK]


def test_prompt_report():
    engine = Engine(load_model("tiny-random-sd", device="cpu"))
    report = engine.prompt_report("a red zebra circle")
    assert report == {"truncated": False, "unknown_words": ["zebra"]}
    assert engine.prompt_report("red " * 100)["truncated"]


@pytest.mark.parametrize("name", ["tiny-random-sd", "tiny-random-sdxl"])
def test_repaints_replay_the_steps_no_edit_touches_and_give_the_same_pixels(name, sae_dir):
    """After a plain image, a repaint whose layers start at step 2 makes 2 of its 4 UNet calls, with the pixels
    of a run that computes every step; another seed or an edit from step 0 replays nothing."""
    model = load_model(name, device="cpu")
    concepts = ConceptLibrary.load([str(sae_dir / BLOCK)], model.profile)
    cached, fresh = Engine(model, concepts), Engine(model, concepts)
    calls = []
    handle = model.pipeline.unet.conv_in.register_forward_hook(lambda *_: calls.append(1))
    try:
        cfg = {"model": name, "guidance": 3.0, "negative_prompt": "blurry"}
        cached.generate(session(**cfg))
        painted = session(**cfg, layers=[layer(step_range=[2, 4])])
        calls.clear()
        image = cached.generate(painted)
        assert len(calls) == 2 and cached.step_cache.replayed == 2
        calls.clear()
        assert np.array_equal(pixels(image), pixels(fresh.generate(painted))) and len(calls) == 4
        calls.clear()
        cached.generate(session(**cfg, seed=6, layers=[layer(step_range=[2, 4])]))
        cached.generate(session(**cfg, layers=[layer(step_range=[0, 4])]))
        assert len(calls) == 8 and cached.step_cache.replayed == 2
    finally:
        handle.remove()
    assert "forward" not in model.pipeline.unet.__dict__


@pytest.mark.parametrize("name", ["tiny-random-sd", "tiny-random-sdxl"])
def test_keep_outside_holds_the_latents_outside_the_masks_on_the_plain_run(name, sae_dir):
    """With keep_outside, every step's latents outside the painted cover are the plain run's, inside they are the
    painted run's, and the pixels beyond one latent cell of the mask are the plain image's; without it the edit
    reaches the unpainted half too."""
    model = load_model(name, device="cpu")
    engine = Engine(model, ConceptLibrary.load([str(sae_dir / BLOCK)], model.profile))
    vae, decoded = model.pipeline.vae, []
    original = vae.decode
    vae.decode = lambda z, *args, **kwargs: (decoded.append(z.clone()), original(z, *args, **kwargs))[1]
    try:
        cfg = {"model": name, "guidance": 3.0, "negative_prompt": "blurry"}
        plain_image = pixels(engine.generate(session(**cfg)))
        painted = [layer(rect=(0, 0, 32, 64), strength=30.0)]
        free_image = pixels(engine.generate(session(**cfg, layers=painted)))
        kept_image = pixels(engine.generate(session(**cfg, layers=painted, keep_outside=True)))
        engine.generate(session(**cfg, seed=6, layers=painted, keep_outside=True))
    finally:
        vae.decode = original
    # plain, free, kept (its plain run is the first generation's); another seed needs its own plain run first
    assert len(decoded) == 5
    plain, free, kept = decoded[:3]
    width = plain.shape[-1]
    right, left = (..., slice(width // 2, None)), (..., slice(None, width // 2))
    assert not torch.allclose(free[right], plain[right], atol=1e-4)  # the edit leaks without keep_outside
    assert torch.equal(kept[right], plain[right])
    assert not torch.allclose(kept[left], plain[left], atol=1e-4)
    cell = 64 // width
    assert np.array_equal(kept_image[:, 32 + cell:], plain_image[:, 32 + cell:])
    assert not np.array_equal(free_image[:, 32 + cell:], plain_image[:, 32 + cell:])
    assert not np.array_equal(kept_image[:, :32 - cell], plain_image[:, :32 - cell])


def test_keep_outside_is_saved_and_read_with_the_session(tmp_path):
    painted = session(layers=[layer()], keep_outside=True)
    assert painted.to_dict()["keep_outside"] is True and "keep_outside" not in session().to_dict()
    path = tmp_path / "s.json"
    painted.save(path)
    assert Session.from_json(path.read_bytes()).keep_outside
    with pytest.raises(PaintError, match="keep_outside.*true or false"):
        session(keep_outside="yes")


def test_replace_layers_paint_with_the_saes_prototypes_and_need_them(tmp_path):
    from sae.prototypes import compute_prototypes

    late = "up_blocks.1.attentions.0"
    folder = tiny_sae_folder(tmp_path, late, 32)
    model = load_model("tiny-random-sd", device="cpu")
    without = Engine(model, ConceptLibrary.load([str(folder)], model.profile))
    replace = [layer(rect=(0, 0, 32, 64), block=late, mode="replace")]
    with pytest.raises(ModelError, match=r"layers\[0\]\.mode is 'replace'.*sae prototypes"):
        without.generate(session(layers=replace))
    sae = without.concepts.blocks[late].sae
    compute_prototypes(model.pipeline, sae, ["a red circle", "a blue square"], top=1.0, progress=False,
                       num_inference_steps=4, height=64, width=64).save(folder)
    engine = Engine(model, ConceptLibrary.load([str(folder)], model.profile))
    assert engine.concepts.blocks[late].prototypes.blocks == [late, "up_blocks.1.attentions.1"]
    feature = int(torch.nonzero(engine.concepts.blocks[late].prototypes.counts)[0, 0])
    replace = [layer(feature, rect=(0, 0, 32, 64), block=late, mode="replace")]
    plain = pixels(engine.generate(session()))
    kept = pixels(engine.generate(session(layers=replace, keep_outside=True)))
    assert np.array_equal(kept[:, 40:], plain[:, 40:]) and not np.array_equal(kept[:, :28], plain[:, :28])
    again = Session.from_dict(session(layers=replace, keep_outside=True).to_dict())
    assert again.layers[0].mode == "replace" and np.array_equal(pixels(engine.generate(again)), kept)
