"""Which tokens of a chat prompt belong to which message, and each token's own text.

The chat template wraps messages in markers ([INST], <<SYS>>, BOS/EOS), so a message's tokens are
found by looking for its own encoding, in order, inside the prompt's ids. A message whose text
tokenises differently inside the template (rare: a merge across the marker) gets no span and is
simply not tinted, rather than tinted at the wrong tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.text.tokenizer import StreamDecoder, Tokenizer


def find_run(haystack: Sequence[int], needle: Sequence[int], start: int) -> int:
    """Index of the first occurrence of `needle` in `haystack` at or after `start`, or -1."""
    n = len(needle)
    if n == 0:
        return -1
    first = needle[0]
    for i in range(start, len(haystack) - n + 1):
        if haystack[i] == first and list(haystack[i : i + n]) == list(needle):
            return i
    return -1


def message_spans(
    tokenizer: Tokenizer, ids: Sequence[int], contents: Sequence[str]
) -> list[tuple[int, int] | None]:
    """[start, end) of each message's tokens in `ids`, searched in order; None if not found."""
    return spans_in_order(ids, [encodings(tokenizer, text.strip()) for text in contents])


def spans_in_order(
    ids: Sequence[int], candidates: Sequence[Sequence[Sequence[int]]]
) -> list[tuple[int, int] | None]:
    """For each message in turn, the earliest of its candidate encodings found in `ids` after the
    previous message's span: [start, end), or None (then the search goes on from the same place).
    Shared by the local tokenizer and a remote server's (engine/remote)."""
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for needles in candidates:
        best: tuple[int, int] | None = None
        for needle in needles:
            at = find_run(ids, needle, cursor)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, at + len(needle))
        spans.append(best)
        if best is not None:
            cursor = best[1]
    return spans


def encodings(tokenizer: Tokenizer, text: str) -> list[list[int]]:
    """The ways `text` can appear in a rendered prompt: with SentencePiece's leading '▁' (after a
    space or at the start) and without it (after a newline or a marker, per the prefix rule)."""
    from engine.text.chat import _encode_segment

    if not text:
        return []
    found = [tokenizer.encode(text, bos=False), _encode_segment(tokenizer, text, prefixed=False)]
    return [ids for i, ids in enumerate(found) if ids and ids not in found[:i]]


def token_texts(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's share of the decoded text (bytes of one character land on its last token).

    Joined, they equal `tokenizer.decode(ids)`, so a tinted message reads exactly like the
    plain one.
    """
    decoder = StreamDecoder(tokenizer)
    texts = [decoder.push(int(t)) for t in ids]
    if texts:
        texts[-1] += decoder.flush()
    return texts
