"""An 800×600 window with the app's own style sheet (its paddings decide what fits): replies with
several versions and the step-mode panel must not push the chat column past the window."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication

from tests.window_helpers import make_window


@pytest.fixture
def styled():
    from desktop.app import apply_look

    app = QApplication.instance()
    sheet = app.styleSheet()
    apply_look(app)
    yield app
    app.setStyleSheet(sheet)


def narrow_window(qtbot, home: Path):
    from desktop.views.window_layout import split_sizes

    win = make_window(qtbot, home)
    win.resize(800, 600)
    win.splitter.setSizes(split_sizes(800))
    return win


def fits(qtbot, win) -> None:
    qtbot.wait(50)
    assert win.chat.widget().width() <= win.chat.viewport().width()
    for card in win.chat.messages:
        right = card.copy_button.mapTo(win.chat.viewport(), card.copy_button.rect().topRight())
        assert right.x() < win.chat.viewport().width(), f"{card.role} card cut off"


def test_replies_with_versions_fit_the_chat_column(qtbot, home: Path, styled) -> None:
    win = narrow_window(qtbot, home)
    for _ in range(4):
        win.chat.add_message("user", "A question of a few words")
        card = win.chat.add_message("assistant", "", author="Built-in: Loopchat dictionary")
        card.finish("An answer. " * 8, "24 tokens · 9.4 tok/s · branched at token 3")
        card.set_versions(2, 3)
    qtbot.waitUntil(lambda: win.chat.verticalScrollBar().maximum() > 0, timeout=2000)
    fits(qtbot, win)
    assert card.version_label.isVisible() and card.version_label.text() == "2/3"
    assert card.prev_version_button.isEnabled() and card.next_version_button.isEnabled()
    win.close()


def test_step_mode_gives_the_chat_its_width_back_when_turned_off(qtbot, home, styled) -> None:
    win = narrow_window(qtbot, home)
    win.chat.add_message("user", "A question of a few words")
    win.chat.add_message("assistant", "An answer.", author="Built-in: Loopchat dictionary")
    before = win.splitter.sizes()
    win.step_mode.action.setChecked(True)
    qtbot.wait(20)
    assert win.splitter.sizes()[2] > before[2]  # room made for the stage tables
    fits(qtbot, win)
    win.step_mode.action.setChecked(False)
    qtbot.wait(20)
    assert win.splitter.sizes() == before
    fits(qtbot, win)
    win.close()
