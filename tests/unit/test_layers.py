"""The import arrows of angosd point only down the layers, and no modules import each other.

Every module under ``angosd/`` is parsed (not imported) and every import statement in it
counts: top-level, inside functions, and under ``TYPE_CHECKING``. A module belongs to its
package under ``angosd`` (``angosd.http.api`` -> ``http``); a module directly under
``angosd/`` is its own (``angosd.actions`` -> ``actions``, ``angosd/__init__.py`` ->
``__init__``). A package may import from its own layer's packages and from lower layers;
an import from a higher layer, from a package placed in no layer, or any cycle between
modules fails the test.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: The layers, lowest first: the one place the allowed order is written.
LAYERS: list[set[str]] = [
    {"__init__", "oci", "actions", "config", "compat", "expressions"},
    {"storage", "outbound", "tls"},
    {"coordination"},
    {"registry", "archive"},
    {"auth", "proxy", "observability"},
    {"webhooks"},
    {"http"},
    {"ui"},
    {"daemon"},
    {"commands"},
    {"__main__"},
]
ROOT = Path(__file__).resolve().parents[2] / "angosd"


@dataclass(frozen=True, slots=True)
class Source:
    """One module's text, and whether it is a package's ``__init__``."""

    text: str
    is_package: bool = False


def read_tree(root: Path = ROOT) -> dict[str, Source]:
    """Every module under ``root`` (the ``angosd`` directory) by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = Source(path.read_text(encoding="utf-8"), is_package)
    return modules


def _resolve(name: str, known: Iterable[str]) -> str:
    """The known module ``name`` designates: itself, else its nearest known parent."""
    modules = set(known)
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(modules: Mapping[str, Source], top: str = "angosd") -> dict[str, set[str]]:
    """Each module's imports of other modules of ``top`` (every import statement anywhere)."""
    graph: dict[str, set[str]] = {}
    for name, source in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(source.text, filename=name)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if source.is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                # ``from a import b`` imports module ``a.b`` when there is one, else a name of ``a``.
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                           for alias in node.names]
            for target in targets:
                if target == top or target.startswith(top + "."):
                    resolved = _resolve(target, modules)
                    if resolved != name:
                        found.add(resolved)
        graph[name] = found
    return graph


def package_of(module: str) -> str:
    """``angosd.http.api`` -> ``http``; ``angosd.actions`` -> ``actions``; ``angosd`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: Mapping[str, set[str]], layers: list[set[str]]) -> list[str]:
    """Each import of a higher layer's module, or involving a package in no layer."""
    rank = {package: index for index, layer in enumerate(layers) for package in layer}
    problems = []
    for module in sorted(graph):
        for target in sorted(graph[module]):
            source_package, target_package = package_of(module), package_of(target)
            if source_package not in rank or target_package not in rank:
                unplaced = source_package if source_package not in rank else target_package
                problems.append(f"{module} -> {target}: package {unplaced!r} is in no layer")
            elif rank[target_package] > rank[source_package]:
                problems.append(f"{module} -> {target}: {source_package!r} (layer {rank[source_package]}) "
                                f"imports from the higher {target_package!r} (layer {rank[target_package]})")
    return problems


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules, each as a path ``[a, b, ..., a]`` (one per back edge met)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        state[start] = 1
        stack = [iter(sorted(graph.get(start, ())))]
        while stack:
            target = next(stack[-1], None)
            if target is None:
                stack.pop()
                state[path.pop()] = 2
                continue
            if state.get(target) == 1:
                found.append([*path[path.index(target):], target])
            elif target not in state:
                state[target] = 1
                path.append(target)
                stack.append(iter(sorted(graph.get(target, ()))))
    return found


def layer_problems(modules: Mapping[str, Source], layers: list[set[str]]) -> list[str]:
    """Every upward import and every cycle of ``modules``, described; empty when all is well."""
    graph = imports(modules)
    return [*upward_imports(graph, layers), *("import cycle: " + " -> ".join(cycle) for cycle in cycles(graph))]


# --------------------------------------------------------------------------- the checker itself


def test_the_checker_reports_an_upward_import_and_a_cycle() -> None:
    modules = {
        "angosd": Source("", is_package=True),
        "angosd.oci": Source("", is_package=True),
        "angosd.oci.low": Source("from angosd.http import api\n"),  # upward: oci -> http
        "angosd.http": Source("", is_package=True),
        "angosd.http.api": Source("from . import router\nimport angosd.oci.low\n"),
        "angosd.http.router": Source("def late():\n    from angosd.http.api import thing\n"),  # a cycle
        "angosd.http.typed": Source("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                    "    from angosd.oci import low\n"),
    }
    problems = layer_problems(modules, [{"__init__", "oci"}, {"http"}])
    assert problems == [
        "angosd.oci.low -> angosd.http.api: 'oci' (layer 0) imports from the higher 'http' (layer 1)",
        "import cycle: angosd.http.api -> angosd.http.router -> angosd.http.api",
        "import cycle: angosd.http.api -> angosd.oci.low -> angosd.http.api",
    ]
    assert imports(modules)["angosd.http.typed"] == {"angosd.oci.low"}


def test_the_checker_reports_a_package_in_no_layer() -> None:
    modules = {"angosd": Source("", is_package=True), "angosd.extra": Source("import angosd.oci\n"),
               "angosd.oci": Source("", is_package=True)}
    assert layer_problems(modules, [{"__init__", "oci"}]) == [
        "angosd.extra -> angosd.oci: package 'extra' is in no layer"]


def test_every_package_is_in_exactly_one_layer() -> None:
    placed = [package for layer in LAYERS for package in layer]
    assert len(placed) == len(set(placed))
    present = {package_of(module) for module in read_tree()}
    assert present <= set(placed), sorted(present - set(placed))


# --------------------------------------------------------------------------- angosd


def test_angosd_imports_point_only_down_and_form_no_cycle() -> None:
    problems = layer_problems(read_tree(), LAYERS)
    assert not problems, "\n".join(problems)
