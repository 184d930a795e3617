"""Issue 26 (first-hour UX, round 3): the conversation list from the keyboard, Tab out of the
system prompt and visible focus, the settings pane's note and layout, room for the chat beside
the attention dock, and the system prompt's two levels (this chat / new chats) with presets.

Keyboard checks drive real key events; layout checks run with the app's style sheet in both
themes at 800×600 and 1180×760.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QInputDialog

from tests.window_helpers import make_window

SIZES = ((800, 600), (1180, 760))


@pytest.fixture(params=["light", "dark"])
def themed(request):
    """The app's style sheet and palette in one theme (restored afterwards)."""
    from desktop.app import apply_look
    from desktop.theme import apply_theme

    app = QApplication.instance()
    sheet, palette = app.styleSheet(), app.palette()
    apply_look(app)
    apply_theme(app, request.param)
    yield request.param
    app.setStyleSheet(sheet)
    app.setPalette(palette)


def _two_chats(qtbot, win) -> tuple[int, int]:
    """Two saved conversations, the newer one open (so it is listed first)."""
    older = win.store.create_conversation(title="Older chat")
    win.store.add_message(older, "user", "first")
    newer = win.store.create_conversation(title="Newer chat")
    win.store.add_message(newer, "user", "second")
    with qtbot.waitSignal(win.opener.ready, timeout=10_000):
        win.open_conversation(newer)
    return older, newer


def _focus_list_on(qtbot, win, conv_id: int) -> None:
    """Focus the list and move its highlight with the arrow keys onto `conv_id`."""
    items = win.conversations.items
    items.setFocus()
    qtbot.waitUntil(items.hasFocus, timeout=2000)
    for _ in range(items.count()):
        if win.conversations.current_id() == conv_id:
            return
        qtbot.keyClick(items, Qt.Key.Key_Down)
    assert win.conversations.current_id() == conv_id


# -- 4. the conversation list from the keyboard ----------------------------------------------


@pytest.mark.parametrize("key", [Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space])
def test_enter_or_space_opens_the_highlighted_chat(qtbot, home: Path, key) -> None:
    win = make_window(qtbot, home)
    older, newer = _two_chats(qtbot, win)
    _focus_list_on(qtbot, win, older)
    assert win.conversation_id == newer  # moving the highlight opens nothing
    with qtbot.waitSignal(win.opener.ready, timeout=10_000):
        qtbot.keyClick(win.conversations.items, key)
    assert win.conversation_id == older
    assert [m.text for m in win.chat.messages] == ["first"]
    win.close()


def test_f2_and_delete_act_on_the_highlighted_chat(qtbot, home: Path, monkeypatch) -> None:
    win = make_window(qtbot, home)
    older, newer = _two_chats(qtbot, win)
    asked = []

    def answer(_parent, _title, _label, text=""):
        asked.append(text)
        return "Renamed older", True

    monkeypatch.setattr(QInputDialog, "getText", answer)
    _focus_list_on(qtbot, win, older)
    qtbot.keyClick(win.conversations.items, Qt.Key.Key_F2)
    assert asked == ["Older chat"]
    titles = dict(zip(win.conversations.ids(), win.conversations.titles(), strict=True))
    assert titles == {newer: "Newer chat", older: "Renamed older"}
    assert win.conversation_id == newer

    _focus_list_on(qtbot, win, older)
    qtbot.keyClick(win.conversations.items, Qt.Key.Key_Delete)
    assert win.conversations.ids() == [newer]
    assert win.conversation_id == newer  # the open chat stays open
    assert win.banner.action.text() == "Undo"
    win.banner.action.click()
    assert set(win.conversations.ids()) == {older, newer}

    # Outside the list, F2 still renames the open chat.
    win.input.setFocus()
    qtbot.waitUntil(win.input.hasFocus, timeout=2000)
    asked.clear()
    qtbot.keyClick(win.input, Qt.Key.Key_F2)
    assert asked == ["Newer chat"]
    win.close()


# -- 7. the settings pane: the note's rule and wording, nothing overlapping --------------------


def test_max_new_tokens_note_is_about_room_after_the_prompt() -> None:
    from desktop.views.input_hint import max_tokens_warning

    assert max_tokens_warning(256, 512) == ""  # half the context: the fitter keeps that for it
    assert max_tokens_warning(200, None) == ""  # no model yet
    note = max_tokens_warning(512, 512)
    assert "more than" not in note and "(512)" in note and "about 256" in note
    assert max_tokens_warning(300, 512) != ""


def _settings_pane_widgets(win) -> list:
    """The visible widgets the settings pane lays out (headings, labels, fields, buttons)."""
    box, sampling = win.sampling.prompt_box, win.sampling
    pane = sampling.parentWidget()
    containers = (pane, box, sampling)
    found = []
    for container in containers:
        for child in container.children():
            if (
                child in containers
                or not hasattr(child, "isVisibleTo")
                or not child.isWidgetType()
                or not child.isVisibleTo(win)
            ):
                continue
            top_left = child.mapTo(pane, child.rect().topLeft())
            found.append((child, child.rect().translated(top_left)))
    return found


def _overlaps(win) -> list[str]:
    widgets = _settings_pane_widgets(win)
    bad = []
    for i, (a, ra) in enumerate(widgets):
        for b, rb in widgets[i + 1 :]:
            if ra.intersects(rb):
                name = lambda w: f"{type(w).__name__}({getattr(w, 'text', lambda: '')()!r})"  # noqa: E731
                bad.append(f"{name(a)} {ra} overlaps {name(b)} {rb}")
    return bad


def test_settings_pane_has_no_overlaps(qtbot, home: Path, themed, tiny_model_dir) -> None:
    from desktop.views.window_layout import split_sizes
    from engine.events import Step, TopToken
    from tests.window_helpers import load

    win = make_window(qtbot, home)
    info = load(qtbot, win, tiny_model_dir)
    win.sampling.max_new_tokens.setValue(info.max_context)
    assert win.sampling.warning.isVisibleTo(win)
    assert "more than" not in win.sampling.warning.text()
    win.sampling.system_prompt.setPlainText("You are a careful, helpful assistant. " * 4)
    win.sampling.prompt_box.save_preset("A preset with a long name for the box")
    win.sampling.prompt_box.make_default()
    # A full top-k list above the settings leaves them the least height.
    win.topk.set_k(10)
    top = [TopToken(i, f" word{i}", 0.1) for i in range(10)]
    win.topk.show_step(Step(index=0, token_id=0, text=" word0", piece="▁word0", prob=0.1, top=top))
    win.topk.flush_now()
    for width, height in SIZES:
        win.resize(width, height)
        win.splitter.setSizes(split_sizes(width))
        qtbot.wait(60)
        where = f"{themed} {width}×{height}"
        assert len(_settings_pane_widgets(win)) > 15
        assert _overlaps(win) == [], where
        # Nothing cut off on the right: the pane is no wider than the panel showing it.
        assert _fully_shown(win.sampling.parentWidget(), across_only=True), where
    win.close()


# -- 5. Tab leaves the system prompt; focused buttons show it ---------------------------------


def test_tab_and_shift_tab_leave_the_system_prompt(qtbot, home: Path) -> None:
    win = make_window(qtbot, home)
    editor = win.sampling.system_prompt
    for key, modifier in (
        (Qt.Key.Key_Tab, Qt.KeyboardModifier.NoModifier),
        (Qt.Key.Key_Backtab, Qt.KeyboardModifier.ShiftModifier),
    ):
        editor.setPlainText("Be brief.")
        editor.setFocus()
        qtbot.waitUntil(editor.hasFocus, timeout=2000)
        qtbot.keyClick(editor, key, modifier)
        assert not editor.hasFocus()
        assert editor.toPlainText() == "Be brief."
    win.close()


def _ring_pixels(qtbot, button) -> int:
    """Pixels of `button` that change when it takes the keyboard focus."""
    button.clearFocus()
    qtbot.waitUntil(lambda: not button.hasFocus(), timeout=2000)
    before = button.grab().toImage()
    button.setFocus(Qt.FocusReason.TabFocusReason)
    qtbot.waitUntil(button.hasFocus, timeout=2000)
    after = button.grab().toImage()
    assert before.size() == after.size()
    return sum(
        before.pixel(x, y) != after.pixel(x, y)
        for x in range(before.width())
        for y in range(before.height())
    )


def test_buttons_show_keyboard_focus(qtbot, home: Path, themed) -> None:
    from PySide6.QtWidgets import QPushButton

    win = make_window(qtbot, home)
    win.activateWindow()
    primary = QPushButton("Send", win.pane)  # the Send button's look (it waits for a model)
    primary.setObjectName("primary")
    primary.show()
    box = win.sampling.prompt_box
    box.editor.setPlainText("Be brief.")
    buttons = (win.conversations.new_button, primary, box.save_preset_button)
    for button in buttons:
        assert button.isEnabled()
        ring = _ring_pixels(qtbot, button)
        # At least the outline's length: a ring all round, not a pixel or two.
        assert ring >= button.width() + button.height(), f"{themed}: {button.text()}"
    win.close()


# -- 9. the system prompt: this chat, the default for new chats, presets ----------------------


def test_new_chat_starts_with_the_default_and_this_chat_is_its_own(qtbot, home: Path) -> None:
    win = make_window(qtbot, home)
    box = win.sampling.prompt_box
    assert box.default_label.text() == "New chats start with no system prompt"
    qtbot.keyClicks(win.sampling.system_prompt, "Be brief.")
    qtbot.mouseClick(box.make_default_button, Qt.MouseButton.LeftButton)
    assert box.default_label.text() == "New chats start with “Be brief.”"
    assert not box.make_default_button.isEnabled()  # already the default

    win.new_chat_action.trigger()
    assert win.sampling.system_prompt.toPlainText() == "Be brief."
    win.sampling.system_prompt.selectAll()
    qtbot.keyClicks(win.sampling.system_prompt, "Talk like a pirate.")
    win.chat_screen.save_system_prompt()
    assert win.session.system_prompt == "Talk like a pirate."
    assert win.sampling.default_system_prompt() == "Be brief."  # the default is untouched
    assert box.make_default_button.isEnabled()
    win.new_chat_action.trigger()
    assert win.sampling.system_prompt.toPlainText() == "Be brief."
    assert win.session.system_prompt == "Be brief."
    win.close()


def test_presets_are_kept_across_a_restart(qtbot, home: Path, monkeypatch) -> None:
    from desktop.main_window import MainWindow

    win = make_window(qtbot, home)
    box = win.sampling.prompt_box
    assert not box.presets.isEnabled() and box.preset_names() == []
    win.sampling.system_prompt.setPlainText("Talk like a pirate.")
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("Pirate", True))
    qtbot.mouseClick(box.save_preset_button, Qt.MouseButton.LeftButton)
    win.sampling.system_prompt.setPlainText("Answer in one sentence.")
    box.save_preset("Terse")
    assert box.preset_names() == ["Pirate", "Terse"]
    settings = win.settings
    win.close()

    again = MainWindow(settings)
    qtbot.addWidget(again)
    again.show()
    box = again.sampling.prompt_box
    assert box.preset_names() == ["Pirate", "Terse"]
    assert [box.presets.itemText(i) for i in range(box.presets.count())][1:] == ["Pirate", "Terse"]
    # Picking a preset puts it into this chat's prompt (not the default).
    box.presets.setFocus()
    qtbot.waitUntil(box.presets.hasFocus, timeout=2000)
    qtbot.keyClick(box.presets, Qt.Key.Key_Down)
    assert box.chosen_preset() == "Pirate"
    assert again.sampling.system_prompt.toPlainText() == "Talk like a pirate."
    again.chat_screen.save_system_prompt()
    assert again.session.system_prompt == "Talk like a pirate."
    assert again.sampling.default_system_prompt() == ""
    assert box.delete_preset_button.isEnabled()
    qtbot.mouseClick(box.delete_preset_button, Qt.MouseButton.LeftButton)
    assert box.preset_names() == ["Terse"]
    assert again.sampling.system_prompt.toPlainText() == "Talk like a pirate."  # chat keeps it
    again.close()


# -- 8. the attention dock leaves the chat, the top-k panel and the headings their room -------


def _fully_shown(widget, across_only: bool = False) -> bool:
    """Nothing of `widget` is clipped by what holds it (a scroll area's viewport, a splitter);
    `across_only`: on the right (a list scrolled up and down may be cut at the bottom)."""
    shown = widget.visibleRegion().boundingRect()
    if across_only:
        return shown.left() == 0 and shown.width() == widget.width()
    return shown.size() == widget.size()


def _reply_card(win):
    win.chat.add_message("user", "What does loop attention compute?")
    card = win.chat.add_message("assistant", "", author="Built-in: Loopchat dictionary")
    card.finish("It keeps a running maximum and sum. " * 4, "24 tokens · 9.4 tok/s")
    return card


def test_attention_dock_leaves_the_chat_readable(qtbot, home: Path, themed) -> None:
    from desktop.views.topk_panel import percent
    from desktop.views.window_layout import MIN_CHAT_WIDTH, split_sizes
    from engine.events import Step, TopToken

    win = make_window(qtbot, home)
    card = _reply_card(win)
    top = [TopToken(1, " the", 0.665), TopToken(2, " a", 0.2), TopToken(3, " loop", 0.135)]
    win.topk.show_step(Step(index=2, token_id=1, text=" the", piece="▁the", prob=0.665, top=top))
    win.topk.flush_now()
    for width, height in SIZES:
        win.attention.action.setChecked(False)
        win.resize(width, height)
        win.splitter.setSizes(split_sizes(width))
        qtbot.wait(50)
        chat_alone = win.splitter.sizes()[1]
        win.attention.action.setChecked(True)
        qtbot.waitUntil(win.attention.dock.isVisible, timeout=2000)
        qtbot.wait(80)
        where = f"{themed} {width}×{height}"
        assert (win.width(), win.height()) == (width, height), where
        chat = win.splitter.sizes()[1]
        assert chat >= MIN_CHAT_WIDTH and chat == chat_alone, where  # the dock takes no width
        assert win.chat.viewport().height() >= 120, where  # a few lines of the reply still show
        # The top-k rows are whole: "100.0%" fits the column the panel keeps for percentages.
        assert _fully_shown(win.topk, across_only=True), where
        pct_room = win.topk.width() - 24 - win.topk.fontMetrics().horizontalAdvance("M") * 8
        assert pct_room >= win.topk.fontMetrics().horizontalAdvance(percent(1.0)), where
        assert _fully_shown(win.attention.view), where
        label = card.author_label
        if width >= 1000:  # room for the whole heading beside the card's buttons
            assert label.width() >= label.fontMetrics().horizontalAdvance(label.text()), where
    win.close()


def test_attention_dock_opens_beside_a_wide_window_and_moves_below_when_narrowed(
    qtbot, home: Path, themed
) -> None:
    from desktop.views.window_layout import MIN_CHAT_WIDTH, split_sizes

    win = make_window(qtbot, home)
    card = _reply_card(win)
    win.resize(1600, 900)
    win.splitter.setSizes(split_sizes(1600))
    qtbot.wait(50)
    win.attention.action.setChecked(True)
    qtbot.waitUntil(win.attention.dock.isVisible, timeout=2000)
    qtbot.wait(80)
    assert win.dockWidgetArea(win.attention.dock) == Qt.DockWidgetArea.RightDockWidgetArea
    assert win.attention.dock.width() >= win.attention.view.minimumWidth()
    assert win.splitter.sizes()[1] >= MIN_CHAT_WIDTH
    label = card.author_label
    assert label.width() >= label.fontMetrics().horizontalAdvance(label.text())
    win.resize(1000, 700)
    qtbot.wait(80)
    assert win.width() == 1000  # the dock beside the chat does not hold the window wide
    assert win.dockWidgetArea(win.attention.dock) == Qt.DockWidgetArea.BottomDockWidgetArea
    assert win.splitter.sizes()[1] >= MIN_CHAT_WIDTH
    assert win.minimumSizeHint().width() <= 800 and win.minimumSizeHint().height() <= 600
    win.close()
