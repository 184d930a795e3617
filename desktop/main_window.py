"""The main window: layout, and wiring between the views, the open `ChatSession` and the engine.

The conversation itself lives in `desktop.session.ChatSession`; the window routes the worker's
records to the session whose request they answer (which need not be the one on screen: a reply
that was streaming when the user switched away still ends, saved, in its own conversation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QMainWindow,
)

from desktop import menus, step_mode
from desktop.app_text import for_the_app
from desktop.catalogue import first_run_model
from desktop.controller import EngineController
from desktop.opener import ConversationOpener
from desktop.session import ChatSession, SessionListener
from desktop.store.conversations import ConversationStore
from desktop.store.export import read_export
from desktop.store.schema import StoreError
from desktop.views import attention_view, surprisal
from desktop.views.chat_view import BUILTIN_NOTE, MessageWidget
from desktop.views.input_hint import hint_text, max_tokens_warning
from desktop.views.message_edit import BUSY_NOTICE, MessageEdit
from desktop.views.topk_panel import visible_token
from desktop.views.window_layout import build_layout, restore_layout, save_layout
from engine.events import GenerationResult, GenerationStarted, ModelInfo, PrefillProgress, Step
from engine.front_door import BUILTIN_NAME, is_builtin

log = logging.getLogger(__name__)
UNDO_WINDOW_S = 60
"""How long a deleted conversation can be restored before it is purged from the file."""
RETRY_SAVE_MS = 2000
CLOSE_WAIT_MS = 1500
"""How long closing waits for the engine thread (a load stops between tensors well before)."""


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
        self.model_info: ModelInfo | None = None
        self._loading = False
        self._pending_model_path = ""
        self._fallback: tuple[str, str, str] | None = None
        """(path, format, reason): an 8/4-bit load that failed; the 16-bit load of that path now
        under way says so once it has an outcome."""
        self._failed_model_path = ""
        """The model whose last load failed while no model was open (for Weights' notice)."""
        self._model_path = ""
        self._downloads = None
        self._context_used = 0
        """Prompt plus reply tokens of the last reply in this window (for the input hint)."""
        self._streaming: ChatSession | None = None
        """The session whose request the engine is answering (maybe not the one shown)."""
        self._panel_turn = None
        """The reply whose step the top-k panel shows (a click there branches from it)."""
        self._pending_branch: tuple | None = None
        """(session, turn, step, token id): a branch asked for while a reply streamed; it starts
        once that reply has stopped."""
        self.undo_window_s: float = UNDO_WINDOW_S
        """How long a deleted conversation can be restored (tests shorten it)."""
        self.opener = ConversationOpener(self.store, self.controller, self)
        self.setWindowTitle("Loopchat")
        self.resize(1180, 760)
        build_layout(self)
        self.message_edit = MessageEdit(self.input, self.banner, self.chat, self)
        self._prompt_timer = QTimer(self, singleShot=True, interval=400)
        self._retry_timer = QTimer(self, interval=RETRY_SAVE_MS)
        menus.build_menus(self)
        self.session = self._new_session()
        self._connect()
        self.surprisal = surprisal.install(self)
        self.attention = attention_view.install(self)
        self.step_mode = step_mode.install(self)
        restore_layout(self)
        self._reopen_last()
        self.refresh_conversations()
        if self.store.recovery_notice:
            self.banner.show_message(
                self.store.recovery_notice,
                "notice",
                on_dismiss=self._dismiss_store_notice,
            )
            self.error_shown.emit(self.store.recovery_notice)
        self._update_buttons()

    def _connect(self) -> None:
        worker = self.controller.worker
        worker.load_progress.connect(self.status_line.loading)
        worker.model_loaded.connect(self._on_model_loaded)
        worker.load_failed.connect(self._on_load_failed)
        worker.model_unloaded.connect(self._on_model_unloaded)
        worker.generation_started.connect(self._on_generation_started)
        worker.prefill_progress.connect(self._on_prefill)
        worker.token.connect(self._on_token)
        worker.generation_finished.connect(self._on_finished)
        worker.generation_failed.connect(self._on_failed)
        self.input.submitted.connect(self.send)
        self.send_button.clicked.connect(lambda: self.send(self.input.toPlainText().strip()))
        self.stop_button.clicked.connect(self.stop)
        self.regenerate_button.clicked.connect(self.regenerate)
        self.chat.token_clicked.connect(self._inspect_token)
        self.chat.edit_requested.connect(self.edit_message)
        self.chat.save_problem.connect(self._on_save_problem)
        self.chat.version_requested.connect(self.show_version)
        self.topk.alternative_chosen.connect(self._branch_from_panel)
        lst = self.conversations
        lst.open_requested.connect(self.open_conversation)
        lst.new_requested.connect(self.new_chat)
        lst.rename_requested.connect(self.rename_conversation)
        lst.delete_requested.connect(self.delete_conversation)
        lst.export_requested.connect(lambda cid, fmt: menus.choose_export(self, cid, fmt))
        lst.search_changed.connect(lambda _text: self.refresh_conversations())
        self.sampling.report_top.valueChanged.connect(self.topk.set_k)
        self.sampling.max_new_tokens.valueChanged.connect(self._update_hints)
        self.input.textChanged.connect(self._update_hints)
        self.opener.ready.connect(self._opened)
        self.opener.failed.connect(
            lambda m: self.show_error(f"Could not open this conversation: {m}")
        )
        self.sampling.system_prompt.textChanged.connect(self._prompt_timer.start)
        self._prompt_timer.timeout.connect(self._save_system_prompt)
        self._retry_timer.timeout.connect(self._retry_saves)

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
        self.message_edit.cancel()  # the message being edited belongs to the old session
        self.session = session
        session.listener = self.chat
        self.chat.show_session(session)
        self._clear_panel()
        if session is not self._streaming:  # a reply still streaming keeps its live figures
            self.status_line.clear_reply()
            self._context_used = 0
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
        """Show a saved conversation (its latest page first; earlier pages as you scroll up)."""
        if conversation_id == self.conversation_id:
            return
        streaming = self._streaming
        if streaming is not None and streaming.conversation_id == conversation_id:
            self._show(streaming)  # back to a reply still ending: the same session, live
        else:
            self.opener.open(conversation_id)

    def _opened(self, session: ChatSession) -> None:
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

    def send(self, text: str, step: bool = False) -> None:
        """Post the user's message (saved at once) and ask for a reply (`step`: in step mode);
        while a message is being edited, the text becomes a new version of that message instead
        (the old one and the turns after it stay, one ‹ › away)."""
        if text and self.step_mode.defer_send(text):
            return  # a paused step-mode reply ends first; the message goes once it has
        if not text or not self._can_ask():
            return
        self.banner.hide()
        options = dataclasses.replace(self.sampling.options(), step=step)
        edited = self.message_edit.turn if self.message_edit.active else None
        if edited is not None:
            if self._ask(lambda: self.session.edit(edited, text, options)):
                self.message_edit.sent()
        elif self._ask(lambda: self.session.send(text, options)):
            self.input.clear()

    def regenerate(self, step: bool = False) -> None:
        """Answer the last user message again (a new version of the last reply, if any)."""
        if self.session.can_regenerate and self._can_ask():
            options = dataclasses.replace(self.sampling.options(), step=step)
            self._ask(lambda: self.session.regenerate(options))

    def edit_message(self, card: MessageWidget) -> None:
        """Edit a sent message in the message box; nothing changes until it is sent. While a
        reply is written it cannot be (the edit would branch from the turns the reply answers)."""
        if self.session.busy:
            self.show_error(BUSY_NOTICE, kind="notice")
            return
        self.message_edit.begin(card)

    def _ask(self, action) -> bool:
        """Run a session action that may start a reply; say so if it cannot be saved."""
        try:
            action()
        except StoreError as exc:
            self.show_error(f"Could not save the conversation ({exc}); no reply was asked for.")
            return False
        finally:
            if self.conversation_id is not None:
                self._try(lambda: self.store.set_last_open(self.conversation_id))
            if self.session.busy:
                self._streaming = self.session
                self._clear_panel()
                self._panel_turn = self.session.reply
                self.topk.set_params(self.sampling.options().params)
            self.refresh_conversations()
            self._update_buttons()
        return True

    def stop(self) -> None:
        if self._streaming is not None:
            self._streaming.stop()

    # -- versions and branches ---------------------------------------------------------------

    def branch_from(self, turn, step: int, token_id: int, step_mode: bool = False) -> None:
        """Continue reply `turn` from its step `step` with `token_id` instead (a new version);
        `step_mode`: pause after that token (Next token goes on from there).

        While a reply streams, it is stopped first and the branch starts once it has ended: the
        user picked another token of what they were watching, so that is what they want next.
        """
        if self.model_info is None:
            self._can_ask()  # says to load a model
            return
        if self.controller.busy or self.session.busy:  # streaming, or paused in step mode
            self._pending_branch = (self.session, turn, step, token_id, step_mode)
            self.stop()
            return
        if not self._can_ask():
            return
        self.banner.hide()
        try:
            options = dataclasses.replace(self.sampling.options(), step=step_mode)
            self._ask(lambda: self.session.branch(turn, step, token_id, options))
        except ValueError as exc:
            self.show_error(f"Cannot branch from there: {exc}.", kind="notice")

    def _branch_from_panel(self, step: dict, token_id: int) -> None:
        turn = self._panel_turn
        if turn is None or turn not in self.session.turns:
            self.show_error(
                "That token belongs to a reply no longer shown; click Tokens on a reply, then a "
                "token, to branch from it.",
                kind="notice",
            )
            return
        self.branch_from(turn, int(step.get("index", 0)), token_id)

    def _start_pending_branch(self) -> None:
        pending, self._pending_branch = self._pending_branch, None
        if pending is None:
            return
        session, turn, step, token_id, step_mode = pending
        if (
            session is self.session
            and turn in session.turns
            and not self.controller.busy
            and not session.busy
        ):
            self.branch_from(turn, step, token_id, step_mode)

    def show_version(self, turn, version: int) -> None:
        """Show another version of a turn (`‹ ›`); the conversation continues from it."""
        if self.session.busy:
            self.show_error("Stop the reply (Esc) before switching versions.", kind="notice")
            return
        if self._try(lambda: self.session.show_version(turn, version)):
            self._clear_panel()
            self._update_buttons()

    def _clear_panel(self) -> None:
        self.topk.clear()
        self._panel_turn = None

    def escape(self) -> None:
        """Esc, wherever the focus is: stop the reply being written, or else cancel an edit."""
        if self._streaming is not None:
            self.stop()
        else:
            self.message_edit.cancel()

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

        def undo() -> None:
            self._try(lambda: self.store.restore_conversation(conversation_id))
            self.refresh_conversations()

        def expire() -> None:
            self.purge_deleted()
            if self.banner.showing(undo):  # an Undo that can no longer undo must not be offered
                self.banner.hide()

        QTimer.singleShot(int(1000 * self.undo_window_s) + 500, self, expire)
        self.banner.show_message(f"Deleted “{title}”.", "notice", "Undo", undo)

    def purge_deleted(self, older_than_s: float | None = None) -> None:
        """Remove conversations deleted more than `older_than_s` (the undo window) ago."""
        age = self.undo_window_s if older_than_s is None else older_than_s
        self._try(lambda: self.store.purge_deleted(age))

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
        """Open the given (or last) model. On a first run: the built-in model when no model is
        on this computer (so a fresh install chats at once, offline), else the chooser."""
        if model:
            self.load_model(str(model))
        elif first_run_model() == BUILTIN_NAME:
            self.load_model(BUILTIN_NAME)
        else:
            self.show_model_chooser()

    @property
    def downloads(self):
        """The window's model downloads (started on first use): they outlive the chooser."""
        if self._downloads is None:
            from desktop.background_download import BackgroundDownloads

            self._downloads = BackgroundDownloads(self)
        return self._downloads

    def show_model_chooser(self):
        from desktop.views.model_chooser import ModelChooser

        chooser = ModelChooser(self, downloads=self.downloads)
        chooser.model_chosen.connect(self.load_model)
        chooser.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.chooser = chooser
        chooser.show()
        return chooser

    def load_model(self, path: str, quant: str | None = None) -> None:
        """Load a model in the engine thread; the current one works until the new one is ready.

        `quant`: the weight format (Models → Weights); by default the one remembered for `path`.
        """
        self.stop()
        self._loading = True
        self.banner.hide()
        self.status_line.loading(0.0, "Loading…")
        self._pending_model_path = path
        quant = quant or menus.weights_for(self.settings, path)
        dtype = str(self.settings.value("engine/dtype", "auto"))
        device = str(self.settings.value("engine/device", "auto"))
        self.controller.load(path, dtype, device, quant)
        self._update_buttons()

    def model_loading(self) -> bool:
        """A model load is under way (Models → Weights waits for it)."""
        return self._loading or self.controller.loading

    def loading_model_path(self) -> str:
        """The model being loaded (as asked for); meaningful while `model_loading()`."""
        return self._pending_model_path

    def failed_model_path(self) -> str:
        """The model whose last load failed while no model was open; "" otherwise."""
        return self._failed_model_path if self.model_info is None else ""

    def loaded_quant(self) -> str:
        """The weight format of the open model ("none" when none is open)."""
        return str(self.model_info.extra.get("quant", "none")) if self.model_info else "none"

    def unload_model(self) -> None:
        """Free the model's memory; chatting needs a model again."""
        self.stop()
        self.controller.unload()

    def _loaded_state(self, loading_done: bool = True) -> None:
        """Status bar, title and buttons for the model now loaded (or none)."""
        # Still loading while another load asked for meanwhile has not answered.
        self._loading = self._loading and (not loading_done or self.controller.loading)
        info = self.model_info
        self.status_line.loaded(info, loading_done)
        self.setWindowTitle(f"Loopchat — {info.name}" if info else "Loopchat")
        self._update_hints()
        self.session.model = info.name if info else self.session.model
        self._update_buttons()

    def _on_model_loaded(self, info: ModelInfo) -> None:
        self.model_info = info
        self._loaded_state()
        path = self.controller.answered_load[0] or self._pending_model_path or info.path
        # A Hub snapshot is remembered by repo id: its folder changes with each new revision.
        self._model_path = info.name if "/snapshots/" in path.replace("\\", "/") else path
        menus.remember_model(self, self._model_path)
        # Remembered only now that it has loaded: a format that fails is never saved.
        menus.remember_weights(self.settings, self._model_path, self.loaded_quant())
        self._failed_model_path = ""
        self.chat.set_model_note(BUILTIN_NOTE if is_builtin(self._model_path) else "")
        menus.show_weights(self, self.loaded_quant())
        self.input.setFocus()
        notices = []
        fallback = self._take_fallback(path)
        if fallback is not None:
            label, reason = fallback
            notices.append(
                f"Could not open {info.name} with {label} weights: {reason}. It is open with "
                f"16-bit weights now; Models → Weights tries {label} again."
            )
        note = info.extra.get("context_note")
        if note:  # the context was capped to fit memory: say so once, where it is seen
            notices.append(str(note)[0].upper() + str(note)[1:])
        if notices:
            self.show_error(" ".join(notices), kind="notice")
        self.model_ready.emit(info)

    def current_model_path(self) -> str:
        """What the loaded model was opened as (folder, repo id or "builtin"); "" if none."""
        return self._model_path if self.model_info is not None else ""

    def _on_model_unloaded(self) -> None:
        self.model_info = None
        self._loaded_state(loading_done=False)

    def _on_load_failed(self, message: str) -> None:
        """Say why the load failed; an 8/4-bit load is retried in 16-bit first.

        Whatever made the quantized load fail (the engine, its cache folder, memory), the model
        itself may well open in 16-bit: the user gets their model and a notice rather than no
        model at every start. The failed format is forgotten, so the next start does not retry it.
        """
        path, quant = self.controller.answered_load
        reason = message.strip().rstrip(".")
        if quant != "none" and path:
            menus.remember_weights(self.settings, path, "none")  # never retried at the next start
            # Not when another load was asked for meanwhile (it replaces this one anyway), nor
            # when the window is closing (the load was cancelled).
            if self.controller.running and not self.controller.loading:
                log.warning("%s did not load as %s (%s); trying 16-bit", path, quant, reason)
                self._fallback = (path, quant, reason)
                self.load_model(path, quant="none")
                return
        fallback = self._take_fallback(path)
        self._loaded_state()
        menus.show_weights(self, self.loaded_quant())
        if self.model_info is None:
            self._failed_model_path = path
        kept = f" {self.model_info.name} is still loaded." if self.model_info else ""
        if fallback is not None:
            label, first = fallback
            message = f"With {label} weights: {first}; with 16-bit weights: {message}"
        self.show_error(f"Could not open the model. {message}{kept}")

    def _take_fallback(self, path: str) -> tuple[str, str] | None:
        """(format's label, reason) when the load of `path` that just answered was the 16-bit
        retry of a failed 8/4-bit one; the record is used once."""
        fallback, self._fallback = self._fallback, None
        if fallback is None or fallback[0] != path:
            return None
        return menus.WEIGHT_LABELS.get(fallback[1], fallback[1]), fallback[2]

    # -- engine answers ----------------------------------------------------------------------

    def _on_generation_started(self, started: GenerationStarted) -> None:
        session = self._streaming
        if session is None or not session.on_started(started) or session is not self.session:
            return
        self.status_line.started(started)
        self.chat.show_prefill(session.reply, 0, started.prompt_tokens)

    def _on_prefill(self, progress: PrefillProgress) -> None:
        session = self._streaming
        if session is None or session is not self.session or session.reply is None:
            return
        if progress.request_id != session.request_id:
            return
        self.chat.show_prefill(session.reply, progress.done, progress.total)
        self.status_line.prefill(progress.done, progress.total)
        self.prefill_shown.emit(progress)

    def _on_token(self, step: Step) -> None:
        session = self._streaming
        if session is None or not session.on_step(step) or session is not self.session:
            return
        self._panel_turn = session.reply
        self.topk.show_step(step)
        if self.model_info is not None:
            self.status_line.step(step, self.model_info.max_context)
        self.token_shown.emit(step)

    def _on_finished(self, result: GenerationResult) -> None:
        session = self._streaming
        if session is None or not session.on_finished(result):
            return
        self._streaming = None
        if session is self.session:
            self._context_used = result.prompt_tokens + result.generated_tokens
            self.status_line.finished(result)
            if result.stop_reason == "context_full":
                self.show_error(
                    f"The reply filled the model's context ({result.max_context} tokens) and was "
                    "cut. You can keep chatting: the oldest turns are left out of what the model "
                    "reads. New chat (Ctrl+N) starts afresh.",
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
        self._start_pending_branch()

    def _inspect_token(self, widget: MessageWidget, index: int) -> None:
        step = widget.steps[index]
        title = f"Token {index + 1} of {len(widget.steps)}: “{visible_token(step['piece'])}”"
        self._panel_turn = getattr(widget, "turn", None)
        self.topk.show_step({**dict(step), "index": index}, title=title)
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

    def _dismiss_store_notice(self) -> None:
        """The user closed the moved-aside notice: stop repeating it at every start."""
        try:
            self.store.dismiss_moved_aside_notice()
        except StoreError as exc:
            log.warning("could not record the dismissed notice: %s", exc)

    def show_error(self, message: str, kind: str = "error") -> None:
        """Non-blocking: a banner above the chat (tests and users never get stuck in a dialog).

        Engine wording meant for the CLI is reworded for the window (desktop.app_text).
        """
        message = for_the_app(message)
        self.banner.show_message(message, kind)
        self.error_shown.emit(message)

    def _update_hints(self) -> None:
        """The typed message's estimated cost, and a too-long max new tokens, as you type."""
        max_context = self.model_info.max_context if self.model_info else None
        used = self._context_used if self.session.turns else 0
        self.input_hint.setText(hint_text(self.input.toPlainText(), max_context, used))
        warning = max_tokens_warning(self.sampling.max_new_tokens.value(), max_context)
        self.sampling.warning.setText(warning)
        self.sampling.warning.setVisible(bool(warning))

    def _update_buttons(self) -> None:
        busy = self.controller.busy
        ready = self.model_info is not None and not self._loading
        self.send_button.setEnabled(ready and not busy)
        self.stop_button.setEnabled(busy or self.controller.paused is not None)
        can_regenerate = ready and not busy and self.session.can_regenerate
        self.regenerate_button.setEnabled(can_regenerate)
        self.regenerate_action.setEnabled(can_regenerate)
        self.chat.enable_versions(not self.session.busy)
        self.open_action.setEnabled(not busy)
        if hasattr(self, "step_mode"):
            self.step_mode.update_buttons()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        save_layout(self)
        self._save_system_prompt()
        chooser = getattr(self, "chooser", None)
        if chooser is not None:
            try:
                chooser.close()
            except RuntimeError:  # already deleted
                pass
        if self._downloads is not None:
            self._downloads.shutdown()
        if not self.controller.shutdown(CLOSE_WAIT_MS):
            log.warning("engine thread still busy at close; not waiting for it")
        for session in {id(s): s for s in (self._streaming, self.session) if s}.values():
            session.abandon()  # closed mid-reply: keep what streamed, as a stopped reply
        self._streaming = None
        self.opener.shutdown()
        self._try(lambda: self.store.purge_deleted(0))
        super().closeEvent(event)
