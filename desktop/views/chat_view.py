"""The conversation: one card per message, replies streaming in token by token.

A reply keeps every step it was built from. While it streams, and in "Tokens" view, each token's
text carries its step index in the character format, so a click can show that step's top-k. A
finished reply is shown rendered as Markdown (Qt's own renderer; code blocks monospaced).
"""

from __future__ import annotations

import time

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor,
    QGuiApplication,
    QPalette,
    QTextCharFormat,
    QTextCursor,
    QTextFormat,
)
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from desktop.views.elided_label import ElidedLabel
from desktop.views.markdown import render_markdown, secure_browser
from engine.events import Step

TOKEN_INDEX = QTextFormat.Property.UserProperty + 1
WRITTEN_VERBS = {"user": "Sent", "assistant": "Written", "note": "Noted"}


def written_tooltip(role: str, created_at: float) -> str:
    """ "Sent Sunday 6 December 2026, 15:40:12" in local time ("" for an unknown time)."""
    if not created_at or created_at <= 0:
        return ""
    try:
        local = time.localtime(created_at)
    except (OverflowError, OSError, ValueError):
        return ""
    # The day without a leading zero, portably (%-d is glibc's).
    when = f"{time.strftime('%A', local)} {local.tm_mday} {time.strftime('%B %Y, %H:%M:%S', local)}"
    return f"{WRITTEN_VERBS.get(role, 'Written')} {when}"


DRAFTED = QTextFormat.Property.UserProperty + 2
"""Set on a token the draft proposed and the model accepted (speculative decoding)."""
REJECTED = QTextFormat.Property.UserProperty + 3
"""Set on a draft's guess the model rejected: shown struck out, not part of the reply."""
DRAFTED_COLOUR = "#2e9d5b"
"""Drafted tokens are underlined in this green (readable on both themes' backgrounds)."""


def rejected_draft(step: Step):
    """The draft's guess this step replaced (speculative decoding), or None."""
    check = step.check
    return check if check is not None and not check.accepted else None


def _who(kind: str) -> str:
    return "prompt lookup" if kind == "lookup" else "the draft model"


def drafted_tip(step: Step) -> str:
    """Why a drafted token was kept: the model's p and the draft's q, and the draw."""
    c = step.check
    if c is None:
        return "Proposed by the draft and accepted by the model"
    if c.u is None:
        return f"Proposed by {_who(c.draft_kind)}; kept: it is the model's most likely token"
    return (
        f"Proposed by {_who(c.draft_kind)}; kept: draw u = {c.u:.3f} < p/q = "
        f"{c.p:.3f}/{c.q:.3f} (model p = {c.p:.3f}, draft q = {c.q:.3f})"
    )


def rejected_tip(check, step: Step) -> str:
    """Why a draft's guess was dropped, and what came instead."""
    instead = step.piece or step.text
    if check.u is None:
        return (
            f"{_who(check.draft_kind).capitalize()} proposed “{check.proposed_text}”; rejected: "
            f"the model's most likely token is “{instead}”"
        )
    return (
        f"{_who(check.draft_kind).capitalize()} proposed “{check.proposed_text}” (model p = "
        f"{check.p:.3f}, draft q = {check.q:.3f}); rejected: draw u = {check.u:.3f} ≥ p/q. "
        f"The model drew “{instead}” from max(0, p − q) instead"
    )


COPIED_FEEDBACK_MS = 1500
"""How long the Copy button says "Copied"."""


class _AutoHeightBrowser(QTextBrowser):
    """A read-only text area as tall as its content (the outer view scrolls, not each card)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        secure_browser(self)  # no raw HTML, resources or unasked-for links (views/markdown.py)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.document().setDocumentMargin(2)
        self.document().documentLayout().documentSizeChanged.connect(self._fit)
        self.viewport().setAutoFillBackground(False)
        # Scoped to the browser: an unscoped rule also reached the tooltips shown over it (their
        # style sheet parent), which then had no background at all (dark text on black).
        self.setStyleSheet("QTextBrowser { background: transparent; }")

    def _fit(self) -> None:
        height = int(self.document().size().height()) + 4
        if self.height() != height:
            self.setFixedHeight(height)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self.document().setTextWidth(self.viewport().width())
        self._fit()


class MessageWidget(QFrame):
    """One message card: header (who, buttons) and body."""

    token_clicked = Signal(object, int)  # (this widget, step index)
    edit_requested = Signal(object)
    version_requested = Signal(object, int)  # (this widget, 1-based version to show)

    def __init__(self, role: str, text: str = "", author: str = "", parent=None) -> None:
        super().__init__(parent)
        self.role = role
        self.steps: list[Step] = []
        self.position: int | None = None
        """Where the message sits in the saved conversation (None for notes)."""
        self.text = text
        self.finished = role != "assistant"
        self._token_view = False
        self.written = ""
        """When the message was written, in words (the card's hover tooltip); "" if unknown."""
        self.setObjectName(f"message_{role}")
        self.setFrameShape(QFrame.Shape.NoFrame)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 10, 14, 10)
        layout.setSpacing(4)

        header = QHBoxLayout()
        header.setSpacing(6)
        names = {"user": "You", "assistant": author or "Assistant", "note": "Note"}
        self.author_label = ElidedLabel(names.get(role, role.title()))
        self.author_label.setObjectName("author")
        header.addWidget(self.author_label)
        # The stats line sits under the text (added below): beside the name and the buttons a
        # narrow card had room for neither ("Built-in: Loo… 20 t…").
        self.meta_label = ElidedLabel("", self)
        self.meta_label.setObjectName("meta")
        self.meta_label.hide()
        header.addStretch(1)
        # ‹ 2/3 ›: the versions of this turn (Regenerate, branches); hidden while there is one.
        # They sit in the footer, beside the stats line: in the header, with the name and the
        # buttons, they made a card wider than the chat column of an 800 px window.
        self.version = self.versions = 1
        self.prev_version_button = QToolButton(self)
        self.prev_version_button.setObjectName("arrow")
        self.prev_version_button.setText("‹")
        self.prev_version_button.setToolTip("Show the previous version of this reply")
        self.prev_version_button.clicked.connect(lambda: self._ask_version(self.version - 1))
        self.version_label = QLabel("", self)
        self.version_label.setObjectName("meta")
        self.next_version_button = QToolButton(self)
        self.next_version_button.setObjectName("arrow")
        self.next_version_button.setText("›")
        self.next_version_button.setToolTip("Show the next version of this reply")
        self.next_version_button.clicked.connect(lambda: self._ask_version(self.version + 1))
        footer = QHBoxLayout()
        footer.setSpacing(4)
        for widget in (self.prev_version_button, self.version_label, self.next_version_button):
            widget.setVisible(False)
            footer.addWidget(widget)
        # Parented at once: setVisible(True) on a parentless widget would open it as a window.
        self.tokens_button = QToolButton(self)
        self.tokens_button.setText("Tokens")
        self.tokens_button.setCheckable(True)
        self.tokens_button.setToolTip("Show the reply token by token; click a token to inspect it")
        self.tokens_button.toggled.connect(self.set_token_view)
        self.tokens_button.setVisible(role == "assistant")
        header.addWidget(self.tokens_button)
        self.edit_button = QToolButton(self)
        self.edit_button.setText("Edit")
        self.edit_button.setToolTip(
            "Edit this message and send it again as a new version (the old one stays)"
        )
        self.edit_button.clicked.connect(lambda: self.edit_requested.emit(self))
        self.edit_button.setVisible(role == "user")
        header.addWidget(self.edit_button)
        self.copy_button = QToolButton(self)
        self.copy_button.setText("Copy")
        self.copy_button.setToolTip("Copy this message")
        self.copy_button.clicked.connect(self.copy)
        self.copy_button.setVisible(role != "note")
        header.addWidget(self.copy_button)
        layout.addLayout(header)
        # Progress before the first token ("Reading your message… n / N tokens") gets a line of
        # its own that wraps: squeezed into the header beside the buttons it was cut off.
        self.status_label = QLabel("", self)
        self.status_label.setObjectName("meta")
        self.status_label.setWordWrap(True)
        self.status_label.hide()
        layout.addWidget(self.status_label)

        self.body = _AutoHeightBrowser(self)
        self.body.viewport().installEventFilter(self)
        self.body.viewport().setCursor(Qt.CursorShape.IBeamCursor)
        layout.addWidget(self.body)
        footer.addWidget(self.meta_label, 1)
        layout.addLayout(footer)
        if role == "assistant" and not text:
            self.body.setPlainText("")
        else:
            self._render()

    def set_written(self, created_at: float) -> None:
        """Hovering the card shows when the message was written (local date and time)."""
        self.written = written_tooltip(self.role, created_at)
        self.setToolTip(self.written)
        name = self.author_label.text()
        self.author_label.setToolTip(f"{name}\n{self.written}" if self.written else name)

    # -- versions ----------------------------------------------------------------------------

    def set_versions(self, version: int, versions: int, enabled: bool = True) -> None:
        """Show `‹ version/versions ›` (nothing while there is only one version)."""
        self.version, self.versions = version, versions
        many = versions > 1
        self.version_label.setText(f"{version}/{versions}")
        self.version_label.setToolTip(f"Version {version} of {versions} of this reply")
        for widget in (self.prev_version_button, self.version_label, self.next_version_button):
            widget.setVisible(many)
        self.enable_versions(enabled)

    def enable_versions(self, enabled: bool) -> None:
        """Arrows work only where there is a version that way (and not while a reply streams)."""
        self.prev_version_button.setEnabled(enabled and self.version > 1)
        self.next_version_button.setEnabled(enabled and self.version < self.versions)

    def _ask_version(self, version: int) -> None:
        if 1 <= version <= self.versions:
            self.version_requested.emit(self, version)

    # -- streaming ---------------------------------------------------------------------------

    def append_step(self, step: Step) -> None:
        """Add one streamed token to the end of the reply."""
        self.steps.append(step)
        if step.text or rejected_draft(step):
            self.text += step.text
            cursor = QTextCursor(self.body.document())
            cursor.movePosition(QTextCursor.MoveOperation.End)
            self._insert_step(cursor, len(self.steps) - 1, step)

    def _insert_step(self, cursor: QTextCursor, index: int, step: Step) -> None:
        """A token as the token-by-token view shows it: speculative decoding's rejected guess
        at this place first (struck out; not part of the reply), then the token itself."""
        check = rejected_draft(step)
        if check is not None:
            cursor.insertText(check.proposed_text, self._rejected_format(check, step))
        if step.text:
            cursor.insertText(step.text, self._token_format(index))

    def show_status(self, text: str) -> None:
        """A line about the reply's progress before it has text ("" hides it); the empty body
        is hidden meanwhile, so the card is not a blank box under the line."""
        self.status_label.setText(text)
        self.status_label.setVisible(bool(text))
        self.body.setVisible(not text or bool(self.text))

    def finish(self, text: str, meta: str = "") -> None:
        """The reply is complete: keep the engine's final text and render it."""
        self.show_status("")
        self.text = text
        self.finished = True
        self.meta_label.setText(meta)
        self.meta_label.setToolTip(meta)  # a narrow card cuts the line short
        self.meta_label.setVisible(bool(meta))
        self._render()

    def set_text(self, text: str) -> None:
        self.text = text
        self._render()

    def set_token_view(self, on: bool) -> None:
        self._token_view = on
        if self.tokens_button.isChecked() != on:
            self.tokens_button.setChecked(on)
        self._render()

    @property
    def token_view(self) -> bool:
        return self._token_view or not self.finished

    def copy(self) -> None:
        """Copy the message, and say so on the button for a moment (a silent copy looks broken)."""
        QGuiApplication.clipboard().setText(self.text)
        self.copy_button.setText("Copied")
        QTimer.singleShot(COPIED_FEEDBACK_MS, self, self._reset_copy_label)

    def _reset_copy_label(self) -> None:
        try:
            self.copy_button.setText("Copy")
        except RuntimeError:  # the card was closed within the feedback time
            pass

    def _token_format(self, index: int) -> QTextCharFormat:
        fmt = QTextCharFormat()
        fmt.setProperty(TOKEN_INDEX, index)
        if self._token_view:
            shade = QColor(self.palette().color(QPalette.ColorRole.Highlight))
            shade.setAlphaF(0.10 if index % 2 else 0.22)
            fmt.setBackground(shade)
        step = self.steps[index] if index < len(self.steps) else None
        if step is not None and step.drafted:
            fmt.setUnderlineStyle(QTextCharFormat.UnderlineStyle.SingleUnderline)
            fmt.setUnderlineColor(QColor(DRAFTED_COLOUR))
            fmt.setProperty(DRAFTED, True)
            fmt.setToolTip(drafted_tip(step))
        return fmt

    def _rejected_format(self, check, step: Step) -> QTextCharFormat:
        fmt = QTextCharFormat()
        fmt.setFontStrikeOut(True)
        fmt.setForeground(self.palette().color(QPalette.ColorRole.PlaceholderText))
        fmt.setProperty(REJECTED, True)
        fmt.setToolTip(rejected_tip(check, step))
        return fmt

    def _render(self) -> None:
        doc = self.body.document()
        if self.role == "assistant" and self.token_view and self.steps:
            doc.clear()
            cursor = QTextCursor(doc)
            for i, step in enumerate(self.steps):
                self._insert_step(cursor, i, step)
            shown = "".join(s.text for s in self.steps)
            if self.text.startswith(shown) and len(self.text) > len(shown):
                cursor.insertText(self.text[len(shown) :], QTextCharFormat())
        elif self.role in ("assistant", "note"):
            render_markdown(doc, self.text, self.palette())
        else:
            self.body.setPlainText(self.text)

    # -- token clicks ------------------------------------------------------------------------

    def step_at(self, pos) -> int | None:
        """Step index of the token under a viewport position, if any."""
        cursor = self.body.cursorForPosition(pos)
        for candidate in (cursor.charFormat(),):
            value = candidate.property(TOKEN_INDEX)
            if value is not None:
                return int(value)
        # The format at a cursor is that of the character before it; try the one after too.
        cursor.movePosition(QTextCursor.MoveOperation.Right)
        value = cursor.charFormat().property(TOKEN_INDEX)
        return None if value is None else int(value)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.ToolTip and self.written:
            # Over the text: the written time, unless a link or a format has a tooltip there.
            pos = event.pos()
            if (
                not self.body.anchorAt(pos)
                and not self.body.cursorForPosition(pos).charFormat().toolTip()
            ):
                QToolTip.showText(event.globalPos(), self.written, self.body)
                return True
        if event.type() == QEvent.Type.MouseButtonRelease and self.role == "assistant":
            if self.token_view and not self.body.textCursor().hasSelection():
                index = self.step_at(event.position().toPoint())
                if index is not None and index < len(self.steps):
                    self.token_clicked.emit(self, index)
        return super().eventFilter(watched, event)


INTRO = (
    "<h2>Loopchat</h2><p>A private chat with a Llama model running on this computer.</p>"
    "<p>Type a message below. While the model answers, the panel on the right shows the "
    "tokens it considered at every step; click <b>Tokens</b> on a reply, then any token, "
    "to look back.</p>"
)
BUILTIN_NOTE = (
    "<p>The <b>built-in model</b> is tiny and knows only dictionary questions, like "
    "<i>Define photosynthesis.</i> For real conversations: <b>Models → Choose or download a "
    "model…</b></p>"
)
"""Said on an empty chat with the built-in model: other questions get word salad, which a new
user would otherwise take for a broken app."""


class ChatView(QScrollArea):
    """All messages of the open conversation, newest at the bottom."""

    token_clicked = Signal(object, int)
    edit_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        inner = QWidget()
        inner.setObjectName("chat_inner")
        self._layout = QVBoxLayout(inner)
        self._layout.setContentsMargins(18, 16, 18, 16)
        self._layout.setSpacing(12)
        self._placeholder = QLabel(INTRO)
        self._placeholder.setObjectName("placeholder")
        self._placeholder.setWordWrap(True)
        self._placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._placeholder.setContentsMargins(24, 40, 24, 24)  # all of it in view at 800×600
        self._layout.addWidget(self._placeholder)
        self._layout.addStretch(1)
        self.setWidget(inner)
        self.messages: list[MessageWidget] = []
        self._stick_to_bottom = True
        self.verticalScrollBar().rangeChanged.connect(self._follow)
        self.verticalScrollBar().valueChanged.connect(self._track)

    def set_model_note(self, html: str) -> None:
        """A word about the loaded model under the empty chat's introduction ("" for none)."""
        self._placeholder.setText(INTRO + html)

    def add_message(self, role: str, text: str = "", author: str = "") -> MessageWidget:
        self._placeholder.hide()
        widget = MessageWidget(role, text, author)
        widget.token_clicked.connect(self.token_clicked)
        widget.edit_requested.connect(self.edit_requested)
        # Keep the trailing stretch last so messages pack at the top.
        self._layout.insertWidget(self._layout.count() - 1, widget)
        self.messages.append(widget)
        self._stick_to_bottom = True
        QTimer.singleShot(0, self, self._scroll_to_end)
        return widget

    def remove_message(self, widget: MessageWidget) -> None:
        self.messages.remove(widget)
        widget.setParent(None)
        widget.deleteLater()

    def clear(self) -> None:
        for widget in list(self.messages):
            self.remove_message(widget)
        self._placeholder.show()

    def _track(self, value: int) -> None:
        bar = self.verticalScrollBar()
        self._stick_to_bottom = value >= bar.maximum() - 24

    def _follow(self, _minimum: int, _maximum: int) -> None:
        if self._stick_to_bottom:
            self._scroll_to_end()

    def _scroll_to_end(self) -> None:
        self.verticalScrollBar().setValue(self.verticalScrollBar().maximum())
