"""Step mode: a reply written one token per click, with the sampler's reasoning on show.

Next token (F10) asks the engine for exactly one token of the reply and pauses it there; the
engine keeps the reply's token stream suspended between clicks (KV cache, sampler seed, text
decoder), so each click costs one decode step and picks what normal generation would have picked.
Continue (F5) writes the rest at normal speed; Stop (Esc) ends it as it is; Send with a new
message ends it and sends. Leaving the chat, a new chat, loading or unloading a model end it
too (saved, stopped), exactly as they end a streaming reply. The worst moments:

- before a model is loaded, or while one loads: a notice says what to do, nothing is asked;
- during a normal reply: the reply pauses after the token in flight, and steps from there;
- clicks faster than the engine answers: each one is counted and gets its own token, in order.
"""

from __future__ import annotations

from typing import Protocol

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMenu, QPushButton, QSplitter, QWidget

from desktop.app_text import NO_MODEL_YET
from desktop.controller import EngineController
from desktop.model_loading import ModelLoading
from desktop.session import ChatSession
from desktop.views.chat_pane import ChatPane
from desktop.views.side_panel import SidePanel
from desktop.views.step_view import IDLE_TEXT, StepView

NEXT_SHORTCUT = "F10"
"""As a debugger's "step over"."""
CONTINUE_SHORTCUT = "F5"
"""As a debugger's "continue"."""
TOGGLE_SHORTCUT = "Ctrl+Shift+T"
TOGGLE_TIP = "Write replies one token per click and see how each is chosen"
PAUSED_TEXT = (
    "Paused. Next token (F10) for one more, Continue (F5) for the rest, Stop (Esc) to end here."
)


class StepHost(Protocol):
    """What step mode asks of the chat on screen (the main window answers)."""

    @property
    def session(self) -> ChatSession: ...
    @property
    def streaming(self) -> ChatSession | None:
        """The session whose reply the engine is writing (maybe not the one shown)."""

    def send(self, text: str, step: bool = False) -> None: ...
    def regenerate(self, step: bool = False) -> None: ...
    def branch_from(self, turn, step: int, token_id: int, step_mode: bool = False) -> None: ...
    def stop(self) -> None: ...
    def update_buttons(self) -> None: ...
    def show_error(self, message: str, kind: str = "error") -> None: ...


class StepMode(QObject):
    """The window's step mode: its toggle, Next token and Continue, and the stage panel.

    It drives the widgets it is given (the chat pane's buttons row, the side panel, the window's
    columns) and asks `host` for the chat; the window connects `on_finished` and `on_model_ready`.
    """

    shown = Signal(object)
    """A step's account is on show: its `SamplerStages`, or speculative decoding's
    `DraftCheck` for a token the sampler did not pick itself (one per Next token)."""

    def __init__(
        self,
        host: StepHost,
        controller: EngineController,
        models: ModelLoading,
        pane: ChatPane,
        side: SidePanel,
        columns: QSplitter,
        window: QWidget,
    ) -> None:
        super().__init__(window)
        self.host, self.controller, self.models = host, controller, models
        self.pane, self.side, self.columns = pane, side, columns
        self.view = StepView()
        self.view.hide()
        side.add_on_top(self.view, stretch=2)
        self.action = QAction("Step &mode", window)
        self.action.setCheckable(True)
        self.action.setShortcut(QKeySequence(TOGGLE_SHORTCUT))
        self.action.setToolTip(TOGGLE_TIP)
        self.unavailable = ""
        """Why the open model cannot be stepped ("" when it can)."""
        self.action.toggled.connect(self._toggled)
        self.next_action = QAction("&Next token", window)
        self.next_action.setShortcut(QKeySequence(NEXT_SHORTCUT))
        self.next_action.triggered.connect(self.next_token)
        self.continue_action = QAction("&Continue the reply", window)
        self.continue_action.setShortcut(QKeySequence(CONTINUE_SHORTCUT))
        self.continue_action.triggered.connect(self.continue_reply)
        for action in (self.action, self.next_action, self.continue_action):
            window.addAction(action)  # the shortcuts work wherever the focus is
        self.next_token_button = QPushButton("Next token")
        self.next_token_button.setToolTip(f"Generate exactly one token ({NEXT_SHORTCUT})")
        self.next_token_button.clicked.connect(self.next_token)
        self.continue_button = QPushButton("Continue")
        self.continue_button.setToolTip(f"Write the rest as usual ({CONTINUE_SHORTCUT})")
        self.continue_button.clicked.connect(self.continue_reply)
        for button in (self.next_token_button, self.continue_button):
            pane.add_button(button)
            button.hide()
        self._queued = 0
        """Next token clicks made while the engine was still busy with the previous one."""
        self._send_after: str | None = None
        """A message sent while a reply was paused: it goes once that reply has ended."""
        self._shown_session = None
        self._sizes_before: tuple[list[int], list[int]] | None = None
        """The window's column and side-panel sizes before step mode made room for its panel."""
        self._taken: str | None = None
        """The text of a token the user took instead of the pick, until its reply pauses."""
        self._shown_at: tuple | None = None
        """(reply turn, 0-based step) whose pick the panel shows: where a click branches."""
        self._continued = False
        """Continue was pressed: the panel says how the reply it let run ended."""
        self.view.alternative_chosen.connect(self._take_instead)
        controller.generation_paused.connect(self._on_paused)  # relayed: `paused` is set
        controller.worker.stages.connect(self._on_stages)

    def add_to(self, menu: QMenu) -> None:
        """Step mode, Next token and Continue in `menu` (the Chat menu), after its first two."""
        first = menu.actions()[2] if len(menu.actions()) > 2 else None
        menu.insertSeparator(first)
        for entry in (self.action, self.next_action, self.continue_action):
            menu.insertAction(first, entry)

    def on_model_ready(self, _info) -> None:
        self.view.clear()

    def set_unavailable(self, reason: str) -> None:
        """The open model cannot be stepped (`reason` says why; "" when it can): the toggle and
        Next token are greyed, with the reason as their tooltip; step mode turns off."""
        self.unavailable = reason
        if reason and self.action.isChecked():
            self.action.setChecked(False)
        self.action.setEnabled(not reason)
        self.action.setToolTip(f"{reason}." if reason else TOGGLE_TIP)
        self.update_buttons()

    @property
    def enabled(self) -> bool:
        return self.action.isChecked()

    def _toggled(self, on: bool) -> None:
        self.view.setVisible(on)
        # The model's distribution is the panel's first stage: the top-k list makes way for it.
        self.side.show_top_k(not on)
        self.next_token_button.setVisible(on)
        self.continue_button.setVisible(on)
        if on:
            self._sizes_before = (self.columns.sizes(), self.side.sizes())
            make_room(self.columns, self.side)
        else:
            if self._sizes_before is not None:  # the chat gets its width back
                columns, side = self._sizes_before
                self.columns.setSizes(columns)
                self.side.setSizes(side)
                self._sizes_before = None
            if self.controller.paused is not None:
                self.continue_reply()  # leaving step mode lets a paused reply finish as usual
        self.update_buttons()

    # -- what the user does ----------------------------------------------------------------

    def next_token(self) -> None:
        """Exactly one more token of the reply (starting one from the typed message if none is
        paused); see the module docstring for the moments when that cannot be done."""
        w = self.host
        if self.models.info is None:
            w.show_error(f"{NO_MODEL_YET}, then press Next token.")
            return
        if self.models.in_progress:
            w.show_error("The model is still loading: press Next token once it is ready.", "notice")
            return
        if self.unavailable:
            w.show_error(f"{self.unavailable}.", "notice")
            return
        if not self.enabled:
            self.action.setChecked(True)
        controller = self.controller
        if controller.paused is not None:
            controller.resume(one=True)
            w.update_buttons()
            return
        if controller.busy:
            if controller.stepping:
                self._queued += 1
            else:  # a normal reply is streaming: pause it after the token in flight
                controller.pause()
            return
        text = self.pane.typed_text()
        if text:
            w.send(text, step=True)
        elif w.session.unanswered:
            w.regenerate(step=True)
        else:
            w.show_error(
                "Type a message first: Next token then writes its reply one token at a time.",
                kind="notice",
            )
            return

    def _take_instead(self, token_id: int, text: str) -> None:
        """A click on another token in the stage tables: the reply goes on from that token (a new
        version, the shown one kept), still one token per click when step mode is on."""
        w = self.host
        if self._shown_at is None:
            w.show_error(
                "The reply ended at that pick: Regenerate writes another version of it.",
                kind="notice",
            )
            return
        turn, step = self._shown_at
        self._queued = 0
        self._taken = text if self.enabled else None
        self.view.set_status(
            f"Taking “{text}” instead: a new version of the reply goes on from "
            "it (‹ › on the reply switches back)."
        )
        w.branch_from(turn, step, token_id, step_mode=self.enabled)

    def continue_reply(self) -> None:
        """Write the rest of the paused reply at normal speed. The last pick's tables go: they
        would still say "Token 3" while the reply runs on past it."""
        self._queued = 0
        reply = self.host.session.reply
        if self.controller.resume(one=False):
            self._continued = True
            self._shown_at = None
            at = f" from token {len(reply.steps)}" if reply is not None and reply.steps else ""
            self.view.clear(f"Continuing at normal speed{at}…")
            self.host.update_buttons()

    def defer_send(self, text: str) -> bool:
        """Sending while a reply is paused: end that reply (saved as it is), then send `text`.

        True when the send was deferred (the window sends it once the reply has ended).
        """
        if self.controller.paused is None:
            return False
        self._send_after = text
        self.host.stop()
        return True

    # -- what the engine answers -----------------------------------------------------------

    def _on_paused(self, request_id: int) -> None:
        w = self.host
        session = w.streaming
        if session is None or not session.on_paused(request_id):
            return
        w.update_buttons()
        if self.controller.paused != request_id:
            return  # Stop came meanwhile: the reply is ending
        if self._queued and session is w.session:
            self._queued -= 1
            self.controller.resume(one=True)
            return
        self._queued = 0
        if session is w.session:
            taken, self._taken = self._taken, None
            if taken is not None and session.reply is not None:
                # A forced token has no sampler account: say what happened instead of leaving
                # the old pick's tables on show.
                self._shown_at = None
                self.view.clear(
                    f"Token {len(session.reply.steps)}: you took “{taken}” instead (a new "
                    "version of the reply; ‹ › on it switches back). " + PAUSED_TEXT
                )
            else:
                self.view.set_status(PAUSED_TEXT)
                reply = session.reply
                if reply is not None and reply.steps and reply.steps[-1].check is not None:
                    # Speculative decoding checked a drafted token here: its account (a
                    # sampled check has no sampler stages, so this is the step's only one).
                    check = reply.steps[-1].check
                    self.view.show_check(reply.steps[-1], len(reply.steps))
                    if check.u is not None:
                        self._shown_session = session
                        self._shown_at = (reply, len(reply.steps) - 1)
                        self.shown.emit(check)

    def _on_stages(self, stages) -> None:
        w = self.host
        session = w.streaming
        if session is None or session is not w.session or stages.request_id != session.request_id:
            return
        index = len(session.reply.steps) if session.reply is not None else None
        if stages.is_eos and index is not None:
            index += 1
        self._shown_session = session
        self._shown_at = None
        self._taken = None
        if index is not None and not stages.is_eos:
            self._shown_at = (session.reply, index - 1)
        self.view.show_stages(stages, index)
        self.shown.emit(stages)

    def on_finished(self, result) -> None:
        self._queued = 0
        reason = getattr(result, "stop_reason", "")
        ends = {
            "eos": "The reply ended: the model picked end-of-sequence.",
            "max_tokens": "The reply reached max new tokens.",
            "context_full": "The model's context is full: the reply ends here.",
            "cancelled": "Stopped.",
            "error": "The reply failed (see the notice above).",
        }
        continued, self._continued = self._continued, False
        if self.view.stages is not None or continued:
            self.view.set_status(ends.get(reason, "The reply ended.") + " " + IDLE_TEXT)
        self.update_buttons()
        text, self._send_after = self._send_after, None
        if text is not None:
            self.host.send(text)

    def update_buttons(self) -> None:
        """Enable Next token while a model is ready; Continue while a reply is paused here."""
        w = self.host
        if self._shown_session is not None and self._shown_session is not w.session:
            self._shown_session = None
            self.view.clear()
        ready = self.models.info is not None and not self.models.in_progress
        self.next_token_button.setEnabled(ready and not self.unavailable)
        self.next_action.setEnabled(True)  # says why when it cannot step
        paused = self.controller.paused is not None and w.streaming is w.session
        self.continue_button.setEnabled(paused)
        self.continue_action.setEnabled(paused)


PANEL_WIDTH = 260
"""The side panel's width at which the stage tables read well (token, percentage)."""


def make_room(columns: QSplitter, side: QSplitter) -> None:
    """Widen the side panel to `PANEL_WIDTH` if it is narrower, taking the room from the
    conversation list first, then the chat; give the stage tables most of the panel's height."""
    sizes = columns.sizes()
    if len(sizes) == 3 and sizes[2] < PANEL_WIDTH:
        need = PANEL_WIDTH - sizes[2]
        from_list = min(need, max(0, sizes[0] - 120))
        from_chat = min(need - from_list, max(0, sizes[1] - 320))
        columns.setSizes(
            [sizes[0] - from_list, sizes[1] - from_chat, sizes[2] + from_list + from_chat]
        )
    total = sum(side.sizes())
    if total > 0:
        shown = [0 if not side.widget(i).isVisible() else 1 for i in range(side.count())]
        sizes = [0] * side.count()
        sizes[0] = int(total * 0.65)
        rest = [i for i in range(1, side.count()) if shown[i]]
        for i in rest:
            sizes[i] = (total - sizes[0]) // max(1, len(rest))
        side.setSizes(sizes)
