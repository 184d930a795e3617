"""Editing a sent message: its text goes into the message box, where the user already types.

Clicking Edit on one of your cards must visibly do something and risk nothing: the card is
highlighted and scrolled into view, its text replaces the message box's (what was typed there is
kept aside), a notice says what Send will do, and Esc (or Cancel) puts the box back as it was.
The conversation itself changes only when the edit is sent (`ChatSession.edit`).
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QPlainTextEdit, QScrollArea

from desktop.views.banner import Banner
from desktop.views.chat_view import MessageWidget

EDITING_NOTICE = (
    "Editing your message. Send makes it a new version (‹ › brings back the old one and its "
    "replies); Esc cancels."
)
BUSY_NOTICE = "A reply is being written: stop it (Esc) first, then edit your message."


class MessageEdit(QObject):
    """The one message being edited (if any), with the draft it displaced from the input."""

    def __init__(
        self, input_box: QPlainTextEdit, banner: Banner, chat: QScrollArea, parent: QObject
    ) -> None:
        super().__init__(parent)
        self.input = input_box
        self.banner = banner
        self.chat = chat
        self.card: MessageWidget | None = None
        self._draft = ""
        self._scrolled_to = 0
        """Where the chat was scrolled before Edit brought the card into view."""
        input_box.installEventFilter(self)

    @property
    def active(self) -> bool:
        return self.card is not None

    @property
    def turn(self):
        """The session's turn being edited (`ChatSession.edit` adds a version of it)."""
        return getattr(self.card, "turn", None)

    def begin(self, card: MessageWidget) -> None:
        """Put `card`'s text in the message box to be edited; nothing is changed or sent yet."""
        if self.card is None:
            self._draft = self.input.toPlainText()
            self._scrolled_to = self.chat.verticalScrollBar().value()
        else:
            _highlight(self.card, False)
        self.card = card
        _highlight(card, True)
        self.input.setPlainText(card.text)
        self.input.moveCursor(QTextCursor.MoveOperation.End)
        self.input.setFocus()
        self.banner.show_message(
            EDITING_NOTICE, "notice", "Cancel", self.cancel, on_dismiss=self.cancel
        )
        # After the box has grown to the text (that relayout is queued), show the card.
        QTimer.singleShot(0, self, self._reveal)

    def cancel(self) -> None:
        """Stop editing: the message box gets back what was typed before Edit, and the chat
        is scrolled back to where it was."""
        if self._end():
            self.input.setPlainText(self._draft)
            self.chat.verticalScrollBar().setValue(self._scrolled_to)

    def sent(self) -> None:
        """The edit was sent (the edited card is gone): the displaced draft comes back; the
        chat follows the new reply."""
        if self._end():
            self.input.setPlainText(self._draft)

    def _end(self) -> bool:
        card, self.card = self.card, None
        if card is None:
            return False
        _highlight(card, False)
        if self.banner.showing(self.cancel):
            self.banner.hide()
        return True

    def _reveal(self) -> None:
        if self.card is not None:
            try:
                self.chat.ensureWidgetVisible(self.card, 0, 12)
            except RuntimeError:  # the card was closed meanwhile
                pass

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        """Esc in the message box cancels an edit (it is the window's Stop shortcut too)."""
        if self.card is not None and event.type() in (
            QEvent.Type.ShortcutOverride,
            QEvent.Type.KeyPress,
        ):
            if event.key() == Qt.Key.Key_Escape:
                event.accept()
                if event.type() == QEvent.Type.KeyPress:
                    self.cancel()
                return True
        return super().eventFilter(watched, event)


def _highlight(card: MessageWidget, on: bool) -> None:
    """Mark the card being edited (app.qss draws its border in the highlight colour)."""
    try:
        card.setProperty("editing", on)
        card.style().unpolish(card)
        card.style().polish(card)
    except RuntimeError:  # already deleted: nothing left to mark
        pass
