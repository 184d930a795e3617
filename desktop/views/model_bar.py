"""The model of this chat, at a glance: a bar above the chat naming the open model, its format
(a Hugging Face folder, Meta's files, a GGUF file or the built-in model; the dtype and the weights
kind the engine reports) and the memory its weights take. Clicking it opens the model chooser.

Users of GPT4All, LM Studio and Jan look for the model above the chat; the status bar's line at
the bottom was missed. The words come from `ModelInfo` (the engine's own report), never guessed
from settings, so the bar says what actually runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QPushButton, QSizePolicy, QWidget

from engine.events import ModelInfo
from engine.front_door import format_bytes, is_builtin

WEIGHT_WORDS = {
    "none": "",
    "int8": "int8 weights",
    "int4": "int4 weights",
    "file": "blocks as in the file",
}
"""How the bar names the engine's weights kind (`none`: the dtype says it all)."""
NO_MODEL = "No model open — click to choose or download one"
STYLE = """
QPushButton#model_bar {
    text-align: left;
    padding: 5px 12px;
    margin: 8px 18px 0px 18px;
    border: 1px solid palette(midlight);
    border-radius: 8px;
    background: palette(window);
}
QPushButton#model_bar:hover, QPushButton#model_bar:focus {
    border-color: palette(highlight);
}
"""


@dataclass(frozen=True)
class ModelSummary:
    """What the bar says about a loaded model, part by part (tests read the parts)."""

    name: str
    format: str
    """"built-in", "HF folder", "Meta files", "GGUF Q4_K_M" (a GGUF file and its quantization;
    "GGUF file" before the loader has said which) or "folder"."""
    weights: str
    """The dtype, and the weights kind when quantized: "bfloat16, int8 weights"."""
    memory: str
    """The weights' memory: "2.2 GB"."""
    details: str
    """The tooltip: path, device, context, parameters, kernel."""

    @property
    def line(self) -> str:
        return f"{self.name}   ·   {self.format}   ·   {self.weights}   ·   {self.memory}"


def model_format(info: ModelInfo, opened_as: str) -> str:
    """Which kind of model files `info` was loaded from (as the engine reports its path)."""
    if is_builtin(opened_as) or is_builtin(info.path):
        return "built-in"
    said = info.extra.get("file_format")  # "GGUF Q4_K_M", as the loader read the file
    if said:
        return str(said)
    path = Path(info.path)
    if path.suffix.lower() == ".gguf":
        return "GGUF file"
    if (path / "params.json").is_file():
        return "Meta files"
    if (path / "config.json").is_file():
        return "HF folder"
    return "folder"


def summarize(info: ModelInfo, opened_as: str = "") -> ModelSummary:
    """The bar's words for a loaded model."""
    server = info.extra.get("server")
    if server:
        return summarize_remote(info, str(server))
    quant = str(info.runtime.quant or info.extra.get("quant", "none"))
    kind = WEIGHT_WORDS.get(quant, f"{quant} weights")
    weights = f"{info.dtype}, {kind}" if kind else info.dtype
    memory = format_bytes(info.weights_bytes) if info.weights_bytes else "size unknown"
    lines = [
        info.name,
        f"Opened from: {info.path}",
        f"Format: {model_format(info, opened_as)}; {weights}",
        f"Weights in memory: {memory} (the KV cache for {info.max_context} tokens comes on top)",
        f"Device: {info.device}",
    ]
    if info.n_params:
        lines.append(f"Parameters: {info.n_params / 1e9:.2f} billion")
    if info.runtime.kernel:
        lines.append(f"Kernel: {info.runtime.kernel}")
    lines.append("Click to choose another model (Ctrl+M)")
    return ModelSummary(info.name, model_format(info, opened_as), weights, memory, "\n".join(lines))


def summarize_remote(info: ModelInfo, server: str) -> ModelSummary:
    """The bar's words for a model on a server: which server, and that it runs there."""
    url = str(info.extra.get("server_url", ""))
    lines = [
        info.name,
        f"Served by: {server} ({url})",
        "Runs on that server: replies stream over the network; Loopchat holds no weights.",
    ]
    if info.max_context:
        lines.append(f"Context: {info.max_context} tokens")
    lines.append("Click to choose another model (Ctrl+M); Models → Servers… edits the server")
    name = str(info.extra.get("model_id") or info.name.split(" · ")[0])
    return ModelSummary(name, f"on {server}", "remote", "weights on the server", "\n".join(lines))


class ModelBar(QPushButton):
    """A one-line button above the chat: the open model; click to choose another."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("model_bar")
        self.setStyleSheet(STYLE)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.summary: ModelSummary | None = None
        self._full = ""
        self.show_model(None)

    def show_model(self, info: ModelInfo | None, opened_as: str = "") -> None:
        """Show the loaded model (None: no model open)."""
        self.summary = None if info is None else summarize(info, opened_as)
        self._full = NO_MODEL if self.summary is None else self.summary.line
        tip = "Choose or download a model (Ctrl+M)" if self.summary is None else ""
        self.setToolTip(tip or self.summary.details)
        self.setAccessibleName(f"Model: {self._full}")
        self._elide()

    def show_loading(self, what: str) -> None:
        """A load is under way: say which model, until `show_model` says it is ready."""
        self._full = f"Loading {what}…"
        self._elide()

    def full_text(self) -> str:
        """The whole line (the button shows it cut short with "…" in a narrow window)."""
        return self._full

    def _elide(self) -> None:
        room = max(10, self.contentsRect().width() - 60)  # the style's margin and padding
        self.setText(self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, room))

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self._elide()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        """Never what widens the chat column: the text is elided instead."""
        hint = super().minimumSizeHint()
        return QSize(min(hint.width(), 120), hint.height())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        hint = super().sizeHint()
        return QSize(min(hint.width(), 400), hint.height())
