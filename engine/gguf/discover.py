"""The GGUF files already on this computer, for the model chooser.

Other apps keep their models as GGUF files in known folders: the Hugging Face cache, LM Studio,
GPT4All, Jan and Ollama (whose blobs have no extension; its manifests say which blob is a model and
what it is called). Each file found is read for its header and metadata only, never its tensors,
and never written: folders are listed and files opened read-only. A file that cannot be read or
run is still listed, with the reason, so the chooser can grey it and say why.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.gguf.compat import quant_name, unsupported_reason

log = logging.getLogger(__name__)

HF_SOURCE = "Hugging Face cache"
LM_STUDIO = "LM Studio"
GPT4ALL = "GPT4All"
JAN = "Jan"
OLLAMA = "Ollama"

MAX_DEPTH = 6
"""How deep below a location folder a walk goes (LM Studio: publisher/repo/file.gguf)."""
MAX_ENTRIES = 20_000
"""Directory entries one walk looks at before it stops: a location that grew into a huge tree
(a home folder set as a models folder) must not stall the chooser."""
MAX_MANIFEST_BYTES = 1 << 20
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")


@dataclass(frozen=True)
class FoundGGUF:
    """One GGUF file found on disk, as the chooser lists it."""

    path: Path
    name: str
    """What to call it: "owner/repo/file.gguf" (HF cache), "model:tag" (Ollama), the path below
    the app's models folder otherwise."""
    source: str
    """Whose folder it is in: "Hugging Face cache", "LM Studio", "GPT4All", "Jan" or "Ollama"."""
    size_bytes: int
    quant: str
    """The quantization as people name it ("Q4_K_M"), or "" when the file could not be read."""
    n_params: int | None
    runnable: bool
    reason: str | None
    """Why Loopchat cannot run it (None when it can)."""


# ----------------------------------------------------------------------------------------------
# Where to look


def _platform() -> str:
    if sys.platform.startswith("win"):
        return "windows"
    if sys.platform == "darwin":
        return "macos"
    return "linux"


def _expand(text: str, home: Path) -> Path:
    if text == "~" or text.startswith(("~/", "~\\")):
        return home / text[2:]
    return Path(os.path.expandvars(text))


def _data_dirs(home: Path, env: Mapping[str, str], roaming: bool = False) -> list[Path]:
    """The per-user data folders (platformdirs' user_data_dir without the app part)."""
    system = _platform()
    if system == "windows":
        local = env.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        roam = env.get("APPDATA") or str(home / "AppData" / "Roaming")
        return [Path(roam), Path(local)] if roaming else [Path(local)]
    if system == "macos":
        return [home / "Library" / "Application Support"]
    return [Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")]


def _hf_hub_cache(home: Path, env: Mapping[str, str]) -> Path:
    """The Hugging Face hub cache, resolved as engine.loading.model_folder.HubSettings does."""
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return _expand(cache, home)
    hf_home = env.get("HF_HOME")
    if hf_home:
        return _expand(hf_home, home) / "hub"
    xdg = env.get("XDG_CACHE_HOME")
    base = _expand(xdg, home) if xdg else home / ".cache"
    return base / "huggingface" / "hub"


def gguf_locations(
    home: Path | None = None, env: Mapping[str, str] | None = None
) -> list[tuple[str, Path]]:
    """(source label, folder) for every place an app keeps GGUF files, existing or not.

    `home` and `env` default to this user's; tests pass a fake home (then system-wide folders,
    such as the Linux Ollama service's, are left out).
    """
    real = home is None
    home = Path.home() if home is None else Path(home)
    env = os.environ if env is None else env
    system = _platform()
    out: list[tuple[str, Path]] = [(HF_SOURCE, _hf_hub_cache(home, env))]

    out += [
        (LM_STUDIO, home / ".lmstudio" / "models"),
        (LM_STUDIO, home / ".cache" / "lm-studio" / "models"),
    ]

    for data in _data_dirs(home, env):
        out.append((GPT4ALL, data / "nomic.ai" / "GPT4All"))  # where the app (Qt) keeps them
        out.append((GPT4ALL, data / "GPT4All"))  # platformdirs' spelling on macOS and Linux
    if real:
        import platformdirs

        out.append((GPT4ALL, Path(platformdirs.user_data_dir("GPT4All", "nomic.ai"))))

    out.append((JAN, home / "jan" / "models"))
    for data in _data_dirs(home, env, roaming=True):
        out.append((JAN, data / "Jan" / "data" / "models"))
        out.append((JAN, data / "Jan" / "data" / "llamacpp" / "models"))
    if real:
        import platformdirs

        out.append((JAN, Path(platformdirs.user_data_dir("Jan")) / "data" / "models"))

    ollama = env.get("OLLAMA_MODELS")
    if ollama:
        out.append((OLLAMA, _expand(ollama, home)))
    out.append((OLLAMA, home / ".ollama" / "models"))
    if real and system == "linux":
        out.append((OLLAMA, Path("/usr/share/ollama/.ollama/models")))  # the Linux service's

    seen: set[str] = set()
    unique = []
    for source, folder in out:
        key = os.path.normcase(os.path.abspath(folder))
        if key not in seen:
            seen.add(key)
            unique.append((source, folder))
    return unique


# ----------------------------------------------------------------------------------------------
# Walking


class _Budget:
    def __init__(self, entries: int) -> None:
        self.left = entries


def _walk(
    root: Path,
    budget: _Budget,
    max_depth: int = MAX_DEPTH,
    keep: Callable[[str], bool] = lambda name: name.lower().endswith(".gguf"),
) -> Iterator[Path]:
    """Regular files below `root` whose name `keep` accepts (*.gguf by default; every file for
    Ollama's manifests), depth-bounded, each real folder visited once.

    Folder links are followed (LM Studio users point its models folder elsewhere) but a folder
    already visited (a link loop) is skipped; hidden folders are not entered.
    """
    visited: set[tuple[int, int]] = set()
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack and budget.left > 0:
        folder, depth = stack.pop()
        try:
            st = folder.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in visited or not stat.S_ISDIR(st.st_mode):
            continue
        visited.add(key)
        try:
            with os.scandir(folder) as entries:
                children = sorted(entries, key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in children:
            budget.left -= 1
            if budget.left <= 0:
                log.info("stopped looking for model files in %s: too many files", root)
                break
            try:
                is_dir = entry.is_dir()  # follows links
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_dir and depth < max_depth and not entry.name.startswith("."):
                subfolders.append((Path(entry.path), depth + 1))
            elif is_file and keep(entry.name):
                yield Path(entry.path)
        stack.extend(reversed(subfolders))


def _hf_files(cache: Path, budget: _Budget) -> Iterator[tuple[Path, str]]:
    """models--owner--name/snapshots/<commit>/**.gguf, named owner/name/file."""
    try:
        repos = sorted(p for p in cache.iterdir() if p.name.startswith("models--"))
    except OSError:
        return
    for repo in repos:
        repo_id = repo.name[len("models--") :].replace("--", "/")
        snapshots = repo / "snapshots"
        try:
            commits = sorted(p for p in snapshots.iterdir() if p.is_dir())
        except OSError:
            continue
        for snapshot in commits:
            for path in _walk(snapshot, budget, max_depth=3):
                yield path, f"{repo_id}/{path.relative_to(snapshot).as_posix()}"


def _app_files(folder: Path, budget: _Budget) -> Iterator[tuple[Path, str]]:
    for path in _walk(folder, budget):
        yield path, path.relative_to(folder).as_posix()


def _read_manifest(path: Path) -> object:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_MANIFEST_BYTES:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def _ollama_files(folder: Path, budget: _Budget) -> Iterator[tuple[Path, str]]:
    """Model blobs named by the manifests: manifests/<host>/<namespace>/<model>/<tag>."""
    manifests = folder / "manifests"
    blobs = folder / "blobs"
    for manifest in _walk(manifests, budget, max_depth=3, keep=lambda name: True):
        parts = manifest.relative_to(manifests).parts
        if len(parts) != 4:
            continue
        host, namespace, model, tag = parts
        data = _read_manifest(manifest)
        layers = data.get("layers") if isinstance(data, dict) else None
        if not isinstance(layers, list):
            continue
        for layer in layers:
            if not isinstance(layer, dict) or layer.get("mediaType") != OLLAMA_MODEL_LAYER:
                continue
            match = _DIGEST.fullmatch(str(layer.get("digest", "")))
            if match is None:
                continue
            name = f"{model}:{tag}"
            if namespace != "library":
                name = f"{namespace}/{name}"
            if host != "registry.ollama.ai":
                name = f"{host}/{name}"
            yield blobs / f"sha256-{match.group(1)}", name
            break


# ----------------------------------------------------------------------------------------------
# Reading one file


def describe_gguf(path: Path, name: str, source: str) -> FoundGGUF:
    """One file as the chooser lists it; never raises (an unreadable file gets its reason)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return FoundGGUF(path, name, source, 0, "", None, False, f"cannot read it ({exc.strerror})")
    try:
        from engine.gguf.reader import GGUFFile

        with GGUFFile(path) as gguf:
            metadata = gguf.metadata
            tensors = gguf.tensors
            quant = quant_name(metadata, tensors)
            n_params = sum(_product(info.shape) for info in tensors.values()) or None
            reason = unsupported_reason(metadata)
    except Exception as exc:  # a hostile or broken file is a greyed row, never a crash
        return FoundGGUF(path, name, source, size, "", None, False, _reason_text(exc, path))
    return FoundGGUF(path, name, source, size, quant, n_params, reason is None, reason)


def _reason_text(exc: Exception, path: Path) -> str:
    """The reader's message without the file's path in front (the row already names the file)."""
    text = str(exc).strip() or type(exc).__name__
    prefix = str(path)
    if text.startswith(prefix):
        rest = text[len(prefix) :].lstrip(":").strip()
        if rest.startswith(("is ", "has ", "claims ")):
            rest = "the file " + rest
        text = rest or text
    return text


def _product(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def find_gguf_files(
    home: Path | None = None, env: Mapping[str, str] | None = None, limit: int = 500
) -> list[FoundGGUF]:
    """The GGUF files in every app's models folder: runnable first, then by name.

    At most `limit` files are read; the same file reached twice (a link, an Ollama blob two tags
    share) is listed once. Reads metadata only and writes nothing.
    """
    found: list[FoundGGUF] = []
    seen: set[str] = set()
    for source, folder in gguf_locations(home, env):
        if len(found) >= limit:
            break
        budget = _Budget(MAX_ENTRIES)
        if source == HF_SOURCE:
            files = _hf_files(folder, budget)
        elif source == OLLAMA:
            files = _ollama_files(folder, budget)
        else:
            files = _app_files(folder, budget)
        for path, name in files:
            if len(found) >= limit:
                break
            try:
                key = os.path.normcase(os.path.realpath(path))
            except (OSError, ValueError):
                key = str(path)
            if key in seen:
                continue
            seen.add(key)
            if source == OLLAMA and not path.is_file():
                continue  # a manifest whose blob is gone (pruned or still downloading)
            found.append(describe_gguf(path, name, source))
    found.sort(key=lambda f: (not f.runnable, f.name.lower(), f.source))
    return found
