"""Branches through the real window (issue 15): a click on another token in the top-k panel
continues the reply from it, Regenerate adds a version, `‹ ›` switches versions, and all of it is
saved, survives a restart, exports and imports back. Also: imported chats are marked (issue 16).

Every test drives the real MainWindow with the tiny model in the real worker thread.
"""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import Qt

from desktop.store.conversations import ConversationStore
from tests.window_helpers import ask, branch_to_row, greedy, load, make_window


def db_path(home: Path) -> Path:
    return home / "home" / "data" / "conversations.sqlite3"


def open_window(qtbot, home: Path, model: Path, tokens: int = 8):
    win = make_window(qtbot, home)
    load(qtbot, win, model)
    greedy(win, tokens)
    return win


def reply_card(win):
    return [c for c in win.chat.messages if c.role == "assistant"][-1]


def click_alternative(qtbot, win, step: int) -> tuple[int, list]:
    """Inspect token `step` of the last reply (as a click on it in Tokens view does), then click
    the panel's first row that is not the chosen token. Returns (its token id, the steps shown
    while the branch streamed)."""
    card = reply_card(win)
    card.set_token_view(True)
    card.token_clicked.emit(card, step)
    rows = win.topk.shown_rows()
    row = next(i for i, r in enumerate(rows) if not r[3])
    shown: list = []
    win.token_shown.connect(shown.append)
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as done:
        branch_to_row(qtbot, win, row)
    win.token_shown.disconnect(shown.append)
    assert "error" not in done.args[0]
    return rows[row][0], shown, done.args[0]


def test_a_branch_from_an_alternative_streams_is_saved_and_survives_a_restart(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    win = open_window(qtbot, home, tiny_model_dir)
    first = ask(qtbot, win, "Tell me about loops")
    assert first["generated_tokens"] >= 4, "the tiny model should write a few tokens"
    old_card = reply_card(win)
    old_steps = list(old_card.steps)
    old_history = win.history

    alternative, shown, result = click_alternative(qtbot, win, 2)
    # It streamed, starting with the clicked token as step 3 of the reply.
    assert shown and (shown[0].index, shown[0].token_id) == (2, alternative)
    # Only the last position of the shared prefix was read again (KV cache reused).
    assert result.reused_tokens == result.prompt_tokens - 1
    card = reply_card(win)
    assert card is not old_card and card.version_label.text() == "2/2"
    assert card.prev_version_button.isVisible() and card.prev_version_button.isEnabled()
    assert not card.next_version_button.isEnabled()
    branch_history = win.history
    assert branch_history[0] == old_history[0] and branch_history[1] != old_history[1]
    assert branch_history[1]["content"] == result.text

    # Saved: the shown path holds the branch, whose first tokens are the old reply's.
    with ConversationStore(db_path(home)) as store:
        saved = store.get_conversation(win.conversation_id).messages
        every = store.get_conversation(win.conversation_id, all_versions=True).messages
    assert [(m.role, m.content) for m in saved] == [(t["role"], t["content"]) for t in win.history]
    assert [s.token_id for s in saved[1].steps[:3]] == [
        old_steps[0]["token_id"],
        old_steps[1]["token_id"],
        alternative,
    ]
    assert (saved[1].version, saved[1].versions) == (2, 2) and len(every) == 3
    conversation_id = win.conversation_id
    win.close()

    # A restart shows the same version, and `‹` brings back the first one.
    again = open_window(qtbot, home, tiny_model_dir)
    assert again.conversation_id == conversation_id and again.history == branch_history
    card = reply_card(again)
    assert card.version_label.text() == "2/2"
    qtbot.mouseClick(card.prev_version_button, Qt.MouseButton.LeftButton)
    assert again.history == old_history
    assert reply_card(again).version_label.text() == "1/2"
    assert [s["token_id"] for s in reply_card(again).steps] == [s["token_id"] for s in old_steps]

    # The conversation continues from the version shown.
    ask(qtbot, again, "And then?")
    assert again.history[:2] == old_history and len(again.history) == 4
    with ConversationStore(db_path(home)) as store:
        saved = store.get_conversation(conversation_id).messages
    assert [m.content for m in saved] == [t["content"] for t in again.history]
    assert saved[2].parent_id == saved[1].id and saved[1].content == old_history[1]["content"]
    # `›` on the first reply goes back to the branch, which has no later turns.
    first_reply = [c for c in again.chat.messages if c.role == "assistant"][0]
    assert first_reply.version_label.text() == "1/2"
    qtbot.mouseClick(first_reply.next_version_button, Qt.MouseButton.LeftButton)
    assert again.history == branch_history
    again.close()


def test_regenerate_adds_a_version_rather_than_overwriting(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    win = open_window(qtbot, home, tiny_model_dir)
    win.sampling.temperature.setValue(1.5)  # sampled: the new version may differ
    ask(qtbot, win, "Say something")
    first = win.history
    with qtbot.waitSignal(win.reply_finished, timeout=120_000):
        qtbot.mouseClick(win.regenerate_button, Qt.MouseButton.LeftButton)
    second = win.history
    assert reply_card(win).version_label.text() == "2/2"
    with ConversationStore(db_path(home)) as store:
        every = store.get_conversation(win.conversation_id, all_versions=True).messages
    assert [m.role for m in every] == ["user", "assistant", "assistant"]
    assert {every[1].content, every[2].content} == {first[1]["content"], second[1]["content"]}
    qtbot.mouseClick(reply_card(win).prev_version_button, Qt.MouseButton.LeftButton)
    assert win.history == first
    with qtbot.waitSignal(win.reply_finished, timeout=120_000):
        win.regenerate_action.trigger()
    assert reply_card(win).version_label.text() == "3/3"
    win.close()


def test_an_alternative_clicked_while_a_reply_streams_stops_it_then_branches(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    win = open_window(qtbot, home, tiny_model_dir, tokens=200)
    picked: list[tuple[int, int]] = []

    def click_on_second_token(step) -> None:
        if step.index == 1 and not picked:
            win.topk.flush_now()
            token_id = next(r[0] for r in win.topk.shown_rows() if not r[3])
            picked.append((step.index, token_id))
            win.topk.choose(token_id)

    win.token_shown.connect(click_on_second_token)
    results: list = []
    win.reply_finished.connect(results.append)
    win.input.setPlainText("A long answer please")
    qtbot.keyClick(win.input, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: len(results) == 2, timeout=120_000)
    win.token_shown.disconnect(click_on_second_token)
    stopped, branch = results
    assert stopped.stop_reason == "cancelled" and stopped.generated_tokens < 200
    assert "error" not in branch and picked
    with ConversationStore(db_path(home)) as store:
        reply = store.get_conversation(win.conversation_id).messages[-1]
    assert (reply.version, reply.versions) == (2, 2)
    assert reply.steps[1].token_id == picked[0][1]
    assert not win.controller.busy and win.send_button.isEnabled()
    win.close()


def test_markdown_exports_the_shown_path_and_json_every_branch(
    qtbot, home: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    win = open_window(qtbot, home, tiny_model_dir)
    ask(qtbot, win, "Export me")
    old = win.history[1]["content"]
    click_alternative(qtbot, win, 1)
    new = win.history[1]["content"]
    assert new != old
    conversation_id = win.conversation_id

    win.export_conversation(conversation_id, tmp_path / "c.md", "md")
    markdown = (tmp_path / "c.md").read_text(encoding="utf-8")
    assert new in markdown and old not in markdown and "version 2 of 2" in markdown

    win.export_conversation(conversation_id, tmp_path / "c.json", "json")
    exported = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    assert [(m["role"], m["parent"], m["shown"]) for m in exported["messages"]] == [
        ("user", None, True),
        ("assistant", 0, False),
        ("assistant", 0, True),
    ]
    assert [m["content"] for m in exported["messages"][1:]] == [old, new]

    # Imported back: every version is there, the same one shown, and the chat is marked.
    copy = win.import_conversation(tmp_path / "c.json")
    assert copy is not None and copy != conversation_id and win.conversation_id == copy
    assert win.history == [{"role": "user", "content": "Export me"}] + [
        {"role": "assistant", "content": new}
    ]
    assert reply_card(win).version_label.text() == "2/2"
    assert win.conversations.imported() == [copy]
    with ConversationStore(db_path(home)) as store:
        again = store.export_json(copy)
        listed = {c.id: c for c in store.list_conversations()}
    assert again["messages"] == exported["messages"]
    assert listed[copy].imported_at is not None and listed[conversation_id].imported_at is None
    row = next(
        win.conversations.items.item(i)
        for i in range(win.conversations.items.count())
        if win.conversations.items.item(i).data(Qt.ItemDataRole.UserRole) == copy
    )
    assert "Imported from a file on" in row.toolTip()
    win.close()


def test_edit_sends_a_new_version_and_the_old_question_keeps_its_replies(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    win = open_window(qtbot, home, tiny_model_dir, tokens=5)
    ask(qtbot, win, "first question")
    ask(qtbot, win, "second question")
    old_history = win.history
    first_user = win.chat.messages[0]
    qtbot.mouseClick(first_user.edit_button, Qt.MouseButton.LeftButton)
    win.input.setPlainText("edited question")
    with qtbot.waitSignal(win.reply_finished, timeout=120_000):
        qtbot.keyClick(win.input, Qt.Key.Key_Return)
    edited_history = win.history
    assert [t["content"] for t in edited_history][0] == "edited question"
    assert len(edited_history) == 2
    user_card = win.chat.messages[0]
    assert user_card.version_label.isVisible() and user_card.version_label.text() == "2/2"
    with ConversationStore(db_path(home)) as store:
        every = store.get_conversation(win.conversation_id, all_versions=True).messages
    assert len(every) == 6  # nothing deleted: the first question and its two turns stay
    conversation_id = win.conversation_id
    win.close()

    # After a restart `‹` on the question brings back the old one and everything after it.
    again = open_window(qtbot, home, tiny_model_dir)
    assert again.conversation_id == conversation_id and again.history == edited_history
    qtbot.mouseClick(again.chat.messages[0].prev_version_button, Qt.MouseButton.LeftButton)
    assert again.history == old_history
    assert again.chat.messages[0].version_label.text() == "1/2"
    again.close()
