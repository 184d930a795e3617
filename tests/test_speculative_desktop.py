"""Speculative decoding in the real window: the setting, the marks in the reply's Tokens view
(drafted tokens underlined, rejected guesses struck out with p and q), step mode's account of
each check, the stats line, and the marks kept by the store and by an export."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from desktop.store.conversations import ConversationStore
from desktop.store.schema import MIGRATIONS
from desktop.views.chat_view import DRAFTED, REJECTED, MessageWidget
from engine.events import DraftCheck, Step, TopToken
from tests.window_helpers import ask, greedy, load, make_window


@pytest.fixture
def win(qtbot, home: Path, tiny_gqa_hf_dir: Path):
    window = make_window(qtbot, home)
    load(qtbot, window, tiny_gqa_hf_dir)
    window.sampling.system_prompt.setPlainText("")
    yield window
    window.close()


def choose_draft(qtbot, win, spec: str, k: int = 3) -> None:
    with qtbot.waitSignal(win.controller.draft_ready, timeout=60_000):
        win.sampling.draft.k.setValue(k)
        win.sampling.draft.set_spec(spec)


def sample(win, n: int, seed: int) -> None:
    s = win.sampling
    s.temperature.setValue(1.0)
    s.top_k.setValue(0)
    s.top_p.setValue(1.0)
    s.min_p.setValue(0.0)
    s.repetition_penalty.setValue(1.0)
    s.max_new_tokens.setValue(n)
    s.seed.setText(str(seed))
    s.seed.editingFinished.emit()


def last_card(win) -> MessageWidget:
    # Probabilities a float32 column keeps exactly (the store packs top-k as float32).
    return [c for c in win.findChildren(MessageWidget) if c.role == "assistant"][-1]


def fragments(card: MessageWidget, prop: int) -> list[tuple[str, str]]:
    """(text, tooltip) of the card's text fragments carrying `prop`."""
    out = []
    block = card.body.document().begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            frag = it.fragment()
            if frag.isValid() and frag.charFormat().property(prop):
                out.append((frag.text(), frag.charFormat().toolTip()))
            it += 1
        block = block.next()
    return out


def test_greedy_reply_is_the_same_with_a_draft(qtbot, win, tiny_hf_dir) -> None:
    greedy(win, 24)
    plain = ask(qtbot, win, "Hello loop")
    win.new_chat_action.trigger()
    choose_draft(qtbot, win, str(tiny_hf_dir))
    fast = ask(qtbot, win, "Hello loop")
    assert fast["token_ids"] == plain["token_ids"]
    assert fast.draft is not None and fast.draft.proposed > 0
    assert "draft" in win.session.turns[-1].stats


def test_drafted_and_rejected_tokens_are_marked_and_kept(qtbot, win, tiny_hf_dir, home) -> None:
    choose_draft(qtbot, win, str(tiny_hf_dir))
    sample(win, 40, seed=5)
    result = ask(qtbot, win, "Hello loop")
    steps = win.session.turns[-1].steps
    drafted = [s for s in steps if s.drafted]
    rejected = [s for s in steps if s.check is not None and not s.check.accepted]
    assert drafted and rejected, result.draft
    card = last_card(win)
    card.set_token_view(True)
    marked = fragments(card, DRAFTED)
    struck = fragments(card, REJECTED)
    assert len(marked) == len([s for s in drafted if s.text])
    assert [t for t, _ in struck] == [s.check.proposed_text for s in rejected]
    assert all("p = " in tip and "q = " in tip and "rejected" in tip for _, tip in struck)
    assert all("kept" in tip for _, tip in marked)
    # The struck-out guesses are not part of the reply.
    assert card.text == result["text"]
    assert "draft" in card.meta_label.text() and "accepted" in card.meta_label.text()

    # Reopened from the store (as after a restart), the marks are still there.
    cid = win.conversation_id
    win.new_chat_action.trigger()
    with qtbot.waitSignal(win.opener.ready, timeout=30_000):
        win.open_conversation(cid)
    turn = win.session.turns[-1]
    kept = turn.steps
    assert [s.drafted for s in kept] == [s.drafted for s in steps]
    assert [s.check for s in kept] == [s.check for s in steps]
    assert kept is not steps  # read back from the store, not the reply's own list


def test_step_mode_shows_each_check(qtbot, win, tiny_hf_dir) -> None:
    from tests.test_step_mode import click_next

    choose_draft(qtbot, win, str(tiny_hf_dir), k=4)
    sample(win, 30, seed=11)
    win.step_mode.action.setChecked(True)
    win.input.setPlainText("Hello loop")
    seen = {"accepted": 0, "rejected": 0}
    for _ in range(30):
        if (
            win.controller.paused is None
            and win.session.reply is not None
            and len(win.session.reply.steps)
            and not win.controller.busy
        ):
            break
        click_next(qtbot, win)
        reply = win.session.reply
        if reply is None or not reply.steps:
            break
        step = reply.steps[-1]
        view = win.step_mode.view
        if step.check is None:
            assert view.draft.isHidden()
            continue
        text = view.draft.text()
        assert view.draft.isVisible()
        assert f"p = {step.check.p:.3f}" in text and f"q = {step.check.q:.3f}" in text
        assert f"u = {step.check.u:.3f}" in text
        if step.check.accepted:
            seen["accepted"] += 1
            assert "accepted" in text
        else:
            seen["rejected"] += 1
            assert "rejected" in text
            head = view.tree.topLevelItem(0)
            assert head.text(0).startswith("Residual")
            rows = [head.child(i).text(0) for i in range(head.childCount())]
            assert any(r.startswith("▶") for r in rows) or len(rows) == len(step.check.residual)
        if seen["accepted"] and seen["rejected"]:
            break
    assert seen["accepted"] and seen["rejected"], seen
    win.stop_action.trigger()


def test_a_draft_with_another_vocabulary_is_turned_off_with_the_reason(
    qtbot, win, tmp_path, home
) -> None:
    from tests.fixtures.models import random_llama, write_hf
    from tests.fixtures.tokenizer import train_tokenizer

    tok = train_tokenizer(tmp_path / "tok", vocab_size=384)
    write_hf(random_llama(kv_heads=2, seed=9, vocab=384), tmp_path / "other", tok, False)
    with qtbot.waitSignal(win.error_shown, timeout=60_000) as shown:
        win.sampling.draft.set_spec(str(tmp_path / "other"))
    assert "Speculative decoding is off" in shown.args[0]
    assert "same tokenizer" in shown.args[0]
    assert win.sampling.draft.spec == ""
    assert win.settings.value("speculative/draft") == ""
    # The chat still works, without a draft.
    greedy(win, 4)
    assert ask(qtbot, win, "Hello").draft is None


def test_the_setting_is_kept_across_a_restart(qtbot, home, tiny_gqa_hf_dir) -> None:
    first = make_window(qtbot, home)
    first.sampling.draft.k.setValue(6)
    first.sampling.draft.set_spec("lookup")
    first.close()
    again = make_window(qtbot, home)
    assert again.sampling.draft.spec == "lookup"
    assert again.sampling.draft.k.value() == 6
    assert again.sampling.draft.combo.currentText() == "Prompt lookup"
    again.close()


def _drafted_steps() -> list[Step]:
    check = DraftCheck(7, "ab", 0.25, 0.5, False, 0.75, [TopToken(9, "cd", 0.6)], "model")
    ok = DraftCheck(8, "ef", 0.5, 0.4, True, 0.2, [], "model")
    return [
        Step(0, 9, "cd", "cd", 0.375, [TopToken(9, "cd", 0.375)], check=check),
        Step(1, 8, "ef", "ef", 0.5, [TopToken(8, "ef", 0.5)], drafted=True, check=ok),
        Step(2, 5, "g", "g", 0.875, [TopToken(5, "g", 0.875)]),
    ]


def test_the_store_and_an_export_keep_the_marks(tmp_path) -> None:
    steps = _drafted_steps()
    with ConversationStore(tmp_path / "c.sqlite3") as store:
        cid = store.create_conversation(title="t")
        store.add_message(cid, "user", "hi")
        mid = store.add_message(cid, "assistant", "", finished=False)
        store.append_steps(mid, steps, "cdefg")
        assert store.get_steps(mid) == steps
        exported = store.export_json(cid)
    text = json.dumps(exported)
    with ConversationStore(tmp_path / "d.sqlite3") as other:
        new_id = other.import_json(json.loads(text))
        message = other.get_conversation(new_id).messages[-1]
        assert [s.drafted for s in message.steps] == [False, True, False]
        assert [s.check for s in message.steps] == [s.check for s in steps]


def test_a_version_4_database_gains_the_draft_column(tmp_path) -> None:
    path = tmp_path / "old.sqlite3"
    with ConversationStore(path) as store:
        cid = store.create_conversation(title="t")
        mid = store.add_message(cid, "assistant", "x", finished=False)
        store.append_steps(mid, _drafted_steps()[2:], "g")
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE steps DROP COLUMN draft")
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    with ConversationStore(path) as store:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        (step,) = store.get_steps(mid)
        assert (step.token_id, step.text, step.drafted, step.check) == (5, "g", False, None)
    QApplication.processEvents()


def test_a_damaged_mark_loses_the_mark_not_the_token(tmp_path) -> None:
    path = tmp_path / "c.sqlite3"
    with ConversationStore(path) as store:
        cid = store.create_conversation(title="t")
        mid = store.add_message(cid, "assistant", "x", finished=False)
        store.append_steps(mid, _drafted_steps(), "cdefg")
        store._db.execute("UPDATE steps SET draft = '{not json' WHERE idx = 1")
        store._db.commit()
        got = store.get_steps(mid)
    assert [s.token_id for s in got] == [9, 8, 5]
    assert not got[1].drafted and got[1].check is None
    assert got[0].check is not None


def test_stop_mid_reply_and_a_draft_chosen_mid_reply(qtbot, win, tiny_hf_dir) -> None:
    """Stop while a speculative reply streams keeps what was shown; a draft chosen meanwhile
    applies from the next reply on, and the chat goes on."""
    choose_draft(qtbot, win, "lookup")
    greedy(win, 400)
    first: list = []
    win.token_shown.connect(lambda step: first.append(step) or (len(first) == 3 and win.stop()))
    win.input.setPlainText("Hello loop")
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as done:
        qtbot.keyClick(win.input, Qt.Key.Key_Return)
        win.sampling.draft.set_spec(str(tiny_hf_dir))  # queued behind the running reply
    result = done.args[0]
    assert result["stop_reason"] == "cancelled"
    assert 3 <= len(result["token_ids"]) < 400
    assert win.session.turns[-1].content == result["text"]
    qtbot.waitUntil(lambda: win.sampling.draft.spec == str(tiny_hf_dir))
    greedy(win, 8)
    after = ask(qtbot, win, "Hello again")
    assert after.draft is not None and after.draft.kind == "model"
