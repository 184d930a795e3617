"""A conversation's turns as a session holds them: `Turn`, `ReplyOptions`, the stats line.

Its own module because these are data, read by every view of a chat (the conversation view,
the surprisal tint, the sampling panel), while `ChatSession` (`session.py`) is the behaviour
that changes them. A view that only shows turns need not know how a session saves or streams.
Pure Python (no Qt).
"""

from __future__ import annotations

import logging
import time
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
    created_at: float = field(default_factory=time.time)
    """When it was written (Unix time): a new turn now, a stored one as the store says (0.0 for
    a time that could not be read). The card's tooltip shows it."""
    prefix_model: str = ""
    """A branch's first tokens (copied from the version it was made from) were written by this
    model; `model` wrote the rest. Kept in the reply's stored settings as "prefix_model"."""

    @property
    def branched_at(self) -> int:
        """How many of a branch's first tokens came from the version it was made from (0: not a
        branch)."""
        value = self.timings.get("branched_at", 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def prefix_by_another(self) -> bool:
        """A branch whose first tokens were written by another model than the rest."""
        return bool(self.branched_at and self.prefix_model and self.prefix_model != self.model)

    @property
    def author(self) -> str:
        """The reply's label: its model, or "A → B" for a branch B continued from A's tokens
        (the open model's name goes only on the text it wrote)."""
        if self.prefix_by_another:
            return f"{self.prefix_model} → {self.model}"
        return self.model

    @property
    def author_note(self) -> str:
        """Who wrote which part, for the label's tooltip ("" when one model wrote it all)."""
        if not self.prefix_by_another:
            return ""
        n = self.branched_at
        first = "token 1" if n == 1 else f"tokens 1–{n}"
        return f"{first} written by {self.prefix_model}; from token {n + 1} by {self.model}"

    def written_by(self) -> list[str]:
        """The models that wrote this reply, the first first (none for a user message)."""
        if self.role != ASSISTANT:
            return []
        models = [self.prefix_model] if self.prefix_by_another else []
        return models + ([self.model] if self.model else [])

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


def draft_stats(timings: dict) -> str:
    """Speculative decoding's part of the stats line: "draft 18/22 accepted · 2.4 tok/pass"
    (tokens per pass of the model: 1 without a draft), or "" when no draft was used."""
    proposed, accepted = timings.get("draft_proposed"), timings.get("draft_accepted")
    passes, tokens = timings.get("draft_passes"), timings.get("generated_tokens")
    numbers = (proposed, accepted, passes, tokens)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        return ""
    text = f"draft {accepted}/{proposed} accepted"
    if passes > 0:
        # The first token comes from the prompt's own pass; the others from decode passes.
        text += f" · {max(0, tokens - 1) / passes:.1f} tok/pass"
    return text


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
    draft = draft_stats(t)
    if draft:
        parts.append(draft)
    extra = {"cancelled": "stopped", "context_full": "context full", "error": "cut off"}
    if turn.stop_reason in extra:
        parts.append(extra[turn.stop_reason])
    branched = t.get("branched_at")
    if isinstance(branched, int) and not isinstance(branched, bool):
        by = f" by {turn.model}" if turn.prefix_by_another else ""
        parts.append(f"branched at token {branched + 1}{by}")
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
        created_at=float(getattr(m, "created_at", 0.0) or 0.0),
        prefix_model=_text_setting(m, "prefix_model"),
    )


def _text_setting(m: Any, key: str) -> str:
    sampling = getattr(m, "sampling", None)
    value = sampling.get(key, "") if isinstance(sampling, dict) else ""
    return value if isinstance(value, str) else ""


def other_models(turns: list[Turn], open_model: str) -> list[str]:
    """The models other than `open_model` that wrote replies among `turns`, in order."""
    seen: list[str] = []
    for turn in turns:
        for model in turn.written_by():
            if model and model != open_model and model not in seen:
                seen.append(model)
    return seen


def model_note(others: list[str], open_model: str) -> str:
    """What the chat says when the open model is not the one that wrote its replies."""
    if not others or not open_model:
        return ""
    names = ", ".join(others[:-1]) + (" and " if len(others) > 1 else "") + others[-1]
    return (
        f"Replies here were written by {names}; the open model, {open_model}, writes the new "
        "ones (each reply is labelled with its model; another model's are not tinted)."
    )
