"""Where the main window's parts sit, and what its status bar says.

The parts themselves are widgets of their own (`ChatPane`, `SidePanel`, `ConversationList`);
`columns` lays them side by side, `restore_layout`/`save_layout` keep the sizes the user chose,
and `StatusLine` words the status bar.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QSettings, Qt, Slot
from PySide6.QtWidgets import (
    QDockWidget,
    QLabel,
    QMainWindow,
    QProgressBar,
    QSplitter,
    QStatusBar,
    QWidget,
)

from desktop.settings_values import setting_bytes
from desktop.views.elided_label import ElidedLabel
from engine.events import GenerationResult, GenerationStarted, ModelInfo, Step

NO_MODEL = "No model — Models → Choose or download a model…"


MIN_CHAT_WIDTH = 360
"""The chat column's narrowest: a reply card's header ("Built-in: Loopchat dictionary", its
Copy and version buttons) and a few words a line still fit; narrower, headings were cut and a
reply read like a ribbon. A dock beside the chat may not squeeze it below this."""
MIN_SIDE_WIDTH = 240
"""The side panel's narrowest: the top-k rows (token, bar, "100.0%") and the settings' labels
beside their fields; narrower, the percentages were clipped ("66.5°")."""
MIN_WINDOW = (760, 520)
"""Below this the chat column, the list and the side panel no longer fit side by side: the list's
160 px, MIN_CHAT_WIDTH and MIN_SIDE_WIDTH."""
DOCK_WIDTH = 420
"""A dock beside the chat opens this wide (or its own minimum, if more)."""
DOCK_HEIGHT_SHARE = 0.38
"""A dock below the chat takes this share of the window's height."""


def split_sizes(width: int) -> list[int]:
    """List | chat | side widths for a window `width` wide: the chat gets what is left."""
    listing = max(160, min(260, width // 5))
    side = max(240, min(360, width // 4))
    return [listing, max(320, width - listing - side), side]


def columns(conversations: QWidget, pane: QWidget, side: QWidget, width: int) -> QSplitter:
    """Conversation list | chat column | side panel, sized for a window `width` wide."""
    splitter = QSplitter(Qt.Orientation.Horizontal)
    for i, (widget, stretch) in enumerate(((conversations, 0), (pane, 3), (side, 1))):
        splitter.addWidget(widget)
        splitter.setStretchFactor(i, stretch)
    splitter.setCollapsible(0, True)
    pane.setMinimumWidth(MIN_CHAT_WIDTH)
    side.setMinimumWidth(MIN_SIDE_WIDTH)
    splitter.setSizes(split_sizes(width))
    return splitter


def chat_column(window: QMainWindow, chat: QWidget) -> tuple[QSplitter, int] | None:
    """The window's columns and the index of the one holding `chat` (None: not in columns)."""
    splitter = window.centralWidget()
    if not isinstance(splitter, QSplitter):
        return None
    for i in range(splitter.count()):
        column = splitter.widget(i)
        if column is chat or column.isAncestorOf(chat):
            return splitter, i
    return None


def dock_fits_beside(window_width: int, other_columns: int, dock_width: int) -> bool:
    """Whether a dock `dock_width` wide beside the columns leaves the chat MIN_CHAT_WIDTH."""
    return window_width - other_columns - dock_width >= MIN_CHAT_WIDTH


def place_dock(window: QMainWindow, dock: QDockWidget, chat: QWidget) -> Qt.DockWidgetArea:
    """Put `dock` beside the chat where the window has room for it while the list and the side
    panel keep their widths, else below the columns; then size it. Returns the area chosen.

    At the default 1180 px a dock beside everything left the chat ~300 px; below, the chat
    keeps its width and the dock gets the window's whole width.
    """
    width = max(DOCK_WIDTH, dock.widget().minimumSizeHint().width())
    found = chat_column(window, chat)
    if found is None:
        others = 0
    else:
        splitter, index = found
        sizes = splitter.sizes()
        others = sum(sizes) - sizes[index] + splitter.handleWidth() * (splitter.count() - 1)
    if dock_fits_beside(window.width(), others, width):
        area = Qt.DockWidgetArea.RightDockWidgetArea
        window.addDockWidget(area, dock)
        window.resizeDocks([dock], [width], Qt.Orientation.Horizontal)
    else:
        area = Qt.DockWidgetArea.BottomDockWidgetArea
        window.addDockWidget(area, dock)
        height = int(window.height() * DOCK_HEIGHT_SHARE)
        window.resizeDocks([dock], [height], Qt.Orientation.Vertical)
    return area


def chat_squeezed(window: QMainWindow, chat: QWidget) -> bool:
    """The chat column is at its narrowest (a dock beside it should move below)."""
    found = chat_column(window, chat)
    if found is None:
        return False
    splitter, index = found
    return splitter.sizes()[index] <= MIN_CHAT_WIDTH


SPLITTER_KEYS = ("window/splitter", "window/side")


def restore_layout(window: QWidget, settings: QSettings, splitters: tuple[QSplitter, ...]) -> None:
    """Window geometry and splitter positions as the user left them."""
    geometry = setting_bytes(settings, "window/geometry")
    if geometry is not None:
        window.restoreGeometry(geometry)
    for key, splitter in zip(SPLITTER_KEYS, splitters, strict=True):
        state = setting_bytes(settings, key)
        if state is not None:
            splitter.restoreState(state)


def save_layout(window: QWidget, settings: QSettings, splitters: tuple[QSplitter, ...]) -> None:
    settings.setValue("window/geometry", window.saveGeometry())
    for key, splitter in zip(SPLITTER_KEYS, splitters, strict=True):
        settings.setValue(key, splitter.saveState())
    settings.sync()


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
        self._fresh = True
        """No step of the current reply shown yet: the first one replaces "Reading…" whatever
        its index (a branch's first new token is not token 0)."""
        self._base = 0
        """The first new token's index: a branch's reply prefix is already in the prompt."""
        self._after_pause = False

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
        self._fresh = True
        self.context_label.setText(
            context_text(started.prompt_tokens, started.max_context, self._dropped)
        )
        self.speed_label.setText(f"prompt {started.prompt_tokens} tok · generating…")

    def prefill(self, done: int, total: int) -> None:
        """Before the first token: how much of the prompt has been read."""
        self.speed_label.setText(f"Reading your message… {done} / {total} tokens")

    def step(self, step: Step, max_context: int) -> None:
        """Live numbers, every 8th token (the final ones replace them)."""
        fresh, self._fresh = self._fresh, False
        if fresh:
            self._first_token_s, self._base = step.elapsed_s, step.index
        after_pause, self._after_pause = self._after_pause, False
        if step.index % 8 and not fresh and not after_pause:  # "Paused at…" must not linger
            return
        first = self._first_token_s
        used = self._prompt_tokens + step.index + 1 - self._base
        self.context_label.setText(context_text(used, max_context, self._dropped))
        parts = [f"prompt {self._prompt_tokens} tok", f"first token {first:.2f} s"]
        decoding, decoded = step.elapsed_s - first, step.index - self._base
        if decoded > 0 and decoding > 0:
            parts.append(f"{decoded / decoding:.1f} tok/s")
        self.speed_label.setText(" · ".join(parts))

    def paused(self, tokens: int, max_context: int) -> None:
        """A step-mode reply waits at its `tokens`-th token: say so, with the context it uses
        now (the live figures are only refreshed every 8th token; nothing stale stays)."""
        self._after_pause = True
        used = self._prompt_tokens + tokens - self._base
        self.context_label.setText(context_text(used, max_context, self._dropped))
        self.speed_label.setText(
            f"Paused at token {tokens} · prompt {self._prompt_tokens} tok · "
            f"first token {self._first_token_s:.2f} s"
        )

    def finished(self, result: GenerationResult) -> None:
        if result.generated_tokens == 0:  # stopped while reading the prompt: no speed to tell
            self.speed_label.setText(f"prompt {result.prompt_tokens} tok · stopped")
        else:
            text = (
                f"prompt {result.prompt_tokens} tok · first token {result.ttft_s:.2f} s · "
                f"{result.decode_tokens_per_s:.1f} tok/s"
            )
            if result.draft is not None and result.draft.proposed:
                text += f" · draft {result.draft.acceptance:.0%} accepted"
            self.speed_label.setText(text)
        used = result.prompt_tokens + result.generated_tokens
        self.context_label.setText(context_text(used, result.max_context, result.dropped_turns))


def device_text(info: ModelInfo) -> str:
    """Where and how the model runs: "cpu · bfloat16", plus the weight format when quantized."""
    weights = {"int8": " · 8-bit weights", "int4": " · 4-bit weights"}.get(info.runtime.quant, "")
    return f"{info.device} · {info.dtype}{weights}"


def runtime_tooltip(info: ModelInfo) -> str:
    """The kernel and thread choice (engine/kernels/tuning.py) and why it was made, for the
    curious."""
    run = info.runtime
    lines = []
    if run.kernel:
        source = {"measured": "measured on this machine", "cached": "measured earlier, cached"}
        how = source.get(str(run.kernel_source), run.kernel_source or "")
        lines.append(f"Kernel: {run.kernel} ({how})")
    if run.native_isa:
        lines.append(f"Loopchat's compiled kernel, its {run.native_isa} build")
    if run.native_ops:
        lines.append("Norms and rotary embedding: Loopchat's compiled C")
    if run.native_blocks:
        lines.append("Decode steps: each block one compiled call, loop attention included")
    if run.native_unavailable:
        lines.append(f"Loopchat's compiled kernels: {run.native_unavailable}")
    if run.threads:
        governed = ", adjusted while decoding" if run.thread_governor else ""
        lines.append(f"Threads: {run.threads}{governed}")
    if run.cpu:
        lines.append(f"CPU: {run.cpu}")
    if run.quant != "none":
        cached = " (from the cache)" if run.quant_cache_hit else ""
        lines.append(f"Weights: {run.quant}{cached}")
    return "\n".join(lines)
