"""Step mode meets branches: a reply paused between clicks is a reply like any other, so
Regenerate and a click on another token end it (saved) and make a new version from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from desktop.store import ConversationStore
from tests.test_step_mode import click_next
from tests.window_helpers import greedy, load, make_window


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture
def win(qtbot, home: Path, tiny_model_dir: Path):
    window = make_window(qtbot, home)
    load(qtbot, window, tiny_model_dir)
    greedy(window, 8)
    window.sampling.system_prompt.setPlainText("")
    yield window
    window.close()


def paused_reply(qtbot, win, clicks: int) -> list[int]:
    win.step_mode.action.setChecked(True)
    win.input.setPlainText("Hello loop")
    for _ in range(clicks):
        assert len(click_next(qtbot, win)) == 1
    assert win.controller.paused is not None
    return [s.token_id for s in win.session.reply.steps]


def stored_reply(home: Path, win):
    with ConversationStore(home / "home" / "data" / "conversations.sqlite3") as store:
        return store.get_conversation(win.conversation_id, all_versions=True).messages


def test_regenerate_after_stopping_a_paused_reply_keeps_it_as_a_version(qtbot, home, win) -> None:
    stepped = paused_reply(qtbot, win, 3)
    assert not win.regenerate_action.isEnabled()  # a reply is still open: Stop or Continue first
    with qtbot.waitSignal(win.reply_finished, timeout=60_000):
        win.stop_action.trigger()
    win.step_mode.action.setChecked(False)
    assert win.regenerate_action.isEnabled()
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as done:
        win.regenerate_action.trigger()
    assert "error" not in done.args[0]
    qtbot.waitUntil(lambda: not win.controller.busy and win.controller.paused is None)
    messages = stored_reply(home, win)
    assert [m.role for m in messages] == ["user", "assistant", "assistant"]
    kept = [m for m in messages if m.role == "assistant" and len(m.steps) == 3]
    assert kept and [s.token_id for s in kept[0].steps] == stepped
    card = [c for c in win.chat.messages if c.role == "assistant"][-1]
    assert card.version_label.text() == "2/2"


def test_an_alternative_clicked_on_a_paused_reply_branches_from_it(qtbot, home, win) -> None:
    stepped = paused_reply(qtbot, win, 3)
    win.step_mode.action.setChecked(False)
    card = [c for c in win.chat.messages if c.role == "assistant"][-1]
    card.set_token_view(True)
    card.token_clicked.emit(card, 1)
    rows = win.topk.shown_rows()
    row = next(i for i, r in enumerate(rows) if not r[3])
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as done:
        point = win.topk.row_rect(row).center().toPoint()
        qtbot.mouseClick(win.topk, Qt.MouseButton.LeftButton, pos=point)
    assert "error" not in done.args[0]
    qtbot.waitUntil(lambda: not win.controller.busy and win.controller.paused is None)
    shown = stored_reply(home, win)
    branch = [m for m in shown if m.role == "assistant" and m.steps and len(m.steps) != 3]
    assert branch, "the branch was not saved"
    assert branch[-1].steps[0].token_id == stepped[0]
    assert branch[-1].steps[1].token_id == rows[row][0]


def test_a_token_clicked_in_the_stage_panel_branches_and_keeps_stepping(qtbot, home, win) -> None:
    stepped = paused_reply(qtbot, win, 3)
    stages = win.step_mode.view.stages
    others = [r.token_id for s in stages.stages for r in s.rows if r.token_id != stages.token_id]
    assert others, "the panel lists no alternative"
    win.step_mode.view.choose(stages.token_id)  # the pick itself: nothing happens
    assert win.controller.paused is not None and len(win.session.reply.steps) == 3
    shown: list = []
    win.token_shown.connect(shown.append)
    win.step_mode.view.choose(others[0])
    # The paused reply is stopped (kept), the new version pauses after the taken token.
    qtbot.waitUntil(lambda: win.controller.paused is not None and len(shown) == 1, timeout=60_000)
    win.token_shown.disconnect(shown.append)
    reply = win.session.reply
    assert [s.token_id for s in reply.steps] == [*stepped[:2], others[0]]
    assert "instead" in win.step_mode.view.status.text() and win.step_mode.view.stages is None
    card = [c for c in win.chat.messages if c.role == "assistant"][-1]
    assert card.version_label.text() == "2/2"
    assert len(click_next(qtbot, win)) == 1  # Next token goes on from the new version
    assert [s.token_id for s in win.session.reply.steps][:3] == [*stepped[:2], others[0]]
    messages = stored_reply(home, win)
    assert [s.token_id for s in messages[1].steps] == stepped  # the first version, kept whole
