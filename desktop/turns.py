"""A conversation's turns as a session holds them: `Turn`, `ReplyOptions`, the stats line.

Its own module because these are data, read by every view of a chat (the conversation view,
the surprisal tint, the sampling panel), while `ChatSession` (`session.py`) is the behaviour
that changes them. A view that only shows turns need not know how a session saves or streams.
Pure Python (no Qt).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from desktop.store.conversations import ConversationStore
from desktop.store.rows import DAMAGED_TEXT
from desktop.store.schema import StoreError
from engine.events import DEFAULT_MAX_NEW_TOKENS, DEFAULT_REPORT_TOP, SamplingParams, Step

log = logging.getLogger(__name__)

USER, ASSISTANT = "user", "assistant"


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
    _steps: list[Step] | None = field(default=None, repr=False)
    parent_id: int | None = None
    """The message this one follows on its branch (None for the first message)."""
    version: int = 1
    """Which of its turn's versions this is, 1-based (`‹ 2/3 ›`)."""
    versions: int = 1
    """How many versions its turn has (1: no `‹ ›` to show)."""

    @property
    def steps(self) -> list[Step]:
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
    branched = t.get("branched_at")
    if isinstance(branched, int) and not isinstance(branched, bool):
        parts.append(f"branched at token {branched + 1}")
    return " · ".join(parts)


def turn_from_message(store: ConversationStore, m: Any) -> Turn:
    """A stored message as a Turn; its steps are read from the store when first needed."""
    # A row whose text could not be read is shown as damaged and left out of prompts;
    # other damage (timings, times) was already replaced by safe defaults.
    content = m.content if isinstance(m.content, str) else DAMAGED_TEXT
    damaged = m.role not in (USER, ASSISTANT) or (
        bool(getattr(m, "damaged", False)) and content == DAMAGED_TEXT
    )
    return Turn(
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
        parent_id=m.parent_id,
        version=m.version,
        versions=m.versions,
    )
