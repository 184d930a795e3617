"""Step mode's panel: how the sampler chose the token just generated, stage by stage.

One compact tree: a header per stage (model, repetition penalty, temperature, top-k, top-p,
min-p) saying how many tokens survive it, under it that stage's most likely tokens with their
probabilities renormalised over the survivors, and one "others" row so each stage adds up to 1.
Above it, the pick and, when sampling, a bar of the last distribution with the mark where the
random draw landed. Only palette colours are used, so it reads in light and dark themes alike,
and it fits the side panel of an 800×600 window (scrolls, stages that change nothing collapse).
"""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPen
from PySide6.QtWidgets import (
    QHeaderView,
    QLabel,
    QSizePolicy,
    QStyledItemDelegate,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.views.topk_panel import visible_token

IDLE_TEXT = (
    "Step mode: type a message and press Next token (F10) to see how each token of the reply "
    "is chosen. Continue (F5) writes the rest as usual."
)


def percent(p: float) -> str:
    """A probability as the panel shows it: enough digits to tell small ones apart."""
    if p <= 0:
        return "0%"
    if p < 0.001:
        return "<0.1%"
    return f"{100 * p:.1f}%"


PROB = Qt.ItemDataRole.UserRole + 3
"""Item data: the row's probability (0..1), drawn as a bar behind its percentage."""


class BarDelegate(QStyledItemDelegate):
    """Paints a probability as a thin bar along the bottom of its cell, under the number, in the
    palette's highlight colour (so it reads in light and dark themes; behind the digits a long
    bar made "51.6%" hard to read)."""

    def paint(self, painter: QPainter, option, index) -> None:
        super().paint(painter, option, index)
        p = index.data(PROB)
        if isinstance(p, float):
            color = QColor(option.palette.color(option.palette.ColorRole.Highlight))
            rect = QRectF(option.rect).adjusted(2, 0, -2, -1)
            rect.setTop(rect.bottom() - 3)
            rect.setWidth(rect.width() * max(0.0, min(1.0, p)))
            painter.fillRect(rect, color)


SHORT_TITLES = {"penalty": "Repeat penalty"}


def stage_header(number: int, stage) -> str:
    """One short line that fits a narrow panel: "4 Top-k 40 → 40 left", "2 Repeat penalty: off"."""
    title = SHORT_TITLES.get(stage.key, stage.title)
    if stage.key == "model":
        return f"{number} {title} → {stage.survivors} tokens"
    if not stage.active:
        return f"{number} {title}: {stage.setting or 'off'}"
    if stage.key in ("penalty", "temperature"):  # they reshape, they drop nothing
        return f"{number} {title} {stage.setting}"
    return f"{number} {title} {stage.setting} → {stage.survivors} left"


def pick_text(stages, index: int | None) -> str:
    """What was picked, how likely it was where it was drawn from, and how."""
    which = f"Token {index}: " if index else ""
    token = f"“{visible_token(stages.text)}”"
    if stages.is_eos:
        return f"{which}picked {token}, end of sequence: the reply ends here."
    if stages.greedy:
        return f"{which}picked {token}, the most likely token (temperature 0, no draw)."
    start, end = stages.span
    return (
        f"{which}picked {token}: p = {percent(stages.pick_prob)} after the filters, rank "
        f"{stages.pick_rank}. The draw u = {stages.draw:.3f} landed in its span "
        f"[{start:.3f}, {end:.3f})."
    )


def check_text(check, step, index: int) -> str:
    """Speculative decoding's check at token `index`, in words (plain text)."""
    who = "Prompt lookup" if check.draft_kind == "lookup" else "The draft model"
    guess = visible_token(check.proposed_text)
    took = visible_token(step.piece or step.text)
    if check.u is None:  # greedy
        if check.accepted:
            return f"Token {index}: {who} proposed “{guess}”, the model's most likely token: kept."
        return (
            f"Token {index}: {who} proposed “{guess}”, but the model's most likely token is "
            f"“{took}”: rejected, “{took}” is taken, and the rest of the draft is dropped."
        )
    ratio = check.p / check.q if check.q > 0 else float("inf")
    numbers = (
        f"model p = {check.p:.3f}, draft q = {check.q:.3f}, p/q = {ratio:.3f}; "
        f"uniform draw u = {check.u:.3f}"
    )
    if check.accepted:
        return f"Token {index}: {who} proposed “{guess}” ({numbers} < p/q): accepted."
    return (
        f"Token {index}: {who} proposed “{guess}” ({numbers} ≥ p/q): rejected. “{took}” was "
        "drawn instead from the residual below, and the rest of the draft is dropped."
    )


class DrawBar(QWidget):
    """The last stage's distribution as one bar (widths = probabilities, most likely first), the
    picked token's span in full colour and a mark where the uniform draw landed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFixedHeight(22)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.segments: list[float] = []
        self.span: tuple[float, float] | None = None
        self.draw: float | None = None

    def show_draw(self, stages) -> None:
        rows = stages.stages[-1].rows
        if rows and rows[-1].token_id == stages.token_id and stages.pick_rank >= len(rows):
            rows = rows[:-1]  # listed out of turn: its span is drawn where it really lies
        self.segments = [r.prob for r in rows]
        self.span, self.draw = stages.span, stages.draw
        start, end = self.span or (0.0, 0.0)
        self.setToolTip(
            f"The last stage's tokens laid end to end (widths = probabilities). The draw "
            f"u = {self.draw:.3f} landed in [{start:.3f}, {end:.3f}): "
            f"“{visible_token(stages.text)}”."
        )
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt API
        if self.draw is None or self.span is None:
            return
        painter = QPainter(self)
        highlight = self.palette().color(self.palette().ColorRole.Highlight)
        text = self.palette().color(self.palette().ColorRole.WindowText)
        w, h = self.width() - 2, self.height() - 8
        faint = QColor(highlight)
        faint.setAlphaF(0.12)
        painter.fillRect(QRectF(1, 6, w, h), faint)
        x = 1.0
        for i, p in enumerate(self.segments):
            color = QColor(highlight)
            color.setAlphaF(0.4 if i % 2 else 0.25)
            painter.fillRect(QRectF(x, 6, w * p, h), color)
            x += w * p
        start, end = self.span
        painter.fillRect(QRectF(1 + w * start, 6, max(2.0, w * (end - start)), h), highlight)
        mark = 1 + w * self.draw
        painter.setPen(QPen(text, 2))
        painter.drawLine(int(mark), 0, int(mark), self.height())


TOKEN_ID = Qt.ItemDataRole.UserRole + 1
"""A token row's id (header and "others" rows have none)."""
BRANCH_TIP = "Click to take this token instead: a new version of the reply goes on from it"


class StepView(QWidget):
    """The stage tables of the last step-mode pick; `show_stages` fills them."""

    alternative_chosen = Signal(int, str)
    """(token id, its text): a token other than the pick was clicked; the reply should go on
    from it instead."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("step_view")
        self.title = QLabel("Sampler, step by step")
        self.title.setObjectName("section")
        self.status = QLabel(IDLE_TEXT)
        self.status.setWordWrap(True)
        self.status.setObjectName("meta")
        self.pick = QLabel("")
        self.pick.setWordWrap(True)
        self.pick.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.draw_bar = DrawBar()
        self.draw_bar.hide()
        self.draft = QLabel("")
        """Speculative decoding's check of the token at this place (`show_check`)."""
        self.draft.setObjectName("draft_check")
        self.draft.setWordWrap(True)
        self.draft.setTextFormat(Qt.TextFormat.PlainText)  # token text is data, never markup
        self.draft.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.draft.hide()
        self.tree = QTreeWidget()
        self.tree.setColumnCount(2)
        self.tree.setHeaderLabels(["Stage / token", "p"])
        self.tree.setIndentation(12)
        self.tree.setItemDelegateForColumn(1, BarDelegate(self.tree))
        self.tree.setRootIsDecorated(True)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(False)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Fixed)
        header.resizeSection(1, self.fontMetrics().horizontalAdvance("100.0%") + 24)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 6, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.title)
        body = QVBoxLayout()
        body.setContentsMargins(12, 0, 4, 0)  # lined up with the title's own padding
        body.setSpacing(4)
        for widget in (self.status, self.draft, self.pick, self.draw_bar):
            body.addWidget(widget)
        body.addWidget(self.tree, 1)
        layout.addLayout(body, 1)
        self.stages = None
        self._expanded: dict[str, bool] = {}
        """Stages the user opened or folded, kept from one step to the next."""
        self._filling = False
        self.tree.itemExpanded.connect(lambda item: self._remember(item, True))
        self.tree.itemCollapsed.connect(lambda item: self._remember(item, False))
        self.tree.itemClicked.connect(self._clicked)

    def _clicked(self, item: QTreeWidgetItem, _column: int) -> None:
        token_id = item.data(0, TOKEN_ID)
        if token_id is not None and self.stages is not None and token_id != self.stages.token_id:
            text = item.text(0).removeprefix("▶ ")
            self.alternative_chosen.emit(int(token_id), text)

    def choose(self, token_id: int) -> None:
        """Click the first row showing `token_id` (what a user's click does; for tests)."""
        for i in range(self.tree.topLevelItemCount()):
            head = self.tree.topLevelItem(i)
            for j in range(head.childCount()):
                if head.child(j).data(0, TOKEN_ID) == token_id:
                    self._clicked(head.child(j), 0)
                    return

    def _remember(self, item: QTreeWidgetItem, expanded: bool) -> None:
        if not self._filling and self.stages is not None and item.parent() is None:
            index = self.tree.indexOfTopLevelItem(item)
            self._expanded[self.stages.stages[index].key] = expanded

    def clear(self, status: str = IDLE_TEXT) -> None:
        self.stages = None
        self.tree.clear()
        self.pick.setText("")
        self.draw_bar.hide()
        self.draft.hide()
        self.status.setText(status)

    def show_check(self, step, index: int) -> None:
        """Speculative decoding at token `index` (1-based): what the draft proposed, the model's
        p and the draft's q for it, the uniform draw and the verdict; on a rejection, the
        residual distribution max(0, p − q) the token was drawn from instead.

        A greedy check comes with the sampler's own tables (`show_stages`), which stay; a
        sampled one has no sampler account (the draw compares p and q), so the tables give
        way to the residual."""
        check = step.check
        self.draft.setText(check_text(check, step, index))
        self.draft.show()
        if check.u is None:
            return
        self.stages = None
        self.pick.setText("")
        self.draw_bar.hide()
        self.tree.clear()
        if check.accepted:
            return
        head = QTreeWidgetItem(["Residual: max(0, p − q), renormalised", ""])
        head.setToolTip(0, "What is left of the model's distribution once the draft's is taken off")
        self.tree.addTopLevelItem(head)
        head.setFirstColumnSpanned(True)
        for row in check.residual:
            mark = "▶ " if row.token_id == step.token_id else ""
            item = QTreeWidgetItem([mark + visible_token(row.text), percent(row.prob)])
            item.setTextAlignment(1, Qt.AlignmentFlag.AlignRight)
            item.setData(1, PROB, float(row.prob))
            item.setToolTip(0, f"id {row.token_id}: residual p = {row.prob:.6f}")
            head.addChild(item)
        head.setExpanded(True)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def show_stages(self, stages, index: int | None = None) -> None:
        """Show one pick (`engine.events.SamplerStages`); `index` is its place in the reply."""
        self.stages = stages
        self.draft.hide()
        self.pick.setText(pick_text(stages, index))
        if stages.draw is not None:
            self.draw_bar.show_draw(stages)
            self.draw_bar.show()
        else:
            self.draw_bar.hide()
        self._filling = True
        self.tree.clear()
        picked_item = None
        bold = QFont(self.font())
        bold.setBold(True)
        last_active = max(i for i, s in enumerate(stages.stages) if s.active)
        for number, stage in enumerate(stages.stages, start=1):
            head = QTreeWidgetItem([stage_header(number, stage), ""])
            head.setToolTip(0, f"{stage.title}: {stage.note}" if stage.note else stage.title)
            head.setFont(0, bold)
            self.tree.addTopLevelItem(head)
            head.setFirstColumnSpanned(True)  # only takes effect once the item is in the tree
            for row in stage.rows:
                item = QTreeWidgetItem([visible_token(row.text), percent(row.prob)])
                item.setTextAlignment(1, Qt.AlignmentFlag.AlignRight)
                item.setData(1, PROB, float(row.prob))
                item.setData(0, TOKEN_ID, int(row.token_id))
                tip = f"id {row.token_id}: p = {row.prob:.6f}"
                if row.token_id != stages.token_id and not stages.is_eos:
                    tip += f"\n{BRANCH_TIP}"
                item.setToolTip(0, tip)
                if row.token_id == stages.token_id:  # the pick, followed through the stages
                    item.setText(0, f"▶ {visible_token(row.text)}")
                    if number - 1 == last_active:
                        for column in range(2):
                            item.setFont(column, bold)
                        picked_item = item
                head.addChild(item)
            if stage.rest > 0:
                others = stage.survivors - len(stage.rows)
                rest = QTreeWidgetItem([f"… {others} more", percent(stage.rest)])
                rest.setTextAlignment(1, Qt.AlignmentFlag.AlignRight)
                rest.setData(1, PROB, float(stage.rest))
                rest.setToolTip(0, "the probability of every token not listed, together")
                head.addChild(rest)
            # Stages that change nothing fold away, the ones that act stay open, unless the
            # user chose otherwise for that stage.
            head.setExpanded(self._expanded.get(stage.key, stage.active or stage.key == "model"))
        self._filling = False
        if picked_item is not None and picked_item.parent().isExpanded():
            self.tree.scrollToItem(picked_item)  # the pick, where it was drawn from, in sight

    def shown_rows(self) -> dict[str, list[tuple[str, str]]]:
        """Per stage key: (token, p) as displayed, the "others" row included (for tests)."""
        out: dict[str, list[tuple[str, str]]] = {}
        if self.stages is None:
            return out
        for i, stage in enumerate(self.stages.stages):
            head = self.tree.topLevelItem(i)
            out[stage.key] = [
                (head.child(j).text(0), head.child(j).text(1)) for j in range(head.childCount())
            ]
        return out
