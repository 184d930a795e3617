"""The chat column: a banner, the conversation, Regenerate, then the message box with Send/Stop.

A widget of its own (the window assembles it); features add their buttons beside Regenerate
(before Regenerate) through `add_button` rather than reaching into its layout.
"""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from desktop.views.banner import Banner
from desktop.views.conversation_view import ConversationView
from desktop.views.input_box import InputBox


def _button(text: str, tip: str = "") -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    return button


class ChatPane(QWidget):
    """Banner, conversation, Regenerate, then the input with Send and Stop, and the input hint."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.chat = ConversationView()
        self.banner = Banner()
        self.input = InputBox()
        self.send_button = _button("Send")
        self.send_button.setObjectName("primary")
        self.send_button.setDefault(True)
        self.stop_button = _button("Stop", "Stop generating (Esc)")
        self.regenerate_button = _button("Regenerate", "Answer the last message again")
        buttons = QVBoxLayout()
        buttons.setSpacing(6)
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        input_row = QHBoxLayout()
        input_row.setContentsMargins(18, 8, 18, 14)
        input_row.setSpacing(8)
        input_row.addWidget(self.input, 1)
        input_row.addLayout(buttons)
        self._actions_row = QHBoxLayout()
        self._actions_row.setContentsMargins(18, 0, 18, 0)
        self._actions_row.addStretch(1)
        self._actions_row.addWidget(self.regenerate_button)
        self.input_hint = QLabel("")
        self.input_hint.setObjectName("meta")
        self.input_hint.setContentsMargins(20, 0, 18, 6)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.banner)
        layout.addWidget(self.chat, 1)
        layout.addLayout(self._actions_row)
        layout.addLayout(input_row)
        layout.addWidget(self.input_hint)

    def add_button(self, button: QPushButton) -> None:
        """Put `button` before Regenerate, after the buttons added before it (step mode's)."""
        self._actions_row.insertWidget(self._actions_row.count() - 1, button)

    def typed_text(self) -> str:
        """The message in the box, without surrounding blanks."""
        return self.input.toPlainText().strip()
