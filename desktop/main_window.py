"""The main window: it assembles the parts and wires their signals (vorta's style).

The parts: `ConversationList` | `ChatPane` | `SidePanel`, the `StatusLine`, the `Menus`; behind
them `ChatScreen` (the chat on screen and the replies routed to it), `ModelLoading` (the open
model, the 8/4-bit fallback), `ConversationLibrary` (the saved conversations), and the features
(step mode, surprisal tint, attention view, downloads), each given only what it drives.
The window keeps DESIGN.md's test seams (`input`, `send_button`, `load_model`, `history`, ...).
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QSettings, Qt, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QMainWindow

from desktop.abilities import abilities_of
from desktop.app_text import for_the_app
from desktop.background_download import BackgroundDownloads
from desktop.catalogue import first_run_model
from desktop.chat_screen import ChatScreen
from desktop.controller import EngineController
from desktop.gguf_scan import Where
from desktop.library import ConversationLibrary
from desktop.menus import Menus
from desktop.model_loading import ModelLoading, recent_models
from desktop.search_jump import SearchJump
from desktop.server_models import ServerModels
from desktop.servers import ServerList
from desktop.session import ChatSession
from desktop.step_mode import StepMode
from desktop.store.conversations import ConversationStore
from desktop.store.schema import StoreError
from desktop.views.attention_view import AttentionInspector
from desktop.views.chat_pane import ChatPane
from desktop.views.chat_view import BUILTIN_NOTE
from desktop.views.conversation_list import ConversationList
from desktop.views.side_panel import SidePanel
from desktop.views.surprisal import SurprisalTint
from desktop.views.window_layout import MIN_WINDOW, StatusLine, columns, restore_layout, save_layout
from engine.events import ModelInfo
from engine.front_door import BUILTIN_NAME, is_builtin

log = logging.getLogger(__name__)
CLOSE_WAIT_MS = 1500
"""How long closing waits for the engine thread (a load stops between tensors well before)."""


class MainWindow(QMainWindow):
    """Assembles the parts (conversation list, chat pane, side panel, status line, menus, the
    see-inside features) and wires them; talks to the engine only via the controller."""

    model_ready = Signal(object)  # ModelInfo
    token_shown = Signal(object)  # Step, after the window has shown it
    prefill_shown = Signal(object)  # PrefillProgress, after the reply card has shown it
    reply_finished = Signal(object)  # GenerationResult (with `error` when the reply failed)
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
        self.store = store or ConversationStore()
        self.models = ModelLoading(self.controller, settings, self)
        self.servers = ServerList(settings, self)
        """Models → Servers…: the servers added, their keys in the keyring."""
        self.controller.worker.use_servers(self.servers.directory)
        self.server_models = ServerModels(self.servers.directory, self)
        self.servers_dialog = None
        self.chooser = None
        self.gguf_where: Where = (None, None)
        """Where the chooser looks for GGUF files: (home, environment); (None, None) is this
        user's own (tests and the screenshot script give a made-up home)."""
        self._downloads: BackgroundDownloads | None = None
        self.setAcceptDrops(True)  # a .gguf file or a model folder dropped on the window opens
        self.setWindowTitle("Loopchat")
        self.resize(1180, 760)
        # The parts, and the widgets tests and features drive (DESIGN.md's test seams).
        self.conversations = ConversationList()
        self.pane = ChatPane()
        self.side = SidePanel(settings)
        self.chat, self.banner, self.input = self.pane.chat, self.pane.banner, self.pane.input
        self.send_button, self.stop_button = self.pane.send_button, self.pane.stop_button
        self.regenerate_button, self.input_hint = self.pane.regenerate_button, self.pane.input_hint
        self.topk, self.sampling = self.side.topk, self.side.sampling
        self.splitter = columns(self.conversations, self.pane, self.side, self.width())
        self.setCentralWidget(self.splitter)
        # A file dropped on the message box opens as a model too, instead of pasting its path.
        self.input.viewport().installEventFilter(self)
        self.setMinimumSize(*MIN_WINDOW)
        self.status_line = StatusLine(self.statusBar())
        self.library = ConversationLibrary(
            self.store, self.conversations, self.banner, self.show_error, self._open_id, self
        )
        self.chat_screen = ChatScreen(
            self.store, self.controller, self.models, self.pane, self.side, self.status_line,
            self.library, self.show_error, self,
        )  # fmt: skip
        """The chat on screen: the shown session, the one being answered, the user's requests."""
        self.opener, self.message_edit = self.chat_screen.opener, self.chat_screen.message_edit
        self.menus = Menus(self, self, self.models, self.library, settings, self.servers)
        self.new_chat_action = self.menus.new_chat_action
        self.stop_action = self.menus.stop_action
        self.regenerate_action = self.menus.regenerate_action
        self._connect()
        # Opening a conversation from a filtered list shows the matching message.
        self.search_jump = SearchJump(
            self.conversations, self.chat, self.opener, self._open_id, self
        )
        # The see-inside features: each gets the menu it adds to and what it drives.
        self.surprisal = SurprisalTint(self, self.controller, self.chat, self)
        self.surprisal.add_to(self.menus.view_menu)
        self.attention = AttentionInspector(self, self.controller, self.chat, self)
        self.attention.add_to(self.menus.view_menu)
        self.step_mode = StepMode(
            self.chat_screen,
            self.controller,
            self.models,
            self.pane,
            self.side,
            self.splitter,
            self,
        )
        self.step_mode.add_to(self.menus.chat_menu)
        self.chat_screen.defer_send = self.step_mode.defer_send
        self._connect_features()
        restore_layout(self, settings, (self.splitter, self.side))
        self.chat_screen.reopen_last()
        self.refresh_conversations()
        if self.store.recovery_notice:
            self.banner.show_message(
                self.store.recovery_notice, "notice", on_dismiss=self._dismiss_store_notice
            )
            self.error_shown.emit(self.store.recovery_notice)
        self.update_buttons()

    def _connect(self) -> None:
        self.controller.worker.load_progress.connect(self.status_line.loading)
        self.models.loaded.connect(self._on_model_loaded)
        self.models.failed.connect(self._on_load_failed)
        self.models.unloaded.connect(self._on_model_unloaded)
        self.models.retry.connect(self.load_model)
        self.chat_screen.token_shown.connect(self.token_shown)
        self.chat_screen.prefill_shown.connect(self.prefill_shown)
        self.chat_screen.reply_finished.connect(self.reply_finished)
        self.chat_screen.buttons_changed.connect(self.update_buttons)
        lst = self.conversations
        lst.open_requested.connect(self.open_conversation)
        lst.new_requested.connect(self.new_chat)
        lst.rename_requested.connect(self.library.rename)
        lst.pin_requested.connect(self.library.pin)
        self.pane.model_bar.clicked.connect(self.show_model_chooser)
        lst.delete_requested.connect(self.delete_conversation)
        lst.export_requested.connect(self.menus.choose_export)
        lst.search_changed.connect(lambda _text: self.refresh_conversations())
        self.sampling.report_top.valueChanged.connect(self.topk.set_k)
        draft = self.sampling.draft
        draft.changed.connect(self.controller.set_draft)
        self.controller.set_draft(draft.spec, draft.k.value())
        self.controller.draft_failed.connect(self._draft_failed)

    def _connect_features(self) -> None:
        """After the window's own slots: a feature reads what the window has just shown."""
        self.reply_finished.connect(lambda _result: self.surprisal.refresh())
        self.model_ready.connect(lambda _info: self.surprisal.refresh())
        self.opener.ready.connect(lambda _session: self.surprisal.refresh())
        self.reply_finished.connect(self.step_mode.on_finished)
        self.model_ready.connect(self.step_mode.on_model_ready)

    def recent_models(self) -> list[str]:
        return recent_models(self.settings)

    # -- the chat on screen (desktop.chat_screen) --------------------------------------------

    @property
    def session(self) -> ChatSession:
        return self.chat_screen.session

    @property
    def conversation_id(self) -> int | None:
        return self.chat_screen.conversation_id

    @property
    def history(self) -> list[dict]:
        """The open conversation's turns as {"role", "content"} dicts (a copy)."""
        return self.chat_screen.session.history

    @property
    def model_info(self) -> ModelInfo | None:
        return self.models.info

    def _open_id(self) -> int | None:
        return self.chat_screen.conversation_id

    def new_chat(self) -> None:
        self.chat_screen.new_chat()

    def open_conversation(self, conversation_id: int) -> None:
        self.chat_screen.open_conversation(conversation_id)

    def send(self, text: str, step: bool = False) -> None:
        self.chat_screen.send(text, step)

    def regenerate(self, step: bool = False) -> None:
        self.chat_screen.regenerate(step)

    def stop(self) -> None:
        self.chat_screen.stop()

    def escape(self) -> None:
        self.chat_screen.escape()

    # -- conversations (desktop.library) and models (desktop.model_loading) -------------------

    def refresh_conversations(self) -> None:
        self.library.refresh()

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        self.library.rename(conversation_id, title)

    def delete_conversation(self, conversation_id: int) -> None:
        self.library.delete(conversation_id, self.new_chat)

    def export_conversation(self, conversation_id: int, path: Path, fmt: str) -> None:
        self.library.export(conversation_id, path, fmt)

    def import_conversation(self, path: Path) -> int | None:
        conversation_id = self.library.import_file(path)
        if conversation_id is not None:
            self.open_conversation(conversation_id)
        return conversation_id

    def start(self, model: str | None) -> None:
        """Open the given (or last) model. On a first run: the built-in model when no model is
        on this computer (so a fresh install chats at once, offline), else the chooser."""
        if model:
            self.load_model(str(model))
        elif first_run_model() == BUILTIN_NAME:
            self.load_model(BUILTIN_NAME)
        else:
            self.show_model_chooser()

    @property
    def downloads(self) -> BackgroundDownloads:
        """The window's model downloads (started on first use): they outlive the chooser."""
        if self._downloads is None:
            busy = lambda: self.controller.busy  # noqa: E731
            self._downloads = BackgroundDownloads(
                self.status_line, self.banner, self.load_model, self.show_error, busy,
                self._chooser_open, self,
            )  # fmt: skip
        return self._downloads

    def _chooser_open(self) -> bool:
        try:
            return self.chooser is not None and self.chooser.isVisible()
        except RuntimeError:  # closed, and deleted with it
            return False

    def show_model_chooser(self):
        from desktop.views.model_chooser import ModelChooser

        chooser = ModelChooser(
            self,
            downloads=self.downloads,
            current=self.current_model_path(),
            recent=self.recent_models(),
            gguf_where=self.gguf_where,
            servers=self.servers,
            server_models=self.server_models,
        )
        chooser.model_chosen.connect(self.load_model)
        chooser.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.chooser = chooser
        chooser.show()
        return chooser

    def show_servers(self):
        """Models → Servers…: add, edit and remove servers (never modal: the chat goes on)."""
        from desktop.views.servers_dialog import ServersDialog

        dialog = ServersDialog(self.servers, self.server_models, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.servers_dialog = dialog
        dialog.show()
        return dialog

    def load_model(self, path: str, quant: str | None = None) -> None:
        """Load a model in the engine thread; the current one works until the new one is ready.

        `quant`: the weight format (Models → Weights); by default the one remembered for `path`.
        """
        self.stop()
        self.banner.hide()
        self.status_line.loading(0.0, "Loading…")
        self.models.load(path, quant)
        self.pane.model_bar.show_loading(self.servers.display_name(path) or Path(path).name or path)
        self.update_buttons()

    def model_loading(self) -> bool:
        """A model load is under way (Models → Weights waits for it)."""
        return self.models.loading()

    def current_model_path(self) -> str:
        """What the loaded model was opened as (folder, repo id or "builtin"); "" if none."""
        return self.models.current_path()

    def unload_model(self) -> None:
        """Free the model's memory; chatting needs a model again."""
        self.stop()
        self.controller.unload()

    def _loaded_state(self, loading_done: bool = True) -> None:
        """Status bar, title and buttons for the model now loaded (or none)."""
        info = self.model_info
        self.status_line.loaded(info, loading_done)
        self.pane.model_bar.show_model(info, self.current_model_path())
        self.setWindowTitle(f"Loopchat — {info.name}" if info else "Loopchat")
        self._grey_what_cannot_run()
        self.chat_screen.update_hints()
        self.session.model = info.name if info else self.session.model
        self.update_buttons()

    def _grey_what_cannot_run(self) -> None:
        """Grey each see-inside feature the open model's backend cannot do, saying why (a model
        on a server gives no attention weights; maybe no log-probabilities)."""
        abilities = abilities_of(self.model_info)
        self.attention.set_unavailable(abilities.why_not("attention"))
        self.surprisal.set_unavailable(abilities.why_not("surprisal"))
        self.step_mode.set_unavailable(abilities.why_not("step_mode"))
        self.chat_screen.set_branches_unavailable(abilities.why_not("branches"))

    def _on_model_loaded(self, info: ModelInfo, notice: str) -> None:
        self._loaded_state()
        self.menus.refresh_recent()
        self.chat.set_model_note(BUILTIN_NOTE if is_builtin(self.current_model_path()) else "")
        self.menus.show_weights(self.models.loaded_quant())
        self.input.setFocus()
        if notice:
            self.show_error(notice, kind="notice")
        self.model_ready.emit(info)

    def _on_model_unloaded(self) -> None:
        self._loaded_state(loading_done=False)

    def _on_load_failed(self, message: str) -> None:
        self._loaded_state()
        self.menus.show_weights(self.models.loaded_quant())
        self.show_error(message)

    # -- drag and drop: a GGUF file or a model folder opens --------------------------------

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        drags = (QEvent.Type.DragEnter, QEvent.Type.DragMove, QEvent.Type.Drop)
        if (
            event.type() in drags
            and watched is self.input.viewport()
            and any(url.isLocalFile() for url in event.mimeData().urls())
        ):
            if event.type() == QEvent.Type.Drop:
                self.dropEvent(event)
            else:
                event.acceptProposedAction()
            return True
        return super().eventFilter(watched, event)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt API
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            super().dragEnterEvent(event)

    def dragMoveEvent(self, event) -> None:  # noqa: N802 - Qt API
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            super().dragMoveEvent(event)

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt API
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if not paths:
            super().dropEvent(event)
            return
        event.acceptProposedAction()
        self.open_dropped(paths)

    def open_dropped(self, paths: list[str]) -> str | None:
        """Open the first model among `paths` (a .gguf file or a model folder); a notice for
        anything else, or while a reply is being written. Returns what it opens."""
        from desktop.model_files import model_to_open

        path, why = model_to_open(paths)
        if path is None:
            self.show_error(why, "notice")
            return None
        if self.controller.busy:
            self.show_error(
                f"A reply is being written: stop it (Esc), then drop {Path(path).name} again.",
                "notice",
            )
            return None
        self.load_model(path)
        return path

    # -- misc --------------------------------------------------------------------------------

    def _dismiss_store_notice(self) -> None:
        """The user closed the moved-aside notice: stop repeating it at every start."""
        try:
            self.store.dismiss_moved_aside_notice()
        except StoreError as exc:
            log.warning("could not record the dismissed notice: %s", exc)

    def _draft_failed(self, message: str) -> None:
        """The chosen draft cannot serve this model: the setting goes back to Off, and why."""
        self.sampling.draft.set_spec("", save=True)
        self.show_error(f"Speculative decoding is off: {message}", "notice")

    def show_error(self, message: str, kind: str = "error") -> None:
        """Non-blocking: a banner above the chat (tests and users never get stuck in a dialog).

        Engine wording meant for the CLI is reworded for the window (desktop.app_text).
        """
        message = for_the_app(message)
        self.banner.show_message(message, kind)
        self.error_shown.emit(message)

    def update_buttons(self) -> None:
        busy = self.controller.busy
        ready = self.model_info is not None and not self.models.in_progress
        fits = self.chat_screen.message_fits  # too long for the context: the hint says why
        self.send_button.setEnabled(ready and not busy and fits)
        self.stop_button.setEnabled(self.controller.state.active)  # paused: Stop ends it
        can_regenerate = ready and not busy and self.session.can_regenerate
        self.regenerate_button.setEnabled(can_regenerate)
        self.regenerate_action.setEnabled(can_regenerate)
        self.chat.enable_versions(not self.session.busy)
        self.menus.open_action.setEnabled(not busy)
        self.step_mode.update_buttons()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        save_layout(self, self.settings, (self.splitter, self.side))
        self.chat_screen.save_system_prompt()
        if self.chooser is not None:
            try:
                self.chooser.close()
            except RuntimeError:  # already deleted
                pass
        if self._downloads is not None:
            self._downloads.shutdown()
        self.servers.keys.shutdown()
        if not self.controller.shutdown(CLOSE_WAIT_MS):
            log.warning("engine thread still busy at close; not waiting for it")
        self.chat_screen.close()
        self.library.attempt(lambda: self.store.purge_deleted(0))
        super().closeEvent(event)
