"""The list of saved conversations: newest first, filtered by a search box.

Conversations brought in with File → Import carry a small "Imported" tag (the tooltip says when),
so a chat the user did not have here is not mistaken for one they had. Pinned conversations
(the row's context menu, or Ctrl+Shift+P) stay on top under a "Pinned" heading.

From the keyboard the list acts on the highlighted row, not the open chat: Enter or Space opens
it, F2 renames it, Delete deletes it (with the window's Undo). The window's F2 and Delete
shortcuts mean "the open chat" elsewhere, so the list claims those keys while it has the focus.
"""

from __future__ import annotations

import datetime
import time

from PySide6.QtCore import QEvent, QObject, QPoint, QRect, Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QColor,
    QFont,
    QFontMetrics,
    QKeyEvent,
    QKeySequence,
    QPainter,
    QPalette,
)
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
PINNED_ROLE = Qt.ItemDataRole.UserRole + 2
"""Item data: the conversation is pinned to the top of the list."""
PINNED_HEADING = "Pinned"
PIN_SHORTCUT = "Ctrl+Shift+P"
"""Pins or unpins the highlighted conversation (the open one unless the keyboard moved on)."""


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


OPEN_KEYS = (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space)
"""Keys that open the highlighted conversation."""
ROW_KEYS = (*OPEN_KEYS, Qt.Key.Key_F2, Qt.Key.Key_Delete)
"""Keys the list handles itself while it has the focus (before the window's shortcuts)."""


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
    pin_requested = Signal(int, bool)  # (id, pinned)
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
        self.items.installEventFilter(self)
        self.pin_action = QAction("Pin or unpin the conversation", self)
        self.pin_action.setShortcut(QKeySequence(PIN_SHORTCUT))
        self.pin_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.pin_action.setToolTip("Keep the highlighted conversation at the top of the list")
        self.pin_action.triggered.connect(self.toggle_pin_current)
        self.addAction(self.pin_action)
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

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        """Enter/Space open, F2 renames, Delete deletes the highlighted row of the list."""
        if watched is not self.items or not isinstance(event, QKeyEvent):
            return super().eventFilter(watched, event)
        plain = event.modifiers() in (
            Qt.KeyboardModifier.NoModifier,
            Qt.KeyboardModifier.KeypadModifier,
        )
        if not plain or event.key() not in ROW_KEYS:
            return super().eventFilter(watched, event)
        if event.type() == QEvent.Type.ShortcutOverride:
            event.accept()  # the key comes to the list, not to a window shortcut
            return True
        if event.type() == QEvent.Type.KeyPress:
            self.act_on_highlighted(Qt.Key(event.key()))
            return True
        return super().eventFilter(watched, event)

    def act_on_highlighted(self, key: Qt.Key) -> None:
        """What `key` does to the highlighted conversation (nothing on a heading or none)."""
        item = self.items.currentItem()
        conv_id = None if item is None else item.data(Qt.ItemDataRole.UserRole)
        if conv_id is None:
            return
        if key in OPEN_KEYS:
            self.open_requested.emit(conv_id)
        elif key == Qt.Key.Key_F2:
            self._rename(conv_id, item.text())
        elif key == Qt.Key.Key_Delete:
            self.delete_requested.emit(conv_id)

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
            pinned = getattr(conv, "pinned_at", None) is not None
            here = PINNED_HEADING if pinned else group_of(conv.updated_at)
            if here != group:
                group = here
                self._heading(group)
            item = QListWidgetItem(f"{conv.title or 'New conversation'}")
            tip = f"{conv.title}\n{_when(conv.updated_at)}"
            imported_at = getattr(conv, "imported_at", None)
            if imported_at is not None:
                tip += f"\n{imported_tooltip(imported_at)}"
                item.setData(IMPORTED_ROLE, float(imported_at))
                item.setData(Qt.ItemDataRole.AccessibleDescriptionRole, IMPORTED_TAG)
            if pinned:
                tip += f"\nPinned to the top ({PIN_SHORTCUT} or right-click to unpin)"
                item.setData(PINNED_ROLE, True)
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
        """Ask for a new title of `conv_id` (the open conversation, for F2 outside the list)."""
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

    def pinned(self) -> list[int]:
        """Ids of the listed conversations pinned to the top, in list order."""
        return [r.data(Qt.ItemDataRole.UserRole) for r in self._rows() if r.data(PINNED_ROLE)]

    def toggle_pin_current(self) -> None:
        """Pin the highlighted conversation, or unpin it if it is pinned (Ctrl+Shift+P)."""
        conv_id = self.current_id()
        if conv_id is not None:
            self.pin_requested.emit(conv_id, conv_id not in self.pinned())

    def headings(self) -> list[str]:
        rows = (self.items.item(i) for i in range(self.items.count()))
        return [r.text() for r in rows if r.data(Qt.ItemDataRole.UserRole) is None]

    def _menu(self, pos: QPoint) -> None:
        item = self.items.itemAt(pos)
        if item is None or item.data(Qt.ItemDataRole.UserRole) is None:
            return
        conv_id = item.data(Qt.ItemDataRole.UserRole)
        menu = QMenu(self)
        is_pinned = bool(item.data(PINNED_ROLE))
        pin = menu.addAction(
            "Unpin" if is_pinned else "Pin to top",
            lambda: self.pin_requested.emit(conv_id, not is_pinned),
        )
        pin.setShortcut(QKeySequence(PIN_SHORTCUT))  # shown in the menu as a reminder
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
