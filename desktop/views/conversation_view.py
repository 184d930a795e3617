"""The open conversation on screen: a view of a `ChatSession`, rendered a page at a time.

`ConversationView` listens to the session (it has the `SessionListener` methods) and keeps one
card per turn it shows. A long conversation opens with its latest page only; earlier pages are
built when the user scrolls to the top (or clicks "Show earlier messages"), so opening 10,000
messages neither blocks the GUI nor builds 10,000 text documents.

Editing a sent message happens in the window's message box (`desktop.views.message_edit`).

`reveal(text)` (search that jumps to the match): builds the cards down to the first message that
contains `text`, scrolls it into view and highlights the words found.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QColor, QPalette, QTextCharFormat, QTextCursor, QTextDocument
from PySide6.QtWidgets import (
    QPushButton,
    QSizePolicy,
    QTextEdit,
)

from desktop.session import ChatSession
from desktop.turns import ASSISTANT, Turn
from desktop.views.chat_view import ChatView, MessageWidget
from engine.events import GenerationStarted, Step

PAGE = 25
"""Turns built at a time (the latest page on opening, one more per scroll to the top)."""
CHUNK = 3
"""Cards built per event-loop turn."""
REVEAL_HOLD_MS = 1500
"""How long a revealed match is kept in view while the cards above it settle their heights."""


DAMAGED = "This message could not be read (it is damaged in the database) and is left out."


def dropped_note(n: int) -> str:
    return (
        f"The {n} oldest messages no longer fit the model's context, so they were left out "
        "of the prompt for this reply (the system prompt is kept)."
    )


class ConversationView(ChatView):
    """Cards for a session's turns, built lazily; listens to that session."""

    save_problem = Signal(str)  # "" once saving works again
    version_requested = Signal(object, int)  # (Turn, 1-based version to show)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.earlier_button = QPushButton("Show earlier messages")
        self.earlier_button.setFlat(True)
        self.earlier_button.hide()
        self.earlier_button.clicked.connect(self.load_earlier)
        self._layout.insertWidget(0, self.earlier_button)
        self._turns: list[Turn] = []
        self._first = 0
        """Index in `_turns` of the oldest turn that has a card."""
        self._target = 0
        """Index down to which cards are being built."""
        self._session: ChatSession | None = None
        """The session shown: its `reply` says which turn streams (read, never copied)."""
        self._cards: dict[int, MessageWidget] = {}
        self._notes: dict[int, MessageWidget] = {}
        self.revealed: MessageWidget | None = None
        """The card `reveal` scrolled to (kept in view while the layout settles)."""
        self.verticalScrollBar().valueChanged.connect(self._maybe_load_earlier)

    # -- whole conversations ---------------------------------------------------------------

    def show_session(self, session: ChatSession) -> None:
        """Show a session from its latest page (the list is the session's own, not a copy)."""
        self.clear()
        self._session = session
        self._turns = session.turns
        self._first = len(self._turns)
        self._target = max(0, self._first - PAGE)
        # A conversation of one page is complete when this returns; a longer one starts with
        # its last few turns and the rest of the page follows, a chunk per event-loop turn.
        self._build_chunk(PAGE if self._first <= PAGE else CHUNK)
        QTimer.singleShot(0, self, self._scroll_to_end)

    @property
    def _live(self) -> Turn | None:
        """The shown session's reply in progress, if any (the session owns it)."""
        return self._session.reply if self._session is not None else None

    def clear(self) -> None:
        self.revealed = None
        super().clear()
        self._cards.clear()
        self._notes.clear()
        self._turns = []
        self._first = self._target = 0
        self.earlier_button.hide()

    def load_earlier(self) -> None:
        """Build the page before the oldest card (a few cards per event-loop turn)."""
        if self._first > 0 and self._target == self._first:
            self._stick_to_bottom = False
            self._target = max(0, self._first - PAGE)
            self._build_chunk()

    def _maybe_load_earlier(self, value: int) -> None:
        if value == 0 and self._first > 0 and self.verticalScrollBar().maximum() > 0:
            QTimer.singleShot(0, self, self.load_earlier)

    def _build_chunk(self, size: int = CHUNK) -> None:
        """Cards for the next CHUNK turns above those built, newest first; then yield to the
        event loop (25 Markdown cards at once can hold the GUI for 100 ms on a slow machine)."""
        stop = self._first
        start = max(self._target, stop - size)
        if start >= stop:
            return
        bar = self.verticalScrollBar()
        from_bottom = bar.maximum() - bar.value()
        at = 0
        for turn in self._turns[start:stop]:
            for widget in self._cards_for(turn):
                self._insert(at, widget)
                at += 1
        self._first = start
        self.earlier_button.setVisible(start > 0)
        self.earlier_button.setText(f"Show earlier messages ({start} more)")
        self._placeholder.setVisible(not self.messages)
        if not self._stick_to_bottom:  # keep what the reader looks at in place
            QTimer.singleShot(0, self, lambda: bar.setValue(bar.maximum() - from_bottom))
        if start > self._target:
            QTimer.singleShot(0, self, self._build_chunk)

    def _cards_for(self, turn: Turn) -> list[MessageWidget]:
        cards = []
        if turn.dropped_turns:
            note = MessageWidget("note", dropped_note(turn.dropped_turns))
            self._notes[id(turn)] = note
            cards.append(note)
        if turn.damaged:
            card = MessageWidget("note", DAMAGED)
        elif turn is self._live and not turn.finished:  # streaming: its steps so far, live
            card = MessageWidget(turn.role, "", turn.author)
            for step in turn.steps:
                card.append_step(step)
        else:
            card = MessageWidget(turn.role, turn.content, turn.author)
            if turn.role == ASSISTANT and turn.finished:
                card.steps = list(turn.steps)
                card.finish(turn.content, turn.stats)
            elif turn.role == ASSISTANT and turn.content:  # saved while streaming, never ended
                card.finish(turn.content, turn.stats)
        card.turn = turn
        card.position = turn.position
        card.set_written(turn.created_at)
        if turn.author_note:  # a branch two models wrote: which part is whose
            label = card.author_label
            label.setToolTip(f"{turn.author_note}\n{label.toolTip()}")
        card.set_versions(turn.version, turn.versions, enabled=self._live is None)
        self._cards[id(turn)] = card
        cards.append(card)
        return cards

    def _insert(self, index: int, widget: MessageWidget) -> None:
        widget.token_clicked.connect(self.token_clicked)
        widget.edit_requested.connect(self.edit_requested)
        widget.version_requested.connect(lambda card, v: self.version_requested.emit(card.turn, v))
        # The stats line never widens the column: a long one ("120 tokens · 9.1 tok/s · stopped")
        # would push every card past the right edge of a narrow window.
        widget.meta_label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        widget.meta_label.setMinimumWidth(1)
        offset = self._layout.indexOf(self._placeholder) + 1
        self._layout.insertWidget(offset + index, widget)
        self.messages.insert(index, widget)
        self._placeholder.hide()

    def card(self, turn: Turn) -> MessageWidget | None:
        return self._cards.get(id(turn))

    # -- search that jumps to the match ----------------------------------------------------

    def reveal(self, text: str) -> MessageWidget | None:
        """Scroll to the first shown message containing `text` (case-insensitive, as the list's
        search) and highlight it there; None when no shown message has it."""
        needle = text.strip().casefold()
        if not needle:
            return None
        index = next(
            (
                i
                for i, turn in enumerate(self._turns)
                if not turn.damaged and needle in turn.content.casefold()
            ),
            None,
        )
        if index is None:
            return None
        if index < self._first:  # on an earlier page: build the cards down to it, now
            self._target = index
            self._build_chunk(self._first - index)
        card = self.card(self._turns[index])
        if card is None:
            return None
        highlight_matches(card, text.strip())
        self.revealed = card
        self._stick_to_bottom = False
        QTimer.singleShot(0, self, self._show_revealed)
        QTimer.singleShot(REVEAL_HOLD_MS, self, self._release_revealed)
        return card

    def _show_revealed(self) -> None:
        card = self.revealed
        if card is None or card not in self.messages:
            return
        self.widget().layout().activate()
        spots = card.body.extraSelections()
        if spots:  # the first match itself, not just the top of a long card
            rect = card.body.cursorRect(spots[0].cursor)
            point = card.body.viewport().mapTo(self.widget(), rect.center())
            self.ensureVisible(point.x(), point.y(), 0, max(40, self.viewport().height() // 3))
        else:
            self.ensureWidgetVisible(card, 0, 40)

    def _release_revealed(self) -> None:
        self.revealed = None

    def _follow(self, minimum: int, maximum: int) -> None:
        if self.revealed is not None:  # cards above the match grew: keep the match in view
            QTimer.singleShot(0, self, self._show_revealed)
            return
        super()._follow(minimum, maximum)

    # -- SessionListener -------------------------------------------------------------------

    def turn_added(self, session: ChatSession, turn: Turn) -> None:
        self.revealed = None
        if turn is session.reply:  # a new reply (a branch may start with its old tokens)
            self.enable_versions(False)
        for widget in self._cards_for(turn):
            self._insert(len(self.messages), widget)
        self._stick_to_bottom = True
        QTimer.singleShot(0, self, self._scroll_to_end)

    def turns_removed(self, _session: ChatSession, turns: list[Turn]) -> None:
        for turn in turns:
            for cards in (self._notes, self._cards):
                widget = cards.pop(id(turn), None)
                if widget is not None:
                    self.remove_message(widget)
        self._first = min(self._first, len(self._turns))
        self._placeholder.setVisible(not self.messages)

    def reply_started(self, _session: ChatSession, turn: Turn, started: GenerationStarted) -> None:
        card = self.card(turn)
        if not started.dropped_turns or card is None or id(turn) in self._notes:
            return
        note = MessageWidget("note", dropped_note(started.dropped_turns))
        self._notes[id(turn)] = note
        self._insert(self.messages.index(card), note)  # above the reply it explains

    def show_prefill(self, turn: Turn, done: int, total: int) -> None:
        """Before the first token: how much of the prompt the model has read."""
        card = self.card(turn)
        if card is not None and not card.steps:
            card.show_status(f"Reading your message… {done} / {total} tokens")

    def reply_step(self, _session: ChatSession, turn: Turn, step: Step) -> None:
        card = self.card(turn)
        if card is not None:
            if not card.steps:
                card.show_status("")  # reading done: the tokens speak for themselves
            card.append_step(step)

    def reply_ended(self, _session: ChatSession, turn: Turn) -> None:
        card = self.card(turn)
        if card is not None:
            card.finish(turn.content, turn.stats)
        self.enable_versions(True)

    def enable_versions(self, enabled: bool) -> None:
        """Version arrows are off while a reply streams (the conversation must stay put)."""
        for card in self._cards.values():
            card.enable_versions(enabled)

    def save_failed(self, _session: ChatSession, message: str) -> None:
        self.save_problem.emit(message)

    def saved_again(self, _session: ChatSession) -> None:
        self.save_problem.emit("")


def highlight_matches(card: MessageWidget, text: str) -> int:
    """Mark every occurrence of `text` in the card's shown text (case-insensitive) with the
    theme's highlight colour, the first one selected; return how many were found. A match that
    Markdown split (`**a**b`) is not found in the shown text: the card is then only scrolled to."""
    document = card.body.document()
    tint = QColor(card.palette().color(QPalette.ColorRole.Highlight))
    tint.setAlpha(90)
    spots: list[QTextEdit.ExtraSelection] = []
    cursor = document.find(text, 0, QTextDocument.FindFlag(0))
    while not cursor.isNull() and len(spots) < 200:
        spot = QTextEdit.ExtraSelection()
        spot.cursor = QTextCursor(cursor)
        fmt = QTextCharFormat()
        fmt.setBackground(tint)
        spot.format = fmt
        spots.append(spot)
        cursor = document.find(text, cursor)
    card.body.setExtraSelections(spots)
    return len(spots)
