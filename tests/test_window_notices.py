"""Notices the window owes the user: a moved-aside database (until dismissed), a capped context."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QToolButton

from desktop.store.conversations import ConversationStore
from tests.window_helpers import load, make_window


def _close_button(win) -> QToolButton:
    (button,) = [b for b in win.banner.findChildren(QToolButton) if b.text() == "✕"]
    return button


def test_dismissing_the_moved_aside_notice_stops_it_for_good(qtbot, home: Path) -> None:
    db = home / "home" / "data" / "conversations.sqlite3"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"not a database at all" * 300)
    first = make_window(qtbot, home)
    assert first.banner.isVisible() and "moved to" in first.banner.label.text()
    first.close()
    second = make_window(qtbot, home)  # repeated at the next start: nothing was dismissed yet
    assert second.banner.isVisible() and "moved to" in second.banner.label.text()
    qtbot.mouseClick(_close_button(second), Qt.MouseButton.LeftButton)
    assert not second.banner.isVisible()
    second.close()
    with ConversationStore(db) as store:
        assert store.moved_aside_notice() is None
    third = make_window(qtbot, home)
    assert not third.banner.isVisible()
    third.close()


def test_a_capped_context_is_said_in_the_window(qtbot, home: Path, tiny_model_dir: Path) -> None:
    folder = home / "long-context"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 10**12
    (folder / "config.json").write_text(json.dumps(config))
    win = make_window(qtbot, home)
    info = load(qtbot, win, folder)
    assert info.max_context < 10**12
    assert win.banner.isVisible()
    text = win.banner.label.text()
    assert text.startswith("Context capped to") and str(info.max_context) in text
    win.close()
