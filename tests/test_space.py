"""The Space builds: a venv made from ``requirements.txt`` alone runs ``python app.py`` from a copy of the
repository's files (not installed, as a Space runs it) on the toy, offline, and serves the page; an unknown
``PAINT_APP_MODEL`` or bad ``PAINT_APP_SAE`` stops it at start with what is allowed, and no traceback.

Installing ``requirements.txt`` into a new venv takes 2-3 minutes here (about 1.7 GB, torch most of it, unpacked
from local files and PyPI; measured in docs/space.md), so the venv is made once per ``requirements.txt`` (and
Python version) and kept in ``~/.cache/paint-app/space-venv``: a changed list makes a new one. It is built in a
temporary folder and moved into place only once pip succeeded. ``PAINT_APP_SPACE_FRESH=1`` builds it anew.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import pytest
import tomllib
from conftest import free_port

REPO = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "paint-app" / "space-venv"
SERVING = "To create a public link"  # what gradio prints once its own check of the page passed
START_DEADLINE_S = 300  # importing torch, diffusers and gradio, loading the toy, serving: ~30-90 s on 2 busy cores


def requirement_names(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name = line.split(";")[0]
            for mark in "<>=!~[ ":
                name = name.split(mark)[0]
            names.add(name.lower().replace("_", "-"))
    return names


def test_requirements_hold_every_runtime_dependency_of_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = (REPO / "requirements.txt").read_text().splitlines()
    assert requirement_names(project["dependencies"]) <= requirement_names(listed)
    assert "torch==2.13.0" in [line.strip() for line in listed]  # pinned as the project tests it


def test_the_front_matter_names_the_gradio_and_python_we_test_with_and_app_py():
    from importlib.metadata import version

    front = (REPO / "README.md").read_text().split("---\n")[1]
    fields = dict(line.split(": ", 1) for line in front.splitlines() if ": " in line)
    assert fields["sdk"] == "gradio" and fields["sdk_version"] == version("gradio")
    assert fields["app_file"] == "app.py" and fields["python_version"].strip('"') == "{}.{}".format(*sys.version_info)
    assert fields["suggested_hardware"] in ("cpu-basic", "zero-a10g")


def space_venv() -> Path:
    """A venv with ``requirements.txt`` installed and nothing else (no system site-packages), made once per list."""
    key = hashlib.sha256((REPO / "requirements.txt").read_bytes() + sys.version.encode()).hexdigest()[:16]
    home = CACHE / key
    if os.environ.get("PAINT_APP_SPACE_FRESH") == "1":
        shutil.rmtree(home, ignore_errors=True)
    if (home / "bin" / "python").exists():
        return home
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.iterdir():  # venvs of earlier lists, and builds that never finished
        shutil.rmtree(old, ignore_errors=True)
    building = CACHE / f"{key}.building"
    venv.create(building, with_pip=True)
    started = time.perf_counter()
    done = subprocess.run([building / "bin" / "python", "-m", "pip", "install", "-q", "-r", REPO / "requirements.txt"],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"pip install -r requirements.txt failed:\n{done.stdout}\n{done.stderr}"
    print(f"requirements.txt installed into a new venv in {time.perf_counter() - started:.0f} s")
    building.rename(home)  # its python runs from anywhere (``python -m pip``; the console scripts are not used)
    return home


def project_files() -> list[str]:
    """What a push to the Space holds: tracked files, plus untracked ones git does not ignore (committed next)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return [name for name in out.split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's python, a copy of the repository's files)."""
    root = tmp_path_factory.mktemp("space")
    for name in project_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    return space_venv() / "bin" / "python", root


def space_env(**extra: str) -> dict:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PAINT_APP_", "GRADIO_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
               **extra)
    return env


def test_the_venv_has_no_paint_app_installed(space):
    python, root = space
    probe = "import importlib.util as u; print(u.find_spec('paint_app'), u.find_spec('sae'))"
    done = subprocess.run([python, "-c", probe], cwd=root.parent, env=space_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == ["None", "None"], done.stderr


def wait_for_page(url: str, process: subprocess.Popen, log: Path) -> str:
    """The page's HTML once the app says it serves; fails if the app exits or the deadline passes first.

    Gradio's launch asks the page once itself and gives up after 3 s (then it stops the app), so nothing else may
    ask before it is through: its next line, the hint about public links, says it is."""
    end = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < end:
        assert process.poll() is None, f"app.py exited with {process.returncode}:\n{log.read_text()[-4000:]}"
        if SERVING in log.read_text():
            with urllib.request.urlopen(url, timeout=60) as answer:
                return answer.read().decode()
        time.sleep(0.25)  # the app is still starting: look again
    raise AssertionError(f"app.py did not serve {url} within {START_DEADLINE_S} s:\n{log.read_text()[-4000:]}")


def test_python_app_py_serves_the_toy_from_the_repository_files(space, tmp_path):
    python, root = space
    port, log = free_port(), tmp_path / "app.log"
    env = space_env(GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    with open(log, "w") as out:
        process = subprocess.Popen([python, "app.py"], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        page = wait_for_page(f"http://127.0.0.1:{port}/", process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    assert '"title":"paint-app"' in page and "paint-app · toy" in page, page[:2000]


def test_an_unknown_model_stops_app_py_with_the_names_allowed_the_toy_among_them(space):
    """Where the package is not installed, ``sae`` knows no toy (an entry point): the app names it all the same.
    (A bad PAINT_APP_SAE: tests/test_ui_spaces.py.)"""
    python, root = space
    done = subprocess.run([python, "app.py"], cwd=root, env=space_env(PAINT_APP_MODEL="no-such-model"),
                          capture_output=True, text=True, timeout=START_DEADLINE_S)
    assert done.returncode != 0
    assert ("app.py: PAINT_APP_MODEL='no-such-model' cannot be served: model is 'no-such-model'; allowed: a short "
            "name (toy, tiny-random-sd, tiny-random-sdxl), a hub id (owner/name) or a local diffusers folder"
            ) in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
