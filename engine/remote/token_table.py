"""Token ids for a remote model: the server's own ids where it gives them, interned ids for the
texts it streams.

llama-cpp-python's server tokenizes (`/extras/tokenize`) but names generated tokens and their
candidates by text only (no ids in any completion response). So a RemoteEngine's ids come from
two places, kept apart by value:

* below `INTERNED_BASE`: the server's real ids, from its tokenizer (prompts, conversations);
* from `INTERNED_BASE` up: one id per distinct token text the server streamed (a reply's
  tokens, the top-k candidates), numbered in the order first seen by this engine.

An interned id stands for exactly the text the server sent, never a guess at its real id; a
branch or a next turn sends the text, and the server tokenizes it again. Interned ids live as
long as the engine (a conversation reopened later gets new ones for the same texts, which is
harmless: ids of a remote reply are read back through the engine that made them or as text).
"""

from __future__ import annotations

INTERNED_BASE = 1 << 30
"""Above any real vocabulary (Llama 3: 128,256 ids); still a 32-bit int for every store."""


class TokenTable:
    """Texts of ids, both kinds, and the interning of streamed texts."""

    def __init__(self) -> None:
        self._interned: dict[str, int] = {}
        self._texts: list[str] = []
        self.pieces: dict[int, str] = {}
        """Known texts of real (server) ids: learned from echoes and the detokenizer."""

    def intern(self, text: str) -> int:
        found = self._interned.get(text)
        if found is None:
            found = self._interned[text] = INTERNED_BASE + len(self._texts)
            self._texts.append(text)
        return found

    @staticmethod
    def is_interned(token_id: int) -> bool:
        return token_id >= INTERNED_BASE

    def text(self, token_id: int) -> str | None:
        """The text of an id, or None if this engine does not know it (yet)."""
        if token_id >= INTERNED_BASE:
            index = token_id - INTERNED_BASE
            return self._texts[index] if index < len(self._texts) else None
        return self.pieces.get(token_id)

    def __len__(self) -> int:
        return len(self._texts)
