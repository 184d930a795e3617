"""A session's saves that failed: kept in memory, retried in order, reported once.

Its own module because it is one concern with its own rules (a save waits behind earlier
failed ones so they land in order; the first failure is told to the listener, the recovery
once everything is on disk), separate from what a session does with its turns. `ChatSession`
(`session.py`) inherits it as `SavedSession`.
Pure Python (no Qt).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from desktop.store.autosave import Autosaver
from desktop.store.schema import StoreError

log = logging.getLogger(__name__)


class SavedSession:
    """The saving half of `ChatSession`, which sets these attributes in its `__init__` (with
    `listener`, told `save_failed` and `saved_again`)."""

    conversation_id: int | None
    _saver: Autosaver | None
    """The autosaver of the reply being written, if any."""
    _retry: list[Callable[[], Any]]
    """Saves that failed, oldest first; `retry_saves` runs them again."""
    save_error: str | None

    @property
    def unsaved(self) -> bool:
        """Something is kept in memory only, waiting for `retry_saves`."""
        pending = self._saver is not None and self._saver.pending > 0 and bool(self.save_error)
        return bool(self._retry) or pending

    def retry_saves(self) -> bool:
        """Try the failed saves again, in order; True once everything is on disk."""
        try:
            if self._saver is not None and self._saver.pending:
                self._saver.flush()
            while self._retry:
                self._retry[0]()
                self._retry.pop(0)
        except StoreError as exc:
            self._failed_save(exc)
            return False
        if self.save_error is not None:
            self.save_error = None
            self.listener.saved_again(self)
        return True

    def _save(self, action: Callable[[], Any]) -> None:
        """Run a save now, or (if earlier ones wait, or it fails) queue it for `retry_saves`."""
        self._retry.append(action)
        self.retry_saves()

    def _failed_save(self, exc: StoreError) -> None:
        first = self.save_error is None
        self.save_error = str(exc)
        if first:
            log.warning("saving conversation %s failed: %s", self.conversation_id, exc)
            self.listener.save_failed(self, str(exc))
