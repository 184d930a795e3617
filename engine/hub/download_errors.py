"""Why a download failed, in one line that says what to do (and whether to try again).

huggingface_hub reports problems as its own error types, HTTP statuses on wrapped exceptions and
transport errors of the HTTP library it is built on; this module turns them into EngineErrors fit
for a dialog and decides which are worth another try.
"""

from __future__ import annotations

import errno
import importlib
import shutil
from pathlib import Path
from types import ModuleType

from engine.errors import EngineError, Remedy
from engine.hub.progress_text import format_bytes
from engine.loading.model_folder import HubSettings


def _http_libraries() -> list[ModuleType]:
    """The HTTP clients huggingface_hub may be built on: httpx2 from 2.0, httpx before."""
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return found


def _errors_named(*names: str) -> tuple[type[BaseException], ...]:
    """These exception classes from every HTTP client present (an empty tuple matches nothing)."""
    return tuple(getattr(lib, name) for lib in _http_libraries() for name in names)


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an error, also when huggingface_hub wrapped it (as __cause__)."""
    seen: BaseException | None = exc
    while seen is not None:
        status = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        seen = seen.__cause__
    return None


def is_network_error(exc: BaseException) -> bool:
    """A connection that could not be made or was lost (not an answer the Hub gave)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    known = (OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError)
    return isinstance(exc, (*_errors_named("TransportError"), *known))


def is_transient(exc: BaseException) -> bool:
    """Worth trying the file again: a read cut short (huggingface_hub already retried connects and
    timeouts), a size mismatch after a flaky transfer, or the Hub busy or failing for a moment."""
    if isinstance(exc, _errors_named("ReadError", "WriteError", "CloseError")):
        return True
    status = _status(exc)
    if status is not None:
        return status in (408, 429) or status >= 500
    return isinstance(exc, OSError) and str(exc).startswith("Consistency check failed")


def explain_failure(
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
        return EngineError(f"{repo_id} is gated", Remedy.LOG_IN, page=page)
    if isinstance(exc, errors.RevisionNotFoundError):
        return EngineError(f"{repo_id} has no revision '{revision}'", Remedy.CHECK_REVISION)
    if isinstance(exc, errors.RepositoryNotFoundError):
        return EngineError(
            f"no model '{repo_id}' on {settings.endpoint}: check the repo id (owner/name)",
            None if sent_token else Remedy.TOKEN_IF_PRIVATE,
        )
    if status == 401 and sent_token:
        return EngineError(
            "the Hub rejected the access token (invalid or expired)",
            Remedy.NEW_TOKEN,
            tokens_page=f"{settings.endpoint}/settings/tokens",
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        free = free_bytes(settings.cache_dir)
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
    if is_network_error(exc):
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


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds (or will hold) a folder."""
    for path in (folder, *folder.parents):
        try:
            return shutil.disk_usage(path).free
        except OSError:
            continue
    return 0
