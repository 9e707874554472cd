"""The API for scripts, called through ``gradio_client`` on a live local server of the toy model: ``render`` gives
the bytes ``paint-app render`` writes, ``features`` the rows of ``paint-app features --json``, a bad session an error
that names its field, and the server keeps serving."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import pytest
from conftest import free_port

from paint_app import cli
from paint_app.toyworld import TOY_DIR

SESSIONS = TOY_DIR / "sessions"


def answers(url: str, deadline_s: float = 60) -> bool:
    """Whether ``url`` answers within the deadline: gradio's own check before serving gives up after one 3 s wait,
    and the page's first answer (its config, built then) can take longer on a busy machine."""
    import httpx

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            return httpx.head(url, timeout=max(1.0, end - time.monotonic())).status_code < 500
        except httpx.TransportError:
            time.sleep(0.1)  # not listening yet: ask again
    return False


@pytest.fixture(scope="module")
def toy_server(toy, tmp_path_factory):
    """The page on the toy model, served on a free port."""
    from gradio import networking

    from paint_app.concepts import ConceptLibrary
    from paint_app.engine import Engine
    from paint_app.ui import LAUNCH_OPTIONS, build_app

    engine = Engine(toy, ConceptLibrary.load([], toy.profile))
    blocks = build_app(engine, workdir=tmp_path_factory.mktemp("api-sessions"))
    blocks.queue()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(networking, "url_ok", answers)
        _, url, _ = blocks.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                  quiet=True, **LAUNCH_OPTIONS)
    yield url
    blocks.close()


@pytest.fixture(scope="module")
def client(toy_server):
    from gradio_client import Client

    return Client(toy_server, verbose=False)


def cli_output(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(argv) == 0
    return out.getvalue()


def test_the_api_page_lists_just_the_named_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert sorted(endpoints) == ["/decompose", "/features", "/render"]
    assert [p["parameter_name"] for p in endpoints["/render"]["parameters"]] == ["session"]


def test_render_gives_the_bytes_paint_app_render_writes(client, tmp_path):
    session = SESSIONS / "red_feature_left_half.json"
    cli_output(["render", str(session), "--out", str(tmp_path / "cli.png")])
    got = Path(client.predict(session.read_text(), api_name="/render"))
    assert got.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert got.read_bytes() == (tmp_path / "cli.png").read_bytes()


def test_features_gives_the_rows_of_paint_app_features_json(client):
    expected = [json.loads(line) for line in cli_output(["features", "--json", "--search", "red"]).splitlines()]
    rows = client.predict("red", 0, api_name="/features")
    assert rows and rows == expected
    assert all("red" in row["name"].lower() for row in rows)
    assert client.predict("red", 1, api_name="/features") == expected[:1]


def test_a_bad_session_is_an_error_naming_its_field_and_the_server_keeps_serving(client):
    from gradio_client.exceptions import AppError

    good = json.loads((SESSIONS / "striped_paste_top_left.json").read_text())
    bad = {**good, "layers": [{**good["layers"][0], "mode": "smudge"}]}
    with pytest.raises(AppError, match=r"layers\[0\]\.mode is 'smudge'; allowed"):
        client.predict(json.dumps(bad), api_name="/render")
    with pytest.raises(AppError, match=r"session file is not valid JSON"):
        client.predict("{not json", api_name="/render")
    with pytest.raises(AppError, match=r"saes is \['/elsewhere'\]; allowed on this server"):
        client.predict(json.dumps({**good, "saes": ["/elsewhere"]}), api_name="/render")
    with pytest.raises(AppError, match=r"model is 'tiny-random-sd'; this engine runs 'toy'"):
        client.predict(json.dumps({**good, "model": "tiny-random-sd"}), api_name="/render")
    image = Path(client.predict(json.dumps(good), api_name="/render"))
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_decompose_lists_the_parts_paint_app_decompose_lists(client):
    session = SESSIONS / "red_feature_left_half.json"
    rows = [json.loads(line) for line in cli_output(["decompose", str(session), "--json"]).splitlines()]
    got = client.predict(session.read_text(), "", 3, api_name="/decompose")
    assert len(got) == 3 and got == rows
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="parts is 9; allowed: 2 to 8"):
        client.predict(session.read_text(), "", 9, api_name="/decompose")
