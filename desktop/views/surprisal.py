"""Surprisal tint: every token of the conversation coloured by how surprised the model was.

Surprisal is −log₂ p(token | what came before): 0 bits for a token the model was sure of, 10 bits
for a 1-in-1000 token. The numbers come from the engine thread (`SurprisalJob`, which calls
`Engine.inspect` on the messages `ChatSession.prompt_messages` gives, as the chat sends them);
this module only paints them. Hovering a token shows p, its rank and the alternatives the model
expected. Each reply gets a thin sparkline of the entropy at every
step: where the model was unsure, whatever it picked.

One unit on screen: bits, for surprisal and entropy alike (the engine's JSON keeps nats, its
documented contract; `bits` converts at the last moment). A tooltip that said "3.6 bits" and
"entropy 4.68 nats" side by side asked the reader to compare numbers in two units.

A reply written by another model than the one open is not tinted: its numbers would be the open
model's surprise at someone else's text, which reads as "this model was unsure here" and is not.
Such a card says why instead (`OTHER_MODEL_TIP`); a branch is tinted from where the open model
took over.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Protocol

from PySide6.QtCore import QEvent, QObject, QPointF, Signal
from PySide6.QtGui import (
    QAction,
    QColor,
    QPainter,
    QPainterPath,
    QPen,
    QTextCharFormat,
    QTextCursor,
    QTextFormat,
)
from PySide6.QtWidgets import QMenu, QToolTip, QWidget

from desktop.controller import EngineController
from desktop.inspect_jobs import InspectFailed, SurprisalJob, SurprisalResult, TokenInfo
from desktop.session import ChatSession
from desktop.turns import ASSISTANT, Turn
from desktop.views.chat_view import MessageWidget
from desktop.views.conversation_view import ConversationView
from desktop.views.topk_panel import visible_token
from engine.events import ModelInfo

log = logging.getLogger(__name__)

SURPRISAL_INDEX = QTextFormat.Property.UserProperty + 7
"""Char-format property: index of the token in the card's TokenInfo list."""
FULL_BITS = 12.0
"""Surprisal shown at full strength (1 in 4096); beyond it every token looks equally startling."""
TOP_SHOWN = 5
LN2 = math.log(2.0)


def bits(nats: float) -> float:
    """A quantity in nats (the engine's unit) in bits (the window's unit)."""
    return nats / LN2


def tint(bits: float | None) -> QColor:
    """Background for a token: clear when expected, warm orange to red as surprise grows."""
    if bits is None:
        return QColor(0, 0, 0, 0)
    strength = max(0.0, min(1.0, bits / FULL_BITS))
    color = QColor.fromHsvF(0.11 * (1.0 - strength), 0.85, 1.0)  # orange -> red
    color.setAlphaF(0.08 + 0.62 * strength)
    return color


def tooltip(token: TokenInfo) -> str:
    """What hovering a token tells: p, surprisal, rank, and what the model expected instead."""
    if token.prob is None:
        return f"“{visible_token(token.text)}”: the first token (nothing before it to predict it)"
    lines = [
        f"“{visible_token(token.text)}”  p = {token.prob:.4g}  ({token.surprisal_bits:.1f} bits)",
        f"rank {token.rank}; entropy here {bits(token.entropy):.1f} bits",
        "expected:",
    ]
    lines += [f"  {visible_token(text)}  {p:.3f}" for text, p in token.top[:TOP_SHOWN]]
    return "\n".join(lines)


def other_model_tip(model: str, open_model: str) -> str:
    """Why a reply is not tinted: another model wrote it (or the first part of a branch)."""
    return (
        f"Not tinted: {model} wrote this, and the open model is {open_model}. Its surprisal "
        "would be the open model's surprise at another model's text, not how sure the writer was."
    )


TOO_LONG_TIP = (
    "Not tinted: with the message it answers, this is longer than the model's whole context, "
    "so the model never read it in one piece."
)


def coverage_note(result: SurprisalResult, max_context: int) -> str:
    """What the tint could not do as usual, in words: read in passes, messages left untinted."""
    parts = []
    if result.windows > 1:
        parts.append(
            f"This conversation is longer than the model's context ({max_context} tokens), so "
            f"the tint read it in {result.windows} overlapping passes: each message is tinted "
            "as the model reads it after the earlier turns that fit, as in the chat, which leaves "
            "out the oldest turns."
        )
    if result.too_long:
        n = len(result.too_long)
        which = "message is" if n == 1 else "messages are"
        parts.append(
            f"{n} {which} not tinted: with the message answered, longer than the whole context."
        )
    return " ".join(parts)


class EntropySparkline(QWidget):
    """A thin line of the entropy at each step of a reply (high = the model was unsure)."""

    def __init__(self, values: Sequence[float], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values = [bits(v) for v in values]
        """Entropy per step, in bits (given in nats, as the engine reports it)."""
        self.setFixedHeight(18)
        self.setObjectName("entropy_sparkline")
        top = max(self.values, default=0.0)
        self.setToolTip(f"Entropy per token (max {top:.1f} bits): where the model was unsure")

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt API
        if len(self.values) < 2:
            return
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        top = max(max(self.values), 1e-6)
        w, h = self.width() - 2, self.height() - 3
        path = QPainterPath()
        for i, v in enumerate(self.values):
            point = QPointF(1 + w * i / (len(self.values) - 1), 1 + h * (1 - v / top))
            if i == 0:
                path.moveTo(point)
            else:
                path.lineTo(point)
        painter.setPen(QPen(self.palette().color(self.foregroundRole()), 1.2))
        painter.drawPath(path)


class _Tips(QObject):
    """Tooltips for one tinted card: the token under the mouse, from its char format (tokens
    before `untinted` were written by another model: their tip says so instead)."""

    def __init__(
        self,
        card: MessageWidget,
        tokens: Sequence[TokenInfo],
        untinted: int = 0,
        untinted_tip: str = "",
    ) -> None:
        super().__init__(card)
        self.card = card
        self.tokens = list(tokens)
        self.untinted, self.untinted_tip = untinted, untinted_tip

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.ToolTip:
            cursor = self.card.body.cursorForPosition(event.pos())
            cursor.movePosition(QTextCursor.MoveOperation.Right)
            index = cursor.charFormat().property(SURPRISAL_INDEX)
            if index is not None and 0 <= int(index) < len(self.tokens):
                i = int(index)
                tip = self.untinted_tip if i < self.untinted else tooltip(self.tokens[i])
                QToolTip.showText(event.globalPos(), tip, watched)
            else:
                QToolTip.hideText()
            return True
        return False


def tokens_within(tokens: Sequence[TokenInfo], chars: int) -> int:
    """How many of `tokens` start within the first `chars` characters of their text."""
    count = at = 0
    for token in tokens:
        if at >= chars:
            break
        count += 1
        at += len(token.text)
    return count


def paint_card(
    card: MessageWidget, tokens: Sequence[TokenInfo], untinted: int = 0, untinted_tip: str = ""
) -> None:
    """Rewrite the card's text as tinted tokens, with hover tips and (replies) a sparkline;
    the first `untinted` tokens (another model's, in a branch) stay clear, `untinted_tip` says
    why."""
    clear_card(card, rerender=False)
    doc = card.body.document()
    doc.clear()
    cursor = QTextCursor(doc)
    for i, token in enumerate(tokens):
        fmt = QTextCharFormat()
        fmt.setBackground(tint(None if i < untinted else token.surprisal_bits))
        fmt.setProperty(SURPRISAL_INDEX, i)
        cursor.insertText(token.text, fmt)
    tips = _Tips(card, tokens, untinted, untinted_tip)
    tips.setObjectName("surprisal_tips")
    card.body.viewport().installEventFilter(tips)
    if card.role == ASSISTANT:
        line = EntropySparkline([t.entropy for t in tokens], card)
        card.layout().addWidget(line)
    card.setProperty("surprisal_tinted", True)


def clear_card(card: MessageWidget, rerender: bool = True) -> None:
    """Take the tint off a card and show its text as usual."""
    for tips in card.findChildren(_Tips):
        card.body.viewport().removeEventFilter(tips)
        tips.deleteLater()
    for line in card.findChildren(EntropySparkline):
        line.setParent(None)
        line.deleteLater()
    if card.property("surprisal_tinted"):
        card.setProperty("surprisal_tinted", False)
        card.body.document().clear()
        card.body.setCurrentCharFormat(QTextCharFormat())  # plain text must not inherit a tint
        if rerender:
            card.set_text(card.text)


TINT_TIP = "Colour every token by −log₂ p; hover for p, rank, alternatives"


class OpenChat(Protocol):
    """The chat on screen, as the see-inside views read it (the main window answers)."""

    @property
    def session(self) -> ChatSession: ...
    @property
    def model_info(self) -> ModelInfo | None: ...
    @property
    def conversation_id(self) -> int | None: ...
    def show_error(self, message: str, kind: str = "error") -> None: ...


class SurprisalTint(QObject):
    """The window's surprisal toggle: asks the engine thread for numbers, paints the cards of
    `chat`; the window calls `refresh` after a reply, a model load and opening a conversation."""

    applied = Signal(int)
    """Emitted after a result was painted, with the number of cards tinted."""

    def __init__(
        self,
        open_chat: OpenChat,
        controller: EngineController,
        chat: ConversationView,
        window: QWidget,
    ) -> None:
        super().__init__(window)
        self.open_chat, self.chat = open_chat, chat
        self.action = QAction("Tint tokens by &surprisal", window)
        self.action.setCheckable(True)
        self.action.setShortcut("Ctrl+Shift+S")
        self.action.setToolTip(TINT_TIP)
        self.action.toggled.connect(self._toggled)
        self._job: int | None = None
        self._turns: list[Turn] = []
        self._offset = 0
        """1 when the job's first message is the system prompt (it has no card)."""
        self._told: tuple | None = None
        self.controller = controller
        controller.worker.inspected.connect(self._on_result)
        window.addAction(self.action)

    def add_to(self, menu: QMenu) -> None:
        """The toggle in `menu` (the View menu), after a separator."""
        menu.addSeparator()
        menu.addAction(self.action)

    @property
    def enabled(self) -> bool:
        return self.action.isChecked()

    def set_unavailable(self, reason: str) -> None:
        """The open model cannot score tokens (`reason` says why; "" when it can): the toggle is
        greyed, off, with the reason as its tooltip."""
        if reason and self.action.isChecked():
            self.action.setChecked(False)
        self.action.setEnabled(not reason)
        self.action.setToolTip(f"{reason}." if reason else TINT_TIP)
        self.action.setStatusTip(f"{reason}." if reason else "")

    def _toggled(self, on: bool) -> None:
        if on:
            self.refresh()
        else:
            self._job = None
            self._told = None
            for card in self.chat.messages:
                clear_card(card)
                if card.toolTip() == TOO_LONG_TIP or card.property("other_model"):
                    card.setToolTip(getattr(card, "written", ""))  # when it was written
                    card.setProperty("other_model", False)

    def refresh(self) -> None:
        """Ask for the open conversation's numbers again (after a reply, on opening one)."""
        if not self.enabled or self.open_chat.model_info is None:
            return
        session = self.open_chat.session
        self._turns = session.model_turns()
        if not self._turns:
            return
        messages = session.prompt_messages(self._turns)
        self._offset = len(messages) - len(self._turns)
        self._job = self.controller.inspect(SurprisalJob(tuple(messages)))

    def _on_result(self, result: object) -> None:
        if getattr(result, "job_id", None) != self._job or not self.enabled:
            return
        self._job = None
        if isinstance(result, InspectFailed):
            # Said once: the tint goes off rather than failing again after every reply.
            self.action.setChecked(False)
            self.open_chat.show_error(f"Surprisal tint turned off: {result.message}", kind="notice")
            return
        assert isinstance(result, SurprisalResult)
        info = self.open_chat.model_info
        open_model = info.name if info is not None else ""
        painted = 0
        too_long = {i - self._offset for i in result.too_long}
        for i, (turn, tokens) in enumerate(
            zip(self._turns, result.tokens[self._offset :], strict=True)
        ):
            card = self.chat.card(turn)
            if card is None:
                continue
            if i in too_long:
                clear_card(card)
                card.setToolTip(TOO_LONG_TIP)
            if tokens is None:
                continue
            if self._paint(card, turn, tokens, open_model):
                painted += 1
        log.debug("surprisal tint on %d cards", painted)
        self._tell_coverage(result)
        self.applied.emit(painted)

    @staticmethod
    def _paint(card: MessageWidget, turn: Turn, tokens, open_model: str) -> bool:
        """Tint a card, unless another model wrote it (then say why on the card); a branch the
        open model continued is tinted from where it took over. True if tinted."""
        if turn.role == ASSISTANT and turn.model and turn.model != open_model:
            clear_card(card)
            card.setToolTip(other_model_tip(turn.model, open_model))
            card.setProperty("other_model", True)
            return False
        untinted, tip = 0, ""
        if turn.role == ASSISTANT and turn.prefix_by_another:
            kept = "".join(s.text for s in turn.steps[: turn.branched_at])
            untinted = tokens_within(tokens, len(kept.lstrip()))
            tip = other_model_tip(turn.prefix_model, open_model)
        paint_card(card, tokens, untinted, tip)
        return True

    def _tell_coverage(self, result: SurprisalResult) -> None:
        """Say once per conversation when it was read in passes or some messages are untinted."""
        info = self.open_chat.model_info
        note = coverage_note(result, info.max_context if info is not None else 0)
        key = (self.open_chat.conversation_id, note)
        if note and key != self._told:
            self._told = key
            self.open_chat.show_error(note, kind="notice")
