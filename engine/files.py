"""Reading a model folder's files safely: regular files only, names kept inside the folder.

A model folder comes from the internet or from a user's disk, so its files are input like any
other: a FIFO named model.safetensors would block a read forever, a symlink loop raises OSError,
an index.json may name `../../etc/passwd`, and a config may nest JSON 200,000 levels deep. Every
read of a model's file goes through here, so each of those ends in one EngineError instead.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from engine.errors import EngineError

MAX_JSON_BYTES = 64 * 2**20
"""No config, index or tokenizer file is anywhere near this; a bigger one is not one of them."""


def is_regular_file(path: Path) -> bool:
    """True for a regular file (symlinks followed); False for FIFOs, devices, loops, absences."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def require_regular_file(path: Path) -> Path:
    """`path` if it is a readable regular file; else EngineError saying what it is instead."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise EngineError(f"{path} is missing") from None
    except OSError as exc:  # ELOOP (symlink loop), EACCES, ENAMETOOLONG ...
        raise EngineError(f"{path} cannot be read ({exc.strerror or exc})") from None
    except ValueError:  # a NUL in the name
        raise EngineError(f"{path!r} is not a valid file name") from None
    if not stat.S_ISREG(mode):
        raise EngineError(f"{path} is not a regular file (a pipe, device or folder); remove it")
    return path


def member_name(folder: Path, name: Any, listed_in: str) -> Path:
    """The file `name` (from an index or listing) inside `folder`, refusing anything else.

    Only plain file names are accepted: no separators, no '..', no absolute paths, so a crafted
    index can never make the engine open a file outside the model folder.
    """
    if not isinstance(name, str) or not name:
        raise EngineError(f"{listed_in} names {name!r} as a file; expected a file name")
    if (
        name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or os.path.isabs(name)
        or any(ord(c) < 0x20 for c in name)
    ):
        raise EngineError(
            f"{listed_in} names '{name!r}', which is not a file inside the model folder; "
            "the model folder is not trustworthy"
        )
    return folder / name


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The contents of a regular file (at most `limit` bytes, else an error naming the file)."""
    require_regular_file(path)
    try:
        with path.open("rb") as f:
            data = f.read(-1 if limit is None else limit + 1)
    except OSError as exc:
        raise EngineError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if limit is not None and len(data) > limit:
        raise EngineError(f"{path} is larger than {limit} bytes; it is not the file it claims")
    return data


def read_text(path: Path, limit: int | None = MAX_JSON_BYTES) -> str:
    """A regular file's UTF-8 text, or an error naming the file."""
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EngineError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def parse_json(text: str | bytes, source: str) -> Any:
    """json.loads with every failure (including absurd nesting) as one EngineError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise EngineError(f"{source} nests JSON too deeply to be a model file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise EngineError(
            f"{source} is not valid JSON ({exc}); the download may be broken"
        ) from None


def read_json(path: Path) -> Any:
    """Any JSON value from a regular file (the caller checks its shape)."""
    return parse_json(read_text(path), str(path))


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a regular file, naming the file when it is anything else."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise EngineError(f"{path} does not hold a JSON object")
    return data
