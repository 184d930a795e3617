"""The one error a server fault becomes: an EngineError (one line, what to do) with the facts a
window needs to offer Retry: how long the server asked to wait and which kind of fault it was."""

from __future__ import annotations

from typing import Any

from engine.errors import EngineError
from engine.events import GenerationResult

FAULT_KINDS = (
    "refused",
    "dns",
    "tls",
    "connect_timeout",
    "first_byte_timeout",
    "idle_timeout",
    "cut",
    "key",
    "not_found",
    "rate_limited",
    "server_error",
    "bad_request",
    "malformed",
    "too_long",
    "cancelled",
)
"""What went wrong, as data (tests and the window branch on it, never on the wording)."""


class RemoteError(EngineError):
    """A server fault. `retry_after` is the seconds the server asked to wait (Retry-After on a
    429 or 5xx), else None; `status` the HTTP status, if one came; `partial` the reply as far as
    it got (stop_reason "error", the message in `error`) when the fault cut a reply short."""

    def __init__(
        self,
        problem: str,
        kind: str = "server_error",
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(problem)
        self.kind = kind
        self.retry_after = retry_after
        self.status = status
        self.partial: GenerationResult | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (self.problem, self.kind, self.retry_after, self.status, self.partial),
        )


def _rebuild(
    problem: str,
    kind: str,
    retry_after: float | None,
    status: int | None,
    partial: GenerationResult | None,
) -> RemoteError:
    error = RemoteError(problem, kind, retry_after=retry_after, status=status)
    error.partial = partial
    return error
