"""Models from the Hugging Face Hub: catalogue, download with progress and cancel, cache lookup.

Downloads go through huggingface_hub into the standard Hugging Face cache, so a model another tool
fetched is found and not fetched again, and ours serve other tools. Only the files the engine reads
are fetched, and a half download is never offered as a model.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, when it is imported. Loopchat
reads them at every call instead (tests and the desktop change them while running): the endpoint,
cache folder and token are passed to each call, and the offline switch, which has no parameter, is
set for the duration of a download only (see `_hub_online`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fnmatch
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from engine.errors import EngineError

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

DEFAULT_ENDPOINT = "https://huggingface.co"
ATTEMPTS = 3
"""Tries per file. huggingface_hub resumes a cut transfer itself (Range) within one call; a call
that still fails deletes its partial file, so a further try starts that file again."""
RETRY_WAIT_S = 1.0


class DownloadCancelled(EngineError):
    """The user cancelled. Finished files stay in the cache; the model is not complete yet."""


# ----------------------------------------------------------------------------------------------
# Plain data for callers


@dataclass(frozen=True)
class DownloadProgress:
    """One moment of a download, plain data for a progress dialog or a terminal line.

    `done_bytes`/`total_bytes` cover every file the model needs (files already in the cache count as
    done); `speed_bps` is what this download has received per second so far. `done_bytes` only
    steps back when a file whose transfer broke off is fetched again from its start.
    """

    repo_id: str
    filename: str
    done_bytes: int
    total_bytes: int
    speed_bps: float
    eta_s: float | None
    file_done_bytes: int = 0
    file_total_bytes: int = 0
    files_done: int = 0
    files_total: int = 0

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]."""
        if self.total_bytes <= 0:
            return 1.0
        return min(1.0, self.done_bytes / self.total_bytes)


class CachedModel(TypedDict):
    """A complete Llama model found in the Hugging Face cache."""

    repo_id: str
    path: str
    size_bytes: int
    layout: Layout
    commit: str


class CatalogueEntry(TypedDict):
    """One model the chooser offers (resources/catalogue.json)."""

    repo_id: str
    name: str
    size_bytes: int
    licence: str
    gated: bool
    layout: Layout
    description: str
    default: bool


# ----------------------------------------------------------------------------------------------
# Formatting


def format_bytes(n: float) -> str:
    """Sizes as people read them on a download dialog (decimal units, like the Hub shows)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '1 h 05 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_progress(p: DownloadProgress) -> str:
    """One line: bytes, percentage, speed and time left, and the file being fetched."""
    line = f"{format_bytes(p.done_bytes)} / {format_bytes(p.total_bytes)}"
    line += f" ({100 * p.fraction:.0f}%)"
    if p.speed_bps > 0:
        line += f", {format_bytes(p.speed_bps)}/s"
    if p.eta_s is not None and p.done_bytes < p.total_bytes:
        line += f", {format_duration(p.eta_s)} left"
    if p.filename:
        line += f" - {p.filename}"
    return line


# ----------------------------------------------------------------------------------------------
# The environment, read at call time


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
            cache = os.path.join(_hf_home(), "hub")
        offline = _is_true(env.get("HF_HUB_OFFLINE")) or _is_true(env.get("TRANSFORMERS_OFFLINE"))
        return cls(endpoint, Path(os.path.expandvars(os.path.expanduser(cache))), offline)


def _hf_home() -> str:
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(xdg, "huggingface")
    return os.path.expandvars(os.path.expanduser(home))


def _token(explicit: str | None) -> str | Literal[False]:
    """The token to send: the one given, HF_TOKEN, or huggingface_hub's login store, found now.

    False means "send none" (huggingface_hub would otherwise read the store it located at import).
    """
    if explicit and explicit.strip():
        return explicit.strip()
    env = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if env and env.strip():
        return env.strip()
    from huggingface_hub import constants, get_token

    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(_hf_home(), "token")
    path = os.path.abspath(os.path.expandvars(os.path.expanduser(path)))
    if path == os.path.abspath(constants.HF_TOKEN_PATH):
        return get_token() or False  # the store huggingface_hub knows (refreshes OAuth tokens)
    try:
        return Path(path).read_text(encoding="utf-8").strip() or False
    except OSError:
        return False


@contextlib.contextmanager
def _hub_online() -> Iterator[None]:
    """Let huggingface_hub make requests while this download runs.

    Its offline switch is a module constant read from HF_HUB_OFFLINE at import and has no
    parameter; we only download when the environment says online now, so mirror that for the
    duration of the call and put the old value back after. (It only differs from the environment
    when HF_HUB_OFFLINE changed after import, as in tests; downloads run one at a time.)
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


# ----------------------------------------------------------------------------------------------
# Catalogue


def _resource_text(name: str) -> str:
    """A file of the `resources` package, installed, in a checkout, or frozen by PyInstaller."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen and (Path(frozen) / "resources" / name).is_file():
        return (Path(frozen) / "resources" / name).read_text(encoding="utf-8")
    from importlib import resources

    return resources.files("resources").joinpath(name).read_text(encoding="utf-8")


def load_catalogue() -> list[CatalogueEntry]:
    """The models the chooser offers, from resources/catalogue.json, in the file's order."""
    try:
        models = json.loads(_resource_text("catalogue.json"))["models"]
        entries = [
            CatalogueEntry(
                repo_id=str(m["repo_id"]),
                name=str(m["name"]),
                size_bytes=int(m["size_bytes"]),
                licence=str(m["licence"]),
                gated=bool(m["gated"]),
                layout=m["layout"],
                description=str(m.get("description", "")),
                default=bool(m.get("default", False)),
            )
            for m in models
        ]
        bad = [e["repo_id"] for e in entries if e["layout"] not in ("hf", "meta")]
        if bad:
            raise ValueError(f"unknown layout for {bad[0]}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineError(
            f"Loopchat's model catalogue (resources/catalogue.json) is unreadable ({exc}); "
            "reinstall Loopchat"
        ) from exc
    return entries


# ----------------------------------------------------------------------------------------------
# Local folders and the cache


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
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
            data = _read_json(index)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                return False
            return all(_nonempty(folder / str(shard)) for shard in set(weight_map.values()))
        return any(_nonempty(p) for p in folder.glob("*.safetensors"))
    if _nonempty(folder / "params.json"):
        shards = sorted(p.name for p in folder.glob("consolidated.*.pth") if _nonempty(p))
        return bool(shards) and shards == [f"consolidated.{i:02d}.pth" for i in range(len(shards))]
    return False


def _is_llama_folder(folder: Path) -> Layout | None:
    """The layout of a folder holding a Llama model, else None."""
    config = _read_json(folder / "config.json")
    if isinstance(config, dict):
        return "hf" if _llama_problem(config, "hf") is None else None
    params = _read_json(folder / "params.json")
    if isinstance(params, dict):
        return "meta" if _llama_problem(params, "meta") is None else None
    return None


def _llama_problem(config: dict[str, Any], layout: Layout) -> str | None:
    """Why a config.json/params.json does not describe a Llama model, or None if it does."""
    if layout == "meta":
        missing = [k for k in ("dim", "n_layers", "n_heads") if k not in config]
        return f"its params.json has no {', '.join(missing)}" if missing else None
    architectures = config.get("architectures") or []
    if config.get("model_type") == "llama" or "LlamaForCausalLM" in architectures:
        return None
    return f"model_type '{config.get('model_type', 'unknown')}'"


def _looks_like_repo_id(text: str) -> bool:
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
        folder = Path(exc.snapshot_path) if exc.snapshot_path else None
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
    """A local model folder as it is, or the cached snapshot of a Hub repo id (never downloads)."""
    text = str(path_or_repo).strip()
    candidate = Path(text).expanduser()
    if candidate.is_dir():
        return candidate
    if candidate.exists():
        raise EngineError(
            f"{candidate} is a file; pick the model's folder (the one with config.json or "
            "params.json)"
        )
    if not _looks_like_repo_id(text):
        raise EngineError(f"no folder named {text}; pick a model folder (HF or Meta layout)")
    settings = HubSettings.from_environment()
    folder = find_cached_model(text, settings=settings)
    if folder is not None:
        return folder
    if _snapshots_newest_first(_repo_cache_folder(settings, text)):
        raise EngineError(
            f"the download of {text} in the Hugging Face cache is incomplete; finish it with "
            f"`python -m engine download {text}`"
        )
    raise EngineError(
        f"no folder or cached Hub model named {text}; download it with "
        f"`python -m engine download {text}` or pick a folder"
    )


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


# ----------------------------------------------------------------------------------------------
# What to fetch


@dataclass(frozen=True)
class _Listing:
    """A repo's top-level files and their sizes, from one model_info call."""

    repo_id: str
    sizes: dict[str, int]

    def has(self, name: str) -> bool:
        return name in self.sizes

    def matching(self, pattern: str) -> list[str]:
        return sorted(n for n in self.sizes if fnmatch.fnmatch(n, pattern))


def _layout_of(listing: _Listing) -> Layout:
    """Which layout to fetch, from the listing alone (HF preferred when a repo has both)."""
    repo_id = listing.repo_id
    if listing.has("config.json") and listing.matching("*.safetensors"):
        return "hf"
    if listing.has("params.json") and listing.matching("consolidated.*.pth"):
        return "meta"
    if listing.has("config.json"):
        return "hf"  # checked as a Llama model first; then told it lacks safetensors weights
    raise EngineError(
        f"{repo_id} has no config.json or params.json; it is not a model repo Loopchat can read "
        "(Llama 2 in Hugging Face or Meta layout)"
    )


def _weights(listing: _Listing, layout: Layout, index: dict[str, Any] | None) -> list[str]:
    """The weight files to fetch: the shards the index names, else model.safetensors, else all
    top-level *.safetensors (HF); consolidated.*.pth (Meta). Never pytorch_model*.bin."""
    repo_id = listing.repo_id
    if layout == "meta":
        return listing.matching("consolidated.*.pth")
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise EngineError(f"{repo_id}'s model.safetensors.index.json has no weight_map")
        shards = sorted(set(map(str, weight_map.values())))
        missing = [s for s in shards if not listing.has(s)]
        if missing:
            raise EngineError(
                f"{repo_id}'s model.safetensors.index.json names {missing[0]}, which the repo "
                "does not have; the repo is broken"
            )
        return shards
    if listing.has("model.safetensors"):
        return ["model.safetensors"]
    shards = listing.matching("*.safetensors")
    if not shards:
        raise EngineError(
            f"{repo_id} has no safetensors weights (only "
            f"{', '.join(listing.matching('*.bin')[:2]) or 'other formats'}); Loopchat reads "
            "*.safetensors or Meta's consolidated.*.pth: pick a repo that has them"
        )
    return shards


# ----------------------------------------------------------------------------------------------
# Progress and cancel


class _Tracker:
    """Turns huggingface_hub's per-file byte counts into DownloadProgress events; checks cancel.

    Byte counts arrive per 10 MiB read (plain HTTP) or every ~100 ms from hf_xet's own thread (Xet
    storage), hence the lock.
    """

    def __init__(
        self,
        repo_id: str,
        sizes: dict[str, int],
        report: Callable[[DownloadProgress], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        self.repo_id = repo_id
        self.sizes = sizes
        self.total = sum(sizes.values())
        self.report = report
        self.cancel = cancel
        self.finished_bytes = 0
        self.finished_files = 0
        self.current = ""
        self.current_done = 0
        self.received = 0
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(
                f"download of {self.repo_id} cancelled; files already fetched stay in the cache "
                "and a new download continues from there"
            )

    def begin(self, name: str) -> None:
        with self.lock:
            self.current, self.current_done = name, 0
        self._emit()

    def advance(self, n: float) -> None:
        """Bytes written for the current file (negative when a transfer starts over)."""
        with self.lock:
            self.current_done = max(0, self.current_done + int(n))
            if n > 0:
                self.received += int(n)
        self._emit()
        self.check_cancel()

    def finish(self, name: str, fetched: bool) -> None:
        with self.lock:
            self.finished_bytes += self.sizes.get(name, 0)
            self.finished_files += 1
            self.current_done = 0
        if fetched:
            self._emit(name)

    def _emit(self, finished: str | None = None) -> None:
        if self.report is None or not self.sizes:
            return  # nothing to report before the plan (the config is fetched to make it)
        with self.lock:
            name = finished or self.current
            file_total = self.sizes.get(name, 0)
            file_done = file_total if finished else min(self.current_done, file_total)
            done = min(self.total, self.finished_bytes + (0 if finished else self.current_done))
            elapsed = max(time.monotonic() - self.started, 1e-6)
            speed = self.received / elapsed
            eta = (self.total - done) / speed if speed > 0 else None
            event = DownloadProgress(
                self.repo_id,
                name,
                done,
                self.total,
                speed,
                eta,
                file_done,
                file_total,
                self.finished_files,
                len(self.sizes),
            )
        self.report(event)

    def bar_class(self) -> type:
        """A stand-in for tqdm that huggingface_hub drives while it fetches one file."""
        tracker = self

        class _Bar:
            # huggingface_hub builds a non-tqdm class with keyword arguments only and then calls
            # update(); update_transfer() makes Xet downloads use this one bar for both counts.
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.n = 0
                self.total = kwargs.get("total")

            def update(self, n: float | None = 1) -> None:
                if n:
                    self.n += n
                    try:
                        tracker.advance(n)
                    except DownloadCancelled:
                        _abort_xet()  # an exception here does not stop hf_xet's transfer
                        raise

            def update_transfer(self, n: float | None = 1) -> None:
                tracker.check_cancel()

            def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
                pass

            set_transfer_postfix_str = set_postfix_str
            set_description = set_postfix_str
            refresh = set_postfix_str

            def close(self) -> None:
                pass

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                self.close()

        return _Bar


def _abort_xet() -> None:
    """Stop an Xet transfer in flight (huggingface_hub's own Ctrl-C path); best effort."""
    try:
        from huggingface_hub.utils._xet import abort_xet_session
    except ImportError:
        return
    abort_xet_session()


# ----------------------------------------------------------------------------------------------
# Errors


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an error, also when huggingface_hub wrapped it (as __cause__)."""
    seen: BaseException | None = exc
    while seen is not None:
        status = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        seen = seen.__cause__
    return None


def _is_network_error(exc: BaseException) -> bool:
    """A connection that could not be made or was lost (not an answer the Hub gave)."""
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return isinstance(
        exc, (httpx2.TransportError, OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError)
    )


def _is_transient(exc: BaseException) -> bool:
    """Worth trying the file again: a read cut short (huggingface_hub already retried connects and
    timeouts), a size mismatch after a flaky transfer, or the Hub busy or failing for a moment."""
    import httpx2

    if isinstance(exc, (httpx2.ReadError, httpx2.WriteError, httpx2.CloseError)):
        return True
    status = _status(exc)
    if status is not None:
        return status in (408, 429) or status >= 500
    return isinstance(exc, OSError) and str(exc).startswith("Consistency check failed")


def _explain(
    exc: BaseException,
    repo_id: str,
    revision: str | None,
    sent_token: bool,
    settings: HubSettings,
    space_needed: int,
) -> EngineError | None:
    """One line that says what went wrong and what to do, or None for a bug (let it surface)."""
    from huggingface_hub import errors

    page = f"{settings.endpoint}/{repo_id}"
    status = _status(exc)
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, errors.GatedRepoError):
        if status == 403:
            return EngineError(
                f"your Hugging Face account has no access to {repo_id} yet: accept the licence "
                f"at {page} with the account of this token (approval can take a while), then "
                "try again"
            )
        return EngineError(
            f"{repo_id} is gated: accept its licence at {page} while logged in, then give an "
            "access token with --token or log in with `hf auth login` (`huggingface-cli login`)"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return EngineError(
            f"{repo_id} has no revision '{revision}'; check --revision (a branch, tag or commit "
            "of the repo)"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        private = "" if sent_token else "; if it is private, give an access token with --token"
        return EngineError(
            f"no model '{repo_id}' on {settings.endpoint}: check the repo id (owner/name){private}"
        )
    if status == 401 and sent_token:
        return EngineError(
            f"the Hub rejected the access token (invalid or expired): create a read token at "
            f"{settings.endpoint}/settings/tokens and give it with --token or `hf auth login`"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        free = _free_bytes(settings.cache_dir)
        return EngineError(
            f"the disk holding {settings.cache_dir} is full: {repo_id} needs "
            f"{format_bytes(space_needed)} more and {format_bytes(free)} are free; free some "
            "space or set HF_HOME to a bigger disk, then download again"
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EngineError(
            f"cannot write to the Hugging Face cache {settings.cache_dir} ({exc.strerror}); "
            "check its permissions or set HF_HOME to a folder you can write"
        )
    if status is not None and (status >= 500 or status in (408, 429)):
        return EngineError(
            f"the Hub could not serve {repo_id} right now (HTTP {status}); try again later"
        )
    if _is_network_error(exc):
        return EngineError(
            f"cannot reach {settings.endpoint} to download {repo_id}: check your internet "
            "connection or proxy and try again (models already downloaded work offline)"
        )
    if status is not None:
        return EngineError(f"the Hub refused the download of {repo_id} (HTTP {status})")
    if isinstance(exc, OSError) and str(exc).startswith("Consistency check failed"):
        return EngineError(
            f"the download of {repo_id} kept arriving incomplete; check your connection and try "
            "again"
        )
    return None


def _free_bytes(folder: Path) -> int:
    """Free space on the disk that holds (or will hold) a folder."""
    for path in (folder, *folder.parents):
        try:
            return shutil.disk_usage(path).free
        except OSError:
            continue
    return 0


# ----------------------------------------------------------------------------------------------
# Download


def _cached_or_offline_error(repo_id: str, revision: str | None, settings: HubSettings) -> Path:
    folder = find_cached_model(repo_id, revision, settings)
    if folder is None:
        raise EngineError(
            f"HF_HUB_OFFLINE is set and {repo_id} is not (completely) in the Hugging Face "
            f"cache {settings.cache_dir}; unset HF_HUB_OFFLINE to download it"
        )
    return folder


class _Download:
    """One download_model call: listing, Llama check, plan, then files one by one."""

    def __init__(
        self,
        repo_id: str,
        revision: str | None,
        token: str | Literal[False],
        settings: HubSettings,
        progress: Callable[[DownloadProgress], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.token = token
        self.settings = settings
        self.tracker = _Tracker(repo_id, {}, progress, cancel)
        self.space_needed = 0

    def run(self) -> Path:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.settings.endpoint, token=self.token)
        info = api.model_info(self.repo_id, revision=self.revision, files_metadata=True)
        listing = _Listing(
            self.repo_id,
            {
                s.rfilename: int(s.size or (s.lfs.size if s.lfs else 0) or 0)
                for s in info.siblings or []
                if "/" not in s.rfilename
            },
        )
        layout = _layout_of(listing)
        self.tracker.check_cancel()

        # The config first, at the revision asked for: this records refs/<revision> in the cache
        # and tells the commit every other file is then fetched at.
        config_name = "config.json" if layout == "hf" else "params.json"
        config_path = self._fetch(config_name, self.revision or "main")
        snapshot = config_path.parent
        commit = snapshot.name
        config = _read_json(config_path)
        problem = (
            _llama_problem(config, layout) if isinstance(config, dict) else "unreadable config"
        )
        if problem is not None:
            raise EngineError(
                f"{self.repo_id} is not a Llama model ({problem}); Loopchat runs Llama 2 "
                "architecture models"
            )
        if not listing.has("tokenizer.model"):
            raise EngineError(
                f"{self.repo_id} has no tokenizer.model (SentencePiece), which Loopchat needs; "
                "pick a Llama 2 repo that ships it"
            )
        index = None
        first = [config_name]
        if layout == "hf" and listing.has("model.safetensors.index.json"):
            index = _read_json(self._fetch("model.safetensors.index.json", commit))
            if not isinstance(index, dict):
                raise EngineError(f"{self.repo_id}'s model.safetensors.index.json is not JSON")
            first.append("model.safetensors.index.json")
        small = [n for n in HF_SMALL_FILES if layout == "hf" and listing.has(n) and n not in first]
        # tokenizer.model last: until it is there, is_model_complete() says no.
        files = [*first, *small, *_weights(listing, layout, index), "tokenizer.model"]

        sizes = {name: listing.sizes[name] for name in files}
        self.tracker.sizes = sizes
        self.tracker.total = sum(sizes.values())
        cached = {name for name in files if (snapshot / name).exists()}
        self.space_needed = sum(size for name, size in sizes.items() if name not in cached)
        free = _free_bytes(self.settings.cache_dir)
        if self.space_needed > free:
            raise EngineError(
                f"not enough disk space for {self.repo_id}: it needs "
                f"{format_bytes(self.space_needed)} more in {self.settings.cache_dir} and "
                f"{format_bytes(free)} are free; free some space or set HF_HOME to a bigger disk"
            )
        log.info(
            "downloading %s (%s layout, commit %s): %d files, %s to fetch",
            self.repo_id,
            layout,
            commit[:12],
            len(files),
            format_bytes(self.space_needed),
        )

        for name in files:
            fetched = name not in cached
            if fetched:
                self.tracker.begin(name)
                self._fetch(name, commit)
                self.space_needed -= sizes[name]
            self.tracker.finish(name, fetched)
        self.tracker.check_cancel()
        if not is_model_complete(snapshot):
            raise EngineError(
                f"the download of {self.repo_id} finished but {snapshot} is incomplete; run the "
                "download again"
            )
        return snapshot

    def _fetch(self, name: str, revision: str) -> Path:
        """One file into the cache, tried again when a transfer fails part-way."""
        from huggingface_hub import hf_hub_download

        for attempt in range(1, ATTEMPTS + 1):
            self.tracker.check_cancel()
            try:
                path = hf_hub_download(
                    self.repo_id,
                    name,
                    revision=revision,
                    token=self.token,
                    cache_dir=self.settings.cache_dir,
                    endpoint=self.settings.endpoint,
                    tqdm_class=self.tracker.bar_class(),
                )
            except Exception as exc:
                self.tracker.check_cancel()
                if isinstance(exc, EngineError) or attempt == ATTEMPTS or not _is_transient(exc):
                    raise
                log.warning(
                    "fetching %s of %s failed (%s: %s); trying again (%d of %d)",
                    name,
                    self.repo_id,
                    type(exc).__name__,
                    exc,
                    attempt + 1,
                    ATTEMPTS,
                )
                self.tracker.advance(-self.tracker.current_done)  # its partial file is gone
                if self.tracker.cancel is not None:
                    self.tracker.cancel.wait(RETRY_WAIT_S * attempt)
                else:
                    time.sleep(RETRY_WAIT_S * attempt)
                continue
            self.tracker.check_cancel()
            return Path(path)
        raise AssertionError("unreachable")


def download_model(
    repo_id: str,
    revision: str | None = None,
    token: str | None = None,
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Fetch the files the engine needs into the Hugging Face cache; return the snapshot folder.

    The repo must be a Llama model (checked from its config before any weight is fetched). Files
    already in the cache are not fetched again. `progress` is called as bytes arrive (possibly from
    a huggingface_hub helper thread); setting `cancel` stops the download with DownloadCancelled.
    Every problem a user can fix raises EngineError with a one-line message; the token is never
    logged or shown.
    """
    repo_id = repo_id.strip()
    if not _looks_like_repo_id(repo_id):
        raise EngineError(
            f"'{repo_id}' is not a Hub repo id; use owner/name, e.g. "
            "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
        )
    settings = HubSettings.from_environment()
    if settings.offline:
        return _cached_or_offline_error(repo_id, revision, settings)
    sent = _token(token)
    job = _Download(repo_id, revision, sent, settings, progress, cancel)
    try:
        with _hub_online():
            return job.run()
    except DownloadCancelled:
        raise
    except Exception as exc:
        error = _explain(exc, repo_id, revision, bool(sent), settings, job.space_needed)
        if error is None:
            raise
        if _is_network_error(exc):
            cached = find_cached_model(repo_id, revision, settings)
            if cached is not None:
                log.warning("%s; using the copy already in the cache", error)
                return cached
        raise error from exc


# ----------------------------------------------------------------------------------------------
# CLI: python -m engine download REPO_ID [--revision REV] [--token TOKEN]


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """The `download` subcommand's arguments (DESIGN.md's CLI contract)."""
    parser.add_argument("repo_id", help="Hub repo id, e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument(
        "--token",
        default=None,
        help="Hugging Face access token for gated models (default: HF_TOKEN or `hf auth login`)",
    )


class _TerminalProgress:
    """Progress on stderr: one line redrawn in a terminal, a line per file and every few seconds
    otherwise (logs stay short)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last = 0.0
        self.open_line = False

    def __call__(self, p: DownloadProgress) -> None:
        now = time.monotonic()
        file_done = p.file_total_bytes > 0 and p.file_done_bytes >= p.file_total_bytes
        interval = 0.2 if self.tty else 5.0
        if not (file_done or now - self.last >= interval):
            return
        self.last = now
        line = format_progress(p)
        if self.tty:
            self.stream.write("\r" + line[:118].ljust(118))
            self.open_line = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False


def run_download(ns: argparse.Namespace) -> int:
    """Run `download`: progress on stderr, the snapshot folder as the last line of stdout, exit 0;
    a problem is one line on stderr and exit 2."""
    show = _TerminalProgress(sys.stderr)
    try:
        folder = download_model(ns.repo_id, revision=ns.revision, token=ns.token, progress=show)
    except EngineError as exc:
        show.end()
        sys.stderr.write(f"error: {' '.join(str(exc).split())}\n")
        sys.stderr.flush()
        return 2
    finally:
        show.end()
    sys.stdout.write(f"{folder}\n")
    sys.stdout.flush()
    return 0
