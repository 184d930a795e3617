"""Every module the app imports at run time comes from the standard library, from Loopchat itself,
or from a package pyproject.toml declares. The test extras bring more (numpy through transformers),
so a missing declaration passes every other test and breaks only the README's install: 8/4-bit
weights once failed there with "Numpy is not available"."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_PACKAGES = ("engine", "desktop")
OWN = {"engine", "desktop", "resources", "__future__"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {
        _normalise(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]) for dep in project["dependencies"]
    }


def _imported_modules() -> dict[str, list[str]]:
    """Top-level names of every absolute import in the runtime packages, with where they are
    (imports inside functions and TYPE_CHECKING blocks included: a lazy import is still one)."""
    found: dict[str, list[str]] = {}
    for package in RUNTIME_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    found.setdefault(top, []).append(where)
    return found


def test_every_runtime_import_is_declared() -> None:
    declared = _declared()
    owners = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, places in _imported_modules().items():
        if module in OWN or module in sys.stdlib_module_names:
            continue
        distributions = {_normalise(d) for d in owners.get(module, [])}
        if not distributions & declared:
            undeclared[module] = (sorted(distributions) or ["not installed"], places[:3])
    assert not undeclared, f"imported at run time but not in pyproject's dependencies: {undeclared}"


def test_numpy_is_not_used_at_run_time() -> None:
    # torch runs without numpy, the frozen app leaves it out, and users do not have it; a
    # tensor's .numpy() (or safetensors' numpy-based save) needs it without importing it.
    assert "numpy" not in _imported_modules()
    uses = []
    for package in RUNTIME_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr in ("numpy", "save_file", "save"):
                    if node.attr == "numpy" or "safetensors" in ast.unparse(node.value):
                        uses.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not uses, uses
