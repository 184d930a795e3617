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
from desktop.store import Autosaver, ConversationStore, StoreError
from desktop.views.chat_view import ChatView, MessageWidget
from desktop.views.conversation_list import ConversationList
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
        self.action = QPushButton()
        self.action.hide()
        self.action.clicked.connect(self._run_action)
        self._callback = None
        layout.addWidget(self.action)
        close = QToolButton()
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.clicked.connect(self.hide)
        layout.addWidget(close)
        self.hide()

    def show_message(self, text: str, kind: str = "error", action: str = "", callback=None) -> None:
        self.setProperty("kind", kind)
        self.style().unpolish(self)
        self.style().polish(self)
        self.label.setText(text)
        self._callback = callback
        self.action.setText(action)
        self.action.setVisible(bool(action and callback))
        self.show()

    def _run_action(self) -> None:
        callback, self._callback = self._callback, None
        self.hide()
        if callback is not None:
            callback()


class MainWindow(QMainWindow):
    """Chat view, input, top-k panel and settings; talks to the engine only via the controller."""

    model_ready = Signal(dict)
    token_shown = Signal(dict)
    """A streamed step after the window has shown it (main thread; for tests and the store)."""
    reply_finished = Signal(dict)
    error_shown = Signal(str)

    def __init__(
        self,
        settings: QSettings,
        controller: EngineController | None = None,
        store: ConversationStore | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.controller = controller or EngineController(self)
        if store is None:
            from desktop.paths import data_dir

            store = ConversationStore(data_dir() / "conversations.sqlite3")
        self.store = store
        self.conversation_id: int | None = None
        self._saver: Autosaver | None = None
        self.model_info: dict | None = None
        self.history: list[dict] = []  # finished turns: {"role", "content"}
        self._reply: MessageWidget | None = None
        self._request_id = 0
        self._prompt_tokens = 0
        self._first_token_s = 0.0
        self._loading = False
        self.setWindowTitle("Loopchat")
        self.resize(1180, 760)
        self._build()
        self._build_menus()
        self._connect()
        self._restore()
        self.refresh_conversations()
        self._reopen_last()
        if self.store.recovery_notice:
            self.show_error(self.store.recovery_notice, kind="notice")
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

        self.conversations = ConversationList()
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.conversations)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.side)
        self.splitter.setCollapsible(0, True)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setStretchFactor(2, 1)
        self.splitter.setSizes([230, 640, 330])
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
        file_menu.addSeparator()
        self.new_chat_action = QAction("&New chat", self)
        self.new_chat_action.setShortcut(QKeySequence("Ctrl+N"))
        self.new_chat_action.triggered.connect(self.new_chat)
        file_menu.addAction(self.new_chat_action)
        import_action = QAction("&Import conversation…", self)
        import_action.triggered.connect(self.choose_import)
        file_menu.addAction(import_action)
        export_md = QAction("&Export conversation as Markdown…", self)
        export_md.triggered.connect(lambda: self.choose_export(self.conversation_id, "md"))
        file_menu.addAction(export_md)
        export_json = QAction("Export conversation as &JSON…", self)
        export_json.triggered.connect(lambda: self.choose_export(self.conversation_id, "json"))
        file_menu.addAction(export_json)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)

        models_menu = self.menuBar().addMenu("&Models")
        choose = QAction("&Choose or download a model…", self)
        choose.setShortcut(QKeySequence("Ctrl+M"))
        choose.triggered.connect(self.show_model_chooser)
        models_menu.addAction(choose)
        self.recent_menu = models_menu.addMenu("&Recent models")
        unload = QAction("&Unload model", self)
        unload.triggered.connect(self.unload_model)
        models_menu.addAction(unload)

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
        show_list = QAction("&Conversations", self)
        show_list.setCheckable(True)
        show_list.setChecked(True)
        show_list.setShortcut(QKeySequence("Ctrl+Shift+L"))
        show_list.toggled.connect(self.conversations.setVisible)
        view_menu.addAction(show_list)
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
        self.chat.edit_requested.connect(self.edit_message)
        lst = self.conversations
        lst.open_requested.connect(self.open_conversation)
        lst.new_requested.connect(self.new_chat)
        lst.rename_requested.connect(self.rename_conversation)
        lst.delete_requested.connect(self.delete_conversation)
        lst.export_requested.connect(self.choose_export)
        lst.search_changed.connect(lambda _text: self.refresh_conversations())
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

    def start(self, model: str | None) -> None:
        """Open the given (or last) model; on first run, the chooser instead of an empty chat."""
        if model:
            self.load_model(str(model))
        else:
            self.show_model_chooser()

    def show_model_chooser(self):
        """The model chooser (also shown on first run, when no model was ever opened)."""
        from desktop.views.model_chooser import ModelChooser

        chooser = ModelChooser(self)
        chooser.model_chosen.connect(self.load_model)
        chooser.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.chooser = chooser
        chooser.show()
        return chooser

    def unload_model(self) -> None:
        """Free the model's memory; chatting needs a model again."""
        self.controller.unload()
        self.model_info = None
        self.model_label.setText("No model — Models → Choose or download a model…")
        self.device_label.setText("")
        self.setWindowTitle("Loopchat")
        self._update_buttons()

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
        path = getattr(self, "_pending_model_path", info["path"])
        # A Hub snapshot is remembered by repo id: its folder changes with each new revision.
        self._remember_model(info["name"] if "/snapshots/" in path.replace("\\", "/") else path)
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
        """Post the user's message (saved at once) and ask for a reply."""
        if not text or self.controller.busy:
            return
        if self.model_info is None:
            self.show_error(
                "No model is loaded yet: open a model folder first (File → Open model folder…)."
            )
            return
        try:
            if self.conversation_id is None:
                self.conversation_id = self.store.create_conversation(
                    self.sampling.system_prompt.toPlainText().strip(), self.model_info["name"]
                )
                self.store.set_meta("last_open", str(self.conversation_id))
            self.store.add_message(self.conversation_id, "user", text)
        except (StoreError, OSError) as exc:
            self.show_error(f"Could not save the message ({exc}); it is still in the input box.")
            return
        self.input.clear()
        widget = self.chat.add_message("user", text)
        widget.position = len(self.history)
        self.history.append({"role": "user", "content": text})
        self.refresh_conversations()
        self._request_reply()

    def _request_reply(self) -> None:
        self.banner.hide()
        self._reply = self.chat.add_message("assistant", author=self.model_info["name"])
        self._reply.position = len(self.history)
        self.topk.clear()
        values = self.sampling.values()
        request = {"messages": self.messages_for_request(), **values}
        reply_id = self.store.start_reply(
            self.conversation_id,
            self.model_info["name"],
            {**values["params"], "max_new_tokens": values["max_new_tokens"]},
        )
        self._saver = Autosaver(self.store, reply_id)
        self._request_id = self.controller.generate(request)
        self._update_buttons()

    def stop(self) -> None:
        if self.controller.busy:
            self.controller.stop()

    def _truncate(self, position: int) -> None:
        """Forget the conversation from `position` on: screen, history and disk."""
        for widget in list(self.chat.messages):
            index = self.chat.messages.index(widget)
            later = widget.position is not None and widget.position >= position
            trailing_note = widget.role == "note" and any(
                w.position is not None and w.position >= position
                for w in self.chat.messages[index + 1 :]
            )
            if later or trailing_note:
                self.chat.remove_message(widget)
        del self.history[position:]
        if self.conversation_id is not None:
            self.store.truncate_from(self.conversation_id, position)

    def regenerate(self) -> None:
        """Drop the last reply and answer the last user message again."""
        if self.controller.busy or self.model_info is None or not self.history:
            return
        if self.history[-1]["role"] == "assistant":
            self._truncate(len(self.history) - 1)
        if self.history and self.history[-1]["role"] == "user":
            self._request_reply()

    def edit_message(self, widget: MessageWidget) -> None:
        """Put a sent message back in the input; it and the turns after it are replaced."""
        if self.controller.busy or widget.position is None:
            return
        text = widget.text
        self._truncate(widget.position)
        self.input.setPlainText(text)
        self.input.setFocus()
        self.refresh_conversations()

    def new_chat(self) -> None:
        self.controller.stop()
        self.conversation_id = None
        self.history.clear()
        self.chat.clear()
        self.topk.clear()
        self.banner.hide()
        self.refresh_conversations()
        self.input.setFocus()

    # -- conversations -----------------------------------------------------------------------

    def refresh_conversations(self) -> None:
        self.conversations.show_conversations(
            self.store.list_conversations(self.conversations.search.text()), self.conversation_id
        )

    def _reopen_last(self) -> None:
        last = self.store.get_meta("last_open")
        if last and last.isdigit():
            try:
                self.open_conversation(int(last))
            except StoreError:
                pass

    def open_conversation(self, conversation_id: int) -> None:
        """Show a saved conversation, with every reply's steps for the token inspector."""
        if self.controller.busy or conversation_id == self.conversation_id:
            return
        conv = self.store.get_conversation(conversation_id)
        self.conversation_id = conversation_id
        self.store.set_meta("last_open", str(conversation_id))
        self.chat.clear()
        self.topk.clear()
        self.history = []
        self.sampling.system_prompt.setPlainText(conv.system_prompt)
        for message in conv.messages:
            widget = self.chat.add_message(message.role, message.content, author=message.model)
            widget.position = len(self.history)
            if message.role == "assistant":
                widget.steps = list(message.steps)
                meta = "" if message.finished else "interrupted"
                widget.finish(message.content, meta)
            self.history.append({"role": message.role, "content": message.content})
        self.refresh_conversations()
        self._update_buttons()

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        self.store.rename(conversation_id, title)
        self.refresh_conversations()

    def delete_conversation(self, conversation_id: int) -> None:
        """Delete with undo: the banner offers it back until the next deletion."""
        title = next(
            (c.title for c in self.store.list_conversations() if c.id == conversation_id), ""
        )
        self.store.delete_conversation(conversation_id)
        if conversation_id == self.conversation_id:
            self.new_chat()
        self.refresh_conversations()

        def undo() -> None:
            self.store.restore_conversation(conversation_id)
            self.refresh_conversations()

        self.banner.show_message(f"Deleted “{title}”.", "notice", "Undo", undo)

    def choose_export(self, conversation_id: int | None, fmt: str) -> None:
        if conversation_id is None:
            self.show_error("There is no saved conversation to export yet.", kind="notice")
            return
        suffix = "Markdown (*.md)" if fmt == "md" else "JSON (*.json)"
        path, _ = QFileDialog.getSaveFileName(self, "Export conversation", "", suffix)
        if path:
            self.export_conversation(conversation_id, Path(path), fmt)

    def export_conversation(self, conversation_id: int, path: Path, fmt: str) -> None:
        import json

        try:
            if fmt == "md":
                path.write_text(self.store.export_markdown(conversation_id), encoding="utf-8")
            else:
                data = self.store.export_json(conversation_id)
                path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        except OSError as exc:
            self.show_error(f"Could not write {path}: {exc.strerror or exc}")

    def choose_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import conversation", "", "JSON (*.json)")
        if path:
            self.import_conversation(Path(path))

    def import_conversation(self, path: Path) -> int | None:
        import json

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            conversation_id = self.store.import_json(data)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.show_error(f"Could not read {path.name}: it is not a JSON export ({exc}).")
            return None
        except StoreError as exc:
            self.show_error(f"Could not import {path.name}: {exc}")
            return None
        self.open_conversation(conversation_id)
        return conversation_id

    # -- engine answers ----------------------------------------------------------------------

    def _on_generation_started(self, info: dict) -> None:
        if info.get("id") != self._request_id:
            return
        self._prompt_tokens = info["prompt_tokens"]
        self.context_label.setText(f"context {info['prompt_tokens']} / {info['max_context']}")
        self.speed_label.setText(f"prompt {info['prompt_tokens']} tok · generating…")
        if not info.get("dropped_turns"):
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
        index = step["index"]
        if index == 0:
            self._first_token_s = step["elapsed_s"]
        if self.model_info and index % 8 == 0:
            used = self._prompt_tokens + index + 1
            self.context_label.setText(f"context {used} / {self.model_info['max_context']}")
            self._show_live_speed(step)
        if self._saver is not None:
            clean = {k: step[k] for k in ("index", "token_id", "text", "piece", "prob", "top")}
            self._saver.add(clean)
        self.token_shown.emit(step)

    def _show_live_speed(self, step: dict) -> None:
        """Time to first token and decode speed so far (the final numbers replace these)."""
        first = self._first_token_s
        parts = [f"prompt {self._prompt_tokens} tok", f"first token {first:.2f} s"]
        decoding = step["elapsed_s"] - first
        if step["index"] > 0 and decoding > 0:
            parts.append(f"{step['index'] / decoding:.1f} tok/s")
        self.speed_label.setText(" · ".join(parts))

    def _on_finished(self, result: dict) -> None:
        if result.get("id") != self._request_id or self._reply is None:
            return
        reply, self._reply = self._reply, None
        saver, self._saver = self._saver, None
        meta = (
            f"{result['generated_tokens']} tokens · {result['decode_tokens_per_s']:.1f} tok/s"
            + (" · stopped" if result["stop_reason"] == "cancelled" else "")
            + (" · context full" if result["stop_reason"] == "context_full" else "")
        )
        reply.finish(result["text"], meta)
        timings = {
            k: result[k]
            for k in (
                "prompt_tokens",
                "generated_tokens",
                "prefill_s",
                "ttft_s",
                "decode_tokens_per_s",
                "reused_tokens",
            )
        }
        if result["text"] or reply.steps:
            self.history.append({"role": "assistant", "content": result["text"]})
            if saver is not None:
                saver.finish(result["text"], result["stop_reason"], timings)
        else:
            self.chat.remove_message(reply)
            if saver is not None:
                self.store.truncate_from(self.conversation_id, len(self.history))
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
        self.refresh_conversations()
        self._update_buttons()
        self.reply_finished.emit(result)

    def _on_failed(self, failure: dict) -> None:
        if failure.get("id") != self._request_id:
            return
        reply, self._reply = self._reply, None
        saver, self._saver = self._saver, None
        if reply is not None:
            if reply.steps:
                reply.finish(reply.text, "failed")
                self.history.append({"role": "assistant", "content": reply.text})
                if saver is not None:
                    saver.finish(reply.text, "error")
            else:
                self.chat.remove_message(reply)
                if self.conversation_id is not None:
                    self.store.truncate_from(self.conversation_id, len(self.history))
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
        """Non-blocking: a banner above the chat (tests and users never get stuck in a dialog)."""
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
        chooser = getattr(self, "chooser", None)
        if chooser is not None:
            try:
                chooser.close()
            except RuntimeError:  # already deleted
                pass
        if self._saver is not None:  # closed mid-reply: keep what streamed
            reply = self._reply
            self._saver.finish(reply.text if reply else "", "cancelled")
            self._saver = None
        super().closeEvent(event)
