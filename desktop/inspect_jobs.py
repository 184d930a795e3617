"""Inspection requests the engine thread runs for the window: surprisal and attention.

A job is a frozen record the GUI builds from plain data (messages, token ids) and sends to the
worker; `run(engine, cancel)` executes in the worker thread with the open model's front door
(`engine.front_door.Engine.inspect`, what `python -m engine inspect` runs) and returns a frozen
result of plain Python data.
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
    """The ids the last pass read (the KV cache holds them now, and the next reply reuses them)."""
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

    def run(self, engine: Any, cancel: threading.Event | None = None) -> SurprisalResult:
        """Score every message; a conversation longer than the context is read in the
        sliding windows the engine plans (`Engine.plan_windows`, beside the chat's own context
        fitter): each message is scored in the first window that ends with it."""
        from engine.front_door import Message

        messages = [Message(m["role"], m["content"]) for m in self.messages]
        system = 1 if messages and messages[0].role == "system" else 0
        plan = engine.plan_windows(messages)
        out: list[tuple[TokenInfo, ...] | None] = [None] * len(messages)
        starts = [0] * len(messages)
        ids: list[int] = []
        for start, first, end in plan.windows:
            window = messages[:system] + messages[start:end]
            ids, scored = self._score(engine, window, cancel)
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
        self, engine: Any, messages: list, cancel: threading.Event | None
    ) -> tuple[list[int], list[tuple[TokenInfo, ...] | None]]:
        """One pass: the ids read, and each message's tokens with their numbers."""
        ids = engine.conversation_ids(messages)
        found = engine.inspect(ids, attention=False, top=self.top, cancel=cancel)
        spans = engine.message_spans(ids, [m.content for m in messages])
        out: list[tuple[TokenInfo, ...] | None] = []
        for message, span in zip(messages, spans, strict=True):
            if span is None or message.role == "system":
                out.append(None)
                continue
            start, end = span
            texts = engine.token_texts(ids[start:end])
            out.append(
                tuple(
                    TokenInfo(
                        text=texts[i - start],
                        prob=None if found.logprobs[i] is None else math.exp(found.logprobs[i]),
                        rank=found.ranks[i],
                        top=tuple(
                            (engine.token_name(t), p)
                            for t, p in zip(found.top_ids[i], found.top_probs[i], strict=True)
                        ),
                        entropy=found.entropy[i - 1] if i > 0 else 0.0,
                    )
                    for i in range(start, end)
                )
            )
        return ids, out


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
    """The ids the pass read (the KV cache holds them now, and the next reply reuses them)."""


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

    def run(self, engine: Any, cancel: threading.Event | None = None) -> AttentionResult:
        from engine.front_door import EngineError, Message

        if not 0 <= self.index < len(self.reply_ids):
            raise EngineError(f"token {self.index + 1} is not part of this reply")
        # The reply's ids were saved with the model that wrote it; the selected token is checked
        # too, though only the ones before it are run.
        bad = engine.outside_vocabulary(self.reply_ids[: self.index + 1])
        if bad is not None:
            raise EngineError(
                f"this reply holds token id {bad}, which the open model's vocabulary "
                f"(0..{engine.vocab_size - 1}) does not have: it was written by another "
                "model; open that model to see its attention"
            )
        messages = [Message(m["role"], m["content"]) for m in self.messages]
        prompt = engine.conversation_ids(messages)
        ids = prompt + list(self.reply_ids[: self.index])
        found = engine.inspect(ids, attention=True, cancel=cancel)
        return AttentionResult(
            job_id=self.job_id,
            texts=tuple(engine.token_name(t) for t in ids),
            weights=tuple(tuple(tuple(row) for row in layer) for layer in found.attention),
            prompt_tokens=len(prompt),
            token_text=engine.token_name(self.reply_ids[self.index]),
            context_ids=tuple(ids),
        )


@dataclass(frozen=True)
class InspectFailed:
    job_id: int
    message: str
