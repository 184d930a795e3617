"""The model chooser's catalogue: the models Loopchat offers to download (resources/catalogue.json).

Plain data, no Qt: the chooser shows it, tests read it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TypedDict

from engine.front_door import EngineError, Layout


class CatalogueEntry(TypedDict):
    """One model the chooser offers (resources/catalogue.json)."""

    repo_id: str
    name: str
    size_bytes: int
    licence: str
    gated: bool
    layout: Layout
    description: str
    default: bool
    n_params: int
    """Parameters, and the shape below: what `desktop.model_fit` needs to say whether the model
    fits this computer's memory before it is downloaded (0 when the file does not say)."""
    n_layers: int
    kv_dim: int
    """Width of one layer's keys (KV heads × head dim)."""
    context: int
    """Positions the model was trained for (the KV cache the engine allocates by default)."""


def _resource_text(name: str) -> str:
    """A file of the `resources` package, installed, in a checkout, or frozen by PyInstaller."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen and (Path(frozen) / "resources" / name).is_file():
        return (Path(frozen) / "resources" / name).read_text(encoding="utf-8")
    from importlib import resources

    return resources.files("resources").joinpath(name).read_text(encoding="utf-8")


def load_catalogue() -> list[CatalogueEntry]:
    """The models the chooser offers, from resources/catalogue.json, in the file's order."""
    try:
        models = json.loads(_resource_text("catalogue.json"))["models"]
        entries = [
            CatalogueEntry(
                repo_id=str(m["repo_id"]),
                name=str(m["name"]),
                size_bytes=int(m["size_bytes"]),
                licence=str(m["licence"]),
                gated=bool(m["gated"]),
                layout=m["layout"],
                description=str(m.get("description", "")),
                default=bool(m.get("default", False)),
                n_params=int(m.get("n_params", 0)),
                n_layers=int(m.get("n_layers", 0)),
                kv_dim=int(m.get("kv_dim", 0)),
                context=int(m.get("context", 0)),
            )
            for m in models
        ]
        bad = [e["repo_id"] for e in entries if e["layout"] not in ("hf", "meta")]
        if bad:
            raise ValueError(f"unknown layout for {bad[0]}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineError(
            f"Loopchat's model catalogue (resources/catalogue.json) is unreadable ({exc}); "
            "reinstall Loopchat"
        ) from exc
    return entries


def builtin_entry() -> dict | None:
    """The shipped model as a chooser row (already on this computer: opens at once, offline)."""
    from engine.front_door import BUILTIN_NAME, DISPLAY_NAME, builtin_dir

    folder = builtin_dir()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return None
    return {
        "kind": "builtin",
        "repo_id": BUILTIN_NAME,
        "name": DISPLAY_NAME,
        "path": BUILTIN_NAME,
        "gated": False,
        "description": (
            "A small model trained by the Loopchat project on WordNet: it explains what English "
            "words mean. Ships with the app and works offline; for general chat, download a "
            "bigger model."
        ),
        "licence": "MIT (model), WordNet 3.0 licence (training data)",
        "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
    }


def first_run_model() -> str | None:
    """What to open when the user has never chosen a model: the built-in model if no other model
    is on this computer, else None (the chooser lists what is there)."""
    from engine.front_door import list_cached_models

    if builtin_entry() is None:
        return None
    return None if list_cached_models() else builtin_entry()["path"]
