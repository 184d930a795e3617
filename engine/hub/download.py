"""Downloading a model from the Hugging Face Hub: the plan, the transfers and their retries.

Downloads go through huggingface_hub into the standard Hugging Face cache, so a model another tool
fetched is found and not fetched again, and ours serve other tools. Only the files the engine reads
are fetched: the config first (to check it is a Llama model before any weight), tokenizer.model
last (so an interrupted download never passes `is_model_complete`).

A GGUF repo (only .gguf weights: TheBloke/Llama-2-7B-Chat-GGUF) is fetched one file at a time:
the quantization asked for, else the one engine.loading.gguf_repo picks (Q4_K_M); the call returns
that file's path.

Progress and cancel are engine.hub.download_progress; failures are worded by
engine.hub.download_errors.
The endpoint, cache folder and token are passed to each call; the offline switch, which has no
parameter, is set for the duration of a download only (see `_hub_online`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import EngineError, Remedy
from engine.hub.download_errors import explain_failure, free_bytes, is_network_error, is_transient
from engine.hub.download_progress import DownloadCancelled, ProgressTracker
from engine.hub.progress_text import (
    DownloadProgress,
    format_bytes,
    format_duration,
    format_progress,
)
from engine.loading.gguf_repo import (
    SHARD,
    cached_gguf_files,
    check_gguf_filename,
    find_cached_gguf,
    is_gguf_name,
    pick_gguf_file,
    shard_problem,
)
from engine.loading.model_folder import (
    HF_SMALL_FILES,
    HubSettings,
    Layout,
    check_revision,
    find_cached_model,
    hf_home,
    is_model_complete,
    llama_problem,
    looks_like_repo_id,
    read_json_or_none,
)

__all__ = [
    "DownloadCancelled",
    "DownloadProgress",
    "download_model",
    "find_cached_gguf",
    "format_bytes",
    "format_duration",
    "format_progress",
    "list_gguf_files",
    "pick_gguf_file",
]

log = logging.getLogger(__name__)

ATTEMPTS = 3
"""Tries per file. huggingface_hub resumes a cut transfer itself (Range) within one call; a call
that still fails deletes its partial file, so a further try starts that file again."""
RETRY_WAIT_S = 1.0


def _token(explicit: str | None) -> str | Literal[False]:
    """The token to send: the one given, HF_TOKEN, or huggingface_hub's login store, found now.

    False means "send none" (huggingface_hub would otherwise read the store it located at import).
    Each is checked before it is sent: a token is one line of printable ASCII.
    """
    if explicit and explicit.strip():
        return check_token(explicit.strip(), None)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        env = os.environ.get(name)
        if env and env.strip():
            return check_token(env.strip(), f"the token in {name}")
    from huggingface_hub import constants, get_token

    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(hf_home(), "token")
    path = os.path.abspath(os.path.expandvars(os.path.expanduser(path)))
    if path == os.path.abspath(constants.HF_TOKEN_PATH):
        stored = get_token()  # the store huggingface_hub knows (refreshes OAuth tokens)
        return check_token(stored, f"the token saved in {path}") if stored else False
    try:
        stored = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return check_token(stored, f"the token saved in {path}") if stored else False


def check_token(token: str, where: str | None) -> str:
    """The token, or EngineError saying why it cannot be one (without showing it).

    `where` names where it was found (an environment variable, a file); None: the caller gave it
    (`--token`, the window's Token field), and each front end names that itself.

    Hub tokens are printable ASCII; a newline or a non-ASCII character (a copy-paste accident)
    would otherwise surface as "cannot reach the Hub" or an encoding traceback.
    """
    if any(c in token for c in "\r\n"):
        problem = "contains a line break"
    elif not token.isascii():
        problem = "contains a non-ASCII character"
    elif not token.isprintable() or any(c.isspace() for c in token):
        problem = "contains spaces or control characters"
    else:
        return token
    tokens_page = "https://huggingface.co/settings/tokens"
    if where is None:
        raise EngineError(
            f"the access token {problem}, so it is not a Hugging Face access token",
            Remedy.RETYPE_TOKEN,
            flaw=problem,
            tokens_page=tokens_page,
        )
    raise EngineError(
        f"{where} {problem}, so it is not a Hugging Face access token; copy it again from "
        f"{tokens_page}"
    )


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
# Download


def _find_cached(
    repo_id: str, revision: str | None, settings: HubSettings, filename: str | None
) -> Path | None:
    """What a download would return, from the cache alone: the model folder, or the GGUF file."""
    if filename is None:
        folder = find_cached_model(repo_id, revision, settings)
        if folder is not None:
            return folder
    return find_cached_gguf(repo_id, revision, filename, settings)


def _cached_or_offline_error(
    repo_id: str, revision: str | None, settings: HubSettings, filename: str | None = None
) -> Path:
    found = _find_cached(repo_id, revision, settings, filename)
    if found is None:
        what = f"{filename} of {repo_id}" if filename else repo_id
        raise EngineError(
            f"HF_HUB_OFFLINE is set and {what} is not (completely) in the Hugging Face "
            f"cache {settings.cache_dir}; unset HF_HUB_OFFLINE to download it"
        )
    return found


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
        filename: str | None = None,
    ) -> None:
        self.repo_id = repo_id
        self.filename = filename
        self.revision = revision
        self.token = token
        self.settings = settings
        self.tracker = ProgressTracker(repo_id, {}, progress, cancel)
        self.space_needed = 0

    def run(self) -> Path:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.settings.endpoint, token=self.token)
        info = api.model_info(self.repo_id, revision=self.revision, files_metadata=True)
        every = _sizes(info)
        listing = _Listing(self.repo_id, {n: s for n, s in every.items() if "/" not in n})
        if self.filename is not None or _is_gguf_repo(listing, every):
            return self._run_gguf(every)
        layout = _layout_of(listing)
        self.tracker.check_cancel()

        # The config first, at the revision asked for: this records refs/<revision> in the cache
        # and tells the commit every other file is then fetched at.
        config_name = "config.json" if layout == "hf" else "params.json"
        config_path = self._fetch(config_name, self.revision or "main")
        snapshot = config_path.parent
        commit = snapshot.name
        config = read_json_or_none(config_path)
        problem = llama_problem(config, layout) if isinstance(config, dict) else "unreadable config"
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
            index = read_json_or_none(self._fetch("model.safetensors.index.json", commit))
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
        free = free_bytes(self.settings.cache_dir)
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

    def _run_gguf(self, every: dict[str, int]) -> Path:
        """Fetch one .gguf file (the one asked for, else the usual pick); return its path."""
        from huggingface_hub import try_to_load_from_cache

        files = [(n, s) for n, s in every.items() if is_gguf_name(n)]
        if self.filename is not None:
            name = check_gguf_filename(self.filename)
            if name not in every:
                choices = ", ".join(sorted(n for n, _ in files if not SHARD.search(n))[:8])
                raise EngineError(
                    f"{self.repo_id} has no file {name}; "
                    + (f"its GGUF files: {choices}" if choices else "it has no GGUF files")
                )
            problem = shard_problem(self.repo_id, name)
            if problem is not None:
                raise EngineError(problem)
            why = "the file asked for"
        else:
            name, why = pick_gguf_file(self.repo_id, files)
        size = every[name]
        self.tracker.sizes = {name: size}
        self.tracker.total = size
        # huggingface_hub deletes the part of a file a cancelled call had fetched.
        self.tracker.cancelled_text = (
            f"download of {name} of {self.repo_id} cancelled; a new download fetches it again "
            "from the start"
        )
        self.tracker.check_cancel()

        hit = try_to_load_from_cache(
            self.repo_id, name, cache_dir=self.settings.cache_dir, revision=self.revision
        )
        if isinstance(hit, str) and Path(hit).is_file() and Path(hit).stat().st_size == size:
            log.info("%s of %s is already in the cache", name, self.repo_id)
            self.tracker.finish(name, False)
            return Path(hit)
        self.space_needed = size
        free = free_bytes(self.settings.cache_dir)
        if size > free:
            raise EngineError(
                f"not enough disk space for {name} of {self.repo_id}: it needs "
                f"{format_bytes(size)} in {self.settings.cache_dir} and {format_bytes(free)} "
                "are free; free some space or set HF_HOME to a bigger disk"
            )
        log.info("downloading %s of %s (%s, %s)", name, self.repo_id, why, format_bytes(size))
        self.tracker.begin(name)
        path = self._fetch(name, self.revision or "main")
        self.space_needed = 0
        self.tracker.finish(name, True)
        self.tracker.check_cancel()
        return path

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
                if isinstance(exc, EngineError) or attempt == ATTEMPTS or not is_transient(exc):
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


def _sizes(info: Any) -> dict[str, int]:
    """Every file of a model_info(files_metadata=True) answer and its size."""
    return {
        s.rfilename: int(s.size or (s.lfs.size if s.lfs else 0) or 0) for s in info.siblings or []
    }


def _is_gguf_repo(listing: _Listing, every: dict[str, int]) -> bool:
    """GGUF weights and no weights of another layout (a config.json alone does not count:
    TheBloke's GGUF repos carry one)."""
    if not any(is_gguf_name(n) for n in every):
        return False
    meta = listing.has("params.json") and listing.matching("consolidated.*.pth")
    return not listing.matching("*.safetensors") and not meta


def list_gguf_files(
    repo_id: str, revision: str | None = None, token: str | None = None
) -> list[tuple[str, int]]:
    """(file name, size) of each single-file .gguf model in a Hub repo, by name.

    For the quantization choice. Parts of split models are left out (Loopchat cannot open them).
    Offline (HF_HUB_OFFLINE, or the Hub unreachable), the files already in the cache. Problems
    raise EngineError as for download_model.
    """
    repo_id = repo_id.strip()
    if not looks_like_repo_id(repo_id):
        raise EngineError(f"'{repo_id}' is not a Hub repo id; use owner/name")
    check_revision(revision)
    settings = HubSettings.from_environment()

    def cached() -> list[tuple[str, int]]:
        found = cached_gguf_files(repo_id, revision, settings)
        return sorted((n, s) for _, n, s in found if not SHARD.search(n))

    if settings.offline:
        return cached()
    sent = _token(token)
    try:
        from huggingface_hub import HfApi

        with _hub_online():
            api = HfApi(endpoint=settings.endpoint, token=sent)
            info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:
        error = explain_failure(exc, repo_id, revision, bool(sent), settings, 0)
        if error is None:
            raise
        if is_network_error(exc) and cached():
            log.warning("%s; listing the GGUF files already in the cache", error)
            return cached()
        raise error from exc
    return sorted(
        (n, s) for n, s in _sizes(info).items() if is_gguf_name(n) and not SHARD.search(n)
    )


def download_model(
    repo_id: str,
    revision: str | None = None,
    token: str | None = None,
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
    filename: str | None = None,
) -> Path:
    """Fetch the files the engine needs into the Hugging Face cache; return the snapshot folder.

    A GGUF repo (its weights are .gguf files only), or any repo when `filename` names a .gguf
    file: exactly one file is fetched, `filename` or else the usual pick (Q4_K_M; see
    engine.loading.gguf_repo.pick_gguf_file), and the path of that FILE in the snapshot is returned.
    Parts of split GGUF models are refused.

    The repo must be a Llama model (checked from its config before any weight is fetched). Files
    already in the cache are not fetched again. `progress` is called as bytes arrive (possibly from
    a huggingface_hub helper thread); setting `cancel` stops the download with DownloadCancelled.
    Every problem a user can fix raises EngineError with a one-line message; the token is never
    logged or shown.
    """
    repo_id = repo_id.strip()
    if not looks_like_repo_id(repo_id):
        raise EngineError(
            f"'{repo_id}' is not a Hub repo id; use owner/name, e.g. "
            "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
        )
    check_revision(revision)
    if filename is not None:
        filename = check_gguf_filename(filename)
    settings = HubSettings.from_environment()
    if settings.offline:
        return _cached_or_offline_error(repo_id, revision, settings, filename)
    sent = _token(token)
    job = _Download(repo_id, revision, sent, settings, progress, cancel, filename)
    try:
        with _hub_online():
            return job.run()
    except DownloadCancelled:
        raise
    except Exception as exc:
        error = explain_failure(exc, repo_id, revision, bool(sent), settings, job.space_needed)
        if error is None:
            raise
        if is_network_error(exc):
            cached = _find_cached(repo_id, revision, settings, filename)
            if cached is not None:
                log.warning("%s; using the copy already in the cache", error)
                return cached
        raise error from exc
