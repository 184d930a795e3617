"""A dismissible message above the chat (errors, notices); never blocks like a dialog."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QWidget,
)


class Banner(QFrame):
    """One line of text, an optional action button (e.g. Undo) and a close button."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 8, 8)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.PlainText)  # a server's or a file's words are data
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.label, 1)
        self.action = QPushButton()
        self.action.hide()
        self.action.clicked.connect(self._run_action)
        self._callback: Callable[[], None] | None = None
        self._on_dismiss: Callable[[], None] | None = None
        layout.addWidget(self.action)
        self.close_button = QToolButton()
        self.close_button.setText("✕")
        self.close_button.setToolTip("Dismiss")
        self.close_button.clicked.connect(self._dismiss)
        layout.addWidget(self.close_button)
        self.kind = ""
        self.hide()

    def show_message(
        self,
        text: str,
        kind: str = "error",
        action: str = "",
        callback: Callable[[], None] | None = None,
        on_dismiss: Callable[[], None] | None = None,
        shortcut: QKeySequence | str = "",
    ) -> None:
        """Show `text`; `on_dismiss` runs only if the user closes this message with ✕.
        `shortcut` presses the action from anywhere in the window while the message shows
        (Ctrl+Z for Undo); each message sets its own, so an old one never lingers."""
        self.kind = kind
        self._on_dismiss = on_dismiss
        self.setProperty("kind", "error" if kind == "error" else "notice")
        # Light yellow/red glared in a dark window: app.qss has dark variants of both.
        # The app's palette: the banner's own has the style sheet's background in it.
        window = QApplication.palette().color(QPalette.ColorRole.Window)
        self.setProperty("dark", window.lightness() < 128)
        for widget in (self, self.label, self.close_button):  # children's rules use these too
            widget.style().unpolish(widget)
            widget.style().polish(widget)
        self.label.setText(text)
        self._callback = callback
        self.action.setText(action)
        self.action.setShortcut(QKeySequence(shortcut))
        self.action.setVisible(bool(action and callback))
        self.show()

    def showing(self, callback: Callable[[], None]) -> bool:
        """Whether the message on screen now is the one whose action runs `callback` (a later
        message may have replaced it, and must not be hidden on the earlier one's behalf).
        Compared with ==, as each `obj.method` is a new bound-method object."""
        return self.isVisible() and self._callback == callback

    def hideEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.action.setShortcut(QKeySequence())  # a hidden message's shortcut does nothing
        super().hideEvent(event)

    def _dismiss(self) -> None:
        on_dismiss, self._on_dismiss = self._on_dismiss, None
        self.hide()
        if on_dismiss is not None:
            on_dismiss()

    def _run_action(self) -> None:
        callback, self._callback = self._callback, None
        self.hide()
        if callback is not None:
            callback()
