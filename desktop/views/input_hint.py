"""What the message being typed costs: an estimate of its tokens and of the context left.

The tokenizer lives in the engine thread, and asking it on every keystroke would queue behind a
reply being generated; the GUI thread estimates instead (about 3.5 characters per token for
Llama's SentencePiece vocabulary on English text), and says "≈".
"""

from __future__ import annotations

CHARS_PER_TOKEN = 3.5


def estimate_tokens(text: str) -> int:
    """A rough token count for `text` (never 0 for non-empty text)."""
    text = text.strip()
    return 0 if not text else max(1, round(len(text) / CHARS_PER_TOKEN))


def hint_text(text: str, max_context: int | None, used: int = 0) -> str:
    """ "≈ 12 tokens · about 480 of 512 left", or "" with nothing typed or no model."""
    tokens = estimate_tokens(text)
    if not tokens or not max_context:
        return ""
    left = max(0, max_context - used - tokens)
    note = "" if left else " (the oldest turns will be left out)"
    return f"≈ {tokens} tokens · about {left} of {max_context} left in the context{note}"


def max_tokens_warning(max_new_tokens: int, max_context: int | None) -> str:
    """A warning when replies could never be as long as asked."""
    if not max_context or max_new_tokens < max_context:
        return ""
    return (
        f"Max new tokens ({max_new_tokens}) is more than this model's context holds "
        f"({max_context}): replies stop when the context is full."
    )
