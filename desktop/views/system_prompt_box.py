"""The system prompt, at its two levels: this chat's own, and the default new chats start with.

The box edits the open chat's prompt (saved with that conversation, desktop.session). Beside it
the user sees what new chats start with and can make this prompt that default, and keeps named
presets (save this prompt as one, put one into this chat, delete one). A prompt in the box used
to look global, yet changed per chat while a new chat started empty.
"""

from __future__ import annotations

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPlainTextEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop import prompt_presets
from desktop.views.elided_label import ElidedLabel

PRESETS_PLACEHOLDER = "Presets"
"""The presets box's first entry: no preset picked."""


def default_note(text: str) -> str:
    """What new chats start with, in one line (the whole prompt is in the tooltip)."""
    first = " ".join(text.split())
    return f"New chats start with “{first}”" if first else "New chats start with no system prompt"


class SystemPromptBox(QWidget):
    """This chat's prompt (`editor`), the default for new chats, and the presets."""

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._settings = settings
        heading = QLabel("This chat")
        heading.setObjectName("meta")
        self.editor = QPlainTextEdit()
        self.editor.setObjectName("system_prompt")
        self.editor.setAccessibleName("System prompt of this chat")
        self.editor.setPlaceholderText("Optional instructions for the model, for this chat")
        self.editor.setFixedHeight(64)
        # Tab moves on to the next field: a tab character in a prompt is sent to the model.
        self.editor.setTabChangesFocus(True)
        heading.setBuddy(self.editor)

        self.presets = QComboBox()
        self.presets.setAccessibleName("System prompt presets")
        self.presets.setToolTip("Put a saved preset into this chat's system prompt")
        self.presets.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.presets.setMinimumContentsLength(3)
        self.save_preset_button = _tool("Save…", "Save this chat's system prompt as a preset")
        self.save_preset_button.setAccessibleName("Save as preset")
        # A cross, not "Delete": the row must fit the side panel's narrowest (240 px).
        self.delete_preset_button = _tool("✕", "Delete the preset chosen on the left")
        self.delete_preset_button.setAccessibleName("Delete preset")
        presets_row = QHBoxLayout()
        presets_row.setSpacing(4)
        presets_row.addWidget(self.presets, 1)
        presets_row.addWidget(self.save_preset_button)
        presets_row.addWidget(self.delete_preset_button)

        self.default_label = ElidedLabel("")
        self.default_label.setObjectName("meta")
        self.make_default_button = _tool(
            "Use for new chats", "Make this chat's system prompt the one new chats start with"
        )
        default_row = QHBoxLayout()  # under the note: beside it, a narrow panel left it 5 letters
        default_row.setSpacing(4)
        default_row.addStretch(1)
        default_row.addWidget(self.make_default_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 0, 12, 4)
        layout.setSpacing(4)
        layout.addWidget(heading)
        layout.addWidget(self.editor)
        layout.addLayout(presets_row)
        layout.addWidget(self.default_label)
        layout.addLayout(default_row)

        self.presets.activated.connect(self._picked)
        self.presets.currentIndexChanged.connect(lambda _i: self._update_buttons())
        self.save_preset_button.clicked.connect(self.ask_preset_name)
        self.delete_preset_button.clicked.connect(self.delete_chosen_preset)
        self.make_default_button.clicked.connect(self.make_default)
        self.editor.textChanged.connect(self._update_buttons)
        self.refresh_presets()
        self._show_default()

    # -- the default for new chats -----------------------------------------------------------

    def default_prompt(self) -> str:
        return prompt_presets.default_prompt(self._settings)

    def make_default(self) -> None:
        """New chats start with the prompt shown now (this chat's own is unchanged)."""
        prompt_presets.set_default_prompt(self._settings, self.editor.toPlainText())
        self._show_default()

    def _show_default(self) -> None:
        text = self.default_prompt()
        self.default_label.setText(default_note(text))
        self.default_label.setToolTip(text or "New chats start with no system prompt")
        self._update_buttons()

    # -- presets -----------------------------------------------------------------------------

    def preset_names(self) -> list[str]:
        return list(prompt_presets.load_presets(self._settings))

    def refresh_presets(self, chosen: str = "") -> None:
        """The presets box as saved, `chosen` selected (else the placeholder)."""
        names = self.preset_names()
        self.presets.blockSignals(True)
        self.presets.clear()
        self.presets.addItem(PRESETS_PLACEHOLDER)
        self.presets.addItems(names)
        self.presets.setCurrentIndex(names.index(chosen) + 1 if chosen in names else 0)
        self.presets.blockSignals(False)
        self.presets.setEnabled(bool(names))
        self._update_buttons()

    def chosen_preset(self) -> str:
        return self.presets.currentText() if self.presets.currentIndex() > 0 else ""

    def use_preset(self, name: str) -> None:
        """Put preset `name` into this chat's prompt (an edit of this chat, like typing)."""
        text = prompt_presets.load_presets(self._settings).get(name)
        if text is None:
            return
        self.editor.setPlainText(text)
        self.refresh_presets(chosen=name)

    def save_preset(self, name: str) -> None:
        name = name.strip()
        if name:
            prompt_presets.save_preset(self._settings, name, self.editor.toPlainText())
            self.refresh_presets(chosen=name)

    def ask_preset_name(self) -> None:
        name, ok = QInputDialog.getText(
            self, "Save system prompt", "Preset name:", text=self.chosen_preset()
        )
        if ok:
            self.save_preset(name)

    def delete_chosen_preset(self) -> None:
        name = self.chosen_preset()
        if name:
            prompt_presets.delete_preset(self._settings, name)
            self.refresh_presets()

    def _picked(self, index: int) -> None:
        if index > 0:
            self.use_preset(self.presets.itemText(index))

    def _update_buttons(self) -> None:
        text = self.editor.toPlainText()
        self.save_preset_button.setEnabled(bool(text.strip()))
        self.delete_preset_button.setEnabled(bool(self.chosen_preset()))
        self.make_default_button.setEnabled(text != self.default_prompt())


def _tool(text: str, tip: str) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setToolTip(tip)
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    button.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # reachable with Tab, like a push button
    return button
