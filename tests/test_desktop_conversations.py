"""Conversations in the real window: saved as they happen, reopened, searched, exported."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor

from desktop.store.conversations import ConversationStore
from tests.window_helpers import ask, load, make_window
from tests.window_helpers import greedy as _greedy


def test_conversations_survive_a_restart(qtbot, home: Path, tiny_model_dir: Path) -> None:
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    greedy(win)
    first = ask(qtbot, win, "Hello there loop")
    second = ask(qtbot, win, "And the cache?")
    win.new_chat()
    third = ask(qtbot, win, "Another topic entirely")
    assert win.conversations.titles() == ["Another topic entirely", "Hello there loop"]
    win.close()

    again = make_window(qtbot, home)
    # The last open conversation reopens, without a model loaded.
    assert [m.text for m in again.chat.messages if m.role == "user"] == ["Another topic entirely"]
    assert again.conversations.titles() == ["Another topic entirely", "Hello there loop"]
    old_id = again.conversations.ids()[1]
    again.open_conversation(old_id)
    texts = [(m.role, m.text) for m in again.chat.messages]
    assert texts == [
        ("user", "Hello there loop"),
        ("assistant", first["text"]),
        ("user", "And the cache?"),
        ("assistant", second["text"]),
    ]
    assert third["text"] != ""
    # The token inspector works on a reply saved in an earlier session.
    reply = again.chat.messages[1]
    assert [s["token_id"] for s in reply.steps] == first["token_ids"]
    qtbot.mouseClick(reply.tokens_button, Qt.MouseButton.LeftButton)
    index = next(i for i, s in enumerate(reply.steps) if s["text"].strip())
    offset = sum(len(s["text"]) for s in reply.steps[:index]) + 1
    cursor = QTextCursor(reply.body.document())
    cursor.setPosition(offset)
    with qtbot.waitSignal(reply.token_clicked, timeout=5000):
        qtbot.mouseClick(
            reply.body.viewport(),
            Qt.MouseButton.LeftButton,
            pos=reply.body.cursorRect(cursor).center(),
        )
    assert [r[0] for r in again.topk.shown_rows()] == [
        t["token_id"] for t in reply.steps[index]["top"]
    ][: again.topk.k]
    again.close()


def test_search_rename_delete_export_import(qtbot, home: Path, tiny_model_dir: Path) -> None:
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    greedy(win, 6)
    ask(qtbot, win, "Cats are great")
    cats = win.conversation_id
    win.new_chat()
    ask(qtbot, win, "Dogs are loyal")
    dogs = win.conversation_id

    win.conversations.search.setText("cats")
    qtbot.waitUntil(lambda: win.conversations.ids() == [cats], timeout=3000)
    win.conversations.search.setText("")
    qtbot.waitUntil(lambda: len(win.conversations.ids()) == 2, timeout=3000)

    win.rename_conversation(cats, "Felines")
    assert "Felines" in win.conversations.titles()

    md_path, json_path = home / "cats.md", home / "cats.json"
    win.export_conversation(cats, md_path, "md")
    win.export_conversation(cats, json_path, "json")
    assert md_path.read_text().startswith("# Felines")
    assert "Cats are great" in md_path.read_text()
    exported = json.loads(json_path.read_text())
    assert exported["messages"][1]["steps"]

    win.delete_conversation(dogs)
    assert win.conversations.ids() == [cats]
    assert win.banner.action.text() == "Undo"
    qtbot.mouseClick(win.banner.action, Qt.MouseButton.LeftButton)
    assert set(win.conversations.ids()) == {cats, dogs}

    imported = win.import_conversation(json_path)
    assert imported is not None and imported not in (cats, dogs)
    assert win.conversation_id == imported
    assert [m.text for m in win.chat.messages] == [m["content"] for m in exported["messages"]]
    bad = home / "bad.json"
    bad.write_text('{"format": "something else"}')
    assert win.import_conversation(bad) is None
    assert "not a Loopchat conversation" in win.banner.label.text()
    win.close()


def test_edit_changes_nothing_until_sent(qtbot, home: Path, tiny_model_dir: Path) -> None:
    """Defect 2: Edit puts the message in the message box; Esc restores; only Send replaces."""
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    greedy(win, 5)
    ask(qtbot, win, "first question")
    ask(qtbot, win, "second question")
    saved = ConversationStore(home / "home" / "data" / "conversations.sqlite3")
    before = [(m.role, m.content) for m in saved.get_conversation(win.conversation_id).messages]
    history = win.history
    first_user = win.chat.messages[0]
    win.input.setPlainText("a draft I was typing")
    qtbot.mouseClick(first_user.edit_button, Qt.MouseButton.LeftButton)
    # Nothing changed yet: not on screen, not in the history, not on disk.
    assert len(win.chat.messages) == 4 and win.history == history
    assert [(m.role, m.content) for m in saved.get_conversation(win.conversation_id).messages] == (
        before
    )
    assert win.input.toPlainText() == "first question"
    win.input.setPlainText("changed my mind")
    qtbot.keyClick(win.input, Qt.Key.Key_Escape)
    assert win.input.toPlainText() == "a draft I was typing"  # the draft is back
    assert first_user.text == "first question" and win.history == history

    qtbot.mouseClick(first_user.edit_button, Qt.MouseButton.LeftButton)
    win.input.setPlainText("edited question")
    with qtbot.waitSignal(win.reply_finished, timeout=120_000):
        qtbot.keyClick(win.input, Qt.Key.Key_Return)
    messages = saved.get_conversation(win.conversation_id).messages
    assert [(m.role, m.content) for m in messages][0] == ("user", "edited question")
    assert len(messages) == 2 and [m.role for m in win.chat.messages] == ["user", "assistant"]
    assert win.history[0] == {"role": "user", "content": "edited question"}
    assert win.input.toPlainText() == "a draft I was typing"
    # Regenerate adds a version of the last reply: the shown path stays two turns long.
    with qtbot.waitSignal(win.reply_finished, timeout=60_000):
        win.regenerate_action.trigger()
    assert len(saved.get_conversation(win.conversation_id).messages) == 2
    win.close()


def test_corrupt_database_is_reported_and_app_works(qtbot, home: Path) -> None:
    data = home / "home" / "data"
    data.mkdir(parents=True)
    (data / "conversations.sqlite3").write_bytes(b"garbage" * 1000)
    win = make_window(qtbot, home)
    assert win.banner.isVisible()
    assert "moved to" in win.banner.label.text()
    assert list(data.glob("conversations.sqlite3.unreadable-*"))
    assert win.conversations.ids() == []
    win.close()


def greedy(win, n: int = 10) -> None:
    _greedy(win, n)
