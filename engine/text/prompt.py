"""The one prompt builder and the one context fitter, for the chat, surprisal and attention.

A conversation (`Message`s: an optional system prompt, then user/assistant turns alternating)
becomes token ids in the model's chat format (`conversation_ids`). When it is longer than the
context, two readers need less of it:

* the chat (`fit_prompt`): the prompt for the next reply, leaving out the oldest turns, in
  user/assistant pairs, until it fits with room for the reply;
* surprisal (`plan_windows`): every message scored once, in context-sized passes over whole
  turns that slide forward (each keeps about half a context of what came before).

Both keep the system prompt and start at a user turn, as the chat template needs. The fitters
measure a candidate prompt with `ids_of(messages)`, so they are pure logic, tested without a
model; `engine.front_door.Engine` binds them to the open model's tokenizer and template.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.errors import EngineError
from engine.text.chat import Message, chat_prompt_ids
from engine.text.tokenizer import Tokenizer

IdsOf = Callable[[Sequence[Message]], list[int]]
"""A conversation's prompt ids (`conversation_ids` bound to a model's tokenizer and template)."""


@dataclass(frozen=True)
class PromptPlan:
    """A conversation's prompt as it fits the context: its ids and how many of the oldest turns
    were left out (always in user/assistant pairs, never the system prompt)."""

    ids: list[int]
    dropped: int


@dataclass
class WindowPlan:
    """How to read a conversation in context-sized passes."""

    windows: list[tuple[int, int, int]] = field(default_factory=list)
    """(start, first, end): read messages [start, end) (after the system prompt, if any) and
    score [first, end) from that pass."""
    too_long: list[int] = field(default_factory=list)
    """Messages that, with the turn they answer, are longer than the whole context."""


def conversation_ids(
    tokenizer: Tokenizer, messages: Sequence[Message], template: str | None
) -> list[int]:
    """The ids of a conversation in the model's chat format: a prompt when it ends with a user
    turn; one that ends with a reply gets the reply's tokens after the prompt that asked for it
    (templates render only prompts that end with a user turn)."""
    messages = list(messages)
    if messages and messages[-1].role == "assistant":
        prompt = chat_prompt_ids(tokenizer, messages[:-1], template)
        return prompt + tokenizer.encode(messages[-1].content.strip(), bos=False)
    return chat_prompt_ids(tokenizer, messages, template)


def system_count(messages: Sequence[Message]) -> int:
    """1 when the conversation opens with a system prompt, else 0."""
    return 1 if messages and messages[0].role == "system" else 0


def fit_prompt(ids_of: IdsOf, messages: Sequence[Message], limit: int, reserve: int) -> PromptPlan:
    """The chat prompt for `messages`, leaving out the oldest turns if it would not fit in
    `limit` tokens with `reserve` (the reply; at most half the context) after it. The system
    prompt is always kept; turns go in user/assistant pairs so roles still alternate."""
    room = min(int(reserve), limit // 2)
    system = list(messages[: system_count(messages)])
    turns = list(messages[len(system) :])
    dropped = 0
    while True:
        ids = ids_of(system + turns)
        if len(ids) + room <= limit or len(turns) <= 1:
            break
        turns = turns[2:]
        dropped += 2
    if len(ids) >= limit:
        raise EngineError(
            f"The message is {len(ids)} tokens but the model's context holds {limit}: "
            "shorten it or start a new chat"
        )
    return PromptPlan(ids, dropped)


def plan_windows(ids_of: IdsOf, messages: Sequence[Message], limit: int) -> WindowPlan:
    """Plan the passes that score every message of `messages` within `limit` tokens.

    Each window is a run of whole turns that fits the context; every message is scored in the
    first window that ends with it, which starts as early as fits while keeping about half the
    context before where the previous window stopped (a strided sliding window, as the chat
    itself leaves out the oldest turns once the conversation outgrows the context). A window
    always starts at a user turn, so the chat template renders it; the system prompt goes with
    every window (the chat always keeps it too)."""
    messages = list(messages)
    system = system_count(messages)
    head = messages[:system]

    def size(start: int, end: int) -> int:
        return len(ids_of(head + messages[start:end]))

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
