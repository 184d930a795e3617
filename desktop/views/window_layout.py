"""Where the main window's widgets sit, and what its status bar says.

Kept apart from `desktop.main_window` (the wiring) so each reads on its own: `build_layout` makes
the widgets the window and the tests use (`input`, `send_button`, `chat`, `sampling`, ...) and
sets them as attributes of the window; `StatusLine` words the status bar.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, Slot
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QStatusBar,
    QVBoxLayout,
    QWidget,
)

from desktop.settings_values import setting_bytes
from desktop.views.banner import Banner
from desktop.views.conversation_list import ConversationList
from desktop.views.conversation_view import ConversationView
from desktop.views.elided_label import ElidedLabel
from desktop.views.input_box import InputBox
from desktop.views.sampling_panel import SamplingPanel
from desktop.views.topk_panel import TopKPanel
from engine.events import GenerationResult, GenerationStarted, ModelInfo, Step

NO_MODEL = "No model — Models → Choose or download a model…"


def _button(text: str, tip: str = "") -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    return button


def _chat_column(w) -> QWidget:
    """Banner, conversation, Regenerate, then the input with Send and Stop."""
    w.chat = ConversationView()
    w.banner = Banner()
    w.input = InputBox()
    w.send_button = _button("Send")
    w.send_button.setObjectName("primary")
    w.send_button.setDefault(True)
    w.stop_button = _button("Stop", "Stop generating (Esc)")
    w.regenerate_button = _button("Regenerate", "Answer the last message again")
    buttons = QVBoxLayout()
    buttons.setSpacing(6)
    buttons.addWidget(w.send_button)
    buttons.addWidget(w.stop_button)
    buttons.addStretch(1)
    input_row = QHBoxLayout()
    input_row.setContentsMargins(18, 8, 18, 14)
    input_row.setSpacing(8)
    input_row.addWidget(w.input, 1)
    input_row.addLayout(buttons)
    actions_row = QHBoxLayout()
    actions_row.setContentsMargins(18, 0, 18, 0)
    actions_row.addStretch(1)
    actions_row.addWidget(w.regenerate_button)
    w.actions_row = actions_row  # step mode adds Next token and Continue here
    w.input_hint = QLabel("")
    w.input_hint.setObjectName("meta")
    w.input_hint.setContentsMargins(20, 0, 18, 6)
    column = QWidget()
    layout = QVBoxLayout(column)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(0)
    layout.addWidget(w.banner)
    layout.addWidget(w.chat, 1)
    layout.addLayout(actions_row)
    layout.addLayout(input_row)
    layout.addWidget(w.input_hint)
    return column


def _side(w) -> QSplitter:
    """The top-k panel above the generation settings."""
    w.topk = TopKPanel()
    w.sampling = SamplingPanel(w.settings)
    w.topk.set_k(w.sampling.report_top.value())
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # one scrollbar
    fields = QWidget()  # the fields packed at the top, not spread over a tall pane
    fields_layout = QVBoxLayout(fields)
    fields_layout.setContentsMargins(0, 0, 0, 0)
    fields_layout.addWidget(w.sampling)
    fields_layout.addStretch(1)
    scroll.setWidget(fields)
    title = QLabel("Generation settings")
    title.setObjectName("section")
    bottom = QWidget()
    bottom_layout = QVBoxLayout(bottom)
    bottom_layout.setContentsMargins(0, 6, 0, 0)
    bottom_layout.addWidget(title)
    bottom_layout.addWidget(scroll, 1)
    rows = QScrollArea()  # every requested row, scrolled when the panel is short
    rows.setWidgetResizable(True)
    rows.setFrameShape(QFrame.Shape.NoFrame)
    rows.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    rows.setWidget(w.topk)
    side = QSplitter(Qt.Orientation.Vertical)
    side.setObjectName("side")
    side.addWidget(rows)
    side.addWidget(bottom)
    side.setStretchFactor(0, 1)  # settings get as much room as the panel
    side.setStretchFactor(1, 1)
    side.setCollapsible(0, False)
    return side


MIN_WINDOW = (760, 520)
"""Below this the chat column, the list and the side panel no longer fit side by side."""


def split_sizes(width: int) -> list[int]:
    """List | chat | side widths for a window `width` wide: the chat gets what is left."""
    listing = max(160, min(260, width // 5))
    side = max(240, min(360, width // 4))
    return [listing, max(320, width - listing - side), side]


def build_layout(w: QMainWindow) -> None:
    """Conversation list | chat column | side panel, and the status bar."""
    w.conversations = ConversationList()
    column = _chat_column(w)
    w.side = _side(w)
    w.splitter = QSplitter(Qt.Orientation.Horizontal)
    for i, (widget, stretch) in enumerate(((w.conversations, 0), (column, 3), (w.side, 1))):
        w.splitter.addWidget(widget)
        w.splitter.setStretchFactor(i, stretch)
    w.splitter.setCollapsible(0, True)
    w.splitter.setSizes(split_sizes(w.width()))
    w.setCentralWidget(w.splitter)
    w.setMinimumSize(*MIN_WINDOW)
    w.status_line = StatusLine(w.statusBar())
    for name in ("model_label", "device_label", "speed_label", "context_label", "progress"):
        setattr(w, name, getattr(w.status_line, name))
    w.progress_label = w.status_line.progress_label


def restore_layout(w) -> None:
    """Window geometry and splitter positions as the user left them."""
    geometry = setting_bytes(w.settings, "window/geometry")
    if geometry is not None:
        w.restoreGeometry(geometry)
    for key, splitter in (("window/splitter", w.splitter), ("window/side", w.side)):
        state = setting_bytes(w.settings, key)
        if state is not None:
            splitter.restoreState(state)


def save_layout(w) -> None:
    w.settings.setValue("window/geometry", w.saveGeometry())
    w.settings.setValue("window/splitter", w.splitter.saveState())
    w.settings.setValue("window/side", w.side.saveState())
    w.settings.sync()


def context_text(used: int, max_context: int, dropped: int = 0) -> str:
    """Context use as the status bar says it: never past the maximum (the last sampled token
    is never written to the cache), and naming the turns left out to make room."""
    text = f"context {min(used, max_context)} / {max_context}"
    if dropped:
        text += f" · {dropped} earlier turn{'s' if dropped != 1 else ''} left out"
    return text


class StatusLine(QObject):
    """Model, load progress, prompt size, time to first token, speed and context use.

    A QObject living on the GUI thread, so worker signals connected to it arrive queued.
    """

    def __init__(self, bar: QStatusBar) -> None:
        super().__init__(bar)
        self.model_label = ElidedLabel(NO_MODEL)
        self.device_label, self.speed_label, self.context_label = QLabel(), QLabel(), QLabel()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.progress_label = QLabel("")
        for widget in (self.model_label, self.progress_label, self.progress):
            bar.addWidget(widget)
        for widget in (self.speed_label, self.context_label, self.device_label):
            bar.addPermanentWidget(widget)
        self.download_label = ElidedLabel("")
        self.download_bar = QProgressBar()
        self.download_bar.setRange(0, 1000)
        self.download_bar.setMaximumWidth(160)
        self.download_bar.setTextVisible(False)
        for widget in (self.download_label, self.download_bar):
            bar.addWidget(widget)
            widget.hide()
        self._prompt_tokens = 0
        self._dropped = 0
        self._first_token_s = 0.0

    @Slot(float, str)
    def loading(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(1000 * fraction))
        self.progress.show()
        self.progress_label.setText(message)

    def download(self, repo_id: str, progress: dict | None) -> None:
        """A model download going on in the background (the chooser may be closed)."""
        if progress is None:
            self.download_label.setText(f"Downloading {repo_id}…")
            self.download_bar.setValue(0)
        else:
            fraction = float(progress.get("fraction", 0.0))
            self.download_bar.setValue(int(1000 * fraction))
            # The figure first: at 800 px the end of a long repo id is cut off, not the news.
            self.download_label.setText(f"Downloading {100 * fraction:.0f}% · {repo_id}")
            self.download_label.setToolTip(str(progress.get("line", "")))
        self.download_label.show()
        self.download_bar.show()

    def download_ended(self) -> None:
        self.download_label.hide()
        self.download_bar.hide()

    def loaded(self, info: ModelInfo | None, done: bool = True) -> None:
        if done:
            self.progress.hide()
            self.progress_label.setText("")
        self.model_label.setText(info.name if info else NO_MODEL)
        self.device_label.setText(device_text(info) if info else "")
        self.device_label.setToolTip(runtime_tooltip(info) if info else "")
        self.clear_reply()

    def clear_reply(self) -> None:
        """Forget the last reply's figures: they belong to a chat (or a model) no longer shown."""
        self.speed_label.setText("")
        self.context_label.setText("")

    def started(self, started: GenerationStarted) -> None:
        self._prompt_tokens = started.prompt_tokens
        self._dropped = started.dropped_turns
        self._first_token_s = 0.0
        self.context_label.setText(
            context_text(started.prompt_tokens, started.max_context, self._dropped)
        )
        self.speed_label.setText(f"prompt {started.prompt_tokens} tok · generating…")

    def prefill(self, done: int, total: int) -> None:
        """Before the first token: how much of the prompt has been read."""
        self.speed_label.setText(f"Reading your message… {done} / {total} tokens")

    def step(self, step: Step, max_context: int) -> None:
        """Live numbers, every 8th token (the final ones replace them)."""
        if step.index == 0:
            self._first_token_s = step.elapsed_s
        if step.index % 8:
            return
        first = self._first_token_s
        self.context_label.setText(
            context_text(self._prompt_tokens + step.index + 1, max_context, self._dropped)
        )
        parts = [f"prompt {self._prompt_tokens} tok", f"first token {first:.2f} s"]
        decoding = step.elapsed_s - first
        if step.index > 0 and decoding > 0:
            parts.append(f"{step.index / decoding:.1f} tok/s")
        self.speed_label.setText(" · ".join(parts))

    def finished(self, result: GenerationResult) -> None:
        if result.generated_tokens == 0:  # stopped while reading the prompt: no speed to tell
            self.speed_label.setText(f"prompt {result.prompt_tokens} tok · stopped")
        else:
            self.speed_label.setText(
                f"prompt {result.prompt_tokens} tok · first token {result.ttft_s:.2f} s · "
                f"{result.decode_tokens_per_s:.1f} tok/s"
            )
        used = result.prompt_tokens + result.generated_tokens
        self.context_label.setText(context_text(used, result.max_context, result.dropped_turns))


def device_text(info: ModelInfo) -> str:
    """Where and how the model runs: "cpu · bfloat16", plus the weight format when quantized."""
    quant = info.extra.get("quant", "none")
    weights = {"int8": " · 8-bit weights", "int4": " · 4-bit weights"}.get(quant, "")
    return f"{info.device} · {info.dtype}{weights}"


def runtime_tooltip(info: ModelInfo) -> str:
    """The kernel and thread choice (engine/kernels/tuning.py) and why it was made, for the
    curious."""
    extra = info.extra
    lines = []
    if extra.get("kernel"):
        source = {"measured": "measured on this machine", "cached": "measured earlier, cached"}
        how = source.get(str(extra.get("kernel_source")), str(extra.get("kernel_source", "")))
        lines.append(f"Kernel: {extra['kernel']} ({how})")
    if extra.get("native_isa"):
        lines.append(f"Loopchat's compiled kernel, its {extra['native_isa']} build")
    if extra.get("native_ops"):
        lines.append("Norms and rotary embedding: Loopchat's compiled C")
    if extra.get("native_unavailable"):
        lines.append(f"Loopchat's compiled kernels: {extra['native_unavailable']}")
    if extra.get("threads"):
        governed = ", adjusted while decoding" if extra.get("thread_governor") else ""
        lines.append(f"Threads: {extra['threads']}{governed}")
    if extra.get("cpu"):
        lines.append(f"CPU: {extra['cpu']}")
    if extra.get("quant", "none") != "none":
        cached = " (from the cache)" if extra.get("quant_cache_hit") else ""
        lines.append(f"Weights: {extra['quant']}{cached}")
    return "\n".join(lines)
