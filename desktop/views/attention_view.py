"""Attention view: what a generated token looked at, layer by layer and head by head.

Selecting a token of a reply (Tokens view, then click) asks the engine thread to prefill the
reply's prompt plus the reply's tokens before it, with loop attention's capture on, and returns
the weights of the query that chose the token (`AttentionJob`). Nothing is stored per step and
generation never captures, so the view costs nothing while it is closed. The context is shown
tinted by weight for one layer and one head, the heads averaged, or their maximum; a small
layers × heads grid shades each head by how focused it is, to find the interesting ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from PySide6.QtCore import QEvent, QObject, QRectF, Qt, Signal
from PySide6.QtGui import (
    QAction,
    QColor,
    QMouseEvent,
    QPainter,
    QTextCharFormat,
    QTextCursor,
    QTextFormat,
)
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QTextBrowser,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from desktop.controller import EngineController
from desktop.inspect_jobs import AttentionJob, AttentionResult, InspectFailed
from desktop.views.chat_view import MessageWidget
from desktop.views.conversation_view import ConversationView
from desktop.views.surprisal import OpenChat
from desktop.views.topk_panel import visible_token
from desktop.views.window_layout import chat_squeezed, place_dock

log = logging.getLogger(__name__)

AVERAGE = "All heads, averaged"
MAXIMUM = "Max over heads"
POSITION = QTextFormat.Property.UserProperty + 9
SELECT_TEXT = "Select a token of a reply (Tokens, then click) to see its attention."
ACTION_TIP = "Show what a selected token of a reply attended to"


def head_focus(row: Sequence[float]) -> float:
    """1 for a head that puts all weight on one position, 0 for one spread evenly."""
    n = len(row)
    if n < 2:
        return 1.0
    entropy = -sum(w * math.log(w) for w in row if w > 0)
    return max(0.0, 1.0 - entropy / math.log(n))


def combine(heads: Sequence[Sequence[float]], mode: str | int) -> list[float]:
    """One row of weights for the view: a head, the heads' mean (sums to 1) or their maximum."""
    if isinstance(mode, int):
        return list(heads[mode])
    columns = list(zip(*heads, strict=True))
    if mode == MAXIMUM:
        return [max(c) for c in columns]
    return [sum(c) / len(heads) for c in columns]


class HeadGrid(QWidget):
    """Layers (rows) × heads (columns), each cell shaded by the head's focus; click to pick."""

    picked = Signal(int, int)  # layer, head

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.focus: list[list[float]] = []
        self.selected: tuple[int, int | None] = (0, None)
        self.setMinimumHeight(40)
        self.setMouseTracking(True)
        self.setToolTip(
            "Layers (rows) × heads (columns); darker = more focused. Click a head to show it."
        )

    def set_weights(self, weights: Sequence[Sequence[Sequence[float]]]) -> None:
        self.focus = [[head_focus(row) for row in layer] for layer in weights]
        self.setFixedHeight(max(40, 12 * len(self.focus) + 2))
        self.update()

    def _cell(self) -> tuple[float, float]:
        rows = max(1, len(self.focus))
        cols = max(1, len(self.focus[0]) if self.focus else 1)
        return (self.width() - 2) / cols, (self.height() - 2) / rows

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt API
        if not self.focus:
            return
        painter = QPainter(self)
        w, h = self._cell()
        base = self.palette().color(self.palette().ColorRole.Highlight)
        # Relative to the most focused head, so the interesting ones stand out in any model.
        top = max((f for row in self.focus for f in row), default=0.0) or 1.0
        for layer, row in enumerate(self.focus):
            for head, focus in enumerate(row):
                color = QColor(base)
                color.setAlphaF(0.08 + 0.92 * focus / top)
                rect = QRectF(1 + head * w, 1 + layer * h, w - 1, h - 1)
                painter.fillRect(rect, color)
                if self.selected == (layer, head) or (
                    self.selected[1] is None and self.selected[0] == layer
                ):
                    painter.drawRect(rect)

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        if not self.focus:
            return
        w, h = self._cell()
        layer = int((event.position().y() - 1) // h)
        head = int((event.position().x() - 1) // w)
        if 0 <= layer < len(self.focus) and 0 <= head < len(self.focus[0]):
            self.picked.emit(layer, head)


class AttentionView(QWidget):
    """The context tinted by one row of attention weights, with the layer and head pickers."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.result: AttentionResult | None = None
        self.title = QLabel(SELECT_TEXT)
        self.title.setWordWrap(True)
        self.unavailable = ""
        """Why the open model gives no attention weights ("" when it does): shown greyed."""
        self.layer = QComboBox()
        self.layer.setAccessibleName("Layer")
        self.head = QComboBox()
        self.head.setAccessibleName("Head")
        self.grid = HeadGrid()
        self.text = QTextBrowser()
        self.text.setOpenLinks(False)
        self.text.viewport().installEventFilter(self)
        pickers = QHBoxLayout()
        pickers.addWidget(QLabel("Layer"))
        pickers.addWidget(self.layer, 1)
        pickers.addWidget(QLabel("Head"))
        pickers.addWidget(self.head, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addWidget(self.title)
        layout.addLayout(pickers)
        layout.addWidget(self.grid)
        layout.addWidget(self.text, 1)
        self.layer.currentIndexChanged.connect(self._repaint)
        self.head.currentIndexChanged.connect(self._repaint)
        self.grid.picked.connect(self.pick)
        self.setMinimumWidth(380)

    def set_unavailable(self, reason: str) -> None:
        """Grey the view and say why (`reason`), or ("") make it usable again."""
        self.unavailable = reason
        for widget in (self.layer, self.head, self.grid, self.text):
            widget.setEnabled(not reason)
        if reason:
            self.result = None
            self.text.clear()
            self.grid.set_weights([])
            self.title.setText(f"{reason}.")
        elif self.result is None:
            self.title.setText(SELECT_TEXT)

    def show_result(self, result: AttentionResult) -> None:
        self.result = result
        layers, heads = len(result.weights), len(result.weights[0])
        for box in (self.layer, self.head):
            box.blockSignals(True)
            box.clear()
        self.layer.addItems([f"{i}" for i in range(layers)])
        self.layer.setCurrentIndex(layers - 1)
        self.head.addItems([AVERAGE, MAXIMUM] + [f"{i}" for i in range(heads)])
        for box in (self.layer, self.head):
            box.blockSignals(False)
        self.title.setText(
            f"What the model looked at when it chose “{visible_token(result.token_text)}” "
            f"({len(result.texts)} tokens of context; the reply's own start underlined)"
        )
        self.grid.set_weights(result.weights)
        self._repaint()

    def pick(self, layer: int, head: int) -> None:
        self.layer.setCurrentIndex(layer)
        self.head.setCurrentIndex(2 + head)

    def mode(self) -> str | int:
        index = self.head.currentIndex()
        return self.head.currentText() if index < 2 else index - 2

    def layer_weights(self) -> list[list[float]]:
        """[head][position] of the chosen layer, as the engine returned them."""
        if self.result is None:
            return []
        return [list(row) for row in self.result.weights[self.layer.currentIndex()]]

    def shown_weights(self) -> list[float]:
        """The row the text is tinted by (one head, the mean or the maximum)."""
        heads = self.layer_weights()
        return combine(heads, self.mode()) if heads else []

    def _repaint(self) -> None:
        if self.result is None or self.layer.currentIndex() < 0:
            return
        mode = self.mode()
        self.grid.selected = (self.layer.currentIndex(), mode if isinstance(mode, int) else None)
        self.grid.update()
        row = self.shown_weights()
        top = max(row) or 1.0
        base = self.palette().color(self.palette().ColorRole.Highlight)
        doc = self.text.document()
        doc.clear()
        cursor = QTextCursor(doc)
        for i, (text, weight) in enumerate(zip(self.result.texts, row, strict=True)):
            fmt = QTextCharFormat()
            color = QColor(base)
            color.setAlphaF(min(1.0, 0.9 * weight / top))
            fmt.setBackground(color)
            fmt.setProperty(POSITION, i)
            fmt.setFontUnderline(i >= self.result.prompt_tokens)
            cursor.insertText(text if text else "∅", fmt)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.ToolTip and self.result is not None:
            cursor = self.text.cursorForPosition(event.pos())
            cursor.movePosition(QTextCursor.MoveOperation.Right)
            position = cursor.charFormat().property(POSITION)
            if position is not None:
                i = int(position)
                weight = self.shown_weights()[i]
                text = visible_token(self.result.texts[i])
                QToolTip.showText(event.globalPos(), f"{i}: “{text}”  weight {weight:.4f}", watched)
            return True
        return super().eventFilter(watched, event)


class AttentionInspector(QObject):
    """Wires the view into the window: a dock, a View-menu toggle, and the engine requests.

    `window` only gives the dock its place; a click on a token of `chat` asks about it. The dock
    opens beside the chat where the window has room, else below it (window_layout.place_dock),
    and moves below when the window narrows until the chat is at its narrowest.
    """

    shown = Signal(object)  # AttentionResult, after the view shows it

    def __init__(
        self,
        open_chat: OpenChat,
        controller: EngineController,
        chat: ConversationView,
        window: QMainWindow,
    ) -> None:
        super().__init__(window)
        self.open_chat, self.controller, self.chat, self.window = (
            open_chat,
            controller,
            chat,
            window,
        )
        self.view = AttentionView()
        self.dock = QDockWidget("Attention", window)
        self.dock.setObjectName("attention_dock")
        self.dock.setWidget(self.view)
        window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()
        self.action = QAction("&Attention view", window)
        self.action.setCheckable(True)
        self.action.setShortcut("Ctrl+Shift+A")
        self.action.setToolTip(ACTION_TIP)
        self.action.toggled.connect(self._toggled)
        self.dock.visibilityChanged.connect(self._dock_visibility)
        window.installEventFilter(self)
        self._job: int | None = None
        chat.token_clicked.connect(self.select)
        controller.worker.inspected.connect(self._on_result)
        window.addAction(self.action)

    def add_to(self, menu: QMenu) -> None:
        """The toggle in `menu` (the View menu)."""
        menu.addAction(self.action)

    def set_unavailable(self, reason: str) -> None:
        """The open model gives no attention weights (`reason` says why; "" when it does): the
        view stays openable, greyed, with the reason as its title."""
        self.view.set_unavailable(reason)
        self.action.setToolTip(f"{reason}." if reason else ACTION_TIP)
        if reason:
            self._job = None

    def _toggled(self, visible: bool) -> None:
        if visible and not self.dock.isVisible() and not self.dock.isFloating():
            place_dock(self.window, self.dock, self.chat)
        self.dock.setVisible(visible)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        """A narrowing window moves the dock from beside the chat to below it."""
        if (
            watched is self.window
            and event.type() == QEvent.Type.Resize
            and self.dock.isVisible()
            and not self.dock.isFloating()
            and self.window.dockWidgetArea(self.dock) == Qt.DockWidgetArea.RightDockWidgetArea
            and chat_squeezed(self.window, self.chat)
        ):
            place_dock(self.window, self.dock, self.chat)
        return super().eventFilter(watched, event)

    def _dock_visibility(self, visible: bool) -> None:
        # Closed with its own button: uncheck the toggle (hidden with a minimised window: keep);
        # shown by a restored window state: check it.
        if visible or not self.window.isMinimized():
            self.action.setChecked(visible)

    def select(self, card: MessageWidget, index: int) -> int | None:
        """Ask what token `index` of `card`'s reply attended to (only while the view is open)."""
        if not self.dock.isVisible() or self.open_chat.model_info is None or self.view.unavailable:
            return None
        session = self.open_chat.session
        turn = next((t for t in session.turns if self.chat.card(t) is card), None)
        if turn is None or index >= len(card.steps):
            return None
        before = [t for t in session.model_turns() if t.position < turn.position]
        messages = session.prompt_messages(before)
        reply_ids = tuple(step.token_id for step in card.steps)
        self.view.title.setText("Computing attention…")
        self._job = self.controller.inspect(AttentionJob(tuple(messages), reply_ids, index))
        return self._job

    def _on_result(self, result: object) -> None:
        if getattr(result, "job_id", None) != self._job:
            return
        self._job = None
        if isinstance(result, InspectFailed):
            self.view.title.setText(f"Could not compute attention: {result.message}")
            return
        assert isinstance(result, AttentionResult)
        self.view.show_result(result)
        self.shown.emit(result)
