"""The main window: layout, and wiring between the views, the open `ChatSession` and the engine.

The conversation itself lives in `desktop.session.ChatSession`; the window routes the worker's
records to the session whose request they answer (which need not be the one on screen: a reply
that was streaming when the user switched away still ends, saved, in its own conversation).
"""

from __future__ import annotations

import gc
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from desktop import menus
from desktop.controller import EngineController
from desktop.session import ChatSession, SessionListener, message_count
from desktop.store import ConversationStore, StoreError, read_export
from desktop.views.banner import Banner
from desktop.views.chat_view import MessageWidget
from desktop.views.conversation_list import ConversationList
from desktop.views.conversation_view import ConversationView
from desktop.views.input_box import InputBox
from desktop.views.sampling_panel import SamplingPanel
from desktop.views.topk_panel import TopKPanel, visible_token
from engine.events import GenerationResult, GenerationStarted, ModelInfo, Step

log = logging.getLogger(__name__)
UNDO_WINDOW_S = 60
"""How long a deleted conversation can be restored before it is purged from the file."""
RETRY_SAVE_MS = 2000
SYNC_OPEN_LIMIT = 2000
"""Conversations with more messages are read in a helper thread (10,000 take ~100-300 ms)."""


def _read_quietly(open_session, *args):
    """Read a long conversation without a full garbage collection in the middle.

    Its tens of thousands of new objects would trigger one, and with torch imported a full
    collection holds the GIL (so the GUI) for ~100 ms. What exists once it is read lives as long
    as the conversation is open, so it is frozen (left out of later collections) as well.
    """
    gc.disable()
    try:
        return open_session(*args)
    finally:
        gc.freeze()
        gc.enable()


class _Background(SessionListener):
    """Listens to a session no longer on screen: only a failed save still concerns the user."""

    def __init__(self, window: MainWindow) -> None:
        self.window = window

    def save_failed(self, _session: ChatSession, message: str) -> None:
        self.window._on_save_problem(message)


class MainWindow(QMainWindow):
    """Chat view, input, top-k panel and settings; talks to the engine only via the controller."""

    model_ready = Signal(object)  # ModelInfo
    token_shown = Signal(object)  # Step, after the window has shown it
    reply_finished = Signal(object)  # GenerationResult (with `error` when the reply failed)
    error_shown = Signal(str)
    _opened = Signal(object)  # a Future of ChatSession.open, from the reader thread

    def __init__(
        self,
        settings: QSettings,
        controller: EngineController | None = None,
        store: ConversationStore | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.controller = controller or EngineController(self)
        self.store = store or ConversationStore()
        self.model_info: ModelInfo | None = None
        self._loading = False
        self._pending_model_path = ""
        self._streaming: ChatSession | None = None
        """The session whose request the engine is answering (maybe not the one shown)."""
        self._prompt_tokens = 0
        self._first_token_s = 0.0
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="loopchat-open")
        self._opening: Future | None = None
        self._opened.connect(self._finish_open)
        self.setWindowTitle("Loopchat")
        self.resize(1180, 760)
        self._build()
        menus.build_menus(self)
        self.session = self._new_session()
        self._connect()
        self._restore()
        self._reopen_last()
        self.refresh_conversations()
        if self.store.recovery_notice:
            self.show_error(self.store.recovery_notice, kind="notice")
        self._update_buttons()

    # -- layout ------------------------------------------------------------------------------

    def _build(self) -> None:
        self.chat = ConversationView()
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
        for item in (self.banner, self.chat, actions_row, input_row):
            if isinstance(item, QWidget):
                left_layout.addWidget(item, 1 if item is self.chat else 0)
            else:
                left_layout.addLayout(item)

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
        for i, (widget, stretch) in enumerate(((self.conversations, 0), (left, 3), (self.side, 1))):
            self.splitter.addWidget(widget)
            self.splitter.setStretchFactor(i, stretch)
        self.splitter.setCollapsible(0, True)
        self.splitter.setSizes([230, 640, 330])
        self.setCentralWidget(self.splitter)

        status = self.statusBar()
        self.model_label = QLabel("No model — File → Open model folder…")
        self.device_label, self.speed_label, self.context_label = QLabel(), QLabel(), QLabel()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.progress_label = QLabel("")
        for widget in (self.model_label, self.progress_label, self.progress):
            status.addWidget(widget)
        for widget in (self.speed_label, self.context_label, self.device_label):
            status.addPermanentWidget(widget)
        self._prompt_timer = QTimer(self, singleShot=True, interval=400)
        self._retry_timer = QTimer(self, interval=RETRY_SAVE_MS)

    def _connect(self) -> None:
        worker = self.controller.worker
        worker.load_progress.connect(self._on_load_progress)
        worker.model_loaded.connect(self._on_model_loaded)
        worker.load_failed.connect(self._on_load_failed)
        worker.model_unloaded.connect(self._on_model_unloaded)
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
        self.chat.edit_submitted.connect(self._send_edit)
        self.chat.save_problem.connect(self._on_save_problem)
        lst = self.conversations
        lst.open_requested.connect(self.open_conversation)
        lst.new_requested.connect(self.new_chat)
        lst.rename_requested.connect(self.rename_conversation)
        lst.delete_requested.connect(self.delete_conversation)
        lst.export_requested.connect(self.choose_export)
        lst.search_changed.connect(lambda _text: self.refresh_conversations())
        self.sampling.report_top.valueChanged.connect(self.topk.set_k)
        self.sampling.system_prompt.textChanged.connect(self._prompt_timer.start)
        self._prompt_timer.timeout.connect(self._save_system_prompt)
        self._retry_timer.timeout.connect(self._retry_saves)

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
        return menus.recent_models(self.settings)

    # -- the open conversation ---------------------------------------------------------------

    @property
    def conversation_id(self) -> int | None:
        return self.session.conversation_id

    @property
    def history(self) -> list[dict]:
        """The open conversation's turns as {"role", "content"} dicts (a copy)."""
        return self.session.history

    def _new_session(self) -> ChatSession:
        name = self.model_info.name if self.model_info else ""
        prompt = self.sampling.default_system_prompt()
        return ChatSession(self.store, self.controller, system_prompt=prompt, model=name)

    def _show(self, session: ChatSession) -> None:
        """Put `session` on screen; a reply still streaming in the old one ends there."""
        old = getattr(self, "session", None)
        if old is not None:
            self._save_system_prompt()
            old.listener = _Background(self)
            old.stop()  # it ends (saved, finished) in its own conversation
        self.session = session
        session.listener = self.chat
        self.chat.show_session(session)
        self.topk.clear()
        self.sampling.show_system_prompt(session.system_prompt)
        if session.conversation_id is not None:
            self._try(lambda: self.store.set_last_open(session.conversation_id))
        self.refresh_conversations()
        self._update_buttons()

    def new_chat(self) -> None:
        self._show(self._new_session())
        self.banner.hide()
        self.input.setFocus()

    def open_conversation(self, conversation_id: int) -> None:
        """Show a saved conversation (its latest page first; earlier pages as you scroll up).

        A short one is shown before this returns; a long one is read in a helper thread and
        shown as soon as it is read, the GUI running meanwhile.
        """
        if conversation_id == self.conversation_id:
            return
        opener = (ChatSession.open, self.store, self.controller, conversation_id)
        self._opening = future = Future()
        try:
            large = message_count(self.store, conversation_id) > SYNC_OPEN_LIMIT
        except StoreError:
            large = False  # ChatSession.open says what is wrong
        if large:
            self.progress_label.setText("Opening the conversation…")
            self._opening = future = self._reader.submit(_read_quietly, *opener)
            future.add_done_callback(self._opened.emit)  # back on the GUI thread, queued
            return
        try:
            future.set_result(opener[0](*opener[1:]))
        except Exception as exc:  # noqa: BLE001 - reported by _finish_open
            future.set_exception(exc)
        self._finish_open(future)

    def _finish_open(self, future: Future) -> None:
        if future is not self._opening:
            return  # another conversation was asked for meanwhile
        self._opening = None
        self.progress_label.setText("")
        try:
            session = future.result()
        except (StoreError, ValueError, TypeError, OverflowError) as exc:
            log.warning("conversation could not be opened: %r", exc)
            self.show_error(f"Could not open this conversation: {exc}")
            return
        session.model = self.model_info.name if self.model_info else session.model
        self._show(session)

    def _reopen_last(self) -> None:
        self._show(self.session)
        try:
            last = self.store.get_last_open()
        except StoreError:
            last = None
        if last is not None:
            self.open_conversation(last)

    def _save_system_prompt(self) -> None:
        self._prompt_timer.stop()
        self.session.set_system_prompt(self.sampling.system_prompt.toPlainText())

    # -- the user's requests -----------------------------------------------------------------

    def _can_ask(self) -> bool:
        if self.controller.busy:
            return False
        if self.model_info is None:
            self.show_error(
                "No model is loaded yet: open a model folder first (File → Open model folder…)."
            )
            return False
        self._save_system_prompt()
        return True

    def send(self, text: str) -> None:
        """Post the user's message (saved at once) and ask for a reply."""
        if not text or not self._can_ask():
            return
        self.banner.hide()
        if self._ask(lambda: self.session.send(text, self.sampling.options())):
            self.input.clear()

    def regenerate(self) -> None:
        """Answer the last user message again (it replaces the last reply, if any)."""
        if self.session.history and self._can_ask():
            self._ask(lambda: self.session.regenerate(self.sampling.options()))

    def edit_message(self, card: MessageWidget) -> None:
        """Edit a sent message in its card; nothing changes until it is sent."""
        if self.session.busy:
            self.show_error("Stop the reply (Esc) before editing a message.", kind="notice")
            return
        self.chat.begin_edit(card)

    def _send_edit(self, turn, text: str) -> None:
        if self._can_ask():
            self.chat.cancel_edit()
            self._ask(lambda: self.session.edit(turn, text, self.sampling.options()))

    def _ask(self, action) -> bool:
        """Run a session action that may start a reply; say so if it cannot be saved."""
        try:
            action()
        except StoreError as exc:
            self.show_error(f"Could not save the message ({exc}); nothing was sent.")
            return False
        finally:
            if self.conversation_id is not None:
                self._try(lambda: self.store.set_last_open(self.conversation_id))
            if self.session.busy:
                self._streaming = self.session
                self.topk.clear()
            self.refresh_conversations()
            self._update_buttons()
        return True

    def stop(self) -> None:
        if self._streaming is not None:
            self._streaming.stop()

    # -- conversations -----------------------------------------------------------------------

    def refresh_conversations(self) -> None:
        try:
            found = self.store.list_conversations(self.conversations.search.text())
        except StoreError as exc:
            self.show_error(f"Could not list the saved conversations: {exc}")
            return
        self.conversations.show_conversations(found, self.conversation_id)

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        self._try(lambda: self.store.rename(conversation_id, title))
        self.refresh_conversations()

    def delete_conversation(self, conversation_id: int) -> None:
        """Delete with undo; after `UNDO_WINDOW_S`, or on quit, it is purged from the file."""
        title = next(
            (c.title for c in self.store.list_conversations() if c.id == conversation_id), ""
        )
        if not self._try(lambda: self.store.delete_conversation(conversation_id)):
            return
        if conversation_id == self.conversation_id:
            self.new_chat()
        self.refresh_conversations()
        QTimer.singleShot(1000 * UNDO_WINDOW_S + 500, self.purge_deleted)

        def undo() -> None:
            self._try(lambda: self.store.restore_conversation(conversation_id))
            self.refresh_conversations()

        self.banner.show_message(f"Deleted “{title}”.", "notice", "Undo", undo)

    def purge_deleted(self, older_than_s: float | None = None) -> None:
        """Remove conversations deleted more than `older_than_s` (the undo window) ago."""
        age = UNDO_WINDOW_S if older_than_s is None else older_than_s
        self._try(lambda: self.store.purge_deleted(age))

    def choose_export(self, conversation_id: int | None, fmt: str) -> None:
        if conversation_id is None:
            self.show_error("There is no saved conversation to export yet.", kind="notice")
            return
        suffix = "Markdown (*.md)" if fmt == "md" else "JSON (*.json)"
        path, _ = QFileDialog.getSaveFileName(self, "Export conversation", "", suffix)
        if path:
            self.export_conversation(conversation_id, Path(path), fmt)

    def export_conversation(self, conversation_id: int, path: Path, fmt: str) -> None:
        try:
            if fmt == "md":
                text = self.store.export_markdown(conversation_id)
            else:
                text = json.dumps(self.store.export_json(conversation_id), ensure_ascii=False)
            path.write_text(text, encoding="utf-8")
        except StoreError as exc:
            self.show_error(f"Could not export the conversation: {exc}")
        except OSError as exc:
            self.show_error(f"Could not write {path}: {exc.strerror or exc}")

    def choose_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import conversation", "", "JSON (*.json)")
        if path:
            self.import_conversation(Path(path))

    def import_conversation(self, path: Path) -> int | None:
        try:
            conversation_id = self.store.import_json(read_export(path))
        except StoreError as exc:
            self.show_error(f"Could not import {path.name}: {exc}")
            return None
        self.open_conversation(conversation_id)
        return conversation_id

    # -- model -------------------------------------------------------------------------------

    def start(self, model: str | None) -> None:
        """Open the given (or last) model; on first run, the chooser instead of an empty chat."""
        if model:
            self.load_model(str(model))
        else:
            self.show_model_chooser()

    def show_model_chooser(self):
        from desktop.views.model_chooser import ModelChooser

        chooser = ModelChooser(self)
        chooser.model_chosen.connect(self.load_model)
        chooser.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.chooser = chooser
        chooser.show()
        return chooser

    def choose_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a model folder (HF or Meta layout)")
        if folder:
            self.load_model(folder)

    def load_model(self, path: str) -> None:
        """Load a model in the engine thread; the current one works until the new one is ready."""
        self.stop()
        self._loading = True
        self.banner.hide()
        self.progress.setValue(0)
        self.progress.show()
        self.progress_label.setText("Loading…")
        self._pending_model_path = path
        dtype = str(self.settings.value("engine/dtype", "auto"))
        device = str(self.settings.value("engine/device", "auto"))
        self.controller.load(path, dtype, device)
        self._update_buttons()

    def unload_model(self) -> None:
        """Free the model's memory; chatting needs a model again."""
        self.stop()
        self.controller.unload()

    def _on_load_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(1000 * fraction))
        self.progress_label.setText(message)

    def _loaded_state(self, loading_done: bool = True) -> None:
        """Status bar, title and buttons for the model now loaded (or none)."""
        if loading_done:
            self._loading = False
            self.progress.hide()
            self.progress_label.setText("")
        info = self.model_info
        self.model_label.setText(info.name if info else "No model — Models → Choose a model…")
        self.device_label.setText(f"{info.device} · {info.dtype}" if info else "")
        self.setWindowTitle(f"Loopchat — {info.name}" if info else "Loopchat")
        self.session.model = info.name if info else self.session.model
        self._update_buttons()

    def _on_model_loaded(self, info: ModelInfo) -> None:
        self.model_info = info
        self._loaded_state()
        self.context_label.setText(f"context 0 / {info.max_context}")
        path = self._pending_model_path or info.path
        # A Hub snapshot is remembered by repo id: its folder changes with each new revision.
        menus.remember_model(self, info.name if "/snapshots/" in path.replace("\\", "/") else path)
        self.input.setFocus()
        self.model_ready.emit(info)

    def _on_model_unloaded(self) -> None:
        self.model_info = None
        self._loaded_state(loading_done=False)

    def _on_load_failed(self, message: str) -> None:
        self._loaded_state()
        kept = f" {self.model_info.name} is still loaded." if self.model_info else ""
        self.show_error(f"Could not open the model. {message}{kept}")

    # -- engine answers ----------------------------------------------------------------------

    def _on_generation_started(self, started: GenerationStarted) -> None:
        session = self._streaming
        if session is None or not session.on_started(started) or session is not self.session:
            return
        self._prompt_tokens = started.prompt_tokens
        self._first_token_s = 0.0
        self.context_label.setText(f"context {started.prompt_tokens} / {started.max_context}")
        self.speed_label.setText(f"prompt {started.prompt_tokens} tok · generating…")

    def _on_token(self, step: Step) -> None:
        session = self._streaming
        if session is None or not session.on_step(step) or session is not self.session:
            return
        self.topk.show_step(step)
        if step.index == 0:
            self._first_token_s = step.elapsed_s
        if self.model_info and step.index % 8 == 0:
            used = self._prompt_tokens + step.index + 1
            self.context_label.setText(f"context {used} / {self.model_info.max_context}")
            first = self._first_token_s
            parts = [f"prompt {self._prompt_tokens} tok", f"first token {first:.2f} s"]
            decoding = step.elapsed_s - first
            if step.index > 0 and decoding > 0:
                parts.append(f"{step.index / decoding:.1f} tok/s")
            self.speed_label.setText(" · ".join(parts))
        self.token_shown.emit(step)

    def _on_finished(self, result: GenerationResult) -> None:
        session = self._streaming
        if session is None or not session.on_finished(result):
            return
        self._streaming = None
        if session is self.session:
            self.speed_label.setText(
                f"prompt {result.prompt_tokens} tok · first token {result.ttft_s:.2f} s · "
                f"{result.decode_tokens_per_s:.1f} tok/s"
            )
            used = result.prompt_tokens + result.generated_tokens
            self.context_label.setText(f"context {used} / {result.max_context}")
            if result.stop_reason == "context_full":
                self.show_error(
                    "The model's context is full, so the reply was cut. Start a new chat "
                    "(Ctrl+N) to continue.",
                    kind="notice",
                )
        self._after_reply(result)

    def _on_failed(self, result: GenerationResult) -> None:
        session = self._streaming
        if session is None or not session.on_failed(result):
            return
        self._streaming = None
        self.show_error(result.error)
        self._after_reply(result)

    def _after_reply(self, result: GenerationResult) -> None:
        self.refresh_conversations()
        self._update_buttons()
        self.reply_finished.emit(result)

    def _inspect_token(self, widget: MessageWidget, index: int) -> None:
        step = widget.steps[index]
        title = f"Token {index + 1} of {len(widget.steps)}: “{visible_token(step['piece'])}”"
        self.topk.show_step(step, title=title)
        self.topk.flush_now()

    # -- saving problems ---------------------------------------------------------------------

    def _on_save_problem(self, message: str) -> None:
        if not message:
            self.show_error("The conversation is saved again.", kind="notice")
            self._retry_timer.stop()
            return
        self.show_error(
            f"Could not save the conversation ({message}). Loopchat keeps it and tries again; "
            "please keep the app open until this notice changes."
        )
        self._retry_timer.start()

    def _retry_saves(self) -> None:
        sessions = {id(s): s for s in (self.session, self._streaming) if s is not None}
        if all(s.retry_saves() for s in sessions.values()):
            self._retry_timer.stop()

    # -- misc --------------------------------------------------------------------------------

    def _try(self, action) -> bool:
        """Run a store call; a StoreError becomes a banner instead of an exception."""
        try:
            action()
        except StoreError as exc:
            self.show_error(str(exc))
            return False
        return True

    def show_error(self, message: str, kind: str = "error") -> None:
        """Non-blocking: a banner above the chat (tests and users never get stuck in a dialog)."""
        self.banner.show_message(message, kind)
        self.error_shown.emit(message)

    def _update_buttons(self) -> None:
        busy = self.controller.busy
        ready = self.model_info is not None and not self._loading
        self.send_button.setEnabled(ready and not busy)
        self.stop_button.setEnabled(busy)
        can_regenerate = ready and not busy and bool(self.session.history)
        self.regenerate_button.setEnabled(can_regenerate)
        self.regenerate_action.setEnabled(can_regenerate)
        self.open_action.setEnabled(not busy)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        self._save_layout()
        self._save_system_prompt()
        chooser = getattr(self, "chooser", None)
        if chooser is not None:
            try:
                chooser.close()
            except RuntimeError:  # already deleted
                pass
        self.controller.shutdown()
        for session in {id(s): s for s in (self._streaming, self.session) if s}.values():
            session.abandon()  # closed mid-reply: keep what streamed, as a stopped reply
        self._streaming = None
        self._reader.shutdown(wait=True, cancel_futures=True)
        self._try(lambda: self.store.purge_deleted(0))
        super().closeEvent(event)
