"""The import direction of DESIGN.md section 2, and that the light packages stay light at import time.

engine <- storage <- agents <- flows; model imports only engine and storage; only flows imports prefect;
torch, transformers, prefect, sam2, decord and openai are never imported when engine, storage or agents
modules are merely imported (heavy libraries load lazily inside their one adapter); and no two first-party modules
import each other, directly or through others (lazy imports inside functions included).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "storage", "agents", "flows", "model")

# Which first-party packages each package may import (itself included).
ALLOWED = {
    "engine": {"engine"},
    "storage": {"engine", "storage"},
    "agents": {"engine", "storage", "agents"},
    "model": {"engine", "storage", "model"},
    "flows": set(PACKAGES),
}
HEAVY = ("torch", "transformers", "prefect", "sam2", "decord", "openai", "prefect_ray", "ray", "gradio", "s3fs")


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts)


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", PACKAGES)
def test_first_party_imports_follow_the_design(package: str) -> None:
    violations = []
    for path in _modules(package):
        for root in _imported_roots(path) & set(PACKAGES):
            if root not in ALLOWED[package]:
                violations.append(f"{path.relative_to(REPO)} imports {root}")
    assert not violations, "\n".join(violations)


def test_only_flows_imports_prefect() -> None:
    violations = [
        str(path.relative_to(REPO))
        for package in PACKAGES
        if package != "flows"
        for path in _modules(package)
        if _imported_roots(path) & {"prefect", "prefect_ray"}
    ]
    assert not violations, violations


def test_packages_resolve_inside_the_repo() -> None:
    # The PyPI package `openai-agents` also installs a top-level `agents`: ours must win.
    code = (
        "import json, importlib\n"
        f"print(json.dumps({{p: importlib.import_module(p).__file__ for p in {list(PACKAGES)!r}}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    for package, file in json.loads(out.stdout).items():
        assert Path(file).resolve().is_relative_to(REPO), f"{package} resolves to {file}"


def test_light_packages_do_not_load_heavy_libraries_at_import() -> None:
    modules = [
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for package in ("engine", "storage", "agents")
        for path in _modules(package)
    ]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [], "heavy libraries loaded at import time"


def test_only_the_web_adapter_imports_gradio() -> None:
    users = sorted(
        str(path.relative_to(REPO))
        for package in PACKAGES
        for path in _modules(package)
        if "gradio" in _imported_roots(path)
    )
    assert users == ["flows/webapp.py"], users


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _first_party_imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """The first-party modules `name` imports anywhere in its file (`from pkg import submodule` counts as the
    submodule; a name that is not a module counts as the module defining it)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    resolved = set()
    for target in found:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def test_no_import_circles_between_modules() -> None:
    paths = {_module_name(path): path for package in PACKAGES for path in _modules(package)}
    graph = {name: _first_party_imports(name, path, set(paths)) for name, path in paths.items()}
    circles = []
    for start in sorted(graph):  # a path back to `start`, found by depth-first search
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for target in sorted(graph[node]):
                if target == start:
                    circles.append(" -> ".join((*trail, start)))
                    stack = []
                    break
                if target not in seen:
                    seen.add(target)
                    stack.append((target, (*trail, target)))
    assert not circles, "import circles:\n" + "\n".join(circles)
