"""What a model folder is: layout, completeness, the Llama check, and finding one in the HF cache.

One answer to "is this a model Loopchat can open, and where is it?", used by the loader, the
download (to know when a download is complete) and the desktop chooser (to list what is cached).
A half download is never offered as a model: `is_model_complete` is the single test.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, when it is imported. Loopchat
reads them at every call instead (tests and the desktop change them while running), see
`HubSettings`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal, TypedDict

from engine.errors import EngineError, Remedy
from engine.files import is_regular_file, member_name, read_json
from engine.loading.builtin import (
    is_builtin,
    is_builtin_draft,
    resolve_builtin,
    resolve_builtin_draft,
)
from engine.loading.gguf_repo import find_cached_gguf
from engine.loading.hub_settings import (  # noqa: F401 - re-exported: the settings' one home
    DEFAULT_ENDPOINT,
    HubSettings,
    check_revision,
    hf_home,
)

log = logging.getLogger(__name__)

Layout = Literal["hf", "meta"]

HF_SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "model.safetensors.index.json",
)
"""Hugging Face layout files the engine reads besides weights and tokenizer.model."""
HF_PATTERNS = [*HF_SMALL_FILES, "tokenizer.model", "*.safetensors"]
META_PATTERNS = ["params.json", "tokenizer.model", "consolidated.*.pth"]
CACHE_PATTERNS = sorted(set(HF_PATTERNS + META_PATTERNS))
"""What a cached snapshot must hold of its repo listing to count as ours (either layout)."""
SUBFOLDERS = ["*/*"]
"""Ignored everywhere: Loopchat reads a repo's top level only (not onnx/, original/, ...)."""


class CachedModel(TypedDict):
    """A complete Llama model found in the Hugging Face cache."""

    repo_id: str
    path: str
    size_bytes: int
    layout: Layout
    commit: str


def read_json_or_none(path: Path) -> Any:
    """The JSON in `path`, or None when it is absent or unreadable (a question, not a load)."""
    try:
        return read_json(path)
    except EngineError:
        return None


def _nonempty(path: Path) -> bool:
    try:
        return is_regular_file(path) and path.stat().st_size > 0
    except OSError:
        return False


def is_model_complete(folder: Path | str) -> bool:
    """True when a folder holds every file the engine needs, so a half download is never a model.

    HF layout: config.json, tokenizer.model, and every shard model.safetensors.index.json names
    (or a *.safetensors without an index). Meta layout: params.json, tokenizer.model and
    consolidated.00.pth ... numbered without gaps. Downloads fetch tokenizer.model last, so an
    interrupted one never passes this check.
    """
    folder = Path(folder)
    if not _nonempty(folder / "tokenizer.model"):
        return False
    if _nonempty(folder / "config.json"):
        index = folder / "model.safetensors.index.json"
        if index.exists():
            data = read_json_or_none(index)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                return False
            try:
                shards = {member_name(folder, s, index.name) for s in weight_map.values()}
            except EngineError:
                return False
            return all(_nonempty(shard) for shard in shards)
        return any(_nonempty(p) for p in folder.glob("*.safetensors"))
    if _nonempty(folder / "params.json"):
        shards = sorted(p.name for p in folder.glob("consolidated.*.pth") if _nonempty(p))
        return bool(shards) and shards == [f"consolidated.{i:02d}.pth" for i in range(len(shards))]
    return False


def _is_llama_folder(folder: Path) -> Layout | None:
    """The layout of a folder holding a Llama model, else None."""
    config = read_json_or_none(folder / "config.json")
    if isinstance(config, dict):
        return "hf" if llama_problem(config, "hf") is None else None
    params = read_json_or_none(folder / "params.json")
    if isinstance(params, dict):
        return "meta" if llama_problem(params, "meta") is None else None
    return None


def llama_problem(config: dict[str, Any], layout: Layout) -> str | None:
    """Why a config.json/params.json does not describe a Llama model, or None if it does."""
    if layout == "meta":
        missing = [k for k in ("dim", "n_layers", "n_heads") if k not in config]
        return f"its params.json has no {', '.join(missing)}" if missing else None
    architectures = config.get("architectures") or []
    if config.get("model_type") == "llama" or "LlamaForCausalLM" in architectures:
        return None
    return f"model_type '{config.get('model_type', 'unknown')}'"


def looks_like_repo_id(text: str) -> bool:
    """'owner/name' or 'name' as the Hub spells repo ids (not a path someone typed)."""
    if len(text) > 96 or "--" in text or ".." in text or text.endswith(".git"):
        return False
    return re.fullmatch(r"(?:[\w.\-]+/)?[\w.\-]+", text) is not None and not text.startswith(".")


def _repo_cache_folder(settings: HubSettings, repo_id: str) -> Path:
    return settings.cache_dir / ("models--" + repo_id.replace("/", "--"))


def _snapshots_newest_first(repo_folder: Path) -> list[Path]:
    try:
        snapshots = [p for p in (repo_folder / "snapshots").iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted(snapshots, key=lambda p: p.stat().st_mtime, reverse=True)


def find_cached_model(
    repo_id: str, revision: str | None = None, settings: HubSettings | None = None
) -> Path | None:
    """The complete cached snapshot of a repo id, found offline, or None.

    huggingface_hub resolves the revision (refs/main -> commit) and, when another tool cached the
    repo's listing, checks the snapshot against it; the same patterns as our downloads keep files we
    never fetch (pytorch_model.bin, onnx/...) from counting as missing. Without a revision, an
    older complete snapshot serves when the newest is unfinished.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
    )

    check_revision(revision)
    settings = settings or HubSettings.from_environment()
    folder: Path | None = None
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=settings.cache_dir,
                local_files_only=True,
                allow_patterns=CACHE_PATTERNS,
                ignore_patterns=SUBFOLDERS,
            )
        )
    except IncompleteSnapshotError as exc:
        snapshot_path = getattr(exc, "snapshot_path", None)  # huggingface_hub >= 1.23
        folder = Path(snapshot_path) if snapshot_path else None
    except (LocalEntryNotFoundError, HFValidationError):
        folder = None
    if folder is not None and is_model_complete(folder):
        return folder
    if revision is None:
        for snapshot in _snapshots_newest_first(_repo_cache_folder(settings, repo_id)):
            if is_model_complete(snapshot):
                return snapshot
    return None


def resolve_model(path_or_repo: str | Path) -> Path:
    """A local model folder or GGUF file as it is, `builtin`, or the cached snapshot of a Hub
    repo id.

    Never downloads.
    """
    text = str(path_or_repo).strip()
    if is_builtin(text):  # the shipped model; a folder of that name is reachable as ./builtin
        return resolve_builtin()
    if is_builtin_draft(text):
        return resolve_builtin_draft()
    candidate = Path(text).expanduser()
    if candidate.is_dir():
        return candidate
    if candidate.exists():
        from engine.gguf.reader import is_gguf

        if candidate.is_file() and is_gguf(candidate):
            return candidate
        if candidate.suffix.lower() == ".gguf":  # named as one: the reader says what is wrong
            from engine.gguf.reader import GGUFFile

            GGUFFile(candidate).close()
        raise EngineError(
            f"{candidate} is a file but not a GGUF model; pick a .gguf file or the model's "
            "folder (the one with config.json or params.json)"
        )
    if not looks_like_repo_id(text):
        raise EngineError(
            f"no folder or file named {text}; pick a model folder (HF or Meta layout) or a "
            ".gguf file"
        )
    settings = HubSettings.from_environment()
    folder = find_cached_model(text, settings=settings)
    if folder is not None:
        return folder
    gguf_file = find_cached_gguf(text, settings=settings)
    if gguf_file is not None:  # a GGUF repo: its downloaded file (the one a download picks)
        return gguf_file
    if _snapshots_newest_first(_repo_cache_folder(settings, text)):
        raise EngineError(
            f"the download of {text} in the Hugging Face cache is incomplete",
            Remedy.FINISH_DOWNLOAD,
            repo_id=text,
        )
    raise EngineError(f"no folder or cached Hub model named {text}", Remedy.DOWNLOAD, repo_id=text)


def list_cached_models() -> list[CachedModel]:
    """Complete Llama models in the Hugging Face cache, for the model chooser (by repo id).

    For each repo, the snapshot `main` points at if complete, else the newest complete one.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    settings = HubSettings.from_environment()
    try:
        info = scan_cache_dir(settings.cache_dir)
    except (CacheNotFound, OSError):
        return []
    found: list[CachedModel] = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        revisions = sorted(
            repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified), reverse=True
        )
        for revision in revisions:
            folder = Path(revision.snapshot_path)
            layout = _is_llama_folder(folder)
            if layout is not None and is_model_complete(folder):
                found.append(
                    CachedModel(
                        repo_id=repo.repo_id,
                        path=str(folder),
                        size_bytes=int(revision.size_on_disk),
                        layout=layout,
                        commit=revision.commit_hash,
                    )
                )
                break
    return sorted(found, key=lambda m: m["repo_id"].lower())
