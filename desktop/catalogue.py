"""The model chooser's catalogue: the models Loopchat offers to download (resources/catalogue.json).

Plain data, no Qt: the chooser shows it, tests read it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TypedDict

from engine.front_door import EngineError, Layout


class CatalogueFile(TypedDict):
    """One file of a GGUF repo the chooser offers (its quantization and download size)."""

    filename: str
    quant: str
    size_bytes: int


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
    files: list[CatalogueFile]
    """A GGUF repo's files, one per quantization (empty for folder layouts): one is downloaded."""
    default_file: str
    """The file chosen unless the user picks another ("" for folder layouts)."""


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
                files=[
                    CatalogueFile(
                        filename=str(f["filename"]),
                        quant=str(f["quant"]),
                        size_bytes=int(f["size_bytes"]),
                    )
                    for f in m.get("files", [])
                ],
                default_file=str(m.get("default_file", "")),
            )
            for m in models
        ]
        bad = [e["repo_id"] for e in entries if e["layout"] not in ("hf", "meta", "gguf")]
        if bad:
            raise ValueError(f"unknown layout for {bad[0]}")
        bad = [e["repo_id"] for e in entries if e["layout"] == "gguf" and not e["files"]]
        if bad:
            raise ValueError(f"no files listed for {bad[0]}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineError(
            f"Loopchat's model catalogue (resources/catalogue.json) is unreadable ({exc}); "
            "reinstall Loopchat"
        ) from exc
    return entries


def default_file(entry: CatalogueEntry) -> CatalogueFile | None:
    """The file of a GGUF entry chosen unless the user picks another (None for folders)."""
    files = entry.get("files") or []
    chosen = [f for f in files if f["filename"] == entry.get("default_file")]
    return (chosen or files or [None])[0]


def cached_file(repo_id: str, filename: str) -> str | None:
    """The path of `filename` of `repo_id` in the Hugging Face cache, if it was downloaded whole
    (a file system look-up: no network)."""
    from huggingface_hub import try_to_load_from_cache

    from engine.front_door import HubSettings

    try:
        found = try_to_load_from_cache(
            repo_id, filename, cache_dir=HubSettings.from_environment().cache_dir
        )
    except (OSError, ValueError):
        return None
    return found if isinstance(found, str) and Path(found).is_file() else None


def file_fit_text(entry: CatalogueEntry, size_bytes: int, memory=None) -> tuple[str, str] | None:
    """(verdict, sentence) for one GGUF file of `entry`: its blocks run as they are, so the
    weights take about the file's size in memory, plus the KV cache and the app (as
    desktop.model_fit counts them). None when the entry does not give the model's shape."""
    from desktop.model_fit import FITS, KV_BYTES, OVERHEAD_BYTES, TIGHT, gb, memory_now, verdict

    layers, kv_dim = entry.get("n_layers", 0), entry.get("kv_dim", 0)
    context = entry.get("context", 0)
    if size_bytes <= 0 or not (layers and kv_dim and context):
        return None
    needed = int(size_bytes + 2 * layers * kv_dim * context * KV_BYTES + OVERHEAD_BYTES)
    available, total = memory_now() if memory is None else memory
    said = verdict(needed, available, total)
    need, free = gb(needed), gb(available)
    if said == FITS:
        return said, f"Fits this computer: needs about {need}; {free} is free."
    if said == TIGHT:
        return said, (
            f"Tight: needs about {need} but only {free} of {gb(total)} is free now; close "
            "other programs first."
        )
    return said, f"Won't fit: needs about {need}; this computer has {gb(total)}."


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
