"""Rough edges a new user hits in the first hour (issue 16), driven through the real window."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from tests.window_helpers import ask, greedy, load, make_window


def _wheel(widget, steps: int = 1) -> None:
    """One real wheel notch (or `steps`) over the middle of `widget`."""
    centre = QPointF(widget.rect().center())
    event = QWheelEvent(
        centre,
        QPointF(widget.mapToGlobal(QPoint(int(centre.x()), int(centre.y())))),
        QPoint(0, 0),
        QPoint(0, -120 * steps),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)


def test_wheel_does_not_change_an_unfocused_number_box(qtbot, home: Path) -> None:
    win = make_window(qtbot, home)
    box = win.sampling.top_k
    box.setValue(40)
    win.input.setFocus()
    assert not box.hasFocus()
    _wheel(box)
    assert box.value() == 40
    for other in (win.sampling.temperature, win.sampling.max_new_tokens):
        before = other.value()
        _wheel(other)
        assert other.value() == before
    box.setFocus()  # clicked or tabbed into: the wheel is the user's intent
    qtbot.waitUntil(box.hasFocus, timeout=2000)
    _wheel(box)
    assert box.value() == 39
    win.close()


def test_regenerate_is_disabled_when_there_is_nothing_to_regenerate(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    greedy(win, 3)
    assert not win.regenerate_button.isEnabled() and not win.regenerate_action.isEnabled()
    ask(qtbot, win, "Hello")
    assert win.regenerate_button.isEnabled() and win.regenerate_action.isEnabled()
    win.new_chat_action.trigger()
    assert not win.regenerate_button.isEnabled() and not win.regenerate_action.isEnabled()
    # A reply that answers no user message (an imported chat, say): nothing to ask again, and
    # Ctrl+R must not delete it.
    lone = win.store.create_conversation(title="Only a reply")
    win.store.add_message(lone, "assistant", "I speak first.")
    with qtbot.waitSignal(win.opener.ready, timeout=10_000):
        win.open_conversation(lone)
    assert win.conversation_id == lone
    assert not win.regenerate_action.isEnabled()
    win.regenerate_action.trigger()
    assert win.history == [{"role": "assistant", "content": "I speak first."}]
    win.close()


def test_status_bar_is_cleared_on_new_chat_and_unload(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    greedy(win, 4)
    ask(qtbot, win, "Hello")
    assert (
        "tok/s" in win.status_line.speed_label.text()
        and "context" in win.status_line.context_label.text()
    )
    win.new_chat_action.trigger()
    assert win.status_line.speed_label.text() == "" and win.status_line.context_label.text() == ""
    ask(qtbot, win, "Hello again")
    assert "tok/s" in win.status_line.speed_label.text()
    with qtbot.waitSignal(win.controller.worker.model_unloaded, timeout=10_000):
        win.unload_model()
    qtbot.waitUntil(lambda: win.model_info is None, timeout=5000)
    assert win.status_line.speed_label.text() == "" and win.status_line.context_label.text() == ""
    assert win.status_line.device_label.text() == ""
    win.close()


def test_theme_is_chosen_in_the_view_menu_applied_and_kept(qtbot, home: Path) -> None:
    from PySide6.QtGui import QPalette

    app = QApplication.instance()
    style, palette, sheet = app.style().name(), app.palette(), app.styleSheet()
    try:
        win = make_window(qtbot, home)
        assert win.menus.theme_actions["system"].isChecked()
        win.menus.theme_actions["dark"].trigger()
        assert app.palette().color(QPalette.ColorRole.Window).lightness() < 80
        assert win.settings.value("view/theme") == "dark"
        win.close()
        again = make_window(qtbot, home)  # the same settings file: the next start
        assert again.menus.theme_actions["dark"].isChecked()
        again.menus.theme_actions["light"].trigger()
        assert app.palette().color(QPalette.ColorRole.Window).lightness() > 200
        again.close()
        from PySide6.QtCore import QSettings

        kept = QSettings(str(home / "loopchat.ini"), QSettings.Format.IniFormat)
        assert kept.value("view/theme") == "light"
    finally:
        app.setStyle(style)
        app.setPalette(palette)
        app.setStyleSheet(sheet)


@pytest.mark.parametrize("fmt", ["md", "json"])
def test_export_suggests_a_name_and_adds_the_extension(
    qtbot, home: Path, monkeypatch, fmt: str
) -> None:
    from PySide6.QtWidgets import QFileDialog

    win = make_window(qtbot, home)
    cid = win.store.create_conversation(title='Plans: "Q3" / budget?')
    win.store.add_message(cid, "user", "What next?")
    asked = {}

    def save_dialog(_parent, _caption, suggested, filters, *_args, **_kw):
        asked["suggested"], asked["filters"] = suggested, filters
        return str(home / "my export"), filters  # the user typed a name without extension

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_dialog)
    (action,) = [
        a
        for a in win.menuBar().actions()[0].menu().actions()
        if "Export" in a.text() and ("Markdown" if fmt == "md" else "JSON") in a.text()
    ]
    with qtbot.waitSignal(win.opener.ready, timeout=10_000):
        win.open_conversation(cid)
    action.trigger()
    assert Path(asked["suggested"]).name == f"Plans Q3 budget.{fmt}"
    written = home / f"my export.{fmt}"
    assert written.is_file() and "What next?" in written.read_text(encoding="utf-8")
    assert not (home / "my export").exists()
    win.close()


def test_topk_panel_shows_every_row_and_says_why_the_choice_is_not_the_top(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    from desktop.views.topk_panel import percent
    from engine.events import SamplingParams

    assert SamplingParams().repetition_penalty == 1.0  # off by default: greedy looks greedy
    assert percent(0.0004) == "<0.1%" and percent(0.5) == "50.0%" and percent(0.0) == "0.0%"
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    greedy(win, 12)
    win.sampling.report_top.setValue(20)
    win.sampling.repetition_penalty.setValue(2.0)  # strong enough to overrule the top row
    win.resize(900, 600)
    steps = []
    win.token_shown.connect(steps.append)
    ask(qtbot, win, "Hello Hello Hello")
    overruled = [s for s in steps if s.top and s.top[0].token_id != s.token_id]
    assert overruled, "the penalty never changed a greedy choice on this model"
    win.topk.show_step(overruled[-1])
    win.topk.flush_now()
    assert len(win.topk.shown_rows()) == 20
    assert win.topk.minimumHeight() > win.topk.parentWidget().height()  # all rows: it scrolls
    assert "repetition penalty" in win.topk._subtitle
    win.close()


def test_reading_a_long_message_is_shown_before_the_tokens(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    greedy(win, 3)
    win.controller.worker._engine.prefill_chunk = 16  # several chunks from a short prompt
    seen: list[tuple[int, int, str]] = []

    def record(progress) -> None:
        card = win.chat.card(win.session.reply)
        seen.append((progress.done, progress.total, card.status_label.text()))

    win.prefill_shown.connect(record)
    ask(qtbot, win, "one two three four five six seven eight nine ten eleven twelve")
    assert len(seen) >= 2, seen
    dones = [done for done, _total, _text in seen]
    assert dones == sorted(dones) and dones[-1] == seen[-1][1]
    done, total, text = seen[0]
    assert text == f"Reading your message… {done} / {total} tokens"
    last = win.chat.messages[-1]
    assert not last.status_label.isVisible() and last.body.isVisible()
    assert "Reading" not in last.meta_label.text()
    win.close()


def _cut_off(label, card) -> str:
    """Why `label` does not show all its text inside `card` ("" if it does)."""
    if label.wordWrap():
        if label.height() < label.heightForWidth(label.width()):
            return f"{label.height()} px tall, needs {label.heightForWidth(label.width())}"
    elif label.width() < label.sizeHint().width():
        return f"{label.width()} px wide, needs {label.sizeHint().width()}"
    right = label.mapTo(card, label.rect().topRight()).x()
    if right > card.contentsRect().right():
        return f"ends at x={right}, past the card's edge {card.contentsRect().right()}"
    return ""


@pytest.mark.parametrize("size", [(800, 600), (1400, 900)])
def test_reading_progress_is_not_cut_off_in_the_reply_card(
    qtbot, home: Path, tiny_model_dir: Path, size: tuple[int, int]
) -> None:
    from PySide6.QtCore import QEvent
    from PySide6.QtWidgets import QLabel

    from desktop.views.window_layout import split_sizes

    win = make_window(qtbot, home)
    win.resize(*size)
    win.splitter.setSizes(split_sizes(size[0]))
    load(qtbot, win, tiny_model_dir)
    greedy(win, 2)
    win.controller.worker._engine.prefill_chunk = 4
    problems: list[str] = []

    def check(_progress) -> None:
        QApplication.sendPostedEvents(None, QEvent.Type.LayoutRequest)  # the relayout, now
        card = win.chat.card(win.session.reply)
        (label,) = [
            w
            for w in card.findChildren(QLabel)
            if w.isVisible() and w.text().startswith("Reading your message…")
        ]
        problems.append(_cut_off(label, card))

    win.prefill_shown.connect(check)
    ask(qtbot, win, "one two three four five six seven eight nine ten eleven twelve thirteen")
    assert problems and not any(problems), problems
    win.close()


def test_context_counter_never_passes_the_maximum() -> None:
    from desktop.views.window_layout import context_text

    assert context_text(257, 256) == "context 256 / 256"
    assert context_text(100, 256, dropped=2) == "context 100 / 256 · 2 earlier turns left out"


def test_keyboard_search_rename_delete_with_undo(qtbot, home: Path, monkeypatch) -> None:
    from PySide6.QtWidgets import QInputDialog

    win = make_window(qtbot, home)
    cid = win.store.create_conversation(title="Old name")
    win.store.add_message(cid, "user", "hi")
    with qtbot.waitSignal(win.opener.ready, timeout=10_000):
        win.open_conversation(cid)
    win.menus.search_action.trigger()
    qtbot.waitUntil(win.conversations.search.hasFocus, timeout=2000)
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("New name", True))
    win.menus.rename_action.trigger()
    assert win.conversations.titles() == ["New name"]
    win.conversations.items.setFocus()
    qtbot.waitUntil(win.conversations.items.hasFocus, timeout=2000)
    qtbot.keyClick(win.conversations.items, Qt.Key.Key_Delete)
    assert win.conversations.ids() == []
    assert win.banner.action.text() == "Undo"
    win.banner.action.click()
    assert win.conversations.ids() == [cid]
    win.close()


def test_messages_are_written_for_the_app() -> None:
    from desktop.app_text import for_the_app
    from engine.front_door import EngineError, Remedy

    text = for_the_app(
        EngineError("no folder or cached Hub model named a/b", Remedy.DOWNLOAD, repo_id="a/b")
    )
    assert "python -m" not in text and "Models → Choose or download a model…" in text
    assert text.startswith("No folder")
    gated = for_the_app(EngineError("x is gated", Remedy.LOG_IN, page="u"))
    assert "--token" not in gated and "Token field" in gated
    assert for_the_app("Could not open the model. the file is bad") == (
        "Could not open the model. The file is bad"
    )


def test_about_shows_the_version_and_exceptions_reach_the_log(home: Path, monkeypatch) -> None:
    import logging
    import sys

    from desktop.app import log_unhandled_exceptions
    from desktop.version import app_version

    assert app_version() == "0.1.0" or app_version()[0].isdigit()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    monkeypatch.setattr(sys, "excepthook", lambda *a: None)
    try:
        log_unhandled_exceptions()
        try:
            raise ValueError("boom in a slot")
        except ValueError:
            sys.excepthook(*sys.exc_info())
    finally:
        logging.getLogger().removeHandler(handler)
    assert any(r.exc_info and "boom in a slot" in str(r.exc_info[1]) for r in records)


def test_typing_shows_the_cost_and_a_too_long_reply_is_warned(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    win = make_window(qtbot, home)
    info = load(qtbot, win, tiny_model_dir)
    win.input.setPlainText("How long is this message in tokens, roughly?")
    hint = win.input_hint.text()
    assert hint.startswith("≈ ") and f"of {info.max_context} left" in hint
    win.input.clear()
    assert win.input_hint.text() == ""
    win.sampling.max_new_tokens.setValue(info.max_context + 10)
    assert win.sampling.warning.isVisible()
    assert str(info.max_context) in win.sampling.warning.text()
    win.sampling.max_new_tokens.setValue(16)
    assert not win.sampling.warning.isVisible()
    assert win.minimumWidth() <= 800 and win.minimumHeight() <= 600
    win.close()


def test_conversation_list_groups_by_day(qtbot, home: Path) -> None:
    import time

    from desktop.views.conversation_list import group_of

    now = time.time()
    assert group_of(now, now) == "Today"
    assert group_of(now - 86400, now) == "Yesterday"
    assert group_of(now - 9 * 86400, now) == "Earlier"
    win = make_window(qtbot, home)
    cid = win.store.create_conversation(title="Fresh")
    win.store.add_message(cid, "user", "hi")
    win.refresh_conversations()
    assert win.conversations.headings() == ["Today"]
    assert win.conversations.ids() == [cid] and win.conversations.titles() == ["Fresh"]
    heading = win.conversations.items.item(0)
    assert not heading.flags() & Qt.ItemFlag.ItemIsSelectable
    win.close()


def test_copy_says_copied_then_returns(qtbot) -> None:
    from PySide6.QtGui import QGuiApplication

    from desktop.views.chat_view import COPIED_FEEDBACK_MS, MessageWidget

    card = MessageWidget("assistant", "some reply text")
    qtbot.addWidget(card)
    qtbot.mouseClick(card.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == "some reply text"
    assert card.copy_button.text() == "Copied"
    qtbot.waitUntil(lambda: card.copy_button.text() == "Copy", timeout=COPIED_FEEDBACK_MS + 2000)


def test_right_click_keeps_the_highlight_on_the_open_chat(qtbot) -> None:
    import time
    from types import SimpleNamespace

    from PySide6.QtCore import QTimer

    from desktop.views.conversation_list import ConversationList

    now = time.time()
    convs = [SimpleNamespace(id=i, title=f"chat {i}", updated_at=now - i) for i in (1, 2, 3)]
    view = ConversationList()
    qtbot.addWidget(view)
    view.show()
    view.show_conversations(convs, current=2)
    assert view.current_id() == 2
    other = next(r for r in view._rows() if r.data(Qt.ItemDataRole.UserRole) == 3)
    view.items.setCurrentItem(other)  # what a right-click press does to the current row
    QTimer.singleShot(50, lambda: QApplication.activePopupWidget().close())
    view._menu(view.items.visualItemRect(other).center())
    assert view.current_id() == 2


def test_undo_banner_goes_when_the_deleted_chat_is_purged(qtbot, home: Path) -> None:
    """After the undo window the chat is purged: an Undo that can no longer undo must go too."""
    win = make_window(qtbot, home)
    win.library.undo_window_s = 0.3
    first = win.store.create_conversation(title="First")
    win.store.add_message(first, "user", "one")
    second = win.store.create_conversation(title="Second")
    win.store.add_message(second, "user", "two")
    win.refresh_conversations()
    win.delete_conversation(first)
    assert win.banner.isVisible() and win.banner.action.text() == "Undo"
    qtbot.waitUntil(lambda: not win.banner.isVisible(), timeout=5000)
    assert first not in [c.id for c in win.store.list_conversations()]
    win.store.restore_conversation(first)  # purged: nothing left to bring back
    assert first not in [c.id for c in win.store.list_conversations()]

    # A later message is not hidden on behalf of an earlier deletion's expiry.
    win.delete_conversation(second)
    win.show_error("Something else happened.", kind="notice")
    qtbot.wait(1200)
    assert win.banner.isVisible() and win.banner.label.text() == "Something else happened."
    win.close()


def _editing(card) -> bool:
    return bool(card.property("editing"))


def test_edit_shows_what_it_does_and_esc_cancels(qtbot, home: Path, tiny_model_dir: Path) -> None:
    """Edit visibly starts an edit (text in the box, focused, a notice, the card marked)."""
    from desktop.views.message_edit import BUSY_NOTICE, EDITING_NOTICE

    win = make_window(qtbot, home)
    win.resize(800, 600)
    load(qtbot, win, tiny_model_dir)
    greedy(win, 4)
    for text in ("first question", "second question", "third question"):
        ask(qtbot, win, text)
    first = win.chat.messages[0]
    bar = win.chat.verticalScrollBar()
    bar.setValue(bar.maximum())
    at_the_end = bar.value()
    assert at_the_end > 0  # the first card is out of view
    qtbot.mouseClick(first.edit_button, Qt.MouseButton.LeftButton)
    assert win.input.toPlainText() == "first question"
    qtbot.waitUntil(win.input.hasFocus, timeout=2000)
    assert win.banner.isVisible() and win.banner.label.text() == EDITING_NOTICE
    assert _editing(first) and not _editing(win.chat.messages[2])
    # The card being edited is scrolled into view.
    qtbot.waitUntil(
        lambda: (
            win.chat.viewport()
            .rect()
            .contains(first.mapTo(win.chat.viewport(), first.rect().topLeft()))
        ),
        timeout=2000,
    )

    # Esc cancels wherever the focus is (it is also Stop, which has nothing to stop).
    win.chat.setFocus()
    win.stop_action.trigger()
    assert win.input.toPlainText() == "" and not _editing(first)
    assert not win.banner.isVisible()
    assert bar.value() == at_the_end  # back where the reader was

    # The notice's Cancel button cancels too; switching chats cancels.
    qtbot.mouseClick(first.edit_button, Qt.MouseButton.LeftButton)
    assert win.banner.action.text() == "Cancel"
    qtbot.mouseClick(win.banner.action, Qt.MouseButton.LeftButton)
    assert win.input.toPlainText() == "" and not _editing(first)
    qtbot.mouseClick(first.edit_button, Qt.MouseButton.LeftButton)
    win.new_chat_action.trigger()
    assert win.input.toPlainText() == "" and not win.message_edit.active

    # While a reply is written, Edit says why it cannot edit and changes nothing.
    greedy(win, 200)
    win.input.setPlainText("a long answer please")
    qtbot.keyClick(win.input, Qt.Key.Key_Return)
    card = win.chat.messages[0]
    assert win.controller.busy
    qtbot.mouseClick(card.edit_button, Qt.MouseButton.LeftButton)
    assert win.banner.label.text() == BUSY_NOTICE and not win.message_edit.active
    assert win.input.toPlainText() == ""
    with qtbot.waitSignal(win.reply_finished, timeout=60_000):
        win.stop_action.trigger()
    assert win.history[0] == {"role": "user", "content": "a long answer please"}
    win.close()


def test_a_long_model_name_never_widens_the_chat_past_the_window(qtbot, home: Path) -> None:
    """At 800×600 the chat column is ~400 px: a card's header must fit it (the name elides)."""
    from desktop.views.window_layout import split_sizes

    win = make_window(qtbot, home)
    win.resize(800, 600)
    win.splitter.setSizes(split_sizes(800))
    name = "Built-in: Loopchat dictionary (a rather long model name)"
    for _ in range(6):  # enough for a vertical scrollbar, which narrows the column further
        win.chat.add_message("user", "A question of a few words")
        card = win.chat.add_message("assistant", "", author=name)
        card.finish("An answer. " * 8, "20 tokens · 15.9 tok/s")
    qtbot.waitUntil(lambda: win.chat.verticalScrollBar().maximum() > 0, timeout=2000)
    qtbot.wait(50)
    assert win.chat.widget().width() <= win.chat.viewport().width()
    assert win.chat.horizontalScrollBar().maximum() == 0
    copy = card.copy_button
    assert copy.mapTo(win.chat.viewport(), copy.rect().topRight()).x() < win.chat.viewport().width()
    assert card.author_label.toolTip() == name  # the whole name is still there, on hover
    stats = card.meta_label
    assert stats.isVisible() and stats.width() >= stats.sizeHint().width()  # stats in full
    win.close()


def test_settings_and_status_bar_keep_their_news_at_800_and_1400(qtbot, home: Path) -> None:
    """Narrow: no field wraps under its label alone, the download figure comes first and the
    status bar's labels stay inside the window. Tall: the fields pack at the top."""
    from desktop.app import apply_look
    from desktop.views.window_layout import split_sizes

    app = QApplication.instance()
    sheet = app.styleSheet()
    apply_look(app)  # the app's own paddings decide what fits
    try:
        _check_narrow_and_tall(qtbot, home, split_sizes)
    finally:
        app.setStyleSheet(sheet)


def _check_narrow_and_tall(qtbot, home: Path, split_sizes) -> None:
    win = make_window(qtbot, home)
    win.resize(800, 600)
    win.splitter.setSizes(split_sizes(800))
    win.status_line.download(
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0", {"fraction": 0.74, "line": "4.8 MB / 6.5 MB"}
    )
    qtbot.wait(50)
    s = win.sampling
    form = s.layout()
    for field in (s.temperature, s.top_k, s.max_new_tokens, s.report_top):
        label = form.labelForField(field)
        assert abs(label.geometry().center().y() - field.geometry().center().y()) < 8, label.text()
    label = win.status_line.download_label
    assert label.text().startswith("Downloading 74% · ")
    bar = win.statusBar()
    for child in (win.status_line.model_label, label, win.status_line.device_label):
        assert child.mapTo(bar, child.rect().topRight()).x() <= bar.width(), child.text()

    win.resize(1400, 900)
    win.side.setSizes([100, 800])
    qtbot.wait(50)
    gap = s.top_k.geometry().top() - s.temperature.geometry().bottom()
    assert gap < s.temperature.height(), gap  # packed, not spread over the pane
    win.close()


def test_an_empty_chat_with_the_built_in_model_says_what_to_ask_it(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    """The built-in model answers dictionary questions only; say so before a new user's
    "Hello" gets an invented definition, and say where the bigger models are."""
    win = make_window(qtbot, home)
    load(qtbot, win, Path("builtin"))
    intro = win.chat._placeholder
    assert intro.isVisible()
    assert "built-in model" in intro.text() and "Choose or download a model" in intro.text()
    load(qtbot, win, tiny_model_dir)
    assert "built-in model" not in intro.text()
    win.close()


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_banner_suits_the_theme(qtbot, home: Path, theme: str) -> None:
    """A light yellow notice glared in a dark window; its text and ✕ stay readable in both."""
    from desktop.app import apply_look
    from desktop.theme import apply_theme

    app = QApplication.instance()
    style, palette, sheet = app.style().name(), app.palette(), app.styleSheet()
    try:
        apply_look(app)
        apply_theme(app, theme)
        win = make_window(qtbot, home)
        win.show_error("Something to know.", kind="notice")
        qtbot.wait(50)
        image = win.banner.grab().toImage()
        background = image.pixelColor(4, image.height() // 2).lightness()
        text = win.banner.label.palette().color(win.banner.label.foregroundRole()).lightness()
        if theme == "dark":
            assert background < 90, background
        else:
            assert background > 200, background
        assert abs(background - text) > 120, (background, text)
        win.close()
    finally:
        app.setStyle(style)
        app.setPalette(palette)
        app.setStyleSheet(sheet)
