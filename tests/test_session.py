"""`ChatSession` without a window: the real engine worker, run in this thread, and a real store.

After every action the database on disk is read back through a second connection, so what is
checked is what a restart would see.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from desktop.session import ChatSession, SessionListener
from desktop.store.conversations import ConversationStore
from desktop.store.schema import StoreError
from desktop.turns import ReplyOptions
from engine.events import GREEDY, GenerationRequest

OPTIONS = ReplyOptions(GREEDY, max_new_tokens=8, report_top=4)


class SyncEngine:
    """The real EngineWorker answering in this thread: `generate` queues, `run` answers.

    The worker's signals call the session's handlers directly (plain callables on a QObject's
    signals run in the emitting thread), as the window's queued connections would, later.
    """

    def __init__(self, worker, cancel: threading.Event) -> None:
        self.worker, self.cancel = worker, cancel
        self.queue: list[GenerationRequest] = []
        self.session: ChatSession | None = None
        self._ids = 0
        self.on_step = None  # optional hook(step), called after the session saw the step
        worker.generation_started.connect(lambda s: self.session.on_started(s))
        worker.token.connect(self._step)
        worker.generation_finished.connect(lambda r: self.session.on_finished(r))
        worker.generation_failed.connect(lambda r: self.session.on_failed(r))

    def _step(self, step) -> None:
        self.session.on_step(step)
        if self.on_step is not None:
            self.on_step(step)

    def generate(self, request: GenerationRequest) -> int:
        self._ids += 1
        self.cancel.clear()
        self.queue.append(dataclasses.replace(request, request_id=self._ids))
        return self._ids

    def stop(self) -> None:
        self.cancel.set()

    def run(self, session: ChatSession) -> None:
        """Answer the queued request, routing the answers to `session` (its owner)."""
        self.session = session
        self.worker.generate(self.queue.pop(0))


@pytest.fixture(scope="module")
def worker(qapp, tiny_model_dir: Path):
    from desktop.worker import EngineWorker

    cancel = threading.Event()
    w = EngineWorker(cancel)
    loaded = []
    w.model_loaded.connect(loaded.append)
    w.load_model(str(tiny_model_dir), "float32", "cpu")
    assert loaded, "the tiny model did not load"
    return w, cancel, loaded[0]


@pytest.fixture
def engine(worker):
    w, cancel, _info = worker
    sync = SyncEngine(w, cancel)
    yield sync
    for signal in (w.generation_started, w.token, w.generation_finished, w.generation_failed):
        signal.disconnect()


@pytest.fixture
def store(tmp_path: Path):
    with ConversationStore(tmp_path / "c.sqlite3") as s:
        yield s


def on_disk(store: ConversationStore, conversation_id: int) -> list[tuple]:
    """(role, content, finished, stop_reason, steps) as a fresh connection reads them."""
    with ConversationStore(store.path) as fresh:
        conv = fresh.get_conversation(conversation_id, include_deleted=True)
        return [(m.role, m.content, m.finished, m.stop_reason, len(m.steps)) for m in conv.messages]


def as_saved(turn) -> tuple:
    """How `on_disk` shows a finished reply that was saved completely."""
    return ("assistant", turn.content, True, turn.stop_reason, len(turn.steps))


def test_send_saves_the_turn_and_the_streamed_reply(engine, store) -> None:
    session = ChatSession(store, engine, system_prompt="Be brief.", model="tiny")
    session.send("Hello there", OPTIONS)
    assert session.busy and on_disk(store, session.conversation_id) == [
        ("user", "Hello there", True, None, 0),
        ("assistant", "", False, None, 0),
    ]
    engine.run(session)
    reply = session.turns[-1]
    assert not session.busy and reply.finished and reply.steps
    assert session.history == [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": reply.content},
    ]
    assert on_disk(store, session.conversation_id)[-1] == as_saved(reply)
    assert f"{len(reply.steps)} tokens" in reply.stats
    with ConversationStore(store.path) as fresh:
        conv = fresh.get_conversation(session.conversation_id)
        assert conv.system_prompt == "Be brief."
        assert conv.messages[-1].timings["generated_tokens"] == len(reply.steps)


def test_stop_before_the_first_token_leaves_the_turn_unanswered_and_usable(engine, store) -> None:
    session = ChatSession(store, engine)
    session.send("first", OPTIONS)
    session.stop()  # before the engine got to it
    engine.run(session)
    assert session.unanswered and session.history == [{"role": "user", "content": "first"}]
    assert on_disk(store, session.conversation_id) == [("user", "first", True, None, 0)]

    session.send("second", OPTIONS)
    assert session.prompt_messages() == [{"role": "user", "content": "second"}]
    engine.run(session)
    assert [r[0] for r in on_disk(store, session.conversation_id)] == ["user", "user", "assistant"]

    # The unanswered one is answered by Regenerate when it is the last turn.
    session.send("third", OPTIONS)
    session.stop()
    engine.run(session)
    assert session.regenerate(OPTIONS)
    assert session.prompt_messages()[-1] == {"role": "user", "content": "third"}
    engine.run(session)
    saved = on_disk(store, session.conversation_id)
    assert [r[0] for r in saved] == ["user", "user", "assistant", "user", "assistant"]
    assert saved[-1][2] is True and saved[-1][4] > 0


def test_a_failed_reply_is_dropped_and_the_next_send_works(engine, store, worker) -> None:
    limit = worker[2].max_context
    session = ChatSession(store, engine)
    session.send(" ".join(["loop"] * (2 * limit)), OPTIONS)
    engine.run(session)
    assert session.unanswered and not session.busy
    assert [r[0] for r in on_disk(store, session.conversation_id)] == ["user"]
    session.send("short", OPTIONS)
    engine.run(session)
    saved = on_disk(store, session.conversation_id)
    assert [r[0] for r in saved] == ["user", "user", "assistant"] and saved[-1][2]


def test_regenerate_adds_a_version_of_the_last_reply(engine, store) -> None:
    session = ChatSession(store, engine)
    session.send("question", OPTIONS)
    engine.run(session)
    first = session.turns[-1]
    assert session.regenerate(OPTIONS)
    engine.run(session)
    second = session.turns[-1]
    assert second.message_id != first.message_id and (second.version, second.versions) == (2, 2)
    saved = on_disk(store, session.conversation_id)
    assert len(saved) == 2 and saved[-1][2] and saved[-1][4] == len(second.steps)
    # The first version is kept, a click away; the conversation continues from the one shown.
    assert session.show_version(second, 1)
    assert session.turns[-1].message_id == first.message_id
    assert on_disk(store, session.conversation_id)[-1] == as_saved(first)
    assert (session.turns[-1].version, session.turns[-1].versions) == (1, 2)


def test_a_new_version_that_comes_to_nothing_gives_the_old_one_back(engine, store) -> None:
    session = ChatSession(store, engine)
    session.send("question", OPTIONS)
    engine.run(session)
    first = session.turns[-1]
    assert session.regenerate(OPTIONS)
    session.stop()  # before the first token: the new version is empty and dropped
    engine.run(session)
    assert session.turns[-1] is first and not session.busy
    assert session.history[-1] == {"role": "assistant", "content": first.content}
    assert on_disk(store, session.conversation_id)[-1] == as_saved(first)
    with ConversationStore(store.path) as fresh:
        assert fresh.get_conversation(session.conversation_id).messages[-1].versions == 1


def test_branching_a_middle_reply_keeps_what_followed_in_its_old_version(engine, store) -> None:
    session = ChatSession(store, engine)
    session.send("one", OPTIONS)
    engine.run(session)
    session.send("two", OPTIONS)
    engine.run(session)
    old = list(session.turns)
    reply = session.turns[1]
    assert len(reply.steps) >= 3, "the tiny model should write a few tokens"
    alternative = reply.steps[2].top[1].token_id
    session.branch(reply, 2, alternative, OPTIONS)
    assert session.turns == old[:1] + [session.reply]  # later turns set aside with their version
    assert session.reply.content == "".join(s.text for s in reply.steps[:2])
    engine.run(session)
    branch = session.turns[-1]
    assert [s.token_id for s in branch.steps[:3]] == [
        *(s.token_id for s in reply.steps[:2]),
        alternative,
    ]
    assert (branch.version, branch.versions) == (2, 2) and branch.timings["branched_at"] == 2
    assert branch.timings["generated_tokens"] == len(branch.steps)
    assert on_disk(store, session.conversation_id) == [
        ("user", "one", True, None, 0),
        as_saved(branch),
    ]
    # Back to version 1: the turns that followed it come back with it.
    assert session.show_version(branch, 1)
    assert [t.message_id for t in session.turns] == [t.message_id for t in old]
    assert session.history[-1]["content"] == old[-1].content
    with pytest.raises(ValueError, match="no token 100"):
        session.branch(session.turns[1], 99, alternative, OPTIONS)
    with pytest.raises(ValueError, match="only a reply"):
        session.branch(session.turns[0], 0, alternative, OPTIONS)


def test_edit_sends_a_new_version_and_keeps_the_old_one_with_its_replies(engine, store) -> None:
    session = ChatSession(store, engine)
    session.send("one", OPTIONS)
    engine.run(session)
    session.send("two", OPTIONS)
    engine.run(session)
    before = on_disk(store, session.conversation_id)
    assert len(before) == 4
    old_first = session.turns[0]
    session.edit(old_first, "one, edited", OPTIONS)
    assert on_disk(store, session.conversation_id)[0][:2] == ("user", "one, edited")
    engine.run(session)
    saved = on_disk(store, session.conversation_id)
    assert [r[:2] for r in saved][0] == ("user", "one, edited") and len(saved) == 2
    assert [t.role for t in session.turns] == ["user", "assistant"]
    assert (session.turns[0].version, session.turns[0].versions) == (2, 2)
    # Nothing was deleted: version 1 and everything that followed it are one click away.
    every = store.get_conversation(session.conversation_id, all_versions=True).messages
    assert len(every) == 6
    assert session.show_version(session.turns[0], 1)
    assert [(t.role, t.content) for t in session.turns] == [r[:2] for r in before]


def test_switching_away_while_streaming_finishes_the_reply_in_its_own_session(
    engine, store
) -> None:
    heard: list[str] = []

    class Screen(SessionListener):
        def reply_step(self, session, turn, step) -> None:
            heard.append(step.text)

    old = ChatSession(store, engine, listener=Screen())
    old.send("tell me more", ReplyOptions(GREEDY, max_new_tokens=200))
    new = None

    def switch(step) -> None:
        nonlocal new
        if step.index == 2 and new is None:  # the user starts a new chat here
            old.listener = SessionListener()
            old.stop()
            new = ChatSession(store, engine)

    engine.on_step = switch
    engine.run(old)
    engine.on_step = None
    reply = old.turns[-1]
    assert reply.finished and reply.stop_reason == "cancelled" and len(reply.steps) >= 3
    assert len(heard) == 3  # the screen stopped hearing it once it switched
    assert on_disk(store, old.conversation_id)[-1] == as_saved(reply)
    assert new.turns == [] and new.conversation_id is None
    new.send("a new topic", OPTIONS)
    engine.run(new)
    assert new.conversation_id != old.conversation_id
    assert [r[0] for r in on_disk(store, new.conversation_id)] == ["user", "assistant"]


def test_closing_mid_reply_keeps_what_streamed(engine, store) -> None:
    session = ChatSession(store, engine)
    session.send("go on", ReplyOptions(GREEDY, max_new_tokens=200))
    engine.on_step = lambda step: session.abandon() if step.index == 4 else None
    engine.run(session)
    engine.on_step = None
    saved = on_disk(store, session.conversation_id)[-1]
    assert saved[2:4] == (True, "cancelled") and saved[4] == 5
    assert saved[1] == session.turns[-1].content


def test_a_failing_store_keeps_the_steps_and_saves_them_later(engine, store, monkeypatch) -> None:
    problems: list[str] = []

    class Screen(SessionListener):
        def save_failed(self, session, message) -> None:
            problems.append(message)

        def saved_again(self, session) -> None:
            problems.append("ok")

    session = ChatSession(store, engine, listener=Screen())
    session.send("remember this", ReplyOptions(GREEDY, max_new_tokens=70))
    real = store.append_steps, store.finish_reply
    broken = {"on": True}

    def failing(real_call):
        def call(*args, **kwargs):
            if broken["on"]:
                raise StoreError("disk I/O error")
            return real_call(*args, **kwargs)

        return call

    monkeypatch.setattr(store, "append_steps", failing(real[0]))
    monkeypatch.setattr(store, "finish_reply", failing(real[1]))
    engine.run(session)
    reply = session.turns[-1]
    assert problems == ["disk I/O error"] and session.unsaved
    assert on_disk(store, session.conversation_id)[-1][2] is False  # not yet
    assert not session.retry_saves()
    broken["on"] = False
    assert session.retry_saves() and not session.unsaved and problems[-1] == "ok"
    assert on_disk(store, session.conversation_id)[-1] == as_saved(reply)


def test_a_reopened_session_reads_steps_only_when_asked(engine, store) -> None:
    first = ChatSession(store, engine)
    first.send("hello", OPTIONS)
    engine.run(first)
    again = ChatSession.open(store, engine, first.conversation_id)
    assert again.history == first.history
    reply = again.turns[-1]
    assert reply._steps is None  # not read yet
    assert [s.token_id for s in reply.steps] == [s.token_id for s in first.turns[-1].steps]
    assert reply.stats == first.turns[-1].stats


def test_an_unreadable_message_is_shown_damaged_and_left_out(store, monkeypatch) -> None:
    from desktop.store.rows import DAMAGED_TEXT

    conv = store.create_conversation("", "m")
    for role, text in (("user", "a"), ("assistant", "b"), ("user", "c")):
        store.add_message(conv, role, text)
    real = store.get_conversation

    def with_a_damaged_row(*args, **kwargs):
        read = real(*args, **kwargs)
        read.messages[2].content, read.messages[2].damaged = DAMAGED_TEXT, True
        return read

    monkeypatch.setattr(store, "get_conversation", with_a_damaged_row)
    session = ChatSession.open(store, None, conv)
    assert [t.damaged for t in session.turns] == [False, False, True]
    assert session.history == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
    ]
    assert session.prompt_messages() == session.history
