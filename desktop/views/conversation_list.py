"""The list of saved conversations: newest first, filtered by a search box.

Conversations brought in with File → Import carry a small "Imported" tag (the tooltip says when),
so a chat the user did not have here is not mistaken for one they had.
"""

from __future__ import annotations

import datetime
import time

from PySide6.QtCore import QPoint, QRect, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QInputDialog,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)


def _when(timestamp: float) -> str:
    age = time.time() - timestamp
    if age < 86400:
        return time.strftime("%H:%M", time.localtime(timestamp))
    if age < 7 * 86400:
        return time.strftime("%a", time.localtime(timestamp))
    return time.strftime("%d %b", time.localtime(timestamp))


IMPORTED_ROLE = Qt.ItemDataRole.UserRole + 1
"""Item data: when the conversation was imported (None: made here)."""
IMPORTED_TAG = "Imported"


def imported_tooltip(imported_at: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(imported_at))
    return f"Imported from a file on {when}"


class _ImportedTagDelegate(QStyledItemDelegate):
    """Paints a row as usual, its title elided short of a small "Imported" tag on the right."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index) -> None:
        if index.data(IMPORTED_ROLE) is None:
            super().paint(painter, option, index)
            return
        small = QFont(option.font)
        small.setPointSizeF(max(6.5, option.font.pointSizeF() * 0.8))
        tag_fm = QFontMetrics(small)
        tag = QRect(0, 0, tag_fm.horizontalAdvance(IMPORTED_TAG) + 10, tag_fm.height() + 2)
        tag.moveCenter(option.rect.center())
        tag.moveRight(option.rect.right() - 4)
        row = QStyleOptionViewItem(option)
        self.initStyleOption(row, index)
        room = option.rect.width() - tag.width() - 24
        row.text = QFontMetrics(row.font).elidedText(row.text, Qt.TextElideMode.ElideRight, room)
        widget = option.widget
        style = widget.style() if widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, row, painter, widget)
        color = QColor(option.palette.color(QPalette.ColorRole.Text))
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        color.setAlphaF(0.10)
        painter.setBrush(color)
        painter.drawRoundedRect(tag, 4, 4)
        color.setAlphaF(0.7)
        painter.setPen(color)
        painter.setFont(small)
        painter.drawText(tag, Qt.AlignmentFlag.AlignCenter, IMPORTED_TAG)
        painter.restore()


def group_of(timestamp: float, now: float | None = None) -> str:
    """ "Today", "Yesterday" or "Earlier", by local calendar day."""
    today = datetime.date.fromtimestamp(time.time() if now is None else now)
    day = datetime.date.fromtimestamp(timestamp)
    if day >= today:
        return "Today"
    if day == today - datetime.timedelta(days=1):
        return "Yesterday"
    return "Earlier"


class ConversationList(QWidget):
    """Shows conversations; asks the window to open, rename, delete or export them."""

    open_requested = Signal(int)
    new_requested = Signal()
    rename_requested = Signal(int, str)
    delete_requested = Signal(int)
    export_requested = Signal(int, str)  # (id, "md" | "json")
    search_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("conversations")
        self._open_id: int | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 6, 10)
        layout.setSpacing(8)
        self.new_button = QPushButton("+  New chat")
        self.new_button.setToolTip("Start a new conversation (Ctrl+N)")
        self.new_button.clicked.connect(self.new_requested)
        layout.addWidget(self.new_button)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search conversations")
        self.search.setClearButtonEnabled(True)
        layout.addWidget(self.search)
        self.items = QListWidget()
        self.items.setObjectName("conversation_items")
        self.items.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.items.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.items.setWordWrap(False)
        self.items.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.items.customContextMenuRequested.connect(self._menu)
        self.items.setItemDelegate(_ImportedTagDelegate(self.items))
        self.items.itemClicked.connect(self._clicked)
        layout.addWidget(self.items, 1)
        # Search as you type, without querying on every keystroke.
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(150)
        self._debounce.timeout.connect(lambda: self.search_changed.emit(self.search.text()))
        self.search.textChanged.connect(lambda _t: self._debounce.start())

    def _clicked(self, item: QListWidgetItem) -> None:
        conv_id = item.data(Qt.ItemDataRole.UserRole)
        if conv_id is not None:  # not a group heading
            self.open_requested.emit(conv_id)

    def _heading(self, text: str) -> None:
        item = QListWidgetItem(text)
        item.setFlags(Qt.ItemFlag.NoItemFlags)  # not selectable, not clickable
        font = item.font()
        font.setBold(True)
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.9))
        item.setFont(font)
        self.items.addItem(item)

    def show_conversations(self, conversations: list, current: int | None) -> None:
        """Newest first, under Today / Yesterday / Earlier headings."""
        self._open_id = current
        self.items.clear()
        group = None
        for conv in conversations:
            if group_of(conv.updated_at) != group:
                group = group_of(conv.updated_at)
                self._heading(group)
            item = QListWidgetItem(f"{conv.title or 'New conversation'}")
            tip = f"{conv.title}\n{_when(conv.updated_at)}"
            imported_at = getattr(conv, "imported_at", None)
            if imported_at is not None:
                tip += f"\n{imported_tooltip(imported_at)}"
                item.setData(IMPORTED_ROLE, float(imported_at))
                item.setData(Qt.ItemDataRole.AccessibleDescriptionRole, IMPORTED_TAG)
            item.setToolTip(tip)
            item.setData(Qt.ItemDataRole.UserRole, conv.id)
            self.items.addItem(item)
            if conv.id == current:
                item.setSelected(True)
                self.items.setCurrentItem(item)

    def focus_search(self) -> None:
        self.show()
        self.search.setFocus()
        self.search.selectAll()

    def current_id(self) -> int | None:
        item = self.items.currentItem()
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def rename(self, conv_id: int | None) -> None:
        """Ask for a new title of `conv_id` (the open conversation, for F2)."""
        for i in range(self.items.count()):
            item = self.items.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == conv_id:
                self._rename(conv_id, item.text())
                return

    def delete_current(self) -> None:
        conv_id = self.current_id()
        if conv_id is not None:
            self.delete_requested.emit(conv_id)

    def _rows(self) -> list[QListWidgetItem]:
        """The conversations' rows (not the group headings)."""
        rows = (self.items.item(i) for i in range(self.items.count()))
        return [r for r in rows if r.data(Qt.ItemDataRole.UserRole) is not None]

    def ids(self) -> list[int]:
        return [r.data(Qt.ItemDataRole.UserRole) for r in self._rows()]

    def titles(self) -> list[str]:
        return [r.text() for r in self._rows()]

    def imported(self) -> list[int]:
        """Ids of the listed conversations marked as imported."""
        return [r.data(Qt.ItemDataRole.UserRole) for r in self._rows() if r.data(IMPORTED_ROLE)]

    def headings(self) -> list[str]:
        rows = (self.items.item(i) for i in range(self.items.count()))
        return [r.text() for r in rows if r.data(Qt.ItemDataRole.UserRole) is None]

    def _menu(self, pos: QPoint) -> None:
        item = self.items.itemAt(pos)
        if item is None or item.data(Qt.ItemDataRole.UserRole) is None:
            return
        conv_id = item.data(Qt.ItemDataRole.UserRole)
        menu = QMenu(self)
        menu.addAction("Rename…", lambda: self._rename(conv_id, item.text()))
        menu.addAction("Export as Markdown…", lambda: self.export_requested.emit(conv_id, "md"))
        menu.addAction("Export as JSON…", lambda: self.export_requested.emit(conv_id, "json"))
        menu.addSeparator()
        menu.addAction("Delete", lambda: self.delete_requested.emit(conv_id))
        menu.exec(self.items.mapToGlobal(pos))
        self.mark_open(self._open_id)  # a right-click must not move the highlight off the open chat

    def mark_open(self, conv_id: int | None) -> None:
        """Highlight the open conversation's row (none when it is a new, unsaved chat)."""
        self._open_id = conv_id
        for row in self._rows():
            if row.data(Qt.ItemDataRole.UserRole) == conv_id:
                self.items.setCurrentItem(row)
                return
        self.items.clearSelection()
        self.items.setCurrentItem(None)

    def _rename(self, conv_id: int, current: str) -> None:
        title, ok = QInputDialog.getText(self, "Rename conversation", "Title:", text=current)
        if ok and title.strip():
            self.rename_requested.emit(conv_id, title.strip())
