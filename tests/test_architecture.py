"""The layering the code is meant to have (docs/architecture.md), checked from its imports.

Every import counts: module-level, inside functions and under TYPE_CHECKING alike, since a lazy
import is still a dependency a reader must follow and a refactor must respect.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE_LAYERS = {
    # package: the engine packages it may import (besides engine.errors/events/files/paths)
    "model": set(),
    "gguf": set(),  # the file format alone: reader, block types, dequantization, vocabulary
    "kernels": {"model", "gguf"},
    "text": set(),
    "loading": {"model", "kernels", "text", "gguf"},
    "hub": {"loading"},
    "generation": {"model", "kernels", "loading", "text"},
    "remote": {"text"},
}
SHARED = {"engine", "engine.errors", "engine.events", "engine.files", "engine.paths"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(path: Path, name: str) -> set[str]:
    """Every module `path` imports (absolute names, resolved to the longest module they name)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph(package: str) -> dict[str, set[str]]:
    modules = _modules(package)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in _imports(path, name):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_the_engine_has_no_import_cycles() -> None:
    assert _cycles(_graph("engine")) == []


def test_engine_packages_import_only_the_layers_below_them() -> None:
    wrong = []
    for module, targets in _graph("engine").items():
        layer = module.split(".")[1] if module.count(".") >= 2 else None
        if layer not in ENGINE_LAYERS:
            continue  # the CLI and the shared contracts sit on top or at the bottom
        for target in targets:
            other = target.split(".")[1] if target.count(".") >= 1 else ""
            if target in SHARED or other == layer or other in ENGINE_LAYERS[layer]:
                continue
            wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_model_knows_no_kernels() -> None:
    # The readable centre: plain torch. Kernels are swapped in by the loader.
    for name, path in _modules("engine").items():
        if name.startswith("engine.model"):
            imported = _imports(path, name)
            assert not [m for m in imported if m.startswith("engine.kernels")], name


def test_the_engine_imports_no_qt() -> None:
    for name, path in _modules("engine").items():
        imported = _imports(path, name)
        assert not [m for m in imported if m.split(".")[0] in ("PySide6", "shiboken6")], name


def test_the_checks_can_fail() -> None:
    # The graph walk sees a cycle and a layering breach when there is one.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    transformer = _imports(ROOT / "engine" / "model" / "transformer.py", "engine.model.transformer")
    assert "engine.model.attention" in transformer and "torch" in transformer


def test_the_store_has_no_import_cycles() -> None:
    store = {
        name: {t for t in targets if t.startswith("desktop.store.")}
        for name, targets in _graph("desktop").items()
        if name.startswith("desktop.store.")
    }
    assert "desktop.store.conversations" in store  # the walk sees the package's modules
    assert _cycles(store) == []


def test_the_store_package_re_exports_only_its_entry_point() -> None:
    # Every name is imported from the module that defines it; `desktop.store.ConversationStore`
    # is the one documented exception (DESIGN.md names it), so the package file holds only that.
    tree = ast.parse((ROOT / "desktop" / "store" / "__init__.py").read_text(encoding="utf-8"))
    docstring, *rest = tree.body
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
    assert [ast.dump(node) for node in rest] == [
        ast.dump(
            ast.ImportFrom(
                module="desktop.store.conversations",
                names=[ast.alias(name="ConversationStore", asname="ConversationStore")],
                level=0,
            )
        )
    ]


def test_the_desktop_reaches_the_engine_only_through_its_front_door() -> None:
    # engine.front_door (Engine and the model-finding/download functions) and the events the
    # engine sends: what a second backend implements, and nothing of the engine's insides.
    allowed = {"engine", "engine.front_door", "engine.events"}
    wrong = []
    for name, path in _modules("desktop").items():
        for module in _imports(path, name):
            if module.split(".")[0] != "engine":
                continue
            if module in allowed or module.rpartition(".")[0] in allowed - {"engine"}:
                continue  # `from engine.events import Step` names engine.events.Step too
            wrong.append(f"{name} -> {module}")
    assert wrong == []


def test_the_desktop_has_no_import_cycles() -> None:
    # The window is made of parts: features get a narrow interface (a Protocol, explicit
    # arguments), never `MainWindow`, so nothing imports back up into the window.
    assert "desktop.main_window" in _graph("desktop")
    assert _cycles(_graph("desktop")) == []
