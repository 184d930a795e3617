"""The message editor: Enter sends, Shift+Enter starts a new line.

Ctrl+Z undoes typing while there is typing to undo; otherwise it is left to the window (Undo of
a branch, offered in the banner), rather than swallowed by an empty undo stack.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QKeyEvent, QKeySequence
from PySide6.QtWidgets import QPlainTextEdit, QWidget

MAX_LINES = 8
"""The box grows up to this many lines, then scrolls."""


class InputBox(QPlainTextEdit):
    """Multi-line input that grows with its text up to a few lines."""

    submitted = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("input")
        self.setPlaceholderText("Message the model…")
        self.setToolTip("Enter sends; Shift+Enter starts a new line")
        self.setTabChangesFocus(True)
        self.document().contentsChanged.connect(self._fit)
        self._fit()

    def event(self, event: QEvent) -> bool:
        if (
            event.type() == QEvent.Type.ShortcutOverride
            and isinstance(event, QKeyEvent)
            and event.matches(QKeySequence.StandardKey.Undo)
            and not self.document().isUndoAvailable()
        ):
            event.ignore()  # nothing typed to undo: the window's Ctrl+Z (Undo a branch) runs
            return False
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt API
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            text = self.toPlainText().strip()
            if text:
                self.submitted.emit(text)
            return
        super().keyPressEvent(event)

    def _fit(self) -> None:
        self.ensurePolished()  # the style sheet's font and padding decide the height
        # A QPlainTextEdit's document height is counted in lines, wrapped lines included.
        wanted = int(self.document().size().height())
        lines = max(1, min(MAX_LINES, wanted))
        policy = (
            Qt.ScrollBarPolicy.ScrollBarAsNeeded
            if wanted > MAX_LINES
            else (Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        )
        self.setVerticalScrollBarPolicy(policy)
        line_height = self.fontMetrics().lineSpacing()
        margins = (
            int(2 * self.document().documentMargin())
            + self.contentsMargins().top()
            + self.contentsMargins().bottom()
        )
        # Room for the style sheet's padding and the frame, so descenders are never cut.
        self.setFixedHeight(lines * line_height + margins + 8)
