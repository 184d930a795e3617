"""Find shipped resource files: installed, in a checkout, or frozen by PyInstaller."""

from __future__ import annotations

import sys
from pathlib import Path


def resources_dir() -> Path:
    """The folder holding catalogue.json, styles/ and icons/."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "resources"
    import resources

    return Path(resources.__file__).resolve().parent


def resource_path(name: str) -> Path:
    """Path of one resource file, e.g. resource_path("icons/loopchat.svg")."""
    return resources_dir() / name
