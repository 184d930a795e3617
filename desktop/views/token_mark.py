"""The token picked in a reply's Tokens view, marked where it sits in the text.

A click on a token fills the top-k panel (and the attention view) with that token; without a
mark on the reply the user could not tell which of the shaded tokens the panel describes. The
mark is an extra selection on the card's text box: the document itself (its token boundaries,
a surprisal tint) is left as it is, and only one token in the chat is marked at a time.
"""

from __future__ import annotations

from PySide6.QtGui import QPalette, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import QTextEdit, QWidget

from desktop.views.chat_view import TOKEN_INDEX, MessageWidget


def token_spans(card: MessageWidget, index: int) -> list[tuple[int, int]]:
    """(start, end) document positions of step `index`'s text in `card` (several when the
    token holds a line break); empty when the card does not show it token by token."""
    doc = card.body.document()
    spans = []
    block = doc.begin()
    while block.isValid():
        fragments = block.begin()
        while not fragments.atEnd():
            fragment = fragments.fragment()
            if fragment.isValid() and fragment.charFormat().property(TOKEN_INDEX) == index:
                spans.append((fragment.position(), fragment.position() + fragment.length()))
            fragments += 1
        block = block.next()
    return spans


def mark_token(chat: QWidget, card: MessageWidget, index: int) -> bool:
    """Mark token `index` of `card` in the palette's selection colours (readable in both
    themes) and take the mark off any other card of `chat`. False if it is not shown."""
    for other in chat.findChildren(MessageWidget):
        if other is not card and other.body.extraSelections():
            other.body.setExtraSelections([])
    palette = card.body.palette()
    fmt = QTextCharFormat()
    fmt.setBackground(palette.color(QPalette.ColorRole.Highlight))
    fmt.setForeground(palette.color(QPalette.ColorRole.HighlightedText))
    selections = []
    for start, end in token_spans(card, index):
        selection = QTextEdit.ExtraSelection()
        cursor = QTextCursor(card.body.document())
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        selection.cursor = cursor
        selection.format = fmt
        selections.append(selection)
    card.body.setExtraSelections(selections)
    return bool(selections)


def marked_text(card: MessageWidget) -> str:
    """The text under the card's mark ("" when none): what a test or a reader sees marked."""
    return "".join(s.cursor.selectedText() for s in card.body.extraSelections())
