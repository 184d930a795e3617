"""Saving a streaming reply in batches, so the stream never waits on a commit per token.

Kept apart from `conversations`: the batching and back-off policy is pure Python with no SQL of
its own. It needs only the two calls in `ReplyStore` (which `ConversationStore` has), so it does
not import the store and the store does not import it: no cycle between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from desktop.store.schema import StoreError
from engine.events import Step

__all__ = ["Autosaver", "ReplyStore"]


class ReplyStore(Protocol):
    """What an Autosaver writes to: `ConversationStore`, or a stand-in in a test."""

    def append_steps(self, message_id: int, steps: Iterable[Step], content_so_far: str) -> None: ...

    def finish_reply(
        self, message_id: int, content: str, stop_reason: str, timings: dict | None = None
    ) -> None: ...


class Autosaver:
    """Saves a streaming reply in batches: every `max_pending` steps or `max_interval_s` seconds.

    Pure Python (no timer): the check runs as each step arrives, and `flush_if_due()` may be
    called from a timer when steps stall. Use it from one thread.

    A failed save loses nothing: `flush()` and `finish()` raise StoreError and keep every
    pending step (and the reply unfinished), so calling them again writes them all, in order.
    After a failure the automatic saves in `add`/`flush_if_due` back off (`retry_interval_s`,
    doubling up to `max_retry_interval_s`) instead of retrying at every token: a locked file
    makes each try wait `busy_timeout_s`, which would stall the stream. `last_error` holds the
    failure until a save succeeds.
    """

    def __init__(
        self,
        store: ReplyStore,
        message_id: int,
        *,
        max_pending: int = 32,
        max_interval_s: float = 1.0,
        retry_interval_s: float = 2.0,
        max_retry_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.message_id = message_id
        self.max_pending = max_pending
        self.max_interval_s = max_interval_s
        self.retry_interval_s = retry_interval_s
        self.max_retry_interval_s = max_retry_interval_s
        self._clock = clock
        self._pending: list[Step] = []
        self._parts: list[str] = []
        self._last_flush = clock()
        self._backoff = 0.0
        self.saved_steps = 0
        """Steps committed to the database so far."""
        self.finished = False
        self.last_error: StoreError | None = None
        """Why the last save failed; None once a save succeeds."""

    @property
    def content(self) -> str:
        """The reply text so far: the streamed texts of every step added."""
        return "".join(self._parts)

    @property
    def pending(self) -> int:
        """Steps added but not yet on disk."""
        return len(self._pending)

    def add(self, step: Step) -> bool:
        """Take one streamed step; True if it saved.

        StoreError if a save was due and failed; the step is kept pending either way.
        """
        self._pending.append(step)
        self._parts.append(step.text)
        return self.flush_if_due()

    def flush_if_due(self) -> bool:
        """Save if enough steps or time have gathered (later, while backing off a failure)."""
        if not self._pending:
            return False
        waited = self._clock() - self._last_flush
        if self.last_error is not None:
            due = waited >= self._backoff
        else:
            due = len(self._pending) >= self.max_pending or waited >= self.max_interval_s
        if due:
            self.flush()
        return due

    def flush(self) -> int:
        """Save what is pending now; return how many steps were saved.

        StoreError if the save failed: the steps stay pending for the next call.
        """
        count = len(self._pending)
        if count:
            try:
                self.store.append_steps(self.message_id, self._pending, self.content)
            except StoreError as exc:
                self._failed(exc)
                raise
            self._pending = []
            self.saved_steps += count
        self._succeeded()
        return count

    def finish(
        self, content: str | None = None, stop_reason: str = "eos", timings: dict | None = None
    ) -> None:
        """Save the rest and mark the reply done (or stopped); `content` defaults to the stream.

        StoreError if either save failed; the reply stays unfinished and calling `finish`
        again (same arguments) completes it.
        """
        if self.finished:
            return
        self.flush()
        try:
            self.store.finish_reply(
                self.message_id, self.content if content is None else content, stop_reason, timings
            )
        except StoreError as exc:
            self._failed(exc)
            raise
        self._succeeded()
        self.finished = True

    def _failed(self, exc: StoreError) -> None:
        self.last_error = exc
        self._backoff = min(
            self.max_retry_interval_s, max(self.retry_interval_s, self._backoff * 2)
        )
        self._last_flush = self._clock()

    def _succeeded(self) -> None:
        self.last_error = None
        self._backoff = 0.0
        self._last_flush = self._clock()
