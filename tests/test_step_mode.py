"""Step mode through the real window: one token per click, the sampler's stages on show, the same
tokens as normal generation, and the awkward moments (no model, mid-reply, fast clicks, Stop,
Send, new chat, unload) handled."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from desktop.store.conversations import ConversationStore
from tests.window_helpers import ask, branch_to_row, greedy, load, make_window

PROMPT = "Hello loop"


@pytest.fixture
def win(qtbot, home: Path, tiny_model_dir: Path):
    window = make_window(qtbot, home)
    load(qtbot, window, tiny_model_dir)
    greedy(window, 8)
    window.sampling.system_prompt.setPlainText("")
    yield window
    window.close()


def click_next(qtbot, win) -> list:
    """Click Next token, wait until the reply is paused again (or ended); the tokens shown."""
    shown: list = []
    win.token_shown.connect(shown.append)
    ended: list = []
    win.reply_finished.connect(ended.append)
    with qtbot.waitSignal(win.step_mode.shown, timeout=60_000):
        qtbot.mouseClick(win.step_mode.next_token_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.controller.paused is not None or bool(ended), timeout=60_000)
    # The pause reaches the controller and the session (which saves the reply) as two queued
    # calls posted together: let the second run too before the test looks at the disk.
    QApplication.processEvents()
    win.token_shown.disconnect(shown.append)
    win.reply_finished.disconnect(ended.append)
    return shown


def step_reply(qtbot, win, text: str, n: int) -> list[int]:
    """Type `text` and click Next token `n` times; the reply's token ids."""
    win.step_mode.action.setChecked(True)
    win.input.setPlainText(text)
    for i in range(n):
        shown = click_next(qtbot, win)
        assert len(shown) == 1, f"click {i + 1} showed {len(shown)} tokens"
        assert len(win.session.reply.steps) == i + 1
    return [s.token_id for s in win.session.reply.steps]


def normal_reply(qtbot, win, text: str) -> list[int]:
    win.new_chat_action.trigger()
    return ask(qtbot, win, text)["token_ids"]


def test_each_click_adds_exactly_one_token_saved_and_without_reprefill(qtbot, home, win) -> None:
    prefills: list = []
    win.prefill_shown.connect(prefills.append)
    win.step_mode.action.setChecked(True)
    assert win.step_mode.next_token_button.isVisible() and win.step_mode.view.isVisible()
    win.input.setPlainText(PROMPT)
    store = ConversationStore(home / "home" / "data" / "conversations.sqlite3")
    for i in range(5):
        shown = click_next(qtbot, win)
        assert len(shown) == 1 and shown[0].index == i
        reply = win.session.reply
        assert len(reply.steps) == i + 1
        assert win.chat.card(reply).text == "".join(s.text for s in reply.steps)
        assert len(store.get_steps(reply.message_id)) == i + 1  # saved as it grows
        if i == 0:
            after_first = len(prefills)
            assert win.input.toPlainText() == ""  # the message was sent
    assert len(prefills) == after_first  # later clicks read no prompt again: one decode each
    assert win.stop_button.isEnabled() and win.step_mode.continue_button.isEnabled()
    store.close()


@pytest.mark.parametrize("seeded", [False, True])
def test_stepping_picks_what_generation_picks(qtbot, win, seeded: bool) -> None:
    n = 8
    if seeded:
        s = win.sampling
        s.temperature.setValue(1.2)
        s.top_k.setValue(50)
        s.top_p.setValue(0.9)
        s.min_p.setValue(0.02)
        s.repetition_penalty.setValue(1.1)
        s.seed.setText("1234")
        s.seed.editingFinished.emit()
    stepped = step_reply(qtbot, win, PROMPT, n - 1)
    with qtbot.waitSignal(win.reply_finished, timeout=60_000) as done:
        click_next(qtbot, win)  # the n-th click reaches max new tokens and ends the reply
    stepped = done.args[0]["token_ids"]
    assert len(stepped) == n and done.args[0]["stop_reason"] == "max_tokens"
    reply = win.session.turns[-1]
    assert reply.stats == f"{n} tokens · step by step"  # no tok/s: the speed was the clicking
    saved = win.store.get_conversation(win.conversation_id).messages[-1]
    assert saved.timings.get("stepped") == 1 and not saved.damaged
    assert normal_reply(qtbot, win, PROMPT) == stepped


def test_stage_view_shows_every_stage_summing_to_one(qtbot, win) -> None:
    s = win.sampling
    s.temperature.setValue(0.8)
    s.top_k.setValue(20)
    s.top_p.setValue(0.9)
    s.min_p.setValue(0.05)
    s.seed.setText("7")
    s.seed.editingFinished.emit()
    win.step_mode.action.setChecked(True)
    win.input.setPlainText(PROMPT)
    with qtbot.waitSignal(win.step_mode.shown, timeout=60_000) as shown:
        win.step_mode.next_action.trigger()
    stages = shown.args[0]
    view = win.step_mode.view
    keys = ["model", "penalty", "temperature", "top_k", "top_p", "min_p"]
    assert [st.key for st in stages.stages] == keys
    assert view.tree.topLevelItemCount() == 6
    displayed = view.shown_rows()
    for stage in stages.stages:
        assert sum(r.prob for r in stage.rows) + stage.rest == pytest.approx(1.0, abs=1e-5)
        rows = displayed[stage.key]
        percents = [float(p.rstrip("%").lstrip("<")) for _, p in rows]
        assert sum(percents) == pytest.approx(100.0, abs=0.1 * len(rows) + 0.1)
    assert stages.stages[3].survivors == 20
    assert stages.token_id == win.session.reply.steps[0].token_id
    assert "landed" in view.pick.text() and view.draw_bar.isVisible()


def test_readable_at_800x600_in_dark_theme(qtbot, win) -> None:
    from PySide6.QtWidgets import QApplication

    from desktop.theme import apply_theme

    app = QApplication.instance()
    apply_theme(app, "dark")
    try:
        win.resize(800, 600)
        step_reply(qtbot, win, PROMPT, 1)
        view = win.step_mode.view
        qtbot.waitUntil(lambda: view.tree.width() > 0)
        assert view.width() >= 240 and view.tree.height() >= 150  # room was made for it
        # the token and p columns are both in sight, and a stage header is not cut short
        assert view.tree.columnWidth(0) >= 120 and view.tree.columnWidth(1) >= 40
        head = view.tree.topLevelItem(3)
        assert head.isFirstColumnSpanned()
        metrics = view.tree.fontMetrics()
        assert metrics.horizontalAdvance(head.text(0)) < view.tree.viewport().width()
        text = view.palette().color(view.palette().ColorRole.WindowText)
        base = view.palette().color(view.palette().ColorRole.Base)
        assert text.lightness() - base.lightness() > 120  # light text on a dark base
        button = win.step_mode.next_token_button
        assert button.isVisible() and button.width() >= button.sizeHint().width()
    finally:
        apply_theme(app, "light")


def test_next_token_without_a_model_says_what_to_do(qtbot, home) -> None:
    window = make_window(qtbot, home)
    window.input.setPlainText(PROMPT)
    with qtbot.waitSignal(window.error_shown, timeout=5000) as shown:
        window.step_mode.next_action.trigger()
    assert "No model" in shown.args[0] and "open a model" in shown.args[0]
    assert not window.controller.busy and window.history == []
    window.close()


def test_next_token_during_a_reply_pauses_it_and_continue_finishes_it(qtbot, win) -> None:
    greedy(win, 60)
    with qtbot.waitSignal(win.token_shown, timeout=60_000):
        win.send(PROMPT)
    win.step_mode.next_action.trigger()  # pause after the token in flight
    qtbot.waitUntil(lambda: win.controller.paused is not None, timeout=60_000)
    had = len(win.session.reply.steps)
    assert click_next(qtbot, win) and len(win.session.reply.steps) == had + 1
    with qtbot.waitSignal(win.reply_finished, timeout=60_000) as done:
        qtbot.mouseClick(win.step_mode.continue_button, Qt.MouseButton.LeftButton)
    paused_and_resumed = done.args[0]["token_ids"]
    assert len(paused_and_resumed) == 60 or done.args[0]["stop_reason"] == "eos"
    assert normal_reply(qtbot, win, PROMPT) == paused_and_resumed


def test_fast_clicks_each_get_one_token(qtbot, win) -> None:
    win.step_mode.action.setChecked(True)
    win.input.setPlainText(PROMPT)
    shown: list = []
    win.token_shown.connect(shown.append)
    for _ in range(6):
        qtbot.mouseClick(win.step_mode.next_token_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(shown) >= 6 and win.controller.paused is not None, timeout=60_000)
    qtbot.wait(200)
    assert len(shown) == 6 and len(win.session.reply.steps) == 6
    assert [s.index for s in shown] == list(range(6))


def test_stop_send_and_new_chat_end_a_paused_reply_saved(qtbot, home, win) -> None:
    step_reply(qtbot, win, PROMPT, 3)
    first = win.conversation_id
    with qtbot.waitSignal(win.reply_finished, timeout=60_000) as done:
        qtbot.mouseClick(win.stop_button, Qt.MouseButton.LeftButton)
    assert done.args[0]["stop_reason"] == "cancelled" and done.args[0]["generated_tokens"] == 3
    assert win.controller.paused is None and not win.controller.busy
    messages = win.store.get_conversation(first).messages
    assert [m.role for m in messages] == ["user", "assistant"] and messages[-1].finished

    # Send while paused: the paused reply ends as it is, then the new message gets its answer.
    win.input.setPlainText("and then?")
    win.step_mode.next_action.trigger()  # starts a stepped reply to "and then?"
    qtbot.waitUntil(lambda: win.controller.paused is not None, timeout=60_000)
    win.input.setPlainText("never mind")
    results: list = []
    win.reply_finished.connect(results.append)
    qtbot.keyClick(win.input, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: len(results) == 2, timeout=60_000)
    assert results[0]["stop_reason"] == "cancelled" and results[0]["generated_tokens"] == 1
    assert "error" not in results[1] and results[1]["generated_tokens"] > 0
    assert [t["role"] for t in win.history] == ["user", "assistant"] * 3

    # New chat while paused: the reply is saved (stopped) in its own conversation.
    step_reply(qtbot, win, "one more", 2)
    paused_in = win.conversation_id
    with qtbot.waitSignal(win.reply_finished, timeout=60_000) as done:
        win.new_chat_action.trigger()
    assert done.args[0]["generated_tokens"] == 2 and win.conversation_id != paused_in
    assert win.store.get_conversation(paused_in).messages[-1].finished
    assert win.step_mode.view.stages is None  # the panel no longer shows the old chat's step


def test_unloading_the_model_ends_a_paused_reply(qtbot, win) -> None:
    step_reply(qtbot, win, PROMPT, 2)
    with qtbot.waitSignal(win.reply_finished, timeout=60_000) as done:
        win.unload_model()
    assert done.args[0]["stop_reason"] == "cancelled"
    qtbot.waitUntil(lambda: win.model_info is None, timeout=10_000)
    with qtbot.waitSignal(win.error_shown, timeout=5000) as shown:
        win.step_mode.next_action.trigger()
    assert "No model" in shown.args[0]


def test_an_inspection_while_paused_is_refused_and_the_reply_continues_intact(qtbot, win) -> None:
    greedy(win, 10)
    step_reply(qtbot, win, PROMPT, 3)
    notices: list[str] = []
    win.error_shown.connect(notices.append)
    win.surprisal.action.setChecked(True)  # would overwrite the paused reply's KV cache
    qtbot.waitUntil(lambda: not win.surprisal.enabled, timeout=30_000)
    assert any("paused in step mode" in n for n in notices)
    with qtbot.waitSignal(win.reply_finished, timeout=60_000) as done:
        win.step_mode.action.setChecked(False)  # leaving step mode finishes the reply as usual
    resumed = done.args[0]["token_ids"]
    assert len(resumed) == 10 or done.args[0]["stop_reason"] == "eos"
    assert normal_reply(qtbot, win, PROMPT) == resumed


def test_the_click_that_picks_end_of_sequence_ends_the_reply(qtbot, home) -> None:
    """The shipped model ends its greedy replies: the last click shows the end-of-sequence pick,
    adds no token, and the reply ends (saved, finished)."""
    window = make_window(qtbot, home)
    load(qtbot, window, "builtin")
    greedy(window, 80)
    window.sampling.system_prompt.setPlainText("")
    window.step_mode.action.setChecked(True)
    window.input.setPlainText("What does the word harbour mean?")
    ended: list = []
    window.reply_finished.connect(ended.append)
    for _ in range(80):
        shown = click_next(qtbot, window)
        if ended:
            break
        assert len(shown) == 1
    assert ended and ended[0]["stop_reason"] == "eos", "the built-in model did not end its reply"
    assert shown == []  # the end-of-sequence pick adds no token
    stages = window.step_mode.view.stages
    assert stages.is_eos and "end of sequence" in window.step_mode.view.pick.text()
    assert "ended" in window.step_mode.view.status.text()
    reply = window.store.get_conversation(window.conversation_id).messages[-1]
    assert reply.role == "assistant" and reply.finished and reply.stop_reason == "eos"
    assert reply.content == ended[0]["text"]
    assert window.controller.paused is None and not window.controller.busy
    window.close()


def test_next_token_while_a_model_loads_waits_for_it(qtbot, win, tiny_model_dir) -> None:
    win.input.setPlainText(PROMPT)
    with qtbot.waitSignal(win.model_ready, timeout=120_000):
        win.load_model(str(tiny_model_dir))
        with qtbot.waitSignal(win.error_shown, timeout=5000) as shown:
            win.step_mode.next_action.trigger()  # the load has only been queued
        assert "still loading" in shown.args[0]
        assert not win.controller.busy and win.history == []
    win.step_mode.action.setChecked(True)
    assert click_next(qtbot, win)  # once loaded, it steps


# -- step mode meets branches: a paused reply is a reply like any other -------------------


def stored_reply(home: Path, win):
    with ConversationStore(home / "home" / "data" / "conversations.sqlite3") as store:
        return store.get_conversation(win.conversation_id, all_versions=True).messages


def test_regenerate_after_stopping_a_paused_reply_keeps_it_as_a_version(qtbot, home, win) -> None:
    stepped = step_reply(qtbot, win, PROMPT, 3)
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
    stepped = step_reply(qtbot, win, PROMPT, 3)
    win.step_mode.action.setChecked(False)
    card = [c for c in win.chat.messages if c.role == "assistant"][-1]
    card.set_token_view(True)
    card.token_clicked.emit(card, 1)
    rows = win.topk.shown_rows()
    row = next(i for i, r in enumerate(rows) if not r[3])
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as done:
        branch_to_row(qtbot, win, row)
    assert "error" not in done.args[0]
    qtbot.waitUntil(lambda: not win.controller.busy and win.controller.paused is None)
    shown = stored_reply(home, win)
    branch = [m for m in shown if m.role == "assistant" and m.steps and len(m.steps) != 3]
    assert branch, "the branch was not saved"
    assert branch[-1].steps[0].token_id == stepped[0]
    assert branch[-1].steps[1].token_id == rows[row][0]


def test_a_token_clicked_in_the_stage_panel_branches_and_keeps_stepping(qtbot, home, win) -> None:
    stepped = step_reply(qtbot, win, PROMPT, 3)
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
