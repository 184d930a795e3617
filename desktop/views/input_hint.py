"""What the message being typed costs: an estimate of its tokens and of the context left.

The tokenizer lives in the engine thread, and asking it on every keystroke would queue behind a
reply being generated; the GUI thread estimates instead (about 3.5 characters per token for
Llama's SentencePiece vocabulary on English text), and says "≈".

The same estimate decides whether a message can be sent at all: one that cannot fit the context
with its system prompt would be refused by the engine after the conversation was created, so the
window refuses it first, keeps the text and offers to keep the last part that fits
(`last_part_that_fits`, which leaves room for a reply as the engine's context fitter does).
"""

from __future__ import annotations

import re

CHARS_PER_TOKEN = 3.5
PROMPT_OVERHEAD = 16
"""Tokens the chat format adds around a message and its system prompt (BOS, [INST], <<SYS>>)."""
TRIM_MARGIN = 0.85
"""Keep a little less than the estimate says fits: the estimate is rough, and a trimmed message
that is refused again would be worse than one a few words shorter."""
_TOO_LONG = re.compile(r"message is (\d+) tokens but the model's context holds (\d+)")


def estimate_tokens(text: str) -> int:
    """A rough token count for `text` (never 0 for non-empty text)."""
    text = text.strip()
    return 0 if not text else max(1, round(len(text) / CHARS_PER_TOKEN))


def prompt_estimate(text: str, system_prompt: str = "") -> int:
    """Rough tokens of a prompt holding only this message (and the system prompt)."""
    return estimate_tokens(text) + estimate_tokens(system_prompt) + PROMPT_OVERHEAD


def too_long(text: str, max_context: int | None, system_prompt: str = "") -> bool:
    """The message cannot fit the context even alone with its system prompt (no model: False,
    nothing is known yet)."""
    if not max_context or not text.strip():
        return False
    return prompt_estimate(text, system_prompt) >= int(max_context)


def reply_room(max_context: int, max_new_tokens: int) -> int:
    """Tokens kept for the reply after a message (the engine's rule: at most half the context)."""
    return max(1, min(int(max_new_tokens), int(max_context) // 2))


def last_part_that_fits(
    text: str,
    max_context: int,
    max_new_tokens: int,
    system_prompt: str = "",
    tokens: int | None = None,
) -> str:
    """The end of `text` that fits the context with its system prompt and room for a reply,
    cut at a word boundary. `tokens`: the engine's exact count of the message, when known
    (from a refusal), makes the cut follow this text's own characters per token."""
    text = text.strip()
    budget = (
        int(max_context)
        - reply_room(max_context, max_new_tokens)
        - estimate_tokens(system_prompt)
        - PROMPT_OVERHEAD
    )
    if budget <= 0 or not text:
        return ""
    per_token = len(text) / tokens if tokens else CHARS_PER_TOKEN
    keep = int(budget * per_token * TRIM_MARGIN)
    if keep >= len(text):
        return text
    tail = text[len(text) - keep :]
    if not text[len(text) - keep - 1].isspace():  # cut inside a word: start at the next one
        parts = tail.split(maxsplit=1)
        tail = parts[1] if len(parts) > 1 else tail
    return tail.strip()


def refused_count(error: str) -> tuple[int, int] | None:
    """(message tokens, context) from the engine's refusal of a message too long for the
    context, or None for any other error."""
    found = _TOO_LONG.search(error)
    return (int(found.group(1)), int(found.group(2))) if found else None


def too_long_text(
    tokens: int, max_context: int, exact: bool = False, with_system: bool = False
) -> str:
    """Why Send is off, and what to do (beside the message box and in the notice)."""
    count = f"{tokens}" if exact else f"about {tokens}"
    what = "This message with the system prompt is" if with_system else "This message is"
    return (
        f"{what} {count} tokens, more than this model's context holds "
        f"({max_context}). Shorten it, or keep the last part that fits."
    )


def hint_text(text: str, max_context: int | None, used: int = 0, system_prompt: str = "") -> str:
    """ "≈ 12 tokens · about 480 of 512 left", or "" with nothing typed or no model; for a
    message that cannot fit at all, why it cannot be sent."""
    tokens = estimate_tokens(text)
    if not tokens or not max_context:
        return ""
    if too_long(text, max_context, system_prompt):
        tokens += estimate_tokens(system_prompt)
        what = "with the system prompt " if system_prompt.strip() else ""
        return (
            f"Too long to send: ≈ {tokens} tokens {what}for a context of {max_context}. "
            "Shorten it, or keep the last part that fits."
        )
    left = max(0, max_context - used - tokens)
    note = "" if left else " (the oldest turns will be left out)"
    return f"≈ {tokens} tokens · about {left} of {max_context} left in the context{note}"


def max_tokens_warning(max_new_tokens: int, max_context: int | None) -> str:
    """A note when a long conversation could cut replies short of Max new tokens.

    The context holds the prompt and the reply together, so what matters is whether the reply
    fits after the prompt, not whether Max new tokens equals the context's size.
    """
    if not max_context:
        return ""
    room = reply_room(max_context, max_new_tokens)
    if room >= max_new_tokens:
        return ""
    return (
        f"This model's context holds {max_context} tokens for the conversation and the reply "
        f"together: once the conversation is long, a reply gets about {room} "
        f"and stops there, short of Max new tokens ({max_new_tokens})."
    )
