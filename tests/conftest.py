"""Shared fixtures: the tiny pipeline with helper SAEs, a chromium launcher, and the app served on a free port."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "test-output" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TINY_BLOCKS = {"down_blocks.0.attentions.0": 32, "mid_block.attentions.0": 64}


@pytest.fixture(scope="module")
def pipe():
    """tiny-random-sd without progress bars (a fresh one per module: tests may hook it)."""
    from sae.pipelines import build_tiny_pipeline

    pipeline = build_tiny_pipeline("tiny-random-sd")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def tiny_sae_paths(tmp_path_factory) -> list[str]:
    """Random SAEs (with labels 'red thing', 'blue thing', 'striped' and 3 factors) on two tiny-random-sd blocks."""
    from helpers import tiny_sae_folder

    root = tmp_path_factory.mktemp("app-saes")
    return [str(tiny_sae_folder(root, block, channels)) for block, channels in TINY_BLOCKS.items()]


@pytest.fixture(scope="session")
def tiny_engine(tiny_sae_paths):
    from paint_app.engine import load_engine

    return load_engine("tiny-random-sd", tiny_sae_paths, "cpu")


@pytest.fixture(scope="module")
def toy(request):
    """The embedded toy model on the CPU, one torch thread, offline."""
    import torch

    from paint_app.models import load_model

    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    request.addfinalizer(mp.undo)
    return load_model("toy", device="cpu")


@pytest.fixture(scope="module")
def app(tiny_engine, tmp_path_factory):
    """The page's handlers on tiny-random-sd, each checked against its declared outputs at every call."""
    from helpers import checking

    from paint_app.ui import PaintApp

    return checking(PaintApp(tiny_engine, tmp_path_factory.mktemp("ui-sessions")))


@pytest.fixture
def state(app):
    """A started tab: its first image and first layer."""
    import warnings

    state = app.new_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app.start(state)
    return state


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread while a module runs: on a small, busy machine two threads spinning at every barrier
    can make a tiny generation a hundred times slower; one thread keeps it at a tenth of a second."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium driven by Playwright's sync API."""
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()
    playwright.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    url: str
    blocks: object
    app: object  # the PaintApp behind the page


def serving(engine, workdir):
    """The painting app on ``engine``, served on 127.0.0.1 at a free port from a background thread, until closed."""
    from paint_app.ui import LAUNCH_OPTIONS, build_app

    blocks = build_app(engine, workdir=workdir)
    blocks.queue()
    _, url, _ = blocks.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                              quiet=True, **LAUNCH_OPTIONS)
    return Server(url, blocks, blocks.paint_app)


@pytest.fixture(scope="module")
def app_server(tiny_engine, one_torch_thread, tmp_path_factory):
    """The painting app on tiny-random-sd, served on a free port."""
    server = serving(tiny_engine, tmp_path_factory.mktemp("app-sessions"))
    yield server
    server.blocks.close()


@pytest.fixture(scope="module")
def toy_server(one_torch_thread, tmp_path_factory):
    """The painting app on the shipped toy model, as `paint-app` starts it, on a free port: its URL."""
    from paint_app.engine import load_engine

    server = serving(load_engine("toy", [], "cpu"), tmp_path_factory.mktemp("toy-sessions"))
    yield server.url
    server.blocks.close()
