"""Where the engine keeps files it can rebuild (quantized weights, kernel choices).

The same rule as the desktop app's paths (which the engine must not import): platformdirs' user
cache folder for "Loopchat", or `$LOOPCHAT_HOME/cache` when LOOPCHAT_HOME is set (tests, portable
installs). Everything here may be deleted at any time; it is rebuilt on the next load.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "Loopchat"


def cache_dir(*parts: str) -> Path:
    """The engine's cache folder (or a subfolder of it), created if missing."""
    home = os.environ.get("LOOPCHAT_HOME")
    if home:
        root = Path(home) / "cache"
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir(APP_NAME, APP_NAME))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
