"""The conversation on screen, and the replies the engine writes for it.

`ChatScreen` keeps which `ChatSession` is shown and which one the engine is answering (a reply
that was streaming when the user switched away still ends, saved, in its own conversation); it
turns the user's requests (send, regenerate, edit, branch, versions) into session calls and
routes the worker's records to the session whose request they answer. It drives the chat pane
and the side panel it is given; the window assembles it and re-emits its signals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QTextCursor

from desktop.app_text import NO_MODEL_YET, for_the_app
from desktop.controller import EngineController
from desktop.library import ConversationLibrary
from desktop.model_loading import ModelLoading
from desktop.opener import ConversationOpener
from desktop.reply_state import ReplyState
from desktop.session import ChatSession, SessionListener
from desktop.store.conversations import ConversationStore
from desktop.store.schema import StoreError
from desktop.turns import model_note, other_models
from desktop.views.chat_pane import ChatPane
from desktop.views.chat_view import MessageWidget
from desktop.views.input_hint import (
    estimate_tokens,
    hint_text,
    last_part_that_fits,
    max_tokens_warning,
    refused_count,
    too_long,
    too_long_text,
)
from desktop.views.message_edit import BUSY_NOTICE, MessageEdit
from desktop.views.side_panel import SidePanel
from desktop.views.token_mark import mark_token
from desktop.views.topk_panel import visible_token
from desktop.views.window_layout import StatusLine
from engine.events import GenerationResult, GenerationStarted, ModelInfo, PrefillProgress, Step

RETRY_SAVE_MS = 2000


def hint_tokens(text: str, system_prompt: str) -> int:
    """The estimate the hint shows for a message with its system prompt."""
    return estimate_tokens(text) + estimate_tokens(system_prompt)


class _Background(SessionListener):
    """Listens to a session no longer on screen: only a failed save still concerns the user."""

    def __init__(self, screen: ChatScreen) -> None:
        self.screen = screen

    def save_failed(self, _session: ChatSession, message: str) -> None:
        self.screen._on_save_problem(message)


class ChatScreen(QObject):
    """The shown session, the one being answered, and what the user asks of them."""

    token_shown = Signal(object)  # Step, after it is shown
    prefill_shown = Signal(object)  # PrefillProgress, after the reply card has shown it
    reply_finished = Signal(object)  # GenerationResult (with `error` when the reply failed)
    buttons_changed = Signal()
    """What can be asked changed (a reply started or ended, another chat is shown)."""

    def __init__(
        self,
        store: ConversationStore,
        controller: EngineController,
        models: ModelLoading,
        pane: ChatPane,
        side: SidePanel,
        status_line: StatusLine,
        library: ConversationLibrary,
        show_error: Callable[..., None],
        parent: QObject,
    ) -> None:
        super().__init__(parent)
        self.store, self.controller, self.models, self.library = store, controller, models, library
        self.pane, self.chat, self.banner, self.input = pane, pane.chat, pane.banner, pane.input
        self.topk, self.sampling, self.status_line = side.topk, side.sampling, status_line
        self.show_error = show_error
        self.defer_send: Callable[[str], bool] = lambda _text: False
        """Asked first when a message is sent (step mode ends a paused reply, then sends it)."""
        self._context_used = 0
        """Prompt plus reply tokens of the last reply in this window (for the input hint)."""
        self._streaming: ChatSession | None = None
        """Where the engine's answers go: the session whose request it is answering (maybe not
        the one shown). Routing only: whether a reply runs is the controller's `state`."""
        self._panel_turn = None
        """The reply whose step the top-k panel shows (a click there branches from it)."""
        self._pending_branch: tuple | None = None
        """(session, turn, step, token id, step mode): a branch asked for while a reply streamed;
        it starts when the controller's state next becomes IDLE."""
        self.opener = ConversationOpener(store, controller, self)
        self.message_edit = MessageEdit(self.input, self.banner, self.chat, parent)
        self._prompt_timer = QTimer(self, singleShot=True, interval=400)
        self._retry_timer = QTimer(self, interval=RETRY_SAVE_MS)
        self._fits = True
        """Whether the typed message fits the context (Send is off while it does not)."""
        self._last_branch: tuple[ChatSession, object, int] | None = None
        """(session, the new version, the message id of the version it was made from): what
        Undo (the banner's button, Ctrl+Z) takes back."""
        self._undo_pending = False
        """Undo was asked while the branch still streamed: it runs once the reply has ended."""
        self._refused: tuple[str, int] | None = None
        """(text, exact tokens) of the last message the engine refused as too long."""
        self.branches_unavailable = ""
        """Why the open model cannot continue a reply from another token ("" when it can)."""
        self.session = self._new_session()
        self._connect()

    def _connect(self) -> None:
        engine = self.controller  # its relayed answers come with its state already updated
        engine.generation_started.connect(self._on_generation_started)
        engine.prefill_progress.connect(self._on_prefill)
        engine.token.connect(self._on_token)
        engine.generation_paused.connect(self._on_paused)
        engine.generation_finished.connect(self._on_finished)
        engine.generation_failed.connect(self._on_failed)
        engine.state_changed.connect(self._on_state)
        self.input.submitted.connect(self.send)
        self.pane.send_button.clicked.connect(lambda: self.send(self.pane.typed_text()))
        self.pane.stop_button.clicked.connect(self.stop)
        self.pane.regenerate_button.clicked.connect(self.regenerate)
        self.chat.token_clicked.connect(self._inspect_token)
        self.chat.edit_requested.connect(self.edit_message)
        self.chat.save_problem.connect(self._on_save_problem)
        self.chat.version_requested.connect(self.show_version)
        self.topk.alternative_chosen.connect(self._branch_from_panel)
        self.sampling.max_new_tokens.valueChanged.connect(self.update_hints)
        self.input.textChanged.connect(self.update_hints)
        self.sampling.system_prompt.textChanged.connect(self.update_hints)  # it counts too
        self.pane.trim_button.clicked.connect(self.keep_last_part)
        self.buttons_changed.connect(self.update_model_note)  # a reply, a version, a chat shown
        self.models.loaded.connect(lambda *_: self.update_model_note())
        self.models.unloaded.connect(self.update_model_note)
        self.opener.ready.connect(self._opened)
        self.opener.failed.connect(
            lambda m: self.show_error(f"Could not open this conversation: {m}")
        )
        self.sampling.system_prompt.textChanged.connect(self._prompt_timer.start)
        self._prompt_timer.timeout.connect(self.save_system_prompt)
        self._retry_timer.timeout.connect(self._retry_saves)

    @property
    def conversation_id(self) -> int | None:
        return self.session.conversation_id

    @property
    def streaming(self) -> ChatSession | None:
        """The session whose reply the engine is writing (maybe not the one shown)."""
        return self._streaming if self.controller.state.active else None

    @property
    def model_info(self) -> ModelInfo | None:
        return self.models.info

    def update_buttons(self) -> None:
        self.buttons_changed.emit()

    def _new_session(self) -> ChatSession:
        name = self.model_info.name if self.model_info else ""
        prompt = self.sampling.default_system_prompt()
        return ChatSession(self.store, self.controller, system_prompt=prompt, model=name)

    def _show(self, session: ChatSession) -> None:
        """Put `session` on screen; a reply still streaming in the old one ends there."""
        old = self.session
        self.save_system_prompt()
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
            self.library.attempt(lambda: self.store.set_last_open(session.conversation_id))
        self.library.refresh()
        self.buttons_changed.emit()

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

    def reopen_last(self) -> None:
        self._show(self.session)
        try:
            last = self.store.get_last_open()
        except StoreError:
            last = None
        if last is not None:
            self.open_conversation(last)

    def save_system_prompt(self) -> None:
        self._prompt_timer.stop()
        self.session.set_system_prompt(self.sampling.system_prompt.toPlainText())

    # -- the user's requests -----------------------------------------------------------------

    def _can_ask(self) -> bool:
        if self.controller.busy:
            return False
        if self.model_info is None:
            self.show_error(f"{NO_MODEL_YET}.")
            return False
        self.save_system_prompt()
        return True

    def send(self, text: str, step: bool = False) -> None:
        """Post the user's message (saved at once) and ask for a reply (`step`: in step mode);
        while a message is being edited, the text becomes a new version of that message instead
        (the old one and the turns after it stay, one ‹ › away)."""
        if text and not self._fits_context(text):
            self._refuse_too_long(text)  # kept in the box; no conversation is created
            return
        if text and self.defer_send(text):
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

    # -- a message too long for the context -------------------------------------------------

    @property
    def message_fits(self) -> bool:
        """The typed message can fit the open model's context (the window turns Send off
        otherwise); True with no model, when nothing is known yet."""
        return self._fits

    def _system_prompt(self) -> str:
        return self.sampling.system_prompt.toPlainText()

    def _fits_context(self, text: str) -> bool:
        max_context = self.model_info.max_context if self.model_info else None
        return not too_long(text, max_context, self._system_prompt())

    def _refuse_too_long(self, text: str, exact: int | None = None) -> None:
        """Say that `text` cannot be sent and what can be done: shorten it, or keep its last
        part that fits (a button in the notice, as beside the box). `exact`: the engine's count."""
        if self.model_info is None:
            return
        max_context = self.model_info.max_context
        system = self._system_prompt()
        tokens = hint_tokens(text, system) if exact is None else exact
        with_system = bool(system.strip())
        self.banner.show_message(
            too_long_text(tokens, max_context, exact=exact is not None, with_system=with_system),
            "notice",
            action="Keep the last part that fits",
            callback=self.keep_last_part,
        )

    def keep_last_part(self) -> None:
        """Cut the message in the box to its last part that fits the context with room for a
        reply (the engine's exact count of a refused message, when known, sizes the cut)."""
        if self.model_info is None:
            return
        text = self.input.toPlainText()
        refused = self._refused
        exact = refused[1] if refused is not None and refused[0] == text.strip() else None
        kept = last_part_that_fits(
            text,
            self.model_info.max_context,
            self.sampling.max_new_tokens.value(),
            self._system_prompt(),
            tokens=exact,
        )
        if self.banner.showing(self.keep_last_part):
            self.banner.hide()
        self.input.setPlainText(kept)
        self.input.moveCursor(QTextCursor.MoveOperation.End)
        self.input.setFocus()

    def _withdraw_refused(self, session: ChatSession, result: GenerationResult) -> bool:
        """The engine refused a message as too long for the context (the estimate let it
        through): take it back out of the conversation (and the conversation, if it was new),
        put the text back in the box and offer to trim it. False for any other failure."""
        refused = refused_count(result.error)
        if refused is None or session is not self.session:
            return False
        text = session.withdraw_refused()
        if text is None:
            return False
        if session.conversation_id is None:
            self.library.attempt(lambda: self.store.set_last_open(None))
        self._refused = (text.strip(), refused[0])
        if not self.input.toPlainText().strip():  # never overwrite what was typed since
            self.input.setPlainText(text)
        self._refuse_too_long(text, exact=refused[0])
        return True

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
                self.library.attempt(lambda: self.store.set_last_open(self.conversation_id))
            if self.session.busy:
                self._streaming = self.session
                self._clear_panel()
                self._panel_turn = self.session.reply
                self.topk.set_params(self.sampling.options().params)
            self.library.refresh()
            self.buttons_changed.emit()
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
        if self.branches_unavailable:
            self.show_error(f"{self.branches_unavailable}.", kind="notice")
            return
        if self.controller.state.active:  # streaming, stopping, or paused in step mode
            self._pending_branch = (self.session, turn, step, token_id, step_mode)
            self.stop()
            return
        if not self._can_ask():
            return
        self.banner.hide()
        session, source = self.session, turn.message_id
        try:
            options = dataclasses.replace(self.sampling.options(), step=step_mode)
            if not self._ask(lambda: session.branch(turn, step, token_id, options)):
                return
        except ValueError as exc:
            self.show_error(f"Cannot branch from there: {exc}.", kind="notice")
            return
        if session.reply is not None and source is not None:
            self._offer_undo(session, session.reply, source, step)

    def set_branches_unavailable(self, reason: str) -> None:
        """The open model cannot continue a reply from another token (`reason`; "" when it
        can): the top-k panel offers no Branch button and a branch asked for says why."""
        self.branches_unavailable = reason
        self.topk.branchable = not reason
        self.topk.setToolTip(f"{reason}." if reason else "")

    def _offer_undo(self, session: ChatSession, reply, source: int, step: int) -> None:
        """Say that a new version was made, with Undo (Ctrl+Z) right there."""
        self._last_branch, self._undo_pending = (session, reply, source), False
        self.banner.show_message(
            f"New version {reply.version} of this reply, continued from token {step + 1}; "
            "Ctrl+Z takes it back.",
            "notice",
            action="Undo",
            callback=self.undo_branch,
            shortcut="Ctrl+Z",
        )

    def undo_branch(self) -> None:
        """Take back the branch just made: the new version goes (stopped first if it still
        streams) and the version it was made from is shown again."""
        last = self._last_branch
        if last is None:
            return
        session, reply, source = last
        if session is not self.session:
            self._last_branch = None
            return
        if session.reply is reply:  # still being written: stop it, undo once it has ended
            self._undo_pending = True
            self.stop()
            return
        self._last_branch, self._undo_pending = None, False
        done: list[bool] = []
        if self.library.attempt(lambda: done.append(session.undo_version(reply, source))):
            self._clear_panel()
            self.library.refresh()
            self.buttons_changed.emit()
            if done and done[0]:
                self.show_error("Branch undone: the earlier version is shown again.", "notice")

    def _branch_from_panel(self, step: Step, token_id: int) -> None:
        turn = self._panel_turn
        if turn is None or turn not in self.session.turns:
            self.show_error(
                "That token belongs to a reply no longer shown; click Tokens on a reply, then a "
                "token, to branch from it.",
                kind="notice",
            )
            return
        self.branch_from(turn, step.index, token_id)

    def _start_pending_branch(self) -> None:
        pending, self._pending_branch = self._pending_branch, None
        if pending is None:
            return
        session, turn, step, token_id, step_mode = pending
        if session is self.session and turn in session.turns and not session.busy:
            self.branch_from(turn, step, token_id, step_mode)

    def show_version(self, turn, version: int) -> None:
        """Show another version of a turn (`‹ ›`); the conversation continues from it."""
        if self.session.busy:
            self.show_error("Stop the reply (Esc) before switching versions.", kind="notice")
            return
        if self.library.attempt(lambda: self.session.show_version(turn, version)):
            self._clear_panel()
            self._show_figures_of_shown()
            self.buttons_changed.emit()

    def _show_figures_of_shown(self) -> None:
        """The status bar's figures (context used, speed) of the reply now shown: after ‹ ›
        they are those of the version on screen, which the next message continues from."""
        reply = next((t for t in reversed(self.session.turns) if t.role == "assistant"), None)
        t = reply.timings if reply is not None else {}
        prompt, generated = t.get("prompt_tokens"), t.get("generated_tokens")
        if self.model_info is None or not isinstance(prompt, int) or not isinstance(generated, int):
            self._context_used = 0
            self.status_line.clear_reply()
            return
        self._context_used = prompt + generated
        self.status_line.finished(
            GenerationResult(
                "", [], prompt, generated, 0.0, float(t.get("ttft_s") or 0.0),
                float(t.get("decode_tokens_per_s") or 0.0), reply.stop_reason or "",
                max_context=self.model_info.max_context, dropped_turns=reply.dropped_turns,
            )
        )  # fmt: skip
        self.update_hints()

    def _clear_panel(self) -> None:
        self.topk.clear()
        self._panel_turn = None

    def escape(self) -> None:
        """Esc, wherever the focus is: stop the reply being written, or else cancel an edit."""
        if self.controller.state.active:
            self.stop()
        else:
            self.message_edit.cancel()

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

    def _on_paused(self, request_id: int) -> None:
        """A step-mode reply waits for the next click: the status bar says where it stands."""
        session = self._streaming
        if session is None or session is not self.session or session.reply is None:
            return
        if self.controller.paused == request_id and self.model_info is not None:
            self.status_line.paused(len(session.reply.steps), self.model_info.max_context)

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
        if not self._withdraw_refused(session, result):
            self._show_failure(session, result)
        self._after_reply(result)

    def _show_failure(self, session: ChatSession, result: GenerationResult) -> None:
        """Say why the reply failed; a reply cut mid-way (a server closing the connection) keeps
        what streamed, marked "cut off", and Retry writes it again (a new version)."""
        last = session.turns[-1] if session.turns else None
        cut = last is not None and last.role == "assistant" and last.stop_reason == "error"
        message = f"Cut off: {result.error}" if cut else result.error
        self.show_error(message)
        if session is self.session and session.can_regenerate:
            self.banner.show_message(
                for_the_app(message), "error", action="Retry", callback=self.retry
            )

    def retry(self) -> None:
        """Write the failed reply again (Regenerate; the cut one stays a version away)."""
        self.regenerate()

    def _after_reply(self, result: GenerationResult) -> None:
        self.topk.flush_now()  # the last step, now: the repaint timer may not have shown it yet
        self.library.refresh()
        self.buttons_changed.emit()
        self.reply_finished.emit(result)
        if self._undo_pending:
            self._undo_pending = False
            self.undo_branch()

    def _on_state(self, state: ReplyState) -> None:
        """The controller's state changed (after the answer that changed it was routed): a
        branch asked for while a reply ran starts once the engine is IDLE."""
        self.buttons_changed.emit()
        if state is ReplyState.IDLE and self.controller.state is ReplyState.IDLE:
            self._start_pending_branch()

    def _inspect_token(self, widget: MessageWidget, index: int) -> None:
        step = widget.steps[index]
        title = f"Token {index + 1} of {len(widget.steps)}: “{visible_token(step.piece)}”"
        self._panel_turn = getattr(widget, "turn", None)
        mark_token(self.chat, widget, index)  # which of the shaded tokens the panel describes
        self.topk.show_step(dataclasses.replace(step, index=index), title=title)
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

    def update_model_note(self) -> None:
        """Say, above the message box, when the open model is not the one that wrote this
        chat's replies (a saved chat continues with whatever model is open)."""
        name = self.model_info.name if self.model_info else ""
        note = model_note(other_models(self.session.turns, name), name) if name else ""
        label = self.pane.model_note
        if label.text() != note:
            label.setText(note)
        label.setVisible(bool(note))

    def update_hints(self) -> None:
        """The typed message's estimated cost, and a too-long max new tokens, as you type."""
        max_context = self.model_info.max_context if self.model_info else None
        used = self._context_used if self.session.turns else 0
        text, system = self.input.toPlainText(), self._system_prompt()
        self.pane.input_hint.setText(hint_text(text, max_context, used, system))
        fits = not too_long(text, max_context, system)
        self.pane.trim_button.setVisible(not fits)
        if fits != self._fits:
            self._fits = fits
            self.buttons_changed.emit()  # Send follows
        warning = max_tokens_warning(self.sampling.max_new_tokens.value(), max_context)
        self.sampling.warning.setText(warning)
        self.sampling.warning.setVisible(bool(warning))

    def close(self) -> None:
        """The window closes: a reply cut mid-way keeps what streamed, as a stopped reply."""
        for session in {id(s): s for s in (self._streaming, self.session) if s}.values():
            session.abandon()
        self._streaming = None
        self.opener.shutdown()
