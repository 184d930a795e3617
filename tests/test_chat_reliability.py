"""Ordinary deviations that used to break a chat (issue 11), driven through the real window.

Every test uses the real tiny engine in the real worker thread. "Pressing Stop at a given
moment" is done by connecting a plain callable to a worker signal: it runs in the worker thread,
exactly where a click would land between two of the engine's checks.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer

from desktop.store.conversations import ConversationStore
from desktop.store.schema import StoreError
from desktop.views.conversation_view import CHUNK, PAGE
from tests.window_helpers import ask, broken_model_folder, greedy, load, make_window


def db_path(home: Path) -> Path:
    return home / "home" / "data" / "conversations.sqlite3"


def saved(home: Path, conversation_id: int) -> list:
    with ConversationStore(db_path(home)) as store:
        return store.get_conversation(conversation_id).messages


@pytest.fixture
def chat(qtbot, home: Path, tiny_model_dir: Path):
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    greedy(win, 6)
    yield win
    win.close()


# -- 1: a user turn left unanswered ---------------------------------------------------------


def test_stop_before_the_first_token_then_send_and_regenerate_work(qtbot, home, chat) -> None:
    worker = chat.controller.worker
    stop_now = chat.controller.stop  # thread-safe: what the Stop button calls

    def stop_before_first_token(_started) -> None:
        stop_now()  # runs in the worker thread, before prefill: no token will come

    worker.generation_started.connect(stop_before_first_token)
    result = ask(qtbot, chat, "first question")
    worker.generation_started.disconnect(stop_before_first_token)
    assert result["stop_reason"] == "cancelled" and result["generated_tokens"] == 0
    assert chat.history == [{"role": "user", "content": "first question"}]
    assert [m.role for m in saved(home, chat.conversation_id)] == ["user"]
    assert chat.send_button.isEnabled() and chat.regenerate_button.isEnabled()

    # The next send works (roles still alternate in the prompt)...
    errors: list[str] = []
    chat.error_shown.connect(errors.append)
    second = ask(qtbot, chat, "second question")
    assert "error" not in second and errors == [] and second["generated_tokens"] > 0
    assert [t["role"] for t in chat.history] == ["user", "user", "assistant"]

    # ...and Regenerate answers a message left unanswered.
    worker.generation_started.connect(stop_before_first_token)
    ask(qtbot, chat, "third question")
    worker.generation_started.disconnect(stop_before_first_token)
    with qtbot.waitSignal(chat.reply_finished, timeout=120_000) as done:
        qtbot.mouseClick(chat.regenerate_button, Qt.MouseButton.LeftButton)
    assert "error" not in done.args[0] and done.args[0]["generated_tokens"] > 0
    roles = [m.role for m in saved(home, chat.conversation_id)]
    assert roles == ["user", "user", "assistant", "user", "assistant"]
    assert errors == []


def test_a_failed_reply_leaves_the_chat_usable(qtbot, home, chat) -> None:
    limit = chat.model_info["max_context"]
    # Longer than the context: refused before it is saved (issue 26), the text kept in the box.
    chat.input.setPlainText(" ".join(["loop"] * (2 * limit)))
    assert not chat.send_button.isEnabled()
    qtbot.keyClick(chat.input, Qt.Key.Key_Return)
    assert "context" in chat.banner.label.text() and chat.history == []
    assert chat.input.toPlainText().startswith("loop loop")
    result = ask(qtbot, chat, "a short one")
    assert "error" not in result and result["generated_tokens"] > 0
    roles = [m.role for m in saved(home, chat.conversation_id)]
    assert roles == ["user", "assistant"]  # the refused one was never saved
    assert chat.chat.messages[-1].text == result["text"]


# -- 3: new chat / delete / switch while a reply streams --------------------------------------


@pytest.mark.parametrize("how", ["new chat", "delete", "switch"])
def test_leaving_a_streaming_reply_saves_it_in_its_own_conversation(
    qtbot, home, chat, how: str
) -> None:
    other = chat.store.create_conversation("", "m")
    chat.store.add_message(other, "user", "an older chat")
    greedy(chat, 400)
    with qtbot.waitSignal(chat.token_shown, timeout=60_000):
        chat.send("tell me a long story")
    streaming = chat.conversation_id
    with qtbot.waitSignal(chat.reply_finished, timeout=60_000) as done:
        if how == "new chat":
            chat.new_chat_action.trigger()
        elif how == "delete":
            chat.conversations.delete_requested.emit(streaming)
        else:
            chat.conversations.open_requested.emit(other)
    result = done.args[0]
    assert result["stop_reason"] == "cancelled" and result["generated_tokens"] > 0
    assert chat.conversation_id != streaming
    reply = saved(home, streaming)[-1] if how != "delete" else None
    if how == "delete":
        with ConversationStore(db_path(home)) as store:
            reply = store.get_conversation(streaming, include_deleted=True).messages[-1]
    assert reply.role == "assistant" and reply.finished and reply.content == result["text"]
    assert reply.stop_reason == "cancelled" and len(reply.steps) == result["generated_tokens"]
    # Nothing of it landed in the chat now shown, and the window is ready for the next message.
    shown = [m.text for m in chat.chat.messages]
    assert result["text"] not in shown and "tell me a long story" not in shown
    assert chat.send_button.isEnabled() and not chat.controller.busy
    greedy(chat, 4)
    ask(qtbot, chat, "something new")
    assert chat.history[-2] == {"role": "user", "content": "something new"}
    assert chat.conversation_id != streaming


def test_switching_back_to_a_reply_still_ending_shows_it_live(qtbot, home, chat) -> None:
    other = chat.store.create_conversation("", "m")
    chat.store.add_message(other, "user", "an older chat")
    greedy(chat, 400)
    with qtbot.waitSignal(chat.token_shown, timeout=60_000):
        chat.send("tell me a long story")
    streaming = chat.conversation_id
    with qtbot.waitSignal(chat.reply_finished, timeout=60_000) as done:
        chat.open_conversation(other)
        chat.open_conversation(streaming)  # before its last tokens arrive
    result = done.args[0]
    assert chat.conversation_id == streaming
    cards = [(m.role, m.text) for m in chat.chat.messages]
    assert cards == [("user", "tell me a long story"), ("assistant", result["text"])]
    assert "stopped" in chat.chat.messages[-1].meta_label.text()
    assert saved(home, streaming)[-1].content == result["text"]


# -- 4: a failed model switch ---------------------------------------------------------------


def test_a_failed_model_switch_keeps_the_old_model(qtbot, home, chat, tmp_path: Path) -> None:
    name = chat.model_info["name"]
    broken = broken_model_folder(tmp_path)
    with qtbot.waitSignal(chat.error_shown, timeout=60_000) as error:
        chat.load_model(str(broken))
    assert error.args[0].endswith(f". Still loaded: {name}.")
    assert chat.model_info["name"] == name and chat.status_line.model_label.text() == name
    assert chat.send_button.isEnabled()
    result = ask(qtbot, chat, "still there?")
    assert "error" not in result and result["generated_tokens"] > 0


def test_a_failed_switch_without_room_for_two_models_shows_no_model(
    qtbot, home, chat, tmp_path: Path, monkeypatch
) -> None:
    import desktop.worker

    monkeypatch.setattr(desktop.worker, "available_memory", lambda: 0, raising=False)
    broken = broken_model_folder(tmp_path)
    with qtbot.waitSignal(chat.error_shown, timeout=60_000) as error:
        chat.load_model(str(broken))
    assert "still loaded" not in error.args[0]
    assert chat.model_info is None and chat.status_line.model_label.text().startswith("No model")
    assert not chat.send_button.isEnabled() and not chat.regenerate_button.isEnabled()
    chat.input.setPlainText("hello")
    chat.send("hello")
    assert "No model is loaded" in chat.banner.label.text()


# -- 5: the system prompt --------------------------------------------------------------------


def test_system_prompt_is_per_conversation_with_a_default_for_new_chats(qtbot, home) -> None:
    win = make_window(qtbot, home, **{"chat/system_prompt": "Default prompt"})
    assert win.sampling.system_prompt.toPlainText() == "Default prompt"
    conv = win.store.create_conversation("Be a pirate.", "m")
    win.store.add_message(conv, "user", "ahoy")
    win.open_conversation(conv)
    assert win.sampling.system_prompt.toPlainText() == "Be a pirate."
    win.sampling.system_prompt.setPlainText("Be a careful pirate.")
    qtbot.waitUntil(
        lambda: win.store.get_conversation(conv).system_prompt == "Be a careful pirate.",
        timeout=3000,
    )
    win.new_chat_action.trigger()
    assert win.sampling.system_prompt.toPlainText() == "Default prompt"
    assert win.settings.value("chat/system_prompt") == "Default prompt"
    win.open_conversation(conv)
    assert win.sampling.system_prompt.toPlainText() == "Be a careful pirate."
    win.close()


# -- 6: deleted conversations are purged -----------------------------------------------------


def test_deleted_conversations_are_purged_after_undo_window_and_on_quit(
    qtbot, home, monkeypatch
) -> None:
    import desktop.library as library

    monkeypatch.setattr(library, "UNDO_WINDOW_S", 0.2)
    win = make_window(qtbot, home)
    first = win.store.create_conversation("", "m")
    win.store.add_message(first, "user", "secret one")
    second = win.store.create_conversation("", "m")
    win.store.add_message(second, "user", "secret two")
    win.refresh_conversations()

    def gone(conversation_id: int) -> bool:
        try:
            win.store.get_conversation(conversation_id, include_deleted=True)
        except StoreError:
            return True
        return False

    win.conversations.delete_requested.emit(first)
    assert not gone(first)  # undo is still possible
    qtbot.waitUntil(lambda: gone(first), timeout=5000)
    monkeypatch.setattr(library, "UNDO_WINDOW_S", 3600)
    win.conversations.delete_requested.emit(second)
    win.close()  # at the latest on quit
    db = sqlite3.connect(db_path(home))
    assert db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    db.close()
    for file in db_path(home).parent.glob("conversations.sqlite3*"):
        assert b"secret" not in file.read_bytes(), file  # gone from the file, not just hidden


# -- 7: closing while a model loads ----------------------------------------------------------


def test_closing_during_a_model_load_exits_within_two_seconds(
    qtbot, home, tiny_model_dir: Path
) -> None:
    win = make_window(qtbot, home)
    # A big model's load: every progress report (each 8 tensors) takes a while.
    win.controller.worker.load_progress.connect(lambda *_: time.sleep(0.4))
    with qtbot.waitSignal(win.controller.worker.load_progress, timeout=60_000):
        win.load_model(str(tiny_model_dir))
    started = time.perf_counter()
    win.close()
    took = time.perf_counter() - started
    print(f"close during load took {1000 * took:.0f} ms")
    assert took < 2.0
    assert not win.controller._thread.isRunning()
    assert win.model_info is None


def test_closing_while_the_engine_starts_does_not_wait_for_it(
    qtbot, home, tiny_model_dir: Path
) -> None:
    """A cold `import torch` cannot be cancelled; closing does not wait for it, nor abort."""
    win = make_window(qtbot, home)
    worker = win.controller.worker
    slow = {"once": True}

    def cold_start(_fraction, message) -> None:  # runs in the worker thread
        if slow["once"] and message == "Starting the engine":
            slow["once"] = False
            time.sleep(3.0)

    worker.load_progress.connect(cold_start)
    win.load_model(str(tiny_model_dir))
    qtbot.wait(200)
    started = time.perf_counter()
    win.close()
    took = time.perf_counter() - started
    assert took < 2.0, took
    controller = win.controller
    assert controller.parent() is not win  # kept alive past the window
    qtbot.waitUntil(lambda: not controller.running, timeout=10_000)
    assert win.model_info is None


# -- 12: a failed save while streaming -------------------------------------------------------


def test_a_failed_save_while_streaming_is_kept_retried_and_reported(
    qtbot, home, chat, monkeypatch
) -> None:
    store = chat.store
    broken = {"on": True}
    real_append, real_finish = store.append_steps, store.finish_reply

    def append_steps(*args, **kwargs):
        if broken["on"]:
            raise StoreError("Could not save to the conversation database (disk I/O error).")
        return real_append(*args, **kwargs)

    def finish_reply(*args, **kwargs):
        if broken["on"]:
            raise StoreError("Could not save to the conversation database (disk I/O error).")
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(store, "append_steps", append_steps)
    monkeypatch.setattr(store, "finish_reply", finish_reply)
    greedy(chat, 80)  # more than one save point's worth of steps
    errors: list[str] = []
    chat.error_shown.connect(errors.append)
    result = ask(qtbot, chat, "keep this safe")
    assert result["generated_tokens"] > 32
    assert any("Could not save" in e for e in errors)
    assert chat.chat.messages[-1].text == result["text"]  # nothing lost on screen
    broken["on"] = False
    qtbot.waitUntil(lambda: "saved again" in chat.banner.label.text(), timeout=10_000)
    reply = saved(home, chat.conversation_id)[-1]
    assert reply.finished and reply.content == result["text"]
    assert [s.token_id for s in reply.steps] == list(result["token_ids"])


# -- 13: a very long conversation, and a damaged row -----------------------------------------


def _long_export(n: int) -> dict:
    messages = []
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        text = f"message {i}: " + ("some **markdown** and `code` " * 3)
        messages.append(
            {
                "role": role,
                "content": text,
                "created_at": 1.7e9 + i,
                "finished": True,
                "stop_reason": None if role == "user" else "eos",
                "model": "m",
                "sampling": {},
                "timings": {} if role == "user" else {"generated_tokens": 9},
                "steps": [],
            }
        )
    return {
        "format": "loopchat-conversation",
        "version": 1,
        "title": "long",
        "system_prompt": "",
        "model": "m",
        "created_at": 1.7e9,
        "updated_at": 1.7e9 + n,
        "messages": messages,
    }


class LoopTurns:
    """How many cards the view holds at each turn of the GUI's event loop (a 0 ms timer ticks
    once per turn): the most added between two turns is the most work the GUI did without
    yielding. A count, not a time, so a busy machine cannot make it fail (timings:
    `benchmarks/open_long_conversation.py`)."""

    def __init__(self, win) -> None:
        self.win = win
        self.counts: list[int] = []
        self.timer = QTimer()
        self.timer.setInterval(0)
        self.timer.timeout.connect(lambda: self.counts.append(len(win.chat.messages)))

    def __enter__(self) -> LoopTurns:
        self.counts.clear()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()

    @property
    def most_per_turn(self) -> int:
        pairs = zip(self.counts, self.counts[1:], strict=False)
        return max((later - earlier for earlier, later in pairs), default=0)


def test_ten_thousand_messages_open_lazily_without_blocking(qtbot, home) -> None:
    """Opening 10,000 messages never holds the GUI: they are read in the helper thread, and the
    cards are built a chunk per event-loop turn, one page only (more as the user scrolls up)."""
    win = make_window(qtbot, home)
    conv = win.store.import_json(_long_export(10_000))
    win.new_chat()
    at_show: list[int] = []
    win.opener.ready.connect(lambda _session: at_show.append(len(win.chat.messages)))
    with LoopTurns(win) as turns:
        win.open_conversation(conv)
        # Returned before reading a message: the read runs in the helper thread.
        assert win.opener.busy and win.conversation_id is None
        qtbot.waitUntil(lambda: win.conversation_id == conv, timeout=10_000)
        qtbot.waitUntil(lambda: len(win.chat.messages) >= PAGE, timeout=10_000)
        qtbot.wait(100)
    page = len(win.chat.messages)
    assert at_show == [CHUNK]  # shown at once with a first chunk of cards; the rest follows
    assert turns.most_per_turn <= CHUNK
    assert len(win.history) == 10_000
    assert page == PAGE  # one page of cards, not 10,000
    assert win.chat.messages[-1].text.startswith("message 9999:")
    assert win.chat.messages[-1].meta_label.text() == "9 tokens"
    # Scrolling to the top builds the page before, a chunk per turn again.
    with LoopTurns(win) as turns:
        win.chat.verticalScrollBar().setValue(0)
        qtbot.waitUntil(lambda: len(win.chat.messages) == 2 * page, timeout=3000)
    assert 0 < turns.most_per_turn <= CHUNK
    assert win.chat.messages[0].text.startswith(f"message {10_000 - 2 * page}:")
    win.close()


def test_a_damaged_stored_row_never_stops_the_app(qtbot, home) -> None:
    first = make_window(qtbot, home)
    conv = first.store.create_conversation("", "m")
    first.store.add_message(conv, "user", "hello")
    first.store.add_message(conv, "assistant", "hi", timings={"generated_tokens": 2})
    first.store.add_message(conv, "user", "and then")
    first.open_conversation(conv)
    first.close()
    db = sqlite3.connect(db_path(home))
    db.execute("UPDATE messages SET timings = '{broken' WHERE role = 'assistant'")
    db.execute("UPDATE messages SET content = X'616E64FF' WHERE content = 'and then'")
    db.commit()
    db.close()

    win = make_window(qtbot, home)  # reopens that conversation at start
    texts = [m.text for m in win.chat.messages]
    assert texts == ["hello", "hi", "and\ufffd"]  # bytes, not text: read with a marker
    assert win.chat.messages[1].meta_label.text() == ""  # its timings were unreadable
    win.new_chat_action.trigger()
    assert win.chat.messages == [] and win.input.isEnabled()
    win.close()


def test_records_read_like_the_old_dicts() -> None:
    from engine.events import GenerationResult, Step, TopToken

    step = Step(0, 5, "a", "a", 0.5, [TopToken(5, "a", 0.5)], 0.01, request_id=3)
    assert step["top"] == [{"token_id": 5, "text": "a", "prob": 0.5}]
    assert json.loads(json.dumps(step.to_dict()))["request_id"] == 3
    ok = GenerationResult("a", [5], 1, 1, 0.1, 0.1, 1.0, "eos")
    assert "error" not in ok and "text" in ok and ok["token_ids"] == [5]
    failed = GenerationResult.failed(3, "no model")
    assert failed["error"] == "no model" and failed.get("stop_reason") == "error"
    with pytest.raises(AttributeError):
        ok.text = "changed"  # frozen
