"""Inspection requests the engine thread runs for the window: surprisal and attention.

A job is a frozen record the GUI builds from plain data (messages, token ids) and sends to the
worker; `run(loaded, cancel)` executes in the worker thread with
`engine.generation.inspect.inspect_tokens`,
the same function as `python -m engine inspect`, and returns a frozen result of plain Python data.
Nothing here touches Qt, so the jobs are tested without a window and never run on the GUI thread.
`cancel` (set when the app closes) stops a long prompt between chunks.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

LOG2 = math.log(2.0)


@dataclass(frozen=True)
class TokenInfo:
    """One token of a message: its text, how surprising it was and what was expected instead."""

    text: str
    prob: float | None
    """p(token | everything before it); None for the very first token of the prompt."""
    rank: int | None
    top: tuple[tuple[str, float], ...]
    entropy: float
    """Entropy (nats) of the distribution that chose this token; 0.0 for the first."""

    @property
    def surprisal_bits(self) -> float | None:
        """−log₂ p: 0 for a certain token, 1 bit per halving of its probability."""
        if self.prob is None:
            return None
        return -math.log(max(self.prob, 1e-45)) / LOG2


@dataclass(frozen=True)
class SurprisalResult:
    job_id: int
    tokens: tuple[tuple[TokenInfo, ...] | None, ...]
    """Per message of the job (same order); None where the message's tokens were not found."""
    context_ids: tuple[int, ...] = field(default=(), repr=False)
    """The ids now in the KV cache (the worker lets the generator reuse them)."""
    windows: int = 1
    """Passes over the conversation: more than 1 when it is longer than the model's context."""
    window_starts: tuple[int, ...] = ()
    """Per message: the index of the first message of the context it was scored in."""
    too_long: tuple[int, ...] = ()
    """Messages left untinted: with the message they answer, longer than the whole context."""


@dataclass(frozen=True)
class SurprisalJob:
    """Surprisal of every token of a conversation's messages, in their chat-template context."""

    messages: tuple[dict, ...]
    """{"role", "content"} dicts as sent to the model (system first, roles alternating)."""
    top: int = 5
    job_id: int = 0

    def run(self, loaded: Any, cancel: threading.Event | None = None) -> SurprisalResult:
        """Score every message; a conversation longer than the context is read in windows.

        Each window is a run of whole turns that fits the context; every message is scored in
        the first window that ends with it, which starts as early as fits while keeping about
        half the context before where the previous window stopped (a strided sliding window, as
        the chat itself leaves out the oldest turns once the conversation outgrows the context).
        """
        from engine.text.chat import Message

        messages = [Message(m["role"], m["content"]) for m in self.messages]
        system = 1 if messages and messages[0].role == "system" else 0
        plan = window_plan(loaded, messages, system)
        names = _Names(loaded.tokenizer)
        out: list[tuple[TokenInfo, ...] | None] = [None] * len(messages)
        starts = [0] * len(messages)
        ids: list[int] = []
        for start, first, end in plan.windows:
            window = messages[:system] + messages[start:end]
            ids, scored = self._score(loaded, window, names, cancel)
            for i in range(first, end):
                out[i] = scored[system + i - start]
                starts[i] = start
        return SurprisalResult(
            self.job_id,
            tuple(out),
            tuple(ids),
            windows=len(plan.windows),
            window_starts=tuple(starts),
            too_long=tuple(plan.too_long),
        )

    def _score(
        self, loaded: Any, messages: list, names: _Names, cancel: threading.Event | None
    ) -> tuple[list[int], list[tuple[TokenInfo, ...] | None]]:
        """One pass: the ids read, and each message's tokens with their numbers."""
        from engine.generation.inspect import inspect_tokens
        from engine.text.token_spans import message_spans, token_texts

        ids = conversation_ids(loaded, messages)
        found = inspect_tokens(loaded, ids, attention=False, top=self.top, cancel=cancel)
        spans = message_spans(loaded.tokenizer, ids, [m.content for m in messages])
        out: list[tuple[TokenInfo, ...] | None] = []
        for message, span in zip(messages, spans, strict=True):
            if span is None or message.role == "system":
                out.append(None)
                continue
            start, end = span
            texts = token_texts(loaded.tokenizer, ids[start:end])
            out.append(
                tuple(
                    TokenInfo(
                        text=texts[i - start],
                        prob=None if found.logprobs[i] is None else math.exp(found.logprobs[i]),
                        rank=found.ranks[i],
                        top=tuple(
                            (names(t), p)
                            for t, p in zip(found.top_ids[i], found.top_probs[i], strict=True)
                        ),
                        entropy=found.entropy[i - 1] if i > 0 else 0.0,
                    )
                    for i in range(start, end)
                )
            )
        return ids, out


@dataclass
class WindowPlan:
    """How to read a conversation in context-sized passes."""

    windows: list[tuple[int, int, int]] = field(default_factory=list)
    """(start, first, end): read messages [start, end) (after the system prompt, if any) and
    score [first, end) from that pass."""
    too_long: list[int] = field(default_factory=list)


def window_plan(loaded: Any, messages: list, system: int) -> WindowPlan:
    """Plan the passes over `messages` (system prompt first when `system` is 1; then turns that
    alternate, a user turn first). A window always starts at a user turn, so the chat template
    renders it; the system prompt goes with every window (the chat always keeps it too)."""
    limit = loaded.max_context
    head = messages[:system]

    def size(start: int, end: int) -> int:
        return len(conversation_ids(loaded, head + messages[start:end]))

    n = len(messages)
    plan = WindowPlan()
    if n == system or size(system, n) <= limit:
        plan.windows.append((system, system, n))
        return plan
    start = first = system
    while first < n:
        end = first
        while end < n and size(start, end + 1) <= limit:
            end += 1
        if end > first:
            plan.windows.append((start, first, end))
            first = end
            # Slide: the next pass keeps about half the context of what came before.
            start = _user_turn_at_or_before(first, system)
            while start - 2 >= system and size(start - 2, first) <= limit // 2:
                start -= 2
            continue
        if start < _user_turn_at_or_before(first, system):
            start = _user_turn_at_or_before(first, system)  # no room for older turns: drop them
            continue
        plan.too_long.append(first)  # too long even with only the turn it answers
        first += 1
        start = _user_turn_at_or_before(first, system)
    return plan


def _user_turn_at_or_before(index: int, system: int) -> int:
    """The user turn that `index` is (even offset after the system prompt) or answers."""
    return index - (index - system) % 2


def conversation_ids(loaded: Any, messages: list) -> list[int]:
    """The prompt ids of a conversation; one that ends with a reply gets the reply's tokens
    appended after the prompt that asked for it (templates only render prompts ending in a
    user turn)."""
    from engine.text.chat import chat_prompt_ids

    if messages and messages[-1].role == "assistant":
        prompt = chat_prompt_ids(loaded.tokenizer, messages[:-1], loaded.chat_template)
        return prompt + loaded.tokenizer.encode(messages[-1].content.strip(), bos=False)
    return chat_prompt_ids(loaded.tokenizer, messages, loaded.chat_template)


class _Names:
    """Readable text of single tokens, memoised (the same alternatives recur)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.cache:
            # A padded vocabulary has rows past the tokenizer's pieces: shown by number.
            known = 0 <= token_id < self.tokenizer.vocab_size
            self.cache[token_id] = (
                self.tokenizer.display_text(token_id) if known else f"<{token_id}>"
            )
        return self.cache[token_id]


@dataclass(frozen=True)
class AttentionResult:
    job_id: int
    texts: tuple[str, ...]
    """Each context position's text (what the view tints)."""
    weights: tuple = field(repr=False)
    """[layer][head][position]: the selected token's deciding query over the context."""
    prompt_tokens: int
    """Positions before the reply (the rest are the reply's own earlier tokens)."""
    token_text: str
    context_ids: tuple[int, ...] = field(default=(), repr=False)
    """The ids now in the KV cache (the worker lets the generator reuse them)."""


@dataclass(frozen=True)
class AttentionJob:
    """What the model attended to when it chose generated token `index` of a reply.

    The context is the reply's prompt plus its tokens before `index`; the last position's query
    is the one whose output chose the token. Recomputed on demand with capture on (never stored).
    """

    messages: tuple[dict, ...]
    """The prompt that asked for the reply ({"role", "content"}, ending with the user turn)."""
    reply_ids: tuple[int, ...]
    index: int
    job_id: int = 0

    def run(self, loaded: Any, cancel: threading.Event | None = None) -> AttentionResult:
        from engine.errors import EngineError
        from engine.generation.inspect import inspect_tokens, outside_vocabulary
        from engine.text.chat import Message

        if not 0 <= self.index < len(self.reply_ids):
            raise EngineError(f"token {self.index + 1} is not part of this reply")
        # The reply's ids were saved with the model that wrote it; the selected token is checked
        # too, though only the ones before it are run.
        bad = outside_vocabulary(loaded, self.reply_ids[: self.index + 1])
        if bad is not None:
            raise EngineError(
                f"this reply holds token id {bad}, which the open model's vocabulary "
                f"(0..{loaded.args.vocab_size - 1}) does not have: it was written by another "
                "model; open that model to see its attention"
            )
        messages = [Message(m["role"], m["content"]) for m in self.messages]
        prompt = conversation_ids(loaded, messages)
        ids = prompt + list(self.reply_ids[: self.index])
        found = inspect_tokens(loaded, ids, attention=True, cancel=cancel)
        names = _Names(loaded.tokenizer)
        return AttentionResult(
            job_id=self.job_id,
            texts=tuple(names(t) for t in ids),
            weights=tuple(tuple(tuple(row) for row in layer) for layer in found.attention),
            prompt_tokens=len(prompt),
            token_text=names(self.reply_ids[self.index]),
            context_ids=tuple(ids),
        )


@dataclass(frozen=True)
class InspectFailed:
    job_id: int
    message: str
