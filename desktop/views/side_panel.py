"""The side panel: the top-k panel above the system prompt and the generation settings.

The system prompt has a section of its own (it belongs to the chat, with a default for new chats
and presets), not a row among the sampling fields, where it looked like a global setting.

A vertical splitter the window assembles; a feature puts its own panel on top (`add_on_top`) and
may hide the top-k list while its panel stands in for it (`show_top_k`).
"""

from __future__ import annotations

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QFrame, QLabel, QScrollArea, QSplitter, QVBoxLayout, QWidget

from desktop.views.sampling_panel import SamplingPanel
from desktop.views.topk_panel import TopKPanel


def _scroll(widget: QWidget) -> QScrollArea:
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # one scrollbar
    scroll.setWidget(widget)
    return scroll


def _section(text: str) -> QLabel:
    title = QLabel(text)
    title.setObjectName("section")
    return title


class SidePanel(QSplitter):
    """`topk` (every requested row, scrolled when the panel is short) above `sampling`."""

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Orientation.Vertical, parent)
        self.setObjectName("side")
        self.topk = TopKPanel()
        self.sampling = SamplingPanel(settings)
        self.topk.set_k(self.sampling.report_top.value())
        fields = QWidget()  # the fields packed at the top, not spread over a tall pane
        fields_layout = QVBoxLayout(fields)
        fields_layout.setContentsMargins(0, 6, 0, 0)
        fields_layout.setSpacing(2)
        fields_layout.addWidget(_section("System prompt"))
        fields_layout.addWidget(self.sampling.prompt_box)
        fields_layout.addWidget(_section("Generation settings"))
        fields_layout.addWidget(self.sampling)
        fields_layout.addStretch(1)
        bottom = _scroll(fields)
        self._rows = _scroll(self.topk)
        self.addWidget(self._rows)
        self.addWidget(bottom)
        self.setStretchFactor(0, 1)  # settings get as much room as the panel
        self.setStretchFactor(1, 1)
        self.setCollapsible(0, False)

    def add_on_top(self, panel: QWidget, stretch: int = 2) -> None:
        """A feature's panel above the top-k list."""
        self.insertWidget(0, panel)
        self.setStretchFactor(0, stretch)

    def show_top_k(self, visible: bool) -> None:
        """Show or hide the top-k list (a feature's panel may stand in for it)."""
        self._rows.setVisible(visible)
