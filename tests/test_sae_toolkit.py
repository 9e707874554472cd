"""The `sae` toolkit: collect -> train -> eval -> label -> factors -> top-examples, its training recipe on planted
data, resume, shard handling and the errors bad input gets."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from sae.capture import capture_activations
from sae.cli import main
from sae.errors import SAEError
from sae.examples import load_top_examples
from sae.factors import load_factors, nmf_factors
from sae.labels import Label, load_labels, save_labels
from sae.model import SAE
from sae.pipelines import load_diffusers_pipeline
from sae.store import ActivationStore, list_shards, save_activations
from sae.train import TrainOptions, train

BLOCK = "mid_block.attentions.0"
BLOCK_2 = "up_blocks.1.attentions.0"
WORDS = {"colour": "red green blue yellow".split(), "shape": "circle square triangle star".split(),
         "background": "grass sand sky water".split()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two cores shared by many processes: one OpenMP thread avoids spin-waiting (10x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    generator = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(16):
        colour, shape, ground = (words[int(torch.randint(len(words), (1,), generator=generator))]
                                 for words in WORDS.values())
        lines.append(f"a {colour} {shape} on {ground}")
    file = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    file.write_text("# toy prompts\n" + "\n".join(lines) + "\n\n")
    return file


@pytest.fixture(scope="module")
def collected(tmp_path_factory, prompts_file):
    out = tmp_path_factory.mktemp("acts") / "acts"
    code = main(["collect", "--model", "tiny-random-sd", "--block", BLOCK, "--block", BLOCK_2, "--prompts",
                 str(prompts_file), "--out", str(out), "--steps", "2", "--guidance", "0", "--batch-size", "4"])
    assert code == 0
    return out


def planted_dictionary(n_atoms=256, d=64, active=4, n=20000, noise=0.01, seed=0):
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d, generator=generator), dim=1)
    chosen = torch.rand(n, n_atoms, generator=generator).topk(active, dim=1).indices
    coefficients = 0.5 + torch.rand(n, active, generator=generator)
    x = (coefficients[..., None] * atoms[chosen]).sum(1) + noise * torch.randn(n, d, generator=generator)
    return atoms, x


def test_capture_activations_shape_and_delta_site():
    pipe = load_diffusers_pipeline("tiny-random-sd", device="cpu")
    kwargs = {"prompt": ["a red circle", "a blue star"], "num_inference_steps": 2, "guidance_scale": 3.0,
              "output_type": "latent"}
    delta = capture_activations(pipe, [BLOCK], "delta", generator=torch.Generator().manual_seed(0), **kwargs)[BLOCK]
    output = capture_activations(pipe, [BLOCK], "output", generator=torch.Generator().manual_seed(0), **kwargs)[BLOCK]
    assert delta.shape == (2, 2, 8, 8, 64)  # steps, cond half of the CFG batch, H, W, C
    assert not torch.allclose(delta, output)


def test_cli_end_to_end_on_tiny_random_sd(collected, prompts_file, tmp_path, capsys):
    acts = collected / BLOCK
    manifest = json.loads((acts / "manifest.json").read_text())
    assert (manifest["block"], manifest["site"], manifest["d_in"], manifest["grid"]) == (BLOCK, "delta", 64, [8, 8])
    assert manifest["counts"]["vectors"] == 16 * 2 * 8 * 8 and manifest["counts"]["complete"] == 1
    store = ActivationStore(collected, block=BLOCK)
    _, index = store.read(0)
    assert index.shape[1] == 4 and set(index[:, 1].tolist()) == {0, 1} and int(index[:, 2].max()) == 7

    out = tmp_path / "sae"
    assert main(["train", "--acts", str(collected), "--block", BLOCK, "--out", str(out), "--features", "96",
                 "--k", "4", "--batch-size", "256", "--lr", "4e-3", "--tokens", "12000"]) == 0
    sae = SAE.from_pretrained(out)
    assert (sae.config.block, sae.config.model, sae.config.site, sae.d_in) == (BLOCK, "tiny-random-sd", "delta", 64)
    assert sae.feature_frequency.sum() > 0 and torch.all(sae.feature_mean > 0)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(96), atol=1e-5)

    capsys.readouterr()
    assert main(["eval", "--sae", str(out), "--acts", str(collected), "--json", "--plot", str(tmp_path / "f.png"),
                 "--model", "tiny-random-sd", "--prompts", str(prompts_file), "--limit", "2", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    print("eval:", report)
    assert report["explained_variance"] > 0.3 and report["l0"] <= 4 and 0 <= report["dead_fraction"] < 0.5
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert report["pixel_diff_reconstruction"] < report["pixel_diff_mean_ablation"]

    save_labels(out, {0: Label("my own name", 1.0, "user"), 1: Label("stale", 0.2, "prompt-words")})
    assert main(["label", "--sae", str(out), "--acts", str(collected), "--prompts", str(prompts_file)]) == 0
    labels = load_labels(out)
    assert labels[0] == Label("my own name", 1.0, "user")
    words = set().union(*WORDS.values())
    computed = [label for label in labels.values() if label.source == "prompt-words"]
    assert len(computed) > 20 and all(set(label.label.split()) <= words for label in computed)

    assert main(["factors", "--sae", str(out), "--acts", str(collected), "--n", "3", "--out", str(out)]) == 0
    factors = load_factors(out)
    assert factors.weights.shape == (3, 96) and torch.allclose(factors.weights.max(1).values, torch.ones(3))
    assert "my own name" in " ".join(factors.labels) or all(factors.labels)

    assert main(["top-examples", "--sae", str(out), "--acts", str(collected), "--per-feature", "3"]) == 0
    examples = load_top_examples(out / "top_examples.json")
    prompts = [line for line in prompts_file.read_text().splitlines() if line and not line.startswith("#")]
    feature, records = next(iter(examples.items()))
    assert 1 <= len(records) <= 3 and len({r["prompt_id"] for r in records}) == len(records)
    assert records[0]["prompt"] == prompts[records[0]["prompt_id"]]
    assert [r["value"] for r in records] == sorted((r["value"] for r in records), reverse=True)
    x, index = next(store.iter_batches(10**6))
    row = ((index[:, 0] == records[0]["prompt_id"]) & (index[:, 1] == records[0]["step"])
           & (index[:, 2] == records[0]["row"]) & (index[:, 3] == records[0]["col"]))
    z = sae.encode(x[row]).detach()
    assert float(z[0, feature]) == pytest.approx(records[0]["value"], rel=1e-3)
    assert main(["info", str(out)]) == 0


def test_collect_rerun_skips_finished_shards_and_detects_a_cut_shard(collected, prompts_file, tmp_path):
    acts = tmp_path / "acts"
    shutil.copytree(collected, acts)
    folder = acts / BLOCK
    shards = list_shards(folder)
    assert len(shards) == 4
    before = {file.name: file.stat().st_mtime_ns for file in shards}
    shards[2].unlink()
    args = ["collect", "--model", "tiny-random-sd", "--block", BLOCK, "--block", BLOCK_2, "--prompts",
            str(prompts_file), "--out", str(acts), "--steps", "2", "--guidance", "0", "--batch-size", "4"]
    assert main(args) == 0
    after = {file.name: file.stat().st_mtime_ns for file in list_shards(folder)}
    assert set(after) == set(before)
    assert [name for name in after if after[name] != before[name]] == [shards[2].name]

    # --overwrite starts over: a model retrained under the same name must not reuse old shards
    assert main([*args, "--overwrite"]) == 0
    rewritten = {file.name: file.stat().st_mtime_ns for file in list_shards(folder)}
    assert set(rewritten) == set(after) and all(rewritten[name] != after[name] for name in after)

    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEError, match=shards[1].name):
        ActivationStore(folder)
    with pytest.raises(SAEError, match="truncated or corrupted"):
        from sae.capture import CollectOptions, collect
        collect(CollectOptions("tiny-random-sd", [BLOCK, BLOCK_2], str(prompts_file), str(acts), steps=2,
                               guidance=0.0, batch_size=4, progress=False))


def test_labels_keep_optional_write_replace_and_paste_scores(tmp_path):
    labels = {3: Label("red", 0.5, "ground-truth", 0.71, 0.875, 0.5), 4: Label("mine", 1.0, "user")}
    save_labels(tmp_path, labels)
    entries = json.loads((tmp_path / "labels.json").read_text())["labels"]
    assert entries["3"]["write"] == 0.71 and entries["3"]["replace"] == 0.875 and entries["3"]["paste"] == 0.5
    assert set(entries["4"]) == {"label", "score", "source"}  # files without them stay as they were
    assert load_labels(tmp_path) == labels
    entries["3"]["replace"] = "often"
    (tmp_path / "labels.json").write_text(json.dumps({"version": 1, "labels": entries}))
    with pytest.raises(SAEError, match="not a valid labels file.*\"paste\": <numbers, optional>"):
        load_labels(tmp_path)
    entries["3"]["replace"] = 0.875
    entries["3"]["write"] = "high"
    (tmp_path / "labels.json").write_text(json.dumps({"version": 1, "labels": entries}))
    with pytest.raises(SAEError, match="not a valid labels file"):
        load_labels(tmp_path)


def test_recipes_round_trip_best_first_and_bad_files_name_the_field(tmp_path):
    from sae.recipes import Edit, Recipes, load_recipes, save_recipes

    assert load_recipes(tmp_path) is None
    recipes = Recipes({"pink": [Edit("replace", factor=30, score=0.75), Edit("add", feature=49, strength=32.0,
                                                                             step_range=[2, 8], score=0.5)],
                       "dotted": []}, trials=8, source="test")
    save_recipes(tmp_path, recipes)
    loaded = load_recipes(tmp_path)
    assert loaded == recipes
    assert loaded.best("pink").describe() == "replace factor 30" and loaded.best("dotted") is None
    data = json.loads((tmp_path / "recipes.json").read_text())
    for change, message in ((dict(mode="blend"), r"recipes.pink\[0\].mode is 'blend'; allowed: add, set"),
                            (dict(feature=3), r"recipes.pink\[0\] names both a feature and a factor"),
                            (dict(step_range=[5, 2]), r"recipes.pink\[0\].step_range is \[5, 2\]")):
        broken = json.loads(json.dumps(data))
        broken["recipes"]["pink"][0].update(change)
        (tmp_path / "recipes.json").write_text(json.dumps(broken))
        with pytest.raises(SAEError, match=message):
            load_recipes(tmp_path)
    (tmp_path / "recipes.json").write_text("{")
    with pytest.raises(SAEError, match="not a valid recipes file"):
        load_recipes(tmp_path)


def test_training_recovers_a_planted_dictionary(tmp_path):
    atoms, x = planted_dictionary()
    save_activations(tmp_path / "acts", x, shard_size=4096)
    train(TrainOptions(str(tmp_path / "acts"), str(tmp_path / "sae"), n_features=512, k=4, batch_size=256,
                       lr=4e-3, tokens=50_000, progress=False))
    sae = SAE.from_pretrained(tmp_path / "sae")
    best = (atoms @ sae.W_dec.T).max(dim=1).values
    recovered = float((best >= 0.9).float().mean())
    print(f"planted atoms recovered at cosine >= 0.9: {recovered:.3f}; "
          f"explained variance {sae.config.training['explained_variance']:.3f}")
    assert recovered >= 0.9


def test_nmf_recovers_planted_groups():
    generator = torch.Generator().manual_seed(0)
    n_features, groups = 60, [list(range(i, i + 6)) for i in range(0, 36, 6)]
    loadings = torch.zeros(len(groups), n_features)
    for g, members in enumerate(groups):
        loadings[g, members] = 0.5 + torch.rand(len(members), generator=generator)
    usage = torch.rand(3000, len(groups), generator=generator) * (torch.rand(3000, len(groups), generator=generator) < 0.3)
    activations = usage @ loadings + 0.01 * torch.rand(3000, n_features, generator=generator)
    weights = nmf_factors(activations, len(groups), seed=0)
    assert torch.allclose(weights.max(1).values, torch.ones(len(groups)))
    cosine = torch.nn.functional.normalize(loadings, dim=1) @ torch.nn.functional.normalize(weights, dim=1).T
    matched = cosine.max(dim=1).values
    print("best cosine per planted group:", [round(float(c), 3) for c in matched])
    assert bool((matched >= 0.95).all())
    for g, members in enumerate(groups):
        factor = int(cosine[g].argmax())
        assert set(torch.topk(weights[factor], 6).indices.tolist()) == set(members)


def test_auxk_lowers_the_dead_fraction(tmp_path):
    _, x = planted_dictionary(seed=1)  # with this data and a high lr, plain TopK leaves >= 10% dead
    save_activations(tmp_path / "acts", x, shard_size=4096)
    dead = {}
    for name, auxk in (("plain", 0), ("auxk", 32)):
        train(TrainOptions(str(tmp_path / "acts"), str(tmp_path / name), n_features=256, k=4, auxk=auxk,
                           dead_tokens=2500, batch_size=256, lr=6e-2, tokens=50_000, progress=False))
        dead[name] = float((SAE.from_pretrained(tmp_path / name).feature_frequency == 0).float().mean())
    print(f"dead fraction without AuxK {dead['plain']:.3f}, with AuxK {dead['auxk']:.3f}")
    assert dead["plain"] >= 0.1
    assert dead["auxk"] <= 0.5 * dead["plain"]


def test_resume_gives_the_same_parameters_as_training_straight_through(tmp_path):
    x = torch.randn(5000, 16, generator=torch.Generator().manual_seed(0)) @ torch.randn(16, 16)
    save_activations(tmp_path / "acts", x, shard_size=700)
    options = dict(n_features=64, k=4, auxk=8, dead_tokens=600, batch_size=256, lr=1e-2, tokens=12_000,
                   checkpoint_every=7, progress=False)
    train(TrainOptions(str(tmp_path / "acts"), str(tmp_path / "straight"), **options))
    train(TrainOptions(str(tmp_path / "acts"), str(tmp_path / "resumed"), stop_after=20, **options))
    assert not (tmp_path / "resumed" / "sae.safetensors").exists()
    train(TrainOptions(str(tmp_path / "acts"), str(tmp_path / "resumed"), resume=True, **options))
    straight, resumed = (load_file(str(tmp_path / name / "sae.safetensors")) for name in ("straight", "resumed"))
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name


def test_bad_input_gets_clear_errors(collected, prompts_file, tmp_path, capsys):
    def error_of(args: list[str]) -> str:
        capsys.readouterr()
        assert main(args) == 2
        return capsys.readouterr().err

    base = ["collect", "--model", "tiny-random-sd", "--prompts", str(prompts_file), "--out", str(tmp_path / "a")]
    message = error_of([*base, "--block", "down_blocks.9.attentions.0"])
    assert "sae: error: block is 'down_blocks.9.attentions.0'" in message and BLOCK in message
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    message = error_of([*base[:3], "--prompts", str(empty), "--out", str(tmp_path / "b"), "--block", BLOCK])
    assert f"prompts file '{empty}' is empty" in message
    message = error_of(["collect", "--model", "tiny-random-sd", "--block", BLOCK, "--block", BLOCK_2, "--prompts",
                        str(prompts_file), "--out", str(collected), "--steps", "3", "--guidance", "0",
                        "--batch-size", "4"])
    assert "holds a different collection (differs in: num_inference_steps)" in message
    assert len(list_shards(collected / BLOCK)) >= 3  # the refused run left the collection alone

    acts = str(collected / BLOCK)
    train_args = ["train", "--acts", acts, "--batch-size", "128", "--tokens", "512"]
    assert "k is 8; it must be smaller than features (8)" in error_of([*train_args, "--out", "x", "--features", "8",
                                                                        "--k", "8"])
    assert "features is 0" in error_of([*train_args, "--out", "x", "--features", "0", "--k", "1"])
    out = tmp_path / "sae"
    assert main([*train_args, "--out", str(out), "--features", "32", "--k", "2"]) == 0
    weights = (out / "sae.safetensors").read_bytes()
    assert "already holds a training run" in error_of([*train_args, "--out", str(out), "--features", "32", "--k", "2"])
    assert "different run" in error_of([*train_args, "--out", str(out), "--features", "48", "--k", "2", "--resume"])
    assert (out / "sae.safetensors").read_bytes() == weights

    message = error_of(["eval", "--sae", str(out), "--acts", str(collected / BLOCK_2), "--device", "cpu"])
    assert "width 32" in message or BLOCK_2 in message
    other = SAE.from_pretrained(out)
    other.config.site = "output"
    other.save_pretrained(tmp_path / "output-site")
    assert "come from site 'delta'" in error_of(["eval", "--sae", str(tmp_path / "output-site"), "--acts", acts])

    x = torch.randn(4000, 8, generator=torch.Generator().manual_seed(0))
    x[3500:] = float("nan")
    save_activations(tmp_path / "nan", x, shard_size=500)
    with pytest.raises(SAEError, match=r"NaN or inf at step \d+ \(shards shard_00007.*last good checkpoint \(step \d+\)"):
        train(TrainOptions(str(tmp_path / "nan"), str(tmp_path / "nan-sae"), n_features=16, k=2, batch_size=100,
                           tokens=8000, checkpoint_every=4, init_tokens=1000, chunk_shards=1, seed=3, progress=False))
    assert (tmp_path / "nan-sae" / "checkpoint" / "state.safetensors").exists()


def test_sae_train_options_are_the_training_dataclass_fields():
    """The training config is listed once: `sae train`'s options come from TrainOptions' fields, defaults and all."""
    import dataclasses

    from sae.cli import build_parser, dataclass_from_options
    from sae.train import TrainOptions

    args = build_parser().parse_args(["train", "--acts", "a", "--out", "o", "--features", "64", "--k", "4",
                                      "--log-every", "7", "--resume"])
    options = dataclass_from_options(TrainOptions, args)
    assert options == TrainOptions("a", "o", n_features=64, k=4, log_every=7, resume=True)
    listed = {item.name for item in dataclasses.fields(TrainOptions) if item.metadata.get("cli", True)}
    assert listed == set(vars(args)) & {item.name for item in dataclasses.fields(TrainOptions)}
    assert listed == {item.name for item in dataclasses.fields(TrainOptions)} - {"progress"}
