"""The app's version for Help → About: the installed package's, else the source tree's."""

from __future__ import annotations

import logging
import re
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def app_version() -> str:
    """Installed metadata first (wheels, frozen builds with metadata); a source checkout's
    pyproject.toml otherwise; "unknown" rather than an error in About."""
    try:
        return metadata.version("loopchat")
    except metadata.PackageNotFoundError:
        pass
    try:
        text = PYPROJECT.read_text(encoding="utf-8")
    except OSError as exc:
        log.warning("no version found: %s", exc)
        return "unknown"
    # tomllib is 3.11+; the [project] table's version line is all that is needed.
    project = text.split("[project]", 1)[-1].split("\n[", 1)[0]
    found = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    return found.group(1) if found else "unknown"
