"""`ChatSession`: the one owner of one conversation.

It holds the conversation's id, its turns, the reply in progress with its Autosaver, the id of
the request the engine is answering and the system prompt. The chat view, the window's history
and the database are views of it: nothing else keeps a copy that has to be kept in step by hand.

Pure Python (no Qt): the window routes the worker's records to `on_started` / `on_step` /
`on_finished` / `on_failed`, and the session tells its `listener` what changed. A session whose
reply is still streaming when the user switches away keeps receiving that reply (the window
routes by request id) and saves it, finished, in its own conversation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from desktop import store as _store
from desktop.store import Autosaver, ConversationStore, StoreError
from engine.events import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_REPORT_TOP,
    GenerationRequest,
    GenerationResult,
    GenerationStarted,
    SamplingParams,
    Step,
)

log = logging.getLogger(__name__)

USER, ASSISTANT = "user", "assistant"
DAMAGED_TEXT = getattr(_store, "DAMAGED_TEXT", "[This message could not be read.]")


def message_count(store: ConversationStore, conversation_id: int) -> int:
    """How many messages a conversation has, without reading them (to choose how to open it)."""
    return store.count_messages(conversation_id)


class Engine(Protocol):
    """What a session needs from the engine (the desktop's EngineController)."""

    def generate(self, request: GenerationRequest) -> int: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class ReplyOptions:
    """How to answer: the sampling panel's values at the moment a reply is asked for."""

    params: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    report_top: int = DEFAULT_REPORT_TOP
    step: bool = False
    """Step mode: the reply pauses after each token until the user asks for the next."""


@dataclass(eq=False)
class Turn:
    """One message of the conversation as the session knows it.

    `position` is the message's place in the store (kept as stored: an imported conversation
    may have gaps). A stored reply's steps are read only when something looks at them, so a
    long conversation opens without reading every token's top-k.
    """

    role: str
    content: str
    position: int
    message_id: int | None = None
    finished: bool = True
    stop_reason: str | None = None
    model: str = ""
    timings: dict = field(default_factory=dict)
    damaged: bool = False
    loader: Callable[[], list] | None = field(default=None, repr=False)
    _steps: list | None = field(default=None, repr=False)

    @property
    def steps(self) -> list:
        if self._steps is None:
            try:
                self._steps = list(self.loader()) if self.loader else []
            except StoreError as exc:
                log.warning("steps of message %s could not be read: %s", self.message_id, exc)
                self._steps = []
        return self._steps

    @property
    def dropped_turns(self) -> int:
        value = self.timings.get("dropped_turns", 0)
        return value if isinstance(value, int) and value > 0 else 0

    @property
    def stats(self) -> str:
        """The reply's stats line ("24 tokens · 31.0 tok/s · stopped"), live or reopened."""
        return stats_line(self)


def stats_line(turn: Turn) -> str:
    if turn.role != ASSISTANT:
        return ""
    if not turn.finished:
        return "interrupted"
    parts = []
    t = turn.timings
    tokens, speed = t.get("generated_tokens"), t.get("decode_tokens_per_s")
    if isinstance(tokens, int):
        parts.append(f"{tokens} tokens")
    if t.get("stepped") == 1:
        parts.append("step by step")
    elif isinstance(speed, int | float) and not isinstance(speed, bool):
        parts.append(f"{float(speed):.1f} tok/s")
    extra = {"cancelled": "stopped", "context_full": "context full", "error": "failed"}
    if turn.stop_reason in extra:
        parts.append(extra[turn.stop_reason])
    return " · ".join(parts)


class SessionListener:
    """What a view of a session hears; every method does nothing unless overridden."""

    def turn_added(self, session: ChatSession, turn: Turn) -> None: ...

    def turns_removed(self, session: ChatSession, turns: list[Turn]) -> None: ...

    def reply_started(
        self, session: ChatSession, turn: Turn, started: GenerationStarted
    ) -> None: ...

    def reply_step(self, session: ChatSession, turn: Turn, step: Step) -> None: ...

    def reply_ended(self, session: ChatSession, turn: Turn) -> None: ...

    def save_failed(self, session: ChatSession, message: str) -> None: ...

    def saved_again(self, session: ChatSession) -> None: ...


class ChatSession:
    """One conversation, from its first message (or its reopening) to the end of its last reply."""

    def __init__(
        self,
        store: ConversationStore,
        engine: Engine,
        *,
        system_prompt: str = "",
        model: str = "",
        listener: SessionListener | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.conversation_id: int | None = None
        """None until the first message is saved."""
        self.turns: list[Turn] = []
        self.system_prompt = system_prompt
        self.model = model
        self.reply: Turn | None = None
        """The reply being streamed (also the last turn), if any."""
        self.request_id: int | None = None
        self.listener = listener or SessionListener()
        self._saver: Autosaver | None = None
        self._retry: list[Callable[[], Any]] = []
        """Saves that failed, oldest first; `retry_saves` runs them again."""
        self.save_error: str | None = None

    @classmethod
    def open(cls, store: ConversationStore, engine: Engine, conversation_id: int) -> ChatSession:
        """A saved conversation; StoreError if it cannot be read at all."""
        conv = store.get_conversation(conversation_id, steps=False)
        session = cls(store, engine, system_prompt=conv.system_prompt or "", model=conv.model)
        session.conversation_id = conversation_id
        for m in conv.messages:
            # A row whose text could not be read is shown as damaged and left out of prompts;
            # other damage (timings, times) was already replaced by safe defaults.
            content = m.content if isinstance(m.content, str) else DAMAGED_TEXT
            damaged = m.role not in (USER, ASSISTANT) or (
                bool(getattr(m, "damaged", False)) and content == DAMAGED_TEXT
            )
            session.turns.append(
                Turn(
                    m.role,
                    content,
                    m.position,
                    m.id,
                    finished=bool(m.finished),
                    stop_reason=m.stop_reason,
                    model=m.model or "",
                    timings=m.timings if isinstance(m.timings, dict) else {},
                    damaged=damaged,
                    loader=(lambda mid=m.id: store.get_steps(mid)) if m.role == ASSISTANT else None,
                )
            )
        return session

    # -- what the views read ---------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A reply of this session is streaming."""
        return self.reply is not None

    @property
    def history(self) -> list[dict]:
        """The finished turns as {"role", "content"} dicts (a fresh copy: read-only)."""
        return [
            {"role": t.role, "content": t.content}
            for t in self.turns
            if t is not self.reply and not t.damaged
        ]

    @property
    def unanswered(self) -> bool:
        """The last turn is a user message without a reply (stopped early, or it failed)."""
        turns = [t for t in self.turns if not t.damaged]
        return bool(turns) and turns[-1].role == USER and self.reply is None

    @property
    def can_regenerate(self) -> bool:
        """There is a user message to answer again: the last turn, or the one before a reply.

        False in an empty chat, and for a conversation (imported, say) whose last reply follows
        no user message: regenerating there would delete the reply and ask for nothing.
        """
        if self.busy:
            return False
        turns = [t for t in self.turns if not t.damaged]
        if not turns:
            return False
        if turns[-1].role == USER:
            return True
        return turns[-1].role == ASSISTANT and len(turns) > 1 and turns[-2].role == USER

    def prompt_messages(self) -> list[dict]:
        """What the model is asked to continue: roles alternate, whatever the history holds.

        A user message left unanswered (stopped before the first token, or too long for the
        context) stays in the conversation but is left out of later prompts; only the last
        turn is always included, as it is the one to answer.
        """
        turns = [t for t in self.turns if not t.damaged and t is not self.reply]
        out: list[dict] = []
        for i, turn in enumerate(turns):
            later = turns[i + 1] if i + 1 < len(turns) else None
            if turn.role == USER and (later is None or later.role == ASSISTANT):
                out.append({"role": USER, "content": turn.content})
            elif turn.role == ASSISTANT and out and out[-1]["role"] == USER:
                out.append({"role": ASSISTANT, "content": turn.content})
        system = self.system_prompt.strip()
        return ([{"role": "system", "content": system}] if system else []) + out

    # -- what the user does ----------------------------------------------------------------

    def send(self, text: str, options: ReplyOptions) -> None:
        """Save the user's message and ask for a reply. StoreError: nothing was sent."""
        if self.busy:
            raise RuntimeError("a reply is still being written")
        if self.conversation_id is None:
            self.conversation_id = self.store.create_conversation(self.system_prompt, self.model)
        message_id = self.store.add_message(self.conversation_id, USER, text)
        turn = Turn(USER, text, self._next_position(), message_id)
        self.turns.append(turn)
        self.listener.turn_added(self, turn)
        self._request_reply(options)

    def regenerate(self, options: ReplyOptions) -> bool:
        """Answer the last user message again (replacing its reply, if it has one)."""
        if self.busy or self.conversation_id is None:
            return False
        if not self.can_regenerate:
            return False
        last = next(t for t in reversed(self.turns) if not t.damaged)
        if last.role == ASSISTANT:
            self._truncate(self.turns.index(last))
        if not self.unanswered:
            return False
        self._request_reply(options)
        return True

    def edit(self, turn: Turn, text: str, options: ReplyOptions) -> None:
        """Replace a user message (and every turn after it) with `text`, and send it.

        Nothing changes before this call: editing is a view's business until it is sent.
        """
        if self.busy:
            raise RuntimeError("a reply is still being written")
        if turn not in self.turns or turn.role != USER:
            raise ValueError("only a message of this conversation's user can be edited")
        self._truncate(self.turns.index(turn))
        self.send(text, options)

    def stop(self) -> None:
        """Stop this session's reply after the token in flight; `on_finished` follows."""
        if self.busy:
            self.engine.stop()

    def set_system_prompt(self, text: str) -> None:
        """This conversation's system prompt, saved at once once the conversation exists."""
        if text == self.system_prompt:
            return
        self.system_prompt = text
        if self.conversation_id is not None:
            self._save(lambda: self.store.set_system_prompt(self.conversation_id, text))

    # -- what the engine answers -----------------------------------------------------------

    def on_started(self, started: GenerationStarted) -> bool:
        if self.reply is None or started.request_id != self.request_id:
            return False
        if started.dropped_turns:
            self.reply.timings = {**self.reply.timings, "dropped_turns": started.dropped_turns}
        self.listener.reply_started(self, self.reply, started)
        return True

    def on_step(self, step: Step) -> bool:
        reply = self.reply
        if reply is None or step.request_id != self.request_id:
            return False
        reply.steps.append(step)
        reply.content += step.text
        if self._saver is not None:
            try:
                self._saver.add(step)  # on failure its steps stay pending; the next add retries
            except StoreError as exc:
                self._failed_save(exc)
        self.listener.reply_step(self, reply, step)
        return True

    def on_paused(self, request_id: int) -> bool:
        """A step-mode reply waits for the next click: save what it has so far, now (the wait
        may be long; the autosaver's own batching would keep the last tokens in memory)."""
        if self.reply is None or request_id != self.request_id:
            return False
        # A number, as every stored timing is: 1 = written (at least partly) in step mode.
        self.reply.timings = {**self.reply.timings, "stepped": 1}
        if self._saver is not None:
            try:
                self._saver.flush()
            except StoreError as exc:
                self._failed_save(exc)
        return True

    def on_finished(self, result: GenerationResult) -> bool:
        """The reply ended (EOS, max tokens, stop string, context full or Stop)."""
        if self.reply is None or result.request_id != self.request_id:
            return False
        timings = {**result.timings(), "dropped_turns": self.reply.dropped_turns}
        if self.reply.timings.get("stepped"):
            timings["stepped"] = 1  # its speed is the user's clicking, not the model's
        self._end_reply(result.stop_reason, result.text, timings)
        return True

    def on_failed(self, result: GenerationResult) -> bool:
        """The reply broke off: keep what streamed (marked failed), or drop an empty reply."""
        if self.reply is None or result.request_id != self.request_id:
            return False
        self._end_reply("error")
        return True

    def abandon(self) -> None:
        """The app is closing mid-reply: save what streamed as a stopped reply."""
        if self.reply is not None:
            self._end_reply("cancelled", quiet=True)
        self.retry_saves()

    def _end_reply(
        self,
        stop_reason: str,
        text: str | None = None,
        timings: dict | None = None,
        quiet: bool = False,
    ) -> None:
        """Finish the reply in memory and on disk; a reply with nothing in it is dropped.

        `text` (the engine's final text) defaults to what streamed; `quiet` skips the listener.
        """
        reply, saver = self.reply, self._saver
        self.reply, self.request_id, self._saver = None, None, None
        if not reply.steps and not text:
            self._drop_reply(reply)
            return
        reply.content = reply.content if text is None else text
        reply.finished, reply.stop_reason = True, stop_reason
        if timings is not None:
            reply.timings = timings
        if saver is not None:
            content, saved_timings = reply.content, dict(reply.timings)
            self._save(lambda: saver.finish(content, stop_reason, saved_timings))
        if not quiet:
            self.listener.reply_ended(self, reply)

    # -- saving ----------------------------------------------------------------------------

    @property
    def unsaved(self) -> bool:
        """Something is kept in memory only, waiting for `retry_saves`."""
        pending = self._saver is not None and self._saver.pending > 0 and bool(self.save_error)
        return bool(self._retry) or pending

    def retry_saves(self) -> bool:
        """Try the failed saves again, in order; True once everything is on disk."""
        try:
            if self._saver is not None and self._saver.pending:
                self._saver.flush()
            while self._retry:
                self._retry[0]()
                self._retry.pop(0)
        except StoreError as exc:
            self._failed_save(exc)
            return False
        if self.save_error is not None:
            self.save_error = None
            self.listener.saved_again(self)
        return True

    def _save(self, action: Callable[[], Any]) -> None:
        """Run a save now, or (if earlier ones wait, or it fails) queue it for `retry_saves`."""
        self._retry.append(action)
        self.retry_saves()

    def _failed_save(self, exc: StoreError) -> None:
        first = self.save_error is None
        self.save_error = str(exc)
        if first:
            log.warning("saving conversation %s failed: %s", self.conversation_id, exc)
            self.listener.save_failed(self, str(exc))

    # -- helpers ---------------------------------------------------------------------------

    def _next_position(self) -> int:
        return self.turns[-1].position + 1 if self.turns else 0

    def _request_reply(self, options: ReplyOptions) -> None:
        messages = self.prompt_messages()
        sampling = {**options.params.to_dict(), "max_new_tokens": options.max_new_tokens}
        reply_id = self.store.start_reply(self.conversation_id, self.model, sampling)
        self.reply = Turn(
            ASSISTANT,
            "",
            self._next_position(),
            reply_id,
            finished=False,
            model=self.model,
            _steps=[],
        )
        self.turns.append(self.reply)
        self._saver = Autosaver(self.store, reply_id)
        self.listener.turn_added(self, self.reply)
        self.request_id = self.engine.generate(
            GenerationRequest(
                messages=tuple(messages),
                params=options.params,
                max_new_tokens=options.max_new_tokens,
                report_top=options.report_top,
                step=options.step,
            )
        )

    def _drop_reply(self, reply: Turn) -> None:
        """Nothing was generated: the reply goes; its user message stays, unanswered."""
        self.turns.remove(reply)
        conv = self.conversation_id
        self._save(lambda: self.store.truncate_from(conv, reply.position))
        self.listener.turns_removed(self, [reply])

    def _truncate(self, index: int) -> None:
        """Forget the turns from `index` on, on disk first (StoreError: nothing changed)."""
        gone = self.turns[index:]
        if not gone:
            return
        self.store.truncate_from(self.conversation_id, gone[0].position)
        del self.turns[index:]
        self.listener.turns_removed(self, gone)
