"""`paint-app render`, `paint-app features` and `sae info` from the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import tiny_sae_folder
from PIL import Image

from paint_app.cli import main as paint_app_main
from paint_app.models import load_model
from sae.cli import main as sae_main

BLOCK = "down_blocks.0.attentions.0"


@pytest.fixture(scope="module")
def sae_path(tmp_path_factory):
    return tiny_sae_folder(tmp_path_factory.mktemp("cli"), BLOCK, 32)


def write_session(path, layers=None, **kwargs):
    data = {"version": 1, "model": "tiny-random-sd", "prompt": "a red circle", "seed": 2, "width": 64, "height": 64,
            "steps": 4, "guidance": 0.0, "layers": layers or []}
    data.update(kwargs)
    path.write_text(json.dumps(data))
    return path


def test_render_empty_session_equals_the_plain_pipeline(tmp_path):
    session = write_session(tmp_path / "s.json")
    assert paint_app_main(["render", str(session), "--out", str(tmp_path / "out.png"), "--device", "cpu"]) == 0
    rendered = np.asarray(Image.open(tmp_path / "out.png"))
    pipe = load_model("tiny-random-sd", device="cpu").pipeline
    plain = pipe("a red circle", num_inference_steps=4, guidance_scale=0.0, width=64, height=64,
                 generator=torch.Generator().manual_seed(2)).images[0]
    assert np.array_equal(rendered, np.asarray(plain))


def test_render_with_layers_and_model_override(tmp_path, sae_path):
    layers = [{"block": BLOCK, "feature": 1, "strength": 10.0, "mask": {"rects": [[0, 0, 32, 64]]}}]
    session = write_session(tmp_path / "s.json", layers, model="some-other-model")
    out = tmp_path / "painted.png"
    args = ["render", str(session), "--out", str(out), "--model", "tiny-random-sd", "--sae", str(sae_path)]
    assert paint_app_main(args) == 0
    write_session(tmp_path / "plain.json")
    assert paint_app_main(["render", str(tmp_path / "plain.json"), "--out", str(tmp_path / "plain.png")]) == 0
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "plain.png")))


@pytest.mark.parametrize("layers,extra,match", [
    ([{"block": BLOCK, "feature": 1, "mask": {"rects": [[0, 0, 8, 8]]}}], [], "no SAE is loaded"),
    ([{"block": BLOCK, "feature": 999, "mask": {"rects": [[0, 0, 8, 8]]}}], ["--sae"], r"feature is 999"),
    ([{"block": BLOCK, "feature": 1, "strength": 1e9, "mask": {"rects": [[0, 0, 8, 8]]}}], [], "strength"),
])
def test_render_errors_exit_2_and_write_nothing(tmp_path, sae_path, capsys, layers, extra, match):
    session = write_session(tmp_path / "s.json", layers)
    out = tmp_path / "out.png"
    args = ["render", str(session), "--out", str(out)] + (["--sae", str(sae_path)] if extra else [])
    assert paint_app_main(args) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not out.exists() and list(tmp_path.iterdir()) == [session]


def test_render_error_from_a_real_process(tmp_path):
    session = tmp_path / "s.json"
    session.write_text('{"version": 7}')
    result = subprocess.run([sys.executable, "-m", "paint_app.cli", "render", str(session), "--out",
                             str(tmp_path / "o.png")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "version is 7; allowed: 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_features_json_lines_and_search(sae_path, capsys):
    assert paint_app_main(["features", "--model", "tiny-random-sd", "--sae", str(sae_path), "--features",
                           "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 64
    assert {"block", "feature", "label", "frequency", "replace"} <= set(rows[0])
    assert not any(row["replace"] for row in rows)  # no prototypes beside these SAEs
    assert paint_app_main(["features", "--model", "tiny-random-sd", "--sae", str(sae_path), "--features",
                           "--search", "red", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["feature"], r["label"]) for r in rows] == [(0, "red thing")]
    # the default: the palette's concept tiles, each with the edit a pick applies
    assert paint_app_main(["features", "--model", "tiny-random-sd", "--sae", str(sae_path), "--search", "red",
                           "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["name"], r["block"], r["mode"], r["feature"], r["strength"], r["step_range"], r["score"],
             r["measured"]) for r in rows] == [("red thing", BLOCK, "add", 0, 4.0, None, None, False)]
    assert paint_app_main(["features", "--model", "tiny-random-sd", "--sae", str(sae_path), "--block",
                           "mid_block.attentions.0"]) == 2
    assert "no SAE is loaded" in capsys.readouterr().err
    assert paint_app_main(["features", "--model", "tiny-random-sd", "--sae", str(sae_path), "--factors",
                           "--json"]) == 0
    factors = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [f["factor"] for f in factors] == [0, 1, 2]


def test_features_lists_recipes_where_the_sae_has_them(sae_path, tmp_path, capsys):
    import shutil

    from sae.recipes import Edit, Recipes, save_recipes

    folder = tmp_path / "sae"
    shutil.copytree(sae_path, folder)
    args = ["features", "--model", "tiny-random-sd", "--sae", str(folder), "--recipes"]
    assert paint_app_main(args) == 0 and capsys.readouterr().out == ""  # none yet
    save_recipes(folder, Recipes({"red thing": [Edit("add", feature=0, strength=8.0, step_range=[1, 2], score=0.5)],
                                  "blue thing": [Edit("replace", factor=1, score=1.0)]}))
    assert paint_app_main([*args, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["concept"], r["edit"], r["score"]) for r in rows] == [("red thing", "add feature 0", 0.5),
                                                                      ("blue thing", "replace factor 1", 1.0)]
    assert paint_app_main([*args, "--search", "thing"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("blue thing\treplace factor 1 (strength 1, every step)\t100% of trials (1 edit tried)")
    assert "add feature 0 (strength 8, steps [1, 2])" in lines[1]
    with pytest.raises(SystemExit):
        paint_app_main([*args, "--factors"])
    assert "not allowed with argument --recipes" in capsys.readouterr().err


def test_sae_info(sae_path, capsys):
    assert sae_main(["info", str(sae_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["d_in"], info["n_features"], info["block"], info["labels"], info["factors"]) == (32, 64, BLOCK, 3, 3)
    assert sae_main(["info", str(sae_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_serve_threads_default_to_half_the_cores_and_refuse_negatives(monkeypatch, capsys):
    from paint_app import ui
    from paint_app.cli import serving_threads

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert serving_threads() == 1 and serving_threads(3) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert serving_threads() == 8
    served = {}
    monkeypatch.setattr(ui, "serve", lambda **kwargs: served.update(kwargs))
    assert paint_app_main(["serve", "--threads", "-1"]) == 2
    assert "--threads is -1; allowed: 0 (automatic) or a positive number" in capsys.readouterr().err
    assert not served
    before = torch.get_num_threads()
    try:
        assert paint_app_main(["serve", "--model", "tiny-random-sd", "--threads", "1", "--port", "7999"]) == 0
        assert torch.get_num_threads() == 1 and served["model"] == "tiny-random-sd" and served["port"] == 7999
    finally:
        torch.set_num_threads(before)
