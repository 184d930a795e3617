"""The main window: wires the views to the engine controller. Holds no engine state itself."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.controller import EngineController
from desktop.views.chat_view import ChatView, MessageWidget
from desktop.views.input_box import InputBox
from desktop.views.sampling_panel import SamplingPanel
from desktop.views.topk_panel import TopKPanel, visible_token

log = logging.getLogger(__name__)
MAX_RECENT = 8


class Banner(QFrame):
    """A dismissible message above the chat (errors, notices); never blocks like a dialog."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 8, 8)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.label, 1)
        close = QToolButton()
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.clicked.connect(self.hide)
        layout.addWidget(close)
        self.hide()

    def show_message(self, text: str, kind: str = "error") -> None:
        self.setProperty("kind", kind)
        self.style().unpolish(self)
        self.style().polish(self)
        self.label.setText(text)
        self.show()


class MainWindow(QMainWindow):
    """Chat view, input, top-k panel and settings; talks to the engine only via the controller."""

    model_ready = Signal(dict)
    reply_finished = Signal(dict)
    error_shown = Signal(str)

    def __init__(self, settings: QSettings, controller: EngineController | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.controller = controller or EngineController(self)
        self.model_info: dict | None = None
        self.history: list[dict] = []  # finished turns: {"role", "content"}
        self._reply: MessageWidget | None = None
        self._request_id = 0
        self._loading = False
        self.setWindowTitle("Loopchat")
        self.resize(1180, 760)
        self._build()
        self._build_menus()
        self._connect()
        self._restore()
        self._update_buttons()

    # -- layout ------------------------------------------------------------------------------

    def _build(self) -> None:
        self.chat = ChatView()
        self.banner = Banner()
        self.input = InputBox()
        self.send_button = QPushButton("Send")
        self.send_button.setObjectName("primary")
        self.send_button.setDefault(True)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop generating (Esc)")
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.setToolTip("Answer the last message again")

        buttons = QVBoxLayout()
        buttons.setSpacing(6)
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        input_row = QHBoxLayout()
        input_row.setContentsMargins(18, 8, 18, 14)
        input_row.setSpacing(8)
        input_row.addWidget(self.input, 1)
        input_row.addLayout(buttons)

        actions_row = QHBoxLayout()
        actions_row.setContentsMargins(18, 0, 18, 0)
        actions_row.addStretch(1)
        actions_row.addWidget(self.regenerate_button)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.setSpacing(0)
        left_layout.addWidget(self.banner)
        left_layout.addWidget(self.chat, 1)
        left_layout.addLayout(actions_row)
        left_layout.addLayout(input_row)

        self.topk = TopKPanel()
        self.sampling = SamplingPanel(self.settings)
        self.topk.set_k(self.sampling.report_top.value())
        sampling_scroll = QScrollArea()
        sampling_scroll.setWidgetResizable(True)
        sampling_scroll.setFrameShape(QFrame.Shape.NoFrame)
        sampling_scroll.setWidget(self.sampling)
        side_title = QLabel("Generation settings")
        side_title.setObjectName("section")
        side_bottom = QWidget()
        side_bottom_layout = QVBoxLayout(side_bottom)
        side_bottom_layout.setContentsMargins(0, 6, 0, 0)
        side_bottom_layout.addWidget(side_title)
        side_bottom_layout.addWidget(sampling_scroll, 1)

        self.side = QSplitter(Qt.Orientation.Vertical)
        self.side.setObjectName("side")
        self.side.addWidget(self.topk)
        self.side.addWidget(side_bottom)
        self.side.setStretchFactor(0, 3)
        self.side.setStretchFactor(1, 2)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.side)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([800, 360])
        self.setCentralWidget(self.splitter)

        status = self.statusBar()
        self.model_label = QLabel("No model — File → Open model folder…")
        self.device_label = QLabel("")
        self.speed_label = QLabel("")
        self.context_label = QLabel("")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.progress_label = QLabel("")
        status.addWidget(self.model_label)
        status.addWidget(self.progress_label)
        status.addWidget(self.progress)
        status.addPermanentWidget(self.speed_label)
        status.addPermanentWidget(self.context_label)
        status.addPermanentWidget(self.device_label)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open model folder…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self.choose_model_folder)
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Open &recent")
        file_menu.addSeparator()
        self.new_chat_action = QAction("&New chat", self)
        self.new_chat_action.setShortcut(QKeySequence("Ctrl+N"))
        self.new_chat_action.triggered.connect(self.new_chat)
        file_menu.addAction(self.new_chat_action)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)

        chat_menu = self.menuBar().addMenu("&Chat")
        self.stop_action = QAction("&Stop generating", self)
        self.stop_action.setShortcut(QKeySequence(Qt.Key.Key_Escape))
        self.stop_action.triggered.connect(self.stop)
        chat_menu.addAction(self.stop_action)
        self.addAction(self.stop_action)
        regenerate = QAction("&Regenerate last reply", self)
        regenerate.setShortcut(QKeySequence("Ctrl+R"))
        regenerate.triggered.connect(self.regenerate)
        chat_menu.addAction(regenerate)

        view_menu = self.menuBar().addMenu("&View")
        toggle = QAction("&Side panel", self)
        toggle.setCheckable(True)
        toggle.setChecked(True)
        toggle.setShortcut(QKeySequence("Ctrl+B"))
        toggle.toggled.connect(self.side.setVisible)
        view_menu.addAction(toggle)

        help_menu = self.menuBar().addMenu("&Help")
        about = QAction("&About Loopchat", self)
        about.triggered.connect(self._about)
        help_menu.addAction(about)
        self._refresh_recent()

    def _connect(self) -> None:
        worker = self.controller.worker
        worker.load_progress.connect(self._on_load_progress)
        worker.model_loaded.connect(self._on_model_loaded)
        worker.load_failed.connect(self._on_load_failed)
        worker.generation_started.connect(self._on_generation_started)
        worker.token.connect(self._on_token)
        worker.generation_finished.connect(self._on_finished)
        worker.generation_failed.connect(self._on_failed)
        self.input.submitted.connect(self.send)
        self.send_button.clicked.connect(lambda: self.send(self.input.toPlainText().strip()))
        self.stop_button.clicked.connect(self.stop)
        self.regenerate_button.clicked.connect(self.regenerate)
        self.chat.token_clicked.connect(self._inspect_token)
        self.sampling.report_top.valueChanged.connect(self.topk.set_k)

    # -- persistence -------------------------------------------------------------------------

    def _restore(self) -> None:
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        for key, splitter in (("window/splitter", self.splitter), ("window/side", self.side)):
            state = self.settings.value(key)
            if state is not None:
                splitter.restoreState(state)

    def _save_layout(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/splitter", self.splitter.saveState())
        self.settings.setValue("window/side", self.side.saveState())
        self.settings.sync()

    def recent_models(self) -> list[str]:
        value = self.settings.value("models/recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _remember_model(self, path: str) -> None:
        recent = [p for p in self.recent_models() if p != path]
        self.settings.setValue("models/recent", [path, *recent][:MAX_RECENT])
        self.settings.setValue("models/last", path)
        self._refresh_recent()

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.recent_models()
        for path in recent:
            action = self.recent_menu.addAction(path)
            action.triggered.connect(lambda _=False, p=path: self.load_model(p))
        self.recent_menu.setEnabled(bool(recent))

    # -- model -------------------------------------------------------------------------------

    def choose_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a model folder (HF or Meta layout)")
        if folder:
            self.load_model(folder)

    def load_model(self, path: str) -> None:
        """Ask the worker to load a model; the window stays usable meanwhile."""
        if self.controller.busy:
            self.controller.stop()
        self._loading = True
        self.banner.hide()
        self.progress.setValue(0)
        self.progress.show()
        self.progress_label.setText("Loading…")
        self.model_label.setText(f"Loading {Path(path).name}")
        self._pending_model_path = path
        dtype = str(self.settings.value("engine/dtype", "auto"))
        device = str(self.settings.value("engine/device", "auto"))
        self.controller.load(path, dtype, device)
        self._update_buttons()

    def _on_load_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(1000 * fraction))
        self.progress_label.setText(message)

    def _on_model_loaded(self, info: dict) -> None:
        self._loading = False
        self.model_info = info
        self.progress.hide()
        self.progress_label.setText("")
        self.model_label.setText(info["name"])
        self.device_label.setText(f"{info['device']} · {info['dtype']}")
        self.context_label.setText(f"context 0 / {info['max_context']}")
        self.setWindowTitle(f"Loopchat — {info['name']}")
        self._remember_model(getattr(self, "_pending_model_path", info["path"]))
        self._update_buttons()
        self.input.setFocus()
        self.model_ready.emit(info)

    def _on_load_failed(self, message: str) -> None:
        self._loading = False
        self.progress.hide()
        self.progress_label.setText("")
        self.model_label.setText(
            self.model_info["name"] if self.model_info else "No model — File → Open model folder…"
        )
        self.show_error(f"Could not open the model. {message}")
        self._update_buttons()

    # -- chat --------------------------------------------------------------------------------

    def messages_for_request(self) -> list[dict]:
        system = self.sampling.system_prompt.toPlainText().strip()
        return ([{"role": "system", "content": system}] if system else []) + list(self.history)

    def send(self, text: str) -> None:
        """Post the user's message and ask for a reply."""
        if not text or self.controller.busy:
            return
        if self.model_info is None:
            self.show_error(
                "No model is loaded yet: open a model folder first (File → Open model folder…)."
            )
            return
        self.input.clear()
        self.chat.add_message("user", text)
        self.history.append({"role": "user", "content": text})
        self._request_reply()

    def _request_reply(self) -> None:
        self.banner.hide()
        self._reply = self.chat.add_message("assistant", author=self.model_info["name"])
        self.topk.clear()
        request = {"messages": self.messages_for_request(), **self.sampling.values()}
        self._request_id = self.controller.generate(request)
        self._update_buttons()

    def stop(self) -> None:
        if self.controller.busy:
            self.controller.stop()

    def regenerate(self) -> None:
        """Drop the last reply and answer the last user message again."""
        if self.controller.busy or self.model_info is None:
            return
        if self.history and self.history[-1]["role"] == "assistant":
            self.history.pop()
            for widget in reversed(self.chat.messages):
                if widget.role == "assistant":
                    self.chat.remove_message(widget)
                    break
        if self.history and self.history[-1]["role"] == "user":
            self._request_reply()

    def new_chat(self) -> None:
        self.controller.stop()
        self.history.clear()
        self.chat.clear()
        self.topk.clear()
        self.banner.hide()
        self.input.setFocus()

    def _on_generation_started(self, info: dict) -> None:
        if info.get("id") != self._request_id or not info.get("dropped_turns"):
            return
        n = info["dropped_turns"]
        note = self.chat.add_message(
            "note",
            f"The {n} oldest messages no longer fit the model's context, so they were left out "
            "of the prompt for this reply (the system prompt is kept).",
        )
        # Keep the note above the reply that it explains.
        if self._reply is not None:
            self.chat.messages.remove(note)
            index = self.chat._layout.indexOf(self._reply)
            self.chat._layout.insertWidget(index, note)
            self.chat.messages.insert(self.chat.messages.index(self._reply), note)

    def _on_token(self, step: dict) -> None:
        if step.get("id") != self._request_id or self._reply is None:
            return
        self._reply.append_step(step)
        self.topk.show_step(step)

    def _on_finished(self, result: dict) -> None:
        if result.get("id") != self._request_id or self._reply is None:
            return
        reply, self._reply = self._reply, None
        meta = (
            f"{result['generated_tokens']} tokens · {result['decode_tokens_per_s']:.1f} tok/s"
            + (" · stopped" if result["stop_reason"] == "cancelled" else "")
            + (" · context full" if result["stop_reason"] == "context_full" else "")
        )
        reply.finish(result["text"], meta)
        if result["text"] or reply.steps:
            self.history.append({"role": "assistant", "content": result["text"]})
        else:
            self.history.pop()  # nothing came back: let the user try again
            self.chat.remove_message(reply)
        used = result["prompt_tokens"] + result["generated_tokens"]
        self.speed_label.setText(
            f"prompt {result['prompt_tokens']} tok · first token {result['ttft_s']:.2f} s · "
            f"{result['decode_tokens_per_s']:.1f} tok/s"
        )
        self.context_label.setText(f"context {used} / {result['max_context']}")
        if result["stop_reason"] == "context_full":
            self.show_error(
                "The model's context is full, so the reply was cut. Start a new chat (Ctrl+N) "
                "to continue.",
                kind="notice",
            )
        self._update_buttons()
        self.reply_finished.emit(result)

    def _on_failed(self, failure: dict) -> None:
        if failure.get("id") != self._request_id:
            return
        reply, self._reply = self._reply, None
        if reply is not None:
            if reply.steps:
                reply.finish(reply.text, "failed")
                self.history.append({"role": "assistant", "content": reply.text})
            else:
                self.chat.remove_message(reply)
                if self.history and self.history[-1]["role"] == "user":
                    self.history.pop()
                    last = self.chat.messages[-1] if self.chat.messages else None
                    if last is not None and last.role == "user":
                        self.input.setPlainText(last.text)  # nothing typed is lost
                        self.chat.remove_message(last)
        self.show_error(failure["message"])
        self._update_buttons()
        self.reply_finished.emit({"id": failure.get("id"), "error": failure["message"]})

    def _inspect_token(self, widget: MessageWidget, index: int) -> None:
        step = widget.steps[index]
        title = f"Token {index + 1} of {len(widget.steps)}: “{visible_token(step['piece'])}”"
        self.topk.show_step(step, title=title)
        self.topk.flush_now()

    # -- misc --------------------------------------------------------------------------------

    def show_error(self, message: str, kind: str = "error") -> None:
        self.banner.show_message(message, kind)
        self.error_shown.emit(message)

    def _update_buttons(self) -> None:
        busy = self.controller.busy
        ready = self.model_info is not None and not self._loading
        self.send_button.setEnabled(ready and not busy)
        self.stop_button.setEnabled(busy)
        self.regenerate_button.setEnabled(ready and not busy and bool(self.history))
        self.open_action.setEnabled(not busy)

    def _about(self) -> None:
        QMessageBox.about(
            self,
            "About Loopchat",
            "<b>Loopchat</b><p>Llama 2 on your own computer, with loop attention you can watch "
            "at work.</p>",
        )

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        self._save_layout()
        self.controller.shutdown()
        super().closeEvent(event)
