"""Where Loopchat keeps its files: platformdirs locations, never next to the program.

LOOPCHAT_HOME, when set, roots every folder in one place (tests, portable installs).
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "Loopchat"


def _root(kind: str) -> Path:
    home = os.environ.get("LOOPCHAT_HOME")
    if home:
        return Path(home) / kind
    import platformdirs

    getter = {
        "config": platformdirs.user_config_dir,
        "data": platformdirs.user_data_dir,
        "log": platformdirs.user_log_dir,
        "cache": platformdirs.user_cache_dir,
    }[kind]
    return Path(getter(APP_NAME, APP_NAME))


def config_dir() -> Path:
    """Settings (loopchat.ini)."""
    path = _root("config")
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Conversations database."""
    path = _root("data")
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_dir() -> Path:
    """Log files."""
    path = _root("log")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Files the engine can rebuild (quantized weights, kernel choices). The engine finds it
    by the same rule in engine/paths.py (the desktop reaches the engine only through its front
    door); named here so About can show it beside the others."""
    path = _root("cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def app_folders() -> list[tuple[str, Path]]:
    """(what it holds, folder) for each place Loopchat writes to, as Help → About lists them:
    a user asking "where are my chats?" or cleaning up finds them without reading the docs."""
    return [
        ("Conversations", data_dir()),
        ("Settings", config_dir()),
        ("Logs", log_dir()),
        ("Cache (safe to delete)", cache_dir()),
    ]
