"""The Hugging Face Hub settings as the environment says now, and the one check of a revision.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, when it is imported. Loopchat
reads them at every call instead (tests and the desktop change them while running). Its own module
so that both model folders (engine/loading/model_folder.py) and GGUF repos
(engine/loading/gguf_repo.py) find the cache the same way without importing each other.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError, Remedy

DEFAULT_ENDPOINT = "https://huggingface.co"


def check_revision(revision: str | None) -> str | None:
    """The revision as given, or EngineError when it could name a path outside the cache.

    huggingface_hub stores `refs/<revision>` in the cache folder, so a revision with '..'
    segments, a leading slash or backslash, or control characters must never reach it.
    """
    if revision is None:
        return None
    if not isinstance(revision, str) or not revision.strip():
        raise EngineError("the revision is empty", Remedy.GIVE_REVISION)
    segments = re.split(r"[/\\]", revision)
    if (
        revision[0] in "/\\"
        or ".." in segments
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in revision)
        or re.match(r"^[A-Za-z]:", revision)
    ):
        raise EngineError(
            f"revision {revision!r} is not a branch, tag or commit name (no '..' segments, "
            "leading slash or backslash, or control characters)",
            Remedy.FIX_REVISION_NAME,
        )
    return revision


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubSettings:
    """HF_ENDPOINT, the hub cache folder and HF_HUB_OFFLINE as the environment says now."""

    endpoint: str
    cache_dir: Path
    offline: bool

    @classmethod
    def from_environment(cls) -> HubSettings:
        env = os.environ
        endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
        if not cache:
            cache = os.path.join(hf_home(), "hub")
        offline = _is_true(env.get("HF_HUB_OFFLINE")) or _is_true(env.get("TRANSFORMERS_OFFLINE"))
        return cls(endpoint, Path(os.path.expandvars(os.path.expanduser(cache))), offline)


def hf_home() -> str:
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(xdg, "huggingface")
    return os.path.expandvars(os.path.expanduser(home))
