"""The structure holds: ``sae`` stands alone, ``paint_app`` has no import cycle, and a wheel (not only ``-e .``)
installs a working app with its embedded default model."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import numpy as np
from PIL import Image
from test_shipped_sessions import PINNED

REPO = Path(__file__).resolve().parent.parent


def _clean_env() -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("PAINT_APP_TOY_DIR", "PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _run(argv: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


# ----------------------------------------------------------------------------------------------------------------
# sae stands alone.


def test_sae_and_every_submodule_import_where_paint_app_cannot(tmp_path):
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        sys.modules["paint_app"] = None  # `import paint_app` now raises ImportError
        import sae
        names = [m.name for m in pkgutil.walk_packages(sae.__path__, "sae.")]
        for name in names:
            importlib.import_module(name)
        from sae.errors import SAEError
        from sae.pipelines import known_model_names, resolve_model
        assert "tiny-random-sd" in known_model_names()
        try:  # a model registered by a package that cannot be imported: a clear error, naming the entry point
            resolve_model("toy")
        except SAEError as exc:
            assert "sae.models" in str(exc), exc
        print(len(names), "modules")
    """)
    done = _run([sys.executable, "-c", script], cwd=tmp_path)
    assert int(done.stdout.split()[0]) >= 10


def test_the_toy_entry_point_is_registered_and_import_light(tmp_path):
    """paint-app registers ``toy`` in ``sae.models``; resolving it imports no torch and reads the model's own
    defaults from its package data."""
    script = textwrap.dedent("""
        import json, sys
        from importlib.metadata import entry_points
        (point,) = [p for p in entry_points(group="sae.models") if p.name == "toy"]
        found = point.load()()
        assert "torch" not in sys.modules, "paint_app.toyworld imports torch"
        print(json.dumps(found))
    """)
    found = json.loads(_run([sys.executable, "-c", script], cwd=tmp_path).stdout)
    from paint_app.toyworld import TOY_DIR

    assert Path(found["path"]) == TOY_DIR and (TOY_DIR / "model_index.json").is_file()
    settings = json.loads((TOY_DIR / "paint_app.json").read_text())
    assert found["defaults"] == {key: settings[key] for key in ("width", "height", "steps", "guidance")}


def test_sae_generation_defaults_come_from_the_caller_and_unknown_names_list_the_known_ones(tmp_path):
    from types import SimpleNamespace

    import pytest

    from sae.capture import generation_settings
    from sae.errors import SAEError
    from sae.pipelines import load_diffusers_pipeline, model_defaults

    pipe = SimpleNamespace(vae_scale_factor=8, unet=SimpleNamespace(config=SimpleNamespace(sample_size=16)))
    assert generation_settings(pipe) == (128, 128, 4, None)  # no defaults given: the UNet's size, 4 steps
    assert generation_settings(pipe, defaults=model_defaults("toy")) == (64, 64, 8, 3.0)  # the toy's own
    assert generation_settings(pipe, 2, 1.0, 32, 48, defaults=model_defaults("toy")) == (32, 48, 2, 1.0)
    (tmp_path / "paint_app.json").write_text('{"steps": 99}')  # a folder's app file is not sae's business
    assert model_defaults(str(tmp_path)) == {}
    with pytest.raises(SAEError, match=r"not a built-in name or a registered model \(tiny-random-sd, "
                                       r"tiny-random-sdxl, toy\)"):
        load_diffusers_pipeline("no-such-model", device="cpu")


def _sae_files() -> list[Path]:
    return sorted((REPO / "sae").rglob("*.py"))


def test_no_sae_module_holds_a_path_into_the_checkout_or_imports_the_app():
    """No ``__file__``-relative paths, no app folders or files by name, no ``paint_app`` import."""
    found = []
    for file in _sae_files():
        tree = ast.parse(file.read_text(), filename=str(file))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            where = f"{file.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Name) and node.id == "__file__":
                found.append(f"{where}: __file__")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for needle in ("assets", "paint_app.json", "PAINT_APP", "toyworld"):
                    if needle in node.value:
                        found.append(f"{where}: {node.value!r}")
            elif isinstance(node, ast.Import):
                found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] == "paint_app"]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("paint_app"):
                found.append(f"{where}: from {node.module} import ...")
    assert not found, "sae reaches into the checkout or the app:\n" + "\n".join(found)


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring constants (prose may name the app; code may not)."""
    return {id(owner.body[0].value) for owner in ast.walk(tree)
            if isinstance(owner, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and owner.body and isinstance(owner.body[0], ast.Expr) and isinstance(owner.body[0].value, ast.Constant)}


# ----------------------------------------------------------------------------------------------------------------
# paint_app has no import cycle.


def _module_name(file: Path) -> str:
    parts = list(file.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of the tree, except the bodies of ``if TYPE_CHECKING:`` (imports for annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def import_graph(package: str = "paint_app") -> dict[str, set[str]]:
    """``{module: the package's modules it imports}``, from every import statement anywhere in the module (module
    level and inside functions; absolute and relative; not those under ``if TYPE_CHECKING:``). Importing ``a.b.c`` also runs packages ``a.b`` and ``a``,
    so those are edges too, except the importer's own packages (already running when it is imported)."""
    files = {_module_name(f): f for f in sorted((REPO / package).rglob("*.py"))}
    packages = {name for name, f in files.items() if f.name == "__init__.py"}

    def existing(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in files}
    for module, file in files.items():
        own_package = module if module in packages else module.rpartition(".")[0]
        targets = []
        for node in _runtime_nodes(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = own_package
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                            for alias in node.names]
        ancestors = {module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1)}
        for target in targets:
            if target != package and not target.startswith(package + "."):
                continue
            found = existing(target)
            while found:
                if found != module and found not in ancestors:
                    graph[module].add(found)
                found = found.rpartition(".")[0] or None
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_import_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "paint_app.toyworld" in graph["paint_app.models"]  # module level, relative
    assert "paint_app.models" in graph["paint_app.toyworld.train"]  # inside a function, absolute
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    code = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\nelse:\n    import y\nimport z\n"
    names = [a.name for n in _runtime_nodes(ast.parse(code)) if isinstance(n, ast.Import) for a in n.names]
    assert sorted(names) == ["y", "z"]


def test_paint_app_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in paint_app: " + " -> ".join(cycle)


# ----------------------------------------------------------------------------------------------------------------
# The wheel: built from the repository's files, installed outside the checkout, serving the embedded default.


def _project_files() -> list[str]:
    """What a commit would hold: tracked files plus untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return [name for name in out.split("\0") if name and (REPO / name).is_file()]


def test_wheel_installs_outside_the_checkout_and_renders_a_shipped_session(tmp_path):
    source, wheels, work = tmp_path / "src", tmp_path / "wheels", tmp_path / "work"
    files = _project_files()
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    work.mkdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source],
         cwd=tmp_path)
    (wheel,) = wheels.glob("paint_app-*.whl")

    import zipfile

    shipped = {name for name in files if name.startswith(("paint_app/assets/toy/", "paint_app/web/"))}
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert "paint_app/assets/toy/model_index.json" in shipped
    assert shipped <= in_wheel, f"missing from the wheel: {sorted(shipped - in_wheel)}"

    # torch, diffusers and the rest come from this machine; pip too (the venv has none of its own)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False, symlinks=True)
    python, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", "--no-warn-script-location",
          wheel], cwd=work)

    probe = ("import paint_app, sae, paint_app.toyworld as t; from sae.pipelines import resolve_model; "
             "print(paint_app.__file__); print(sae.__file__); print(t.SESSIONS_DIR); print(resolve_model('toy')['path'])")
    paint_file, sae_file, sessions, toy_path = _run([python, "-c", probe], cwd=work).stdout.split("\n")[:4]
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=work).stdout.strip())
    for imported in (paint_file, sae_file, sessions, toy_path):
        assert Path(imported).is_relative_to(site), f"{imported} is not from the venv's {site}"
        assert not Path(imported).is_relative_to(REPO)

    session = Path(sessions) / "red_feature_left_half.json"
    _run([bin_dir / "paint-app", "render", session, "--out", work / "x.png", "--device", "cpu"], cwd=work)
    rgb = np.asarray(Image.open(work / "x.png").convert("RGB"))
    assert hashlib.sha256(rgb.tobytes()).hexdigest() == PINNED["red_feature_left_half"]

    help_text = _run([bin_dir / "sae", "--help"], cwd=work).stdout
    assert "collect" in help_text and "train" in help_text
