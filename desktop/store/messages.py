"""The store's messages: adding them, streaming a reply into one, and their versions.

Its own module because a conversation's messages are a tree, not a list: each message follows a
parent, several versions of a turn are siblings, and the one shown is the "shown path". The
SQL that walks that tree, the writes that add to it (as the user sends and as the model
streams), truncation and switching versions are read here together. Automatic titles live here
too: they come from the first user message. `ConversationStore` builds on `MessageStore`.

Choice, and why:

* **Steps in an append-only table** keyed (message_id, idx): a save point inserts the new steps
  and rewrites only the reply's text, never what was saved before, so its cost does not grow
  with the reply. Top-k ids/probabilities are packed (see `schema.pack_top`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable

from desktop.store.connection import StoreConnection
from desktop.store.rows import insert_message, insert_steps
from desktop.store.schema import ROLES, StoreError
from engine.events import Step

TITLE_LENGTH = 60
_REPLY_GONE = "The reply being saved no longer exists."


def make_title(text: str) -> str:
    """A one-line title from a message: whitespace collapsed, cut at a word near 60 chars."""
    line = " ".join(text.split())
    if len(line) <= TITLE_LENGTH:
        return line
    cut = line[: TITLE_LENGTH - 1]
    if " " in cut[TITLE_LENGTH // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + "…"


_SHOWN_PATH = """
    WITH RECURSIVE path (id, depth) AS (
        SELECT (SELECT id FROM messages WHERE conversation_id = ?1 AND parent_id IS NULL
                ORDER BY shown DESC, id DESC LIMIT 1), 0
        UNION ALL
        SELECT (SELECT c.id FROM messages c WHERE c.parent_id = path.id
                ORDER BY c.shown DESC, c.id DESC LIMIT 1), path.depth + 1
        FROM path WHERE path.id IS NOT NULL
    )
    SELECT id FROM path WHERE id IS NOT NULL ORDER BY depth
"""
"""Ids of a conversation's shown path, first message first: from the shown first message, down
through each shown child. Where no sibling is marked shown (one was deleted), the newest is."""

SHOWN_END = "end"
"""`parent_id` default of `add_message`/`start_reply`: after the last message of the shown path."""


class MessageStore(StoreConnection):
    """A conversation's messages and their versions; each method is one short transaction."""

    @staticmethod
    def _retitle(db: sqlite3.Connection, conversation_id: int) -> None:
        """Automatic title = the first user message (kept as is when the user chose one)."""
        first = db.execute(
            "SELECT content FROM messages WHERE conversation_id = ? AND role = 'user' "
            "ORDER BY position LIMIT 1",
            (conversation_id,),
        ).fetchone()
        db.execute(
            "UPDATE conversations SET title = ? WHERE id = ? AND title_is_custom = 0",
            (make_title(first[0]) if first else "", conversation_id),
        )

    # -- messages ------------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        model: str = "",
        sampling: dict | None = None,
        timings: dict | None = None,
        finished: bool = True,
        stop_reason: str | None = None,
        parent_id: int | None | str = SHOWN_END,
    ) -> int:
        """Add a message (committed before returning) and show it; return its id.

        It follows `parent_id` (by default the last message of the shown path; None: it is a
        new version of the first message). If that message already has children, the new one
        is another version of them, and the one shown from now on.
        The conversation's first user message also becomes its title, unless the user chose one.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        now = time.time()

        def write(db: sqlite3.Connection) -> int:
            self._require_conversation(db, conversation_id)
            self._keep_alive(db, conversation_id)
            parent = parent_id
            if parent == SHOWN_END:
                path = db.execute(_SHOWN_PATH, (conversation_id,)).fetchall()
                parent = path[-1][0] if path else None
            position = 0
            if parent is not None:
                found = db.execute(
                    "SELECT position FROM messages WHERE id = ? AND conversation_id = ?",
                    (parent, conversation_id),
                ).fetchone()
                if found is None:
                    raise StoreError("The message this one follows no longer exists.")
                position = found[0] + 1
            db.execute(
                "UPDATE messages SET shown = 0 WHERE conversation_id = ? AND parent_id IS ?",
                (conversation_id, parent),
            )
            message_id = insert_message(
                db,
                conversation_id,
                parent,
                position,
                role,
                content,
                now,
                finished=finished,
                stop_reason=stop_reason,
                model=model,
                sampling=sampling or {},
                timings=timings or {},
            )
            self._touch(db, conversation_id, now)
            if role == "user":
                self._retitle(db, conversation_id)
            return message_id

        return self._write(write)

    def start_reply(
        self,
        conversation_id: int,
        model: str = "",
        sampling: dict | None = None,
        *,
        parent_id: int | None | str = SHOWN_END,
    ) -> int:
        """An empty, unfinished assistant message that `append_steps` fills as tokens stream.

        `parent_id` as in `add_message`: give the user message a reply answers to make a new
        version of that reply (Regenerate, a branch from another token).
        """
        return self.add_message(
            conversation_id,
            "assistant",
            "",
            model=model,
            sampling=sampling,
            finished=False,
            parent_id=parent_id,
        )

    def append_steps(self, message_id: int, steps: Iterable[Step], content_so_far: str) -> None:
        """Save a batch of streamed steps after those already saved, and the reply text so far.

        Each step is numbered by arrival (its own `index` is not stored). One short transaction:
        the new rows plus one update, whatever the length of the reply.
        """
        records = list(steps)

        def write(db: sqlite3.Connection) -> None:
            finished, conversation_id = self._require_message(
                db, message_id, "finished, conversation_id", _REPLY_GONE
            )
            if finished:
                raise StoreError("This reply is already finished; nothing more can be added.")
            self._keep_alive(db, conversation_id)
            start = db.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM steps WHERE message_id = ?", (message_id,)
            ).fetchone()[0]
            insert_steps(db, message_id, start, records)
            db.execute("UPDATE messages SET content = ? WHERE id = ?", (content_so_far, message_id))

        self._write(write)

    def finish_reply(
        self, message_id: int, content: str, stop_reason: str, timings: dict | None = None
    ) -> None:
        """Mark a reply complete (or stopped) with its final text, why it ended and its timings."""
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            (conversation_id,) = self._require_message(
                db, message_id, "conversation_id", _REPLY_GONE
            )
            self._keep_alive(db, conversation_id)
            db.execute(
                "UPDATE messages SET content = ?, finished = 1, stop_reason = ?, timings = ? "
                "WHERE id = ?",
                (content, stop_reason, json.dumps(timings or {}), message_id),
            )
            self._touch(db, conversation_id, now)

        self._write(write)

    def truncate_after(self, conversation_id: int, position: int) -> int:
        """Delete everything after the shown path's message at `position` (every version of
        every later turn, with their steps); return how many messages went.

        Edit and resend message p: `truncate_after(conv, p - 1)` then `add_message`.
        """

        def write(db: sqlite3.Connection) -> int:
            self._require_conversation(db, conversation_id)
            self._keep_alive(db, conversation_id)
            path = [r[0] for r in db.execute(_SHOWN_PATH, (conversation_id,))]
            kept = db.execute(
                f"SELECT id FROM messages WHERE id IN ({','.join('?' * len(path))}) "
                "AND position <= ? ORDER BY position DESC LIMIT 1",
                (*path, position),
            ).fetchone()
            gone = self._delete_where(
                db,
                "conversation_id = ? AND parent_id IS ?",
                (conversation_id, kept[0] if kept else None),
            )
            if gone:
                self._touch(db, conversation_id, time.time())
                self._retitle(db, conversation_id)
            return gone

        return self._write(write)

    def truncate_from(self, conversation_id: int, position: int) -> int:
        """Delete the message at `position` and all after it (`truncate_after(position - 1)`)."""
        return self.truncate_after(conversation_id, position - 1)

    @staticmethod
    def _delete_where(db: sqlite3.Connection, where: str, args: tuple) -> int:
        """Delete the messages matching `where` and, by cascade, everything below them; return
        how many messages went in all (the cascade is not in `rowcount`)."""
        before = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        db.execute(f"DELETE FROM messages WHERE {where}", args)
        return before - db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def delete_message(self, message_id: int) -> int:
        """Delete one message and every message after it on its branches; how many went.

        For a version that came to nothing (a reply stopped before its first token): its other
        versions stay, and the newest of them is shown until `show_version` says otherwise.
        """

        def write(db: sqlite3.Connection) -> int:
            found = db.execute(
                "SELECT conversation_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if found is None:
                return 0
            self._keep_alive(db, found[0])
            return self._delete_where(db, "id = ?", (message_id,))

        return self._write(write)

    def versions_of(self, message_id: int) -> list[int]:
        """Ids of a message's versions (itself and its siblings), oldest first."""

        def read(db: sqlite3.Connection) -> list[int]:
            row = self._require_message(
                db, message_id, "conversation_id, parent_id", "This message no longer exists."
            )
            return [
                r[0]
                for r in db.execute(
                    "SELECT id FROM messages WHERE conversation_id = ? AND parent_id IS ? "
                    "ORDER BY id",
                    row,
                )
            ]

        return self._read(read)

    def show_version(self, message_id: int) -> None:
        """Show this version of its turn: the shown path now goes through it (and on down
        through the versions last shown below it)."""

        def write(db: sqlite3.Connection) -> None:
            row = self._require_message(
                db,
                message_id,
                "conversation_id, parent_id",
                "This version of the message no longer exists.",
            )
            self._keep_alive(db, row[0])
            db.execute(
                "UPDATE messages SET shown = (id = ?) WHERE conversation_id = ? AND parent_id IS ?",
                (message_id, *row),
            )

        self._write(write)
