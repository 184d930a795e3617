"""Rough edges a new user hits in the first hour (issue 16), driven through the real window."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from tests.window_helpers import greedy, load, make_window


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    return tmp_path


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
