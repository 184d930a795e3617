"""`ChatSession`: the one owner of one conversation.

It holds the conversation's id, its turns, the reply in progress with its Autosaver, the id of
the request the engine is answering and the system prompt. The chat view, the window's history
and the database are views of it: nothing else keeps a copy that has to be kept in step by hand.

Pure Python (no Qt): the window routes the worker's records to `on_started` / `on_step` /
`on_finished` / `on_failed`, and the session tells its `listener` what changed. A session whose
reply is still streaming when the user switches away keeps receiving that reply (the window
routes by request id) and saves it, finished, in its own conversation.

Replies have versions: Regenerate, or a branch from another token of a reply ("continue from
this alternative instead"), adds a version next to the old one rather than replacing it. `turns`
is always the conversation's shown path, the one the store's `get_conversation` returns; the
model is asked to continue exactly that.

The turns themselves (`Turn`, `ReplyOptions`) are data, in `turns.py`; keeping failed saves and
retrying them is `session_saving.py`'s `SavedSession`, which `ChatSession` inherits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from desktop.session_saving import SavedSession
from desktop.store.autosave import Autosaver
from desktop.store.conversations import ConversationStore
from desktop.store.schema import StoreError
from desktop.turns import ASSISTANT, USER, ReplyOptions, Turn, turn_from_message
from engine.events import GenerationRequest, GenerationResult, GenerationStarted, Step


def message_count(store: ConversationStore, conversation_id: int) -> int:
    """How many messages a conversation has, without reading them (to choose how to open it)."""
    return store.count_messages(conversation_id)


class Engine(Protocol):
    """What a session needs from the engine (the desktop's EngineController)."""

    def generate(self, request: GenerationRequest) -> int: ...

    def stop(self) -> None: ...


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


class ChatSession(SavedSession):
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
        self._replaced: list[Turn] = []
        """The turns the reply in progress took the place of on screen (its other version and
        what followed it): shown again if the new version comes to nothing."""
        self._sent: tuple[Turn, bool] | None = None
        """(the message `send` just saved, whether it created the conversation) until its reply
        writes a token: what `withdraw_refused` takes back if the engine refuses the message."""

    @classmethod
    def open(cls, store: ConversationStore, engine: Engine, conversation_id: int) -> ChatSession:
        """A saved conversation; StoreError if it cannot be read at all."""
        conv = store.get_conversation(conversation_id, steps=False)
        session = cls(store, engine, system_prompt=conv.system_prompt or "", model=conv.model)
        session.conversation_id = conversation_id
        session.turns.extend(turn_from_message(store, m) for m in conv.messages)
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

    def model_turns(self) -> list[Turn]:
        """The turns the model reads, in order: roles alternate, whatever the history holds.

        The one choice of what the model sees (the chat's prompt, the surprisal tint and the
        attention view all use it). A user message left unanswered (stopped before the first
        token, or too long for the context) stays in the conversation but is left out of later
        prompts; only the last turn is always included, as it is the one to answer. The reply
        in progress is not part of it.
        """
        turns = [t for t in self.turns if not t.damaged and t is not self.reply]
        out: list[Turn] = []
        for i, turn in enumerate(turns):
            later = turns[i + 1] if i + 1 < len(turns) else None
            if turn.role == USER and (later is None or later.role == ASSISTANT):
                out.append(turn)
            elif turn.role == ASSISTANT and out and out[-1].role == USER:
                out.append(turn)
        return out

    def prompt_messages(self, turns: list[Turn] | None = None) -> list[dict]:
        """What the model is asked to continue, as {"role", "content"} messages: the system
        prompt (if any), then `turns` (default: `model_turns()`, all the model reads)."""
        turns = self.model_turns() if turns is None else turns
        system = self.system_prompt.strip()
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": t.role, "content": t.content} for t in turns
        ]

    # -- what the user does ----------------------------------------------------------------

    def send(self, text: str, options: ReplyOptions) -> None:
        """Save the user's message and ask for a reply. StoreError: nothing was sent."""
        if self.busy:
            raise RuntimeError("a reply is still being written")
        created = self.conversation_id is None
        if created:
            self.conversation_id = self.store.create_conversation(self.system_prompt, self.model)
        parent = self.turns[-1].message_id if self.turns else None
        message_id = self.store.add_message(self.conversation_id, USER, text, parent_id=parent)
        turn = Turn(USER, text, self._next_position(), message_id, parent_id=parent)
        self.turns.append(turn)
        self.listener.turn_added(self, turn)
        self._request_reply(options)
        self._sent = (turn, created)

    def withdraw_refused(self) -> str | None:
        """Take back the message `send` just saved when the engine refused it before writing
        anything (too long for the context): off the screen and the disk, with the conversation
        if that message created it. Returns its text, or None if there is nothing to take back
        (the reply wrote something, or another request came since)."""
        sent, self._sent = self._sent, None
        if sent is None or self.busy:
            return None
        turn, created = sent
        if not self.turns or self.turns[-1] is not turn:
            return None
        self.turns.remove(turn)
        self.listener.turns_removed(self, [turn])
        if created and not self.turns:
            conversation_id, self.conversation_id = self.conversation_id, None
            self._save(lambda: self.store.delete_conversation(conversation_id))
        elif turn.message_id is not None:
            self._save(lambda: self.store.delete_message(turn.message_id))
        return turn.content

    def regenerate(self, options: ReplyOptions) -> bool:
        """Answer the last user message again: a new version of its reply, if it has one (the
        old one stays, a click away in `‹ ›`)."""
        if self.busy or self.conversation_id is None:
            return False
        if not self.can_regenerate:
            return False
        last = next(t for t in reversed(self.turns) if not t.damaged)
        if last.role == ASSISTANT:
            self._set_aside(self.turns.index(last))
        try:
            if not self.unanswered:
                raise ValueError("nothing to answer")
            self._request_reply(options)
        except (StoreError, ValueError) as exc:
            self._restore_replaced()  # nothing changed on disk: show what was there
            if isinstance(exc, StoreError):
                raise
            return False
        return True

    def branch(self, turn: Turn, step: int, token_id: int, options: ReplyOptions) -> None:
        """Continue reply `turn` from its step `step` with `token_id` instead: a new version of
        the reply, whose first `step` tokens are the old one's, then `token_id`, then whatever
        the model writes after it (streamed as usual).

        ValueError if `turn` is not a finished reply of this conversation or `step` is not one
        of its steps; StoreError if it cannot be saved (then nothing changed).
        """
        if self.busy:
            raise RuntimeError("a reply is still being written")
        if turn not in self.turns or turn.role != ASSISTANT or turn.damaged:
            raise ValueError("only a reply of this conversation can be branched")
        steps = turn.steps
        if not 0 <= step < len(steps):
            raise ValueError(f"this reply has {len(steps)} tokens; there is no token {step + 1}")
        index = self.turns.index(turn)
        before = [t for t in self.turns[:index] if not t.damaged]
        if not before or before[-1].role != USER:
            raise ValueError("only a reply to a message of yours can be branched")
        prefix = steps[:step]
        # Who wrote the tokens kept: the source's own model, or, for tokens within the source's
        # own kept part, the model that wrote those (a branch of a branch).
        within = turn.prefix_model and step <= turn.branched_at
        prefix_model = turn.prefix_model if within else turn.model
        self._set_aside(index)
        try:
            self._request_reply(
                options, prefix=prefix, forced=(int(token_id),), prefix_model=prefix_model
            )
        except StoreError:
            self._restore_replaced()
            raise

    def show_version(self, turn: Turn, version: int) -> bool:
        """Show version `version` (1-based) of `turn` instead, with the turns that followed it;
        the conversation continues from what is shown. False if there is no such version."""
        if self.busy:
            raise RuntimeError("a reply is still being written")
        if turn not in self.turns or turn.message_id is None or not 1 <= version:
            return False
        siblings = self.store.versions_of(turn.message_id)
        if version > len(siblings) or siblings[version - 1] == turn.message_id:
            return False
        self.store.show_version(siblings[version - 1])
        self._reload_from(self.turns.index(turn))
        return True

    def undo_version(self, turn: Turn, back_to: int) -> bool:
        """Take back version `turn` (a branch just made, finished or stopped): delete it and
        what followed it, and show version message `back_to` (the one it was made from) again.
        False if there is nothing to take back (it is not shown, or a reply is running)."""
        if self.busy or turn not in self.turns or turn.message_id is None:
            return False
        index = self.turns.index(turn)
        self.store.delete_message(turn.message_id)
        self.store.show_version(back_to)
        self._reload_from(index)
        return True

    def edit(self, turn: Turn, text: str, options: ReplyOptions) -> None:
        """Send `text` as a new version of user message `turn` and ask for its reply; the old
        message and everything that followed it stay saved, a click away in `‹ ›`.

        Nothing changes before this call: editing is a view's business until it is sent.
        StoreError: nothing was sent and the old version is shown again.
        """
        if self.busy:
            raise RuntimeError("a reply is still being written")
        if turn not in self.turns or turn.role != USER:
            raise ValueError("only a message of this conversation's user can be edited")
        if turn.message_id is None or self.conversation_id is None:  # never saved: nothing to keep
            self._truncate(self.turns.index(turn))
            self.send(text, options)
            return
        parent = turn.parent_id
        self._set_aside(self.turns.index(turn))
        try:
            message_id = self.store.add_message(self.conversation_id, USER, text, parent_id=parent)
            versions = self.store.versions_of(message_id)
        except StoreError:
            self._restore_replaced()
            raise
        self._replaced = []  # the new version stays, whatever its reply comes to
        edited = Turn(
            USER,
            text,
            self._next_position(),
            message_id,
            parent_id=parent,
            version=len(versions),
            versions=len(versions),
        )
        self.turns.append(edited)
        self.listener.turn_added(self, edited)
        self._request_reply(options)

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
        self._sent = None  # answered: the message stays, whatever happens next
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
        branched = reply.timings.get("branched_at")
        if timings is not None and isinstance(branched, int):
            # The engine counts what it wrote; the reply also holds the tokens before the branch.
            tokens = timings.get("generated_tokens", 0) + branched
            timings = {**timings, "generated_tokens": tokens, "branched_at": branched}
        if not reply.steps and not text:
            self._drop_reply(reply)
            return
        self._replaced = []  # the new version stays; the old one is a click away
        reply.content = reply.content if text is None else text
        reply.finished, reply.stop_reason = True, stop_reason
        if timings is not None:
            reply.timings = timings
        if saver is not None:
            content, saved_timings = reply.content, dict(reply.timings)
            self._save(lambda: saver.finish(content, stop_reason, saved_timings))
        if not quiet:
            self.listener.reply_ended(self, reply)

    # -- helpers ---------------------------------------------------------------------------

    def _next_position(self) -> int:
        return self.turns[-1].position + 1 if self.turns else 0

    def _request_reply(
        self,
        options: ReplyOptions,
        prefix: list[Step] | None = None,
        forced: tuple[int, ...] = (),
        prefix_model: str = "",
    ) -> None:
        """Start a reply to the shown path's last turn (a new version if it has replies).

        A branch gives the `prefix` steps the reply starts with (copied from the version it
        branches from, saved with it), the model that wrote them (`prefix_model`, saved with
        the reply's settings so the label names each part's model) and the `forced` token that
        follows them.
        """
        self._sent = None  # `send` sets it again once its request is made
        messages = self.prompt_messages()
        prefix = prefix or []
        sampling = {**options.params.to_dict(), "max_new_tokens": options.max_new_tokens}
        prefix_model = prefix_model if prefix else ""
        if prefix_model:
            sampling["prefix_model"] = prefix_model
        parent = self.turns[-1].message_id if self.turns else None
        reply_id = self.store.start_reply(
            self.conversation_id, self.model, sampling, parent_id=parent
        )
        versions = self.store.versions_of(reply_id)
        self.reply = Turn(
            ASSISTANT,
            "".join(s.text for s in prefix),
            self._next_position(),
            reply_id,
            finished=False,
            model=self.model,
            _steps=list(prefix),
            parent_id=parent,
            version=len(versions),
            versions=len(versions),
            timings={"branched_at": len(prefix)} if forced else {},
            prefix_model=prefix_model,
        )
        self.turns.append(self.reply)
        each_step = getattr(self.engine, "model_is_remote", False)
        self._saver = Autosaver(self.store, reply_id, max_pending=1 if each_step else 32)
        for record in prefix:
            try:
                self._saver.add(record)  # mostly saved with the first batch of new tokens
            except StoreError as exc:  # kept pending, like a streamed step
                self._failed_save(exc)
        self.listener.turn_added(self, self.reply)
        self.request_id = self.engine.generate(
            GenerationRequest(
                messages=tuple(messages),
                params=options.params,
                # The branch keeps the reply within the length asked for.
                max_new_tokens=max(1, options.max_new_tokens - len(prefix)),
                report_top=options.report_top,
                reply_prefix=tuple(s.token_id for s in prefix),
                forced=forced,
                step=options.step,
            )
        )

    def _drop_reply(self, reply: Turn) -> None:
        """Nothing was generated: the reply goes; its user message stays, unanswered, or the
        version it was to replace comes back."""
        self.turns.remove(reply)
        self._save(lambda: self.store.delete_message(reply.message_id))
        self.listener.turns_removed(self, [reply])
        self._restore_replaced()

    def _set_aside(self, index: int) -> None:
        """Take the turns from `index` off the screen (not off the disk): a new version of
        turn `index` is about to be shown in their place."""
        gone = self.turns[index:]
        del self.turns[index:]
        self._replaced = gone
        if gone:
            self.listener.turns_removed(self, gone)

    def _restore_replaced(self) -> None:
        """Show again the version set aside for a reply that came to nothing."""
        back, self._replaced = self._replaced, []
        if not back:
            return
        if back[0].message_id is not None:
            first = back[0].message_id
            self._save(lambda: self.store.show_version(first))
        for turn in back:
            self.turns.append(turn)
            self.listener.turn_added(self, turn)

    def _reload_from(self, index: int) -> None:
        """Read the shown path again from turn `index` on (after another version was chosen)."""
        conv = self.store.get_conversation(self.conversation_id, steps=False)
        known = [t.message_id for t in self.turns[:index]]
        if [m.id for m in conv.messages[:index]] != known:
            index = 0  # out of step with the disk: read it all again
        gone = self.turns[index:]
        del self.turns[index:]
        if gone:
            self.listener.turns_removed(self, gone)
        for m in conv.messages[index:]:
            turn = turn_from_message(self.store, m)
            self.turns.append(turn)
            self.listener.turn_added(self, turn)

    def _truncate(self, index: int) -> None:
        """Forget the turns from `index` on, on disk first (StoreError: nothing changed)."""
        gone = self.turns[index:]
        if not gone:
            return
        self.store.truncate_from(self.conversation_id, gone[0].position)
        del self.turns[index:]
        self.listener.turns_removed(self, gone)
