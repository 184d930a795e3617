"""Opening a saved conversation without holding the GUI: short ones at once, long ones in a
helper thread (10,000 messages take ~100-300 ms to read)."""

from __future__ import annotations

import gc
import logging
from concurrent.futures import Future, ThreadPoolExecutor

from PySide6.QtCore import QObject, Signal

from desktop.session import ChatSession, Engine, message_count
from desktop.store.conversations import ConversationStore
from desktop.store.schema import StoreError

log = logging.getLogger(__name__)

SYNC_OPEN_LIMIT = 2000
"""Conversations with more messages are read in the helper thread."""


def _read_quietly(store: ConversationStore, engine: Engine, conversation_id: int) -> ChatSession:
    """Read a long conversation without a full garbage collection in the middle.

    Its tens of thousands of new objects would trigger one, and with torch imported a full
    collection holds the GIL (so the GUI) for ~100 ms. What exists once it is read lives as long
    as the conversation is open, so it is frozen (left out of later collections) as well.
    """
    gc.disable()
    try:
        return ChatSession.open(store, engine, conversation_id)
    finally:
        gc.freeze()
        gc.enable()


class ConversationOpener(QObject):
    """`open(id)` ends in `ready(session)` or `failed(message)`; only the latest request counts.

    A short conversation is answered before `open` returns (views and tests see it at once).
    """

    ready = Signal(object)  # ChatSession
    failed = Signal(str)
    _done = Signal(object)  # a Future, from the helper thread (delivered queued)

    def __init__(self, store: ConversationStore, engine: Engine, parent=None) -> None:
        super().__init__(parent)
        self.store, self.engine = store, engine
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="loopchat-open")
        self._latest: Future | None = None
        self._done.connect(self._deliver)

    @property
    def busy(self) -> bool:
        return self._latest is not None

    def open(self, conversation_id: int) -> None:
        try:
            large = message_count(self.store, conversation_id) > SYNC_OPEN_LIMIT
        except StoreError:
            large = False  # ChatSession.open says what is wrong
        if large:
            self._latest = future = self._pool.submit(
                _read_quietly, self.store, self.engine, conversation_id
            )
            future.add_done_callback(self._done.emit)
            return
        self._latest = future = Future()
        try:
            future.set_result(ChatSession.open(self.store, self.engine, conversation_id))
        except Exception as exc:  # noqa: BLE001 - reported by _deliver
            future.set_exception(exc)
        self._deliver(future)

    def _deliver(self, future: Future) -> None:
        if future is not self._latest:
            return  # another conversation was asked for meanwhile
        self._latest = None
        try:
            session = future.result()
        except (StoreError, ValueError, TypeError, OverflowError) as exc:
            log.warning("conversation could not be opened: %r", exc)
            self.failed.emit(str(exc))
            return
        self.ready.emit(session)

    def shutdown(self) -> None:
        self._latest = None
        self._pool.shutdown(wait=True, cancel_futures=True)
