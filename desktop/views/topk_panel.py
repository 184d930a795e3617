"""The live top-k panel: the model's most likely next tokens as labelled probability bars.

Steps can arrive faster than the screen refreshes, so `show_step` only stores the newest one and a
timer repaints at most ~30 times a second. Painting is a handful of rectangles and text runs, so
each repaint is cheap whatever the generation speed.

A branch (the reply continued from another candidate instead, `alternative_chosen`) is a
deliberate act: a click on a row only selects it; the row under the mouse, or the one selected,
shows a **Branch** button, and that button (or Enter on a row chosen with the arrow keys) asks for
the branch. A single stray click, say after the attention dock moved the panel under the cursor,
used to make a new version; now it selects a row at most. The button also ignores a click in its
first moments on a row (`ARM_MS`), so a double click on a row is not a branch either. The window
decides what a branch means for the reply shown, and offers Undo.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QKeyEvent, QPainter, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QToolButton, QWidget

from engine.events import Step

REPAINT_MS = 33
ARM_MS = 400
"""A mouse click on the Branch button counts only once it has sat on its row this long."""
BRANCH_HINT = "Select another token, then Branch to continue the reply from it."


class BranchButton(QToolButton):
    """The row's Branch button: keyboard presses always count, a mouse press only once the
    button has been on its row for `ARM_MS` (not the second half of a double click, nor a click
    that was aimed at whatever the panel replaced under the cursor)."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setObjectName("branch")
        self.setText("Branch")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._armed_at = 0.0

    def rearm(self) -> None:
        """The button moved to another row: mouse clicks wait again."""
        self._armed_at = time.monotonic() + ARM_MS / 1000

    @property
    def armed(self) -> bool:
        return time.monotonic() >= self._armed_at

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt API
        if not self.armed:
            event.accept()  # swallowed: too soon to be meant
            return
        super().mousePressEvent(event)


def percent(prob: float) -> str:
    """A probability as the panel shows it: "<0.1%" rather than a misleading "0.0%"."""
    if 0 < prob < 0.001:
        return "<0.1%"
    return f"{100 * prob:.1f}%"


def choice_note(step: Step, params) -> str:
    """Why the chosen token is not the top row, or "" when it is (or nothing was reported)."""
    top = step.top
    if not top or top[0].token_id == step.token_id:
        return ""
    if params is None:
        return "not the most likely token"
    if params.greedy:
        if params.repetition_penalty != 1.0:
            return "not the top row: the repetition penalty changed the choice"
        return "not the top row"
    return f"not the top row: sampled at temperature {params.temperature:g}"


def visible_token(text: str) -> str:
    """Make whitespace, control characters and raw bytes readable in a one-line label."""
    if text.startswith("<0x") and text.endswith(">") and len(text) == 6:
        return f"byte {text[1:-1]}"
    out = text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "→").replace("\r", "␍")
    out = "".join(c if c.isprintable() else f"byte 0x{ord(c):02X}" for c in out)
    return out if out else "∅"


class TopKPanel(QWidget):
    """Shows one step: its top-k candidates, with the sampled token highlighted."""

    rows_changed = Signal(list)
    """Emitted after each repaint with the rows shown: [(token_id, text, prob, chosen)]."""
    alternative_chosen = Signal(object, int)
    """(the step shown, token id): the user asked to branch to a candidate not chosen."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumWidth(180)
        self._pending: tuple[Step, str | None] | None = None
        """The newest step queued for display, with the title it is shown under."""
        self._step: Step | None = None
        self._title = "Next-token probabilities"
        self._subtitle = "Generate a reply to see what the model considers at each step."
        self._k = 10
        self._params = None
        """The SamplingParams of the reply shown (to say why a choice is not the top row)."""
        self._timer = QTimer(self)
        self._timer.setInterval(REPAINT_MS)
        self._timer.timeout.connect(self._flush)
        self._timer.start()
        self.setAccessibleName("Top-k next tokens")
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # ↑ ↓ choose a row, Enter branches
        self.branchable = True
        """An alternative can be branched to (off where no reply can continue)."""
        self.selected: int | None = None
        """The row selected by a click or the arrow keys (None: none)."""
        self._hovered: int | None = None
        self.branch_button = BranchButton(self)
        self.branch_button.hide()
        self.branch_button.clicked.connect(self._branch_clicked)
        self._button_row: int | None = None
        self._fit_height()

    @property
    def k(self) -> int:
        return self._k

    def set_k(self, k: int) -> None:
        self._k = max(1, int(k))
        self._fit_height()
        self.update()

    def set_params(self, params) -> None:
        """The sampling settings of the reply about to stream."""
        self._params = params

    def _row_height(self) -> int:
        mono = QFont("monospace")
        mono.setPointSizeF(self.font().pointSizeF())
        return max(QFontMetrics(mono).height(), self.fontMetrics().height()) + 10

    def _fit_height(self) -> None:
        """Tall enough for every requested row: the scroll area around it scrolls the rest.

        Empty, it asks only for its title: no scrollbar around an empty panel."""
        header = max(3 * self.fontMetrics().height() + 40, self._rows_top() + 8)
        rows = self._k if self._step else 0
        self.setMinimumHeight(header + rows * self._row_height())

    def show_step(self, step: Step, title: str | None = None) -> None:
        """Queue a step for display (the newest one wins at the next repaint).

        `step` is one as it streams, or one read back from the store. `title` names a stored
        step looked at again ("Token 3 of 12"); without it the panel says "Step N" and why the
        sampler may not have taken the top row."""
        self._pending = (step, title)

    def clear(self) -> None:
        self._pending = None
        self._step = None
        self.selected = self._hovered = None
        self._place_button()
        self._title = "Next-token probabilities"
        self._subtitle = "Generate a reply to see what the model considers at each step."
        self._fit_height()
        self.update()

    def shown_rows(self) -> list[tuple[int, str, float, bool]]:
        """What the panel currently shows (for tests and accessibility)."""
        if not self._step:
            return []
        chosen = self._step.token_id
        return [
            (t.token_id, t.text, t.prob, t.token_id == chosen) for t in self._step.top[: self._k]
        ]

    def flush_now(self) -> None:
        self._flush()

    # -- choosing an alternative -----------------------------------------------------------

    def select(self, row: int | None) -> None:
        """Select row `row` (None: no row); its Branch button shows if it can be branched to."""
        rows = self.shown_rows()
        self.selected = row if row is not None and 0 <= row < len(rows) else None
        self._place_button()
        self.update()

    def _branchable_row(self, row: int | None) -> bool:
        rows = self.shown_rows()
        return self.branchable and row is not None and 0 <= row < len(rows) and not rows[row][3]

    def _place_button(self) -> None:
        """The Branch button sits at the right end of the hovered row, else the selected one."""
        row = self._hovered if self._branchable_row(self._hovered) else self.selected
        if not self._branchable_row(row):
            if self.branch_button.hasFocus():
                self.setFocus()
            self.branch_button.hide()
            self._button_row = None
            return
        rect = self.row_rect(row)
        button = self.branch_button
        size = button.sizeHint()
        height = min(size.height(), int(rect.height()))
        right = int(rect.right()) - self._percent_width() - 8  # the percentage stays readable
        button.setGeometry(
            right - size.width(),
            int(rect.center().y() - height / 2),
            size.width(),
            height,
        )
        if row != self._button_row:
            button.rearm()
            self._button_row = row
            text = visible_token(self.shown_rows()[row][1])
            button.setToolTip(f"Continue the reply from “{text}” instead (a new version)")
            button.setAccessibleName(f"Branch from {text}")
        button.show()

    def _percent_width(self) -> int:
        """Width of the percentage column, as painted."""
        return self.fontMetrics().horizontalAdvance("100.0%") + 6

    def _branch_clicked(self) -> None:
        row = self._button_row
        if self._branchable_row(row):
            self.choose(self.shown_rows()[row][0])

    def row_rect(self, row: int) -> QRectF:
        """Where row `row` (0 = most likely) is painted (for clicks and tests)."""
        margin, width = 12, self.width() - 24
        return QRectF(
            margin - 4,
            self._rows_top() + row * self._row_height() - 3,
            width + 8,
            self._row_height() - 2,
        )

    def _rows_top(self) -> int:
        """The y of the first row: below the title and the wrapped subtitle (as painted)."""
        title_font = QFont(self.font())
        title_font.setBold(True)
        title_font.setPointSizeF(self.font().pointSizeF() * 1.05)
        fm = QFontMetrics(self.font())
        flags = Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap
        sub = fm.boundingRect(0, 0, self.width() - 24, 10 * fm.height(), flags, self._subtitle)
        return 12 + QFontMetrics(title_font).height() + 2 + sub.height() + 10

    def row_at(self, y: float) -> int | None:
        """The row under a y position, if any."""
        rows = self.shown_rows()
        if not rows or y < self._rows_top() - 3:
            return None
        row = int((y - self._rows_top() + 3) // self._row_height())
        return row if row < len(rows) else None

    def choose(self, token_id: int) -> None:
        """Branch to `token_id` at the step shown (what the row's Branch button does)."""
        if self._step is not None and self.branchable:
            self.alternative_chosen.emit(self._step, int(token_id))

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802 - Qt API
        """A click selects a row; it never branches by itself."""
        if event.button() == Qt.MouseButton.LeftButton:
            self.select(self.row_at(event.position().y()))
        super().mouseReleaseEvent(event)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt API
        row = self.row_at(event.position().y())
        if row != self._hovered:
            self._hovered = row
            self._place_button()
        super().mouseMoveEvent(event)

    def leaveEvent(self, event) -> None:  # noqa: N802 - Qt API
        self._hovered = None
        self._place_button()
        super().leaveEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt API
        """↑ ↓ select a row; Enter (or Space) on a selected alternative branches to it."""
        rows = self.shown_rows()
        key = event.key()
        if rows and key in (Qt.Key.Key_Up, Qt.Key.Key_Down):
            step = -1 if key == Qt.Key.Key_Up else 1
            start = -1 if self.selected is None and step > 0 else self.selected
            start = len(rows) if start is None else start
            self.select(max(0, min(len(rows) - 1, start + step)))
            return
        enter = key in (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space)
        if enter and self._branchable_row(self.selected):
            self.choose(rows[self.selected][0])
            return
        super().keyPressEvent(event)

    def _flush(self) -> None:
        if self._pending is None:
            return
        (step, title), self._pending = self._pending, None
        if step is not self._step:
            self.selected = self._hovered = None  # another step: nothing of it chosen yet
            self._button_row = None
        self._step = step
        self._title = title or f"Step {step.index + 1}"
        chosen = visible_token(step.piece)
        self._subtitle = f"Sampled “{chosen}” with p = {percent(step.prob)}"
        note = choice_note(step, self._params if not title else None)
        if note:
            self._subtitle += f" ({note})"
        if self.branchable:
            self._subtitle += f". {BRANCH_HINT}"
        self._fit_height()
        self._place_button()
        self.update()
        self.rows_changed.emit(self.shown_rows())

    # -- painting ---------------------------------------------------------------------------

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self._fit_height()  # the subtitle wraps to the new width
        self._place_button()

    def sizeHint(self):  # noqa: N802 - Qt API
        from PySide6.QtCore import QSize

        return QSize(280, 360)

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        text_color = pal.color(QPalette.ColorRole.WindowText)
        muted = QColor(text_color)
        muted.setAlphaF(0.6)
        accent = pal.color(QPalette.ColorRole.Highlight)
        bar = QColor(accent)
        bar.setAlphaF(0.28)
        track = QColor(text_color)
        track.setAlphaF(0.07)

        margin = 12
        width = self.width() - 2 * margin
        y = margin
        title_font = QFont(self.font())
        title_font.setBold(True)
        title_font.setPointSizeF(self.font().pointSizeF() * 1.05)
        painter.setFont(title_font)
        painter.setPen(text_color)
        fm = QFontMetrics(title_font)
        painter.drawText(
            QRectF(margin, y, width, fm.height()),
            Qt.AlignmentFlag.AlignLeft,
            fm.elidedText(self._title, Qt.TextElideMode.ElideRight, width),
        )
        y += fm.height() + 2
        painter.setFont(self.font())
        fm = QFontMetrics(self.font())
        painter.setPen(muted)
        flags = Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap
        sub = fm.boundingRect(0, 0, width, 10 * fm.height(), flags, self._subtitle)
        painter.drawText(QRectF(margin, y, width, sub.height()), flags, self._subtitle)
        y += sub.height() + 10

        rows = self.shown_rows()
        if not rows:
            return
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        mono.setPointSizeF(self.font().pointSizeF())
        mfm = QFontMetrics(mono)
        row_h = max(mfm.height(), fm.height()) + 10
        label_w = min(int(width * 0.45), mfm.horizontalAdvance("M" * 14))
        pct_w = self._percent_width()  # also fits "<0.1%"
        bar_x = margin + label_w + 8
        bar_w = max(20, width - label_w - 8 - pct_w)
        for row, (_token_id, text, prob, is_chosen) in enumerate(rows):
            rect = QRectF(margin - 4, y - 3, width + 8, row_h - 2)
            if row == self.selected:  # selected, not yet branched to: an outline
                painter.setPen(QPen(accent, 1.5))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawRoundedRect(rect.adjusted(1, 1, -1, -1), 6, 6)
            if is_chosen:
                highlight = QColor(accent)
                highlight.setAlphaF(0.16)
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(highlight)
                painter.drawRoundedRect(rect, 6, 6)
            painter.setFont(mono)
            painter.setPen(text_color)
            label = mfm.elidedText(visible_token(text), Qt.TextElideMode.ElideRight, label_w)
            painter.drawText(
                QRectF(margin, y, label_w, row_h - 8),
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                label,
            )
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(track)
            bar_rect = QRectF(bar_x, y + 2, bar_w, row_h - 12)
            painter.drawRoundedRect(bar_rect, 4, 4)
            painter.setBrush(accent if is_chosen else bar)
            painter.drawRoundedRect(QRectF(bar_x, y + 2, max(2.0, bar_w * prob), row_h - 12), 4, 4)
            painter.setFont(self.font())
            painter.setPen(text_color if is_chosen else muted)
            painter.drawText(
                QRectF(bar_x + bar_w, y, pct_w, row_h - 8),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                percent(prob),
            )
            y += row_h
