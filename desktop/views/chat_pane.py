"""The chat column: the model bar, a banner, the conversation, Regenerate, then the message box
with Send/Stop. The model bar (views/model_bar.py) names the open model; a click opens the chooser.

Under the box: the input hint (what the message costs, or why it cannot be sent); "Keep the last
part that fits" joins Regenerate's row when the message is too long for the context (beside the
wrapped hint, an 800 px window had no room for it). Above them: a line saying when the open model
is not the one that wrote this chat's replies.

A widget of its own (the window assembles it); features add their buttons beside Regenerate
(before Regenerate) through `add_button` rather than reaching into its layout.
"""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from desktop.views.banner import Banner
from desktop.views.conversation_view import ConversationView
from desktop.views.input_box import InputBox
from desktop.views.model_bar import ModelBar


def _button(text: str, tip: str = "") -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    return button


class ChatPane(QWidget):
    """Banner, conversation, Regenerate, then the input with Send and Stop, and the input hint."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model_bar = ModelBar()
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
        self.trim_button = _button(
            "Keep the last part that fits",
            "Cut the message to its last part that fits the model's context, leaving room for "
            "a reply",
        )
        self.trim_button.setObjectName("trim")
        self.trim_button.hide()
        self._actions_row = QHBoxLayout()
        self._actions_row.setContentsMargins(18, 0, 18, 0)
        self._actions_row.addStretch(1)
        self._actions_row.addWidget(self.trim_button)
        self._actions_row.addWidget(self.regenerate_button)
        self.input_hint = QLabel("")
        self.input_hint.setObjectName("meta")
        self.input_hint.setWordWrap(True)  # "too long" says what to do; it wraps at 800 px
        self.input_hint.setContentsMargins(20, 0, 18, 6)
        # Which model wrote this chat, when it is not the open one (ChatScreen fills it in).
        self.model_note = QLabel("")
        self.model_note.setObjectName("model_note")
        self.model_note.setWordWrap(True)
        self.model_note.setContentsMargins(20, 6, 18, 0)
        self.model_note.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.model_bar)
        layout.addWidget(self.banner)
        layout.addWidget(self.chat, 1)
        layout.addWidget(self.model_note)
        layout.addLayout(self._actions_row)
        layout.addLayout(input_row)
        layout.addWidget(self.input_hint)

    def add_button(self, button: QPushButton) -> None:
        """Put `button` before Regenerate, after the buttons added before it (step mode's)."""
        self._actions_row.insertWidget(self._actions_row.count() - 1, button)

    def typed_text(self) -> str:
        """The message in the box, without surrounding blanks."""
        return self.input.toPlainText().strip()
