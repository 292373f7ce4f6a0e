"""The layer rule, walked here as well as by import-linter (`make lint`): every import of every
module, lazy ones included, points down the layers declared in pyproject.toml, so the apps
form no cycle; and no function imports another app to dodge one (AppConfig.ready aside,
where Django wants app code imported)."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
PACKAGES = set(CONFIG["root_packages"])


def layers() -> list[set[str]]:
    """The declared layers, top first; each a set of sibling packages."""
    (contract,) = [c for c in CONFIG["contracts"] if c["type"] == "layers"]
    return [{name.strip() for name in layer.split("|")} for layer in contract["layers"]]


def imports() -> Iterator[tuple[str, str, Path, int, bool]]:
    """(importing package, imported package, file, line, inside a function) for every import
    between two of the project's packages."""
    for path in sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        package = path.relative_to(ROOT).parts[0]
        tree = ast.parse(path.read_text(), filename=str(path))
        lazy = {
            id(node)
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            and function.name != "ready"
            for node in ast.walk(function)
        }
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                target = name.split(".")[0]
                if target in PACKAGES and target != package:
                    yield package, target, path, node.lineno, id(node) in lazy


def test_the_layers_name_every_package_once():
    declared = [name for layer in layers() for name in layer]
    assert sorted(declared) == sorted(PACKAGES)


def test_every_import_points_down_the_layers():
    rank = {name: index for index, layer in enumerate(layers()) for name in layer}
    upward = [
        f"{path.relative_to(ROOT)}:{line}: {source} imports {target}"
        for source, target, path, line, _ in imports()
        if rank[target] <= rank[source]
    ]
    assert upward == []


def test_the_apps_import_each_other_without_a_cycle():
    graph: dict[str, set[str]] = {name: set() for name in PACKAGES}
    for source, target, *_ in imports():
        graph[source].add(target)
    done: set[str] = set()

    def walk(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join([*path, name])
        if name in done:
            return
        for target in sorted(graph[name]):
            walk(target, (*path, name))
        done.add(name)

    for name in sorted(graph):
        walk(name, ())


def test_no_function_imports_another_app():
    lazy = [
        f"{path.relative_to(ROOT)}:{line}: {source} imports {target} inside a function"
        for source, target, path, line, inside in imports()
        if inside
    ]
    assert lazy == []
