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
