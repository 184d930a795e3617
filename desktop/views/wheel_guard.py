"""Keep the mouse wheel from changing number boxes the user is only scrolling past.

Qt's spin boxes take wheel events even without focus, so scrolling the settings pane changed
Top-k from 40 to 38 under the pointer. Guarded boxes take the wheel only once focused (clicked
or tabbed into); otherwise the event goes on to the scroll area around them.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QAbstractSpinBox, QApplication, QComboBox, QWidget


class WheelGuard(QObject):
    """Event filter: a wheel over an unfocused box is ignored by the box (the parent scrolls)."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Wheel and isinstance(watched, QWidget):
            if not watched.hasFocus():
                parent = watched.parentWidget()
                if parent is not None:  # the pane scrolls as if the box were not there
                    QApplication.sendEvent(parent, event)
                return True
        return False


def guard_wheel(root: QWidget) -> WheelGuard:
    """Guard every spin box and combo box under `root`; returns the (root-owned) filter."""
    guard = WheelGuard(root)
    for box in root.findChildren(QAbstractSpinBox) + root.findChildren(QComboBox):
        box.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # no focus from the wheel itself
        box.installEventFilter(guard)
    return guard
