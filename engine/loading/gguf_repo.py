"""GGUF repos on the Hub: which one file to fetch, and finding it again in the cache offline.

A GGUF repo (TheBloke/Llama-2-7B-Chat-GGUF) holds the same model quantized several ways, one
`.gguf` file each; Loopchat fetches exactly one. Without a choice it takes the file people take
most: Q4_K_M, else the smallest Q4 file, else the repo's only file. Models split into parts
("-00001-of-00003.gguf") are refused: Loopchat opens single-file GGUF models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from engine.errors import EngineError
from engine.loading.hub_settings import HubSettings, check_revision

SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_Q4_K_M = re.compile(r"(?<![A-Za-z0-9])Q4_K_M(?![A-Za-z0-9])", re.IGNORECASE)
_Q4 = re.compile(r"(?<![A-Za-z0-9])Q4_", re.IGNORECASE)
_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_gguf_name(name: str) -> bool:
    return name.lower().endswith(".gguf")


def shard_problem(repo_id: str, name: str) -> str | None:
    """Why a file that is one part of a split model cannot be fetched alone, or None."""
    match = SHARD.search(name)
    if match is None:
        return None
    return (
        f"{name} in {repo_id} is part {int(match.group(1))} of a model split into "
        f"{int(match.group(2))} files; Loopchat opens single-file GGUF models: pick a "
        "quantization stored as one file"
    )


def check_gguf_filename(filename: str) -> str:
    """The file name as given, or EngineError when it cannot be a .gguf file of a repo."""
    name = filename.strip()
    parts = name.replace("\\", "/").split("/")
    if (
        not name
        or not is_gguf_name(name)
        or name.startswith(("/", "\\"))
        or ".." in parts
        or "" in parts
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    ):
        raise EngineError(
            f"{filename!r} is not a GGUF file name; give the name of one .gguf file of the repo "
            "(e.g. llama-2-7b-chat.Q4_K_M.gguf)"
        )
    return name


def pick_gguf_file(repo_id: str, files: Sequence[tuple[str, int]]) -> tuple[str, str]:
    """(file name, why it was chosen) among a repo's .gguf files (name, size).

    Q4_K_M, else the smallest Q4 file, else the only file. EngineError when the repo has no
    single-file GGUF model, or several and none of them Q4 (then the caller must name one).
    """
    gguf = [(n, s) for n, s in files if is_gguf_name(n)]
    whole = sorted((s, n) for n, s in gguf if SHARD.search(n) is None)
    if not whole:
        if gguf:
            raise EngineError(shard_problem(repo_id, sorted(gguf)[0][0]) or "")
        raise EngineError(f"{repo_id} has no .gguf files")
    q4km = [(s, n) for s, n in whole if _Q4_K_M.search(Path(n).name)]
    if q4km:
        return q4km[0][1], "Q4_K_M, the usual choice"
    q4 = [(s, n) for s, n in whole if _Q4.search(Path(n).name)]
    if q4:
        return q4[0][1], "the smallest Q4 file (the repo has no Q4_K_M)"
    if len(whole) == 1:
        return whole[0][1], "the repo's only GGUF file"
    names = ", ".join(n for _, n in whole[:6]) + (", ..." if len(whole) > 6 else "")
    raise EngineError(
        f"{repo_id} has {len(whole)} GGUF files and none is Q4_K_M or Q4; choose one ({names})"
    )


def _snapshots(settings: HubSettings, repo_id: str, revision: str | None) -> list[Path]:
    """The repo's cached snapshots to look in: the revision's, or main's first, then newest."""
    repo = settings.cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"

    def ref(name: str) -> Path | None:
        if _COMMIT.fullmatch(name):
            return snapshots / name
        try:
            commit = (repo / "refs" / name).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        return snapshots / commit if _COMMIT.fullmatch(commit) else None

    if revision is not None:
        found = ref(revision)
        return [found] if found is not None and found.is_dir() else []
    try:
        others = sorted(
            (p for p in snapshots.iterdir() if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
    except OSError:
        return []
    main = ref("main")
    first = [main] if main is not None and main.is_dir() else []
    return first + [p for p in others if p not in first]


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size if path.is_file() else 0
    except OSError:
        return 0


def cached_gguf_files(
    repo_id: str, revision: str | None = None, settings: HubSettings | None = None
) -> list[tuple[Path, str, int]]:
    """(path, name in the repo, size) of each complete .gguf file of a repo in the cache.

    A file appears in a snapshot only once its transfer finished (huggingface_hub downloads into
    blobs/*.incomplete first), so every file listed is whole.
    """
    check_revision(revision)
    settings = settings or HubSettings.from_environment()
    out: list[tuple[Path, str, int]] = []
    seen: set[str] = set()
    for snapshot in _snapshots(settings, repo_id, revision):
        for depth in ("*.gguf", "*/*.gguf", "*/*/*.gguf"):
            for path in sorted(snapshot.glob(depth)):
                name = path.relative_to(snapshot).as_posix()
                size = _size(path)
                if size > 0 and name not in seen:
                    seen.add(name)
                    out.append((path, name, size))
    return out


def find_cached_gguf(
    repo_id: str,
    revision: str | None = None,
    filename: str | None = None,
    settings: HubSettings | None = None,
) -> Path | None:
    """The cached .gguf file of a repo (the one named, else the one a download would pick)."""
    cached = cached_gguf_files(repo_id, revision, settings)
    if filename is not None:
        name = check_gguf_filename(filename)
        return next((p for p, n, _ in cached if n == name), None)
    whole = [(n, s) for _, n, s in cached if SHARD.search(n) is None]
    if not whole:
        return None
    try:
        name, _why = pick_gguf_file(repo_id, whole)
    except EngineError:
        name = min(whole, key=lambda f: (f[1], f[0]))[0]  # several cached: the smallest
    return next(p for p, n, _ in cached if n == name)
