"""A failed save while a reply streams loses nothing and does not stall it (issue 11, item 12).

The failure is real: another connection holds the database's write lock, as a second program
(or a backup tool) would, so every save fails with "database is locked" until it lets go.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from desktop.store.autosave import Autosaver
from desktop.store.conversations import ConversationStore
from desktop.store.schema import StoreError
from engine.events import Step, TopToken


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def step(i: int) -> Step:
    return Step(i, i, f"t{i} ", f"t{i}", 0.5, [TopToken(i, f"t{i} ", 0.5)])


@pytest.fixture
def locked(tmp_path: Path):
    """(store, lock, unlock): the store waits 50 ms for a lock before failing."""
    path = tmp_path / "c.sqlite3"
    store = ConversationStore(path, busy_timeout_s=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    yield store, lambda: other.execute("BEGIN IMMEDIATE"), lambda: other.execute("ROLLBACK")
    other.close()
    store.close()


def test_steps_are_kept_through_failures_and_written_by_a_retry(locked) -> None:
    store, lock, unlock = locked
    conv = store.create_conversation()
    clock = Clock()
    saver = Autosaver(store, store.start_reply(conv), max_pending=4, clock=clock)
    for i in range(3):
        saver.add(step(i))
    lock()
    with pytest.raises(StoreError, match="locked"):
        saver.add(step(3))  # the 4th step makes a save due; it fails
    assert saver.pending == 4 and saver.saved_steps == 0 and saver.last_error is not None

    started = time.monotonic()
    for i in range(4, 40):  # backing off: no new try (each would wait for the lock)
        assert saver.add(step(i)) is False
    assert time.monotonic() - started < 0.05 * 3
    clock.now += saver.retry_interval_s
    with pytest.raises(StoreError):
        saver.add(step(40))  # the automatic retry, after the back-off, fails again ...
    clock.now += saver.retry_interval_s
    assert saver.add(step(41)) is False  # ... and the next wait is longer

    unlock()
    assert saver.flush() == 42  # the retry the window calls: everything, in order
    assert saver.last_error is None and saver.pending == 0
    saved = store.get_steps(saver.message_id)
    assert [s.token_id for s in saved] == list(range(42))
    assert store.get_conversation(conv).messages[0].content == saver.content


def test_finish_that_fails_can_be_called_again(locked) -> None:
    store, lock, unlock = locked
    conv = store.create_conversation()
    saver = Autosaver(store, store.start_reply(conv), max_pending=100)
    for i in range(5):
        saver.add(step(i))
    lock()
    with pytest.raises(StoreError):
        saver.finish("final text", "eos", {"generated_tokens": 5})
    assert not saver.finished and saver.pending == 5
    unlock()
    saver.finish("final text", "eos", {"generated_tokens": 5})
    reply = store.get_conversation(conv).messages[0]
    assert (reply.content, reply.finished, reply.stop_reason) == ("final text", True, "eos")
    assert reply.timings == {"generated_tokens": 5} and len(reply.steps) == 5
