"""Conversations on disk: one SQLite database, saved as the user sends and as the model streams.

`ConversationStore` is the store's entry point and owns what is done to whole conversations:
create, list and search, read, rename, delete / restore / purge, the one to reopen, export and
import. It builds on `MessageStore` (`messages.py`: messages, replies as they stream, versions)
and `StoreConnection` (`connection.py`: the file, its lock and transactions, app-state meta).

Choices, and why:

* **Search** is a case-insensitive substring match over titles, system prompts and messages,
  done by a small SQL function with Python's `str.casefold` (right for any language, unlike
  LIKE's ASCII-only case folding, and it has no wildcards, so `%` and `_` are literal).
  It scans: a few ms per MB of text, fine for a personal history. FTS5 would need a trigram
  index (3+ characters per query) and is not built into every Python's SQLite.
* **Deleted means gone from the file**: `secure_delete` zeroes freed content and
  `purge_deleted` checkpoints and truncates the -wal, which still held the old pages.
* **Rows are data too**: a stored value views cannot use (a time of 1e300, broken JSON) comes
  back as a safe default with `damaged=True` instead of an exception; import checks the same
  ranges and types up front and names the bad field.

The other parts of the store, one job each, are listed in `desktop/store/__init__.py`.

No Qt and no torch here: the worker, tests and a crash-test subprocess all use it directly.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import time
from typing import Any

from desktop.store.export import (
    conversation_from_json,
    conversation_to_json,
    conversation_to_markdown,
    parents_first,
)
from desktop.store.importing import insert_conversation
from desktop.store.messages import _SHOWN_PATH, MessageStore
from desktop.store.rows import (
    CONV_COLUMNS,
    MSG_COLUMNS,
    STEP_COLUMNS,
    VERSION_COLUMNS,
    conversation_from_row,
    message_from_row,
    step_from_row,
)
from desktop.store.schema import Conversation, StoreError
from engine.events import Step

log = logging.getLogger(__name__)

_LAST_OPEN = "last_open"
_SECURE_SINCE = "vacuumed_for_secure_delete"


class ConversationStore(MessageStore):
    """Every saved conversation. Thread-safe; each method is one short transaction.

    `path` defaults to `default_path()`. `migrations` is for tests of the migration runner;
    `busy_timeout_s` is how long a write waits for another process holding the file.

    Only damage (SQLITE_CORRUPT / NOTADB, a failed quick_check) or a newer schema moves a file
    aside. A healthy file that cannot be written now (read-only file, -wal, -shm or folder) is
    opened read-only (`read_only`, with `recovery_notice` saying why); any other problem (disk
    full, I/O error) leaves it untouched and raises StoreError naming the cause.
    """

    # -- conversations -------------------------------------------------------------------------

    def create_conversation(
        self, system_prompt: str = "", model: str = "", *, model_path: str = "", title: str = ""
    ) -> int:
        """A new, empty conversation; without `title` it is named after its first user message."""
        now = time.time()
        title = " ".join(title.split())
        return self._write(
            lambda db: (
                db.execute(
                    "INSERT INTO conversations (title, title_is_custom, system_prompt, model, "
                    "model_path, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (title, int(bool(title)), system_prompt, model, model_path, now, now),
                ).lastrowid
            )
        )

    def list_conversations(self, search: str = "") -> list[Conversation]:
        """Conversations not deleted, most recently active first, without their messages.

        `search` keeps those whose title, system prompt or any message contains it
        (case-insensitive, literal: no wildcards).
        """
        sql = f"SELECT {CONV_COLUMNS} FROM conversations c WHERE deleted_at IS NULL"
        args: tuple = ()
        needle = search.strip().casefold()
        if needle:
            sql += (
                " AND (lc_contains(title, ?1) OR lc_contains(system_prompt, ?1) OR EXISTS ("
                "SELECT 1 FROM messages m WHERE m.conversation_id = c.id "
                "AND lc_contains(m.content, ?1)))"
            )
            args = (needle,)
        # Pinned ones first (most recently pinned on top), then the rest by their last activity.
        sql += " ORDER BY pinned_at IS NULL, pinned_at DESC, updated_at DESC, id DESC"
        rows = self._read(lambda db: db.execute(sql, args).fetchall())
        return [conversation_from_row(r) for r in rows]

    def count_messages(self, conversation_id: int) -> int:
        """How many messages a conversation has, without reading them (to choose how to open it)."""
        return self._read(
            lambda db: db.execute(
                "SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]
        )

    def get_conversation(
        self,
        conversation_id: int,
        *,
        steps: bool = True,
        include_deleted: bool = False,
        all_versions: bool = False,
    ) -> Conversation:
        """A conversation with the messages of its shown path in order and, unless
        `steps=False`, their steps.

        Each message says which version it is (`version` of `versions`). With `all_versions`,
        `messages` holds every message of every branch instead, for export: each after its
        parent, siblings oldest first (so an import numbers the versions as they were).
        """

        def read(db: sqlite3.Connection) -> Conversation:
            row = db.execute(
                f"SELECT {CONV_COLUMNS} FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            if row is None or (row[8] is not None and not include_deleted):
                raise StoreError("This conversation no longer exists.")
            conv = conversation_from_row(row)
            path = [r[0] for r in db.execute(_SHOWN_PATH, (conversation_id,))]
            rows = {
                r[0]: r
                for r in db.execute(
                    f"SELECT {MSG_COLUMNS}, {VERSION_COLUMNS} FROM messages m "
                    "WHERE conversation_id = ? ORDER BY id",
                    (conversation_id,),
                )
            }
            order = list(rows) if all_versions else path
            conv.messages = [message_from_row(rows[i]) for i in order]
            if all_versions:  # ids need not grow along a branch (merged, repaired files)
                conv.messages = parents_first(conv.messages)
            if steps:
                by_id = {m.id: m for m in conv.messages}
                for r in db.execute(
                    f"SELECT s.message_id, {STEP_COLUMNS} FROM steps s "
                    "JOIN messages m ON m.id = s.message_id "
                    "WHERE m.conversation_id = ? ORDER BY s.message_id, s.idx",
                    (conversation_id,),
                ):
                    message = by_id.get(r[0])
                    if message is None:  # a version off the shown path
                        continue
                    record = step_from_row(r[1:])
                    if record is None:
                        message.damaged = True
                    else:
                        message.steps.append(record)
            return conv

        return self._read(read)

    def get_steps(self, message_id: int) -> list[Step]:
        """One message's steps (for views that load them only when a reply is inspected)."""
        rows = self._read(
            lambda db: db.execute(
                f"SELECT {STEP_COLUMNS} FROM steps WHERE message_id = ? ORDER BY idx",
                (message_id,),
            ).fetchall()
        )
        return [record for record in map(step_from_row, rows) if record is not None]

    def rename(self, conversation_id: int, title: str) -> None:
        """Give a conversation its own title; an empty one goes back to the automatic title."""
        title = " ".join(title.split())

        def write(db: sqlite3.Connection) -> None:
            self._require_conversation(db, conversation_id)
            self._keep_alive(db, conversation_id)
            if title:
                db.execute(
                    "UPDATE conversations SET title = ?, title_is_custom = 1 WHERE id = ?",
                    (title, conversation_id),
                )
            else:
                db.execute(
                    "UPDATE conversations SET title_is_custom = 0 WHERE id = ?", (conversation_id,)
                )
                self._retitle(db, conversation_id)

        self._write(write)

    def set_pinned(self, conversation_id: int, pinned: bool) -> None:
        """Pin a conversation to the top of the list, or unpin it. Its `updated_at` stays: pinning
        is not activity, so an unpinned conversation goes back to where its last message puts it."""

        def write(db: sqlite3.Connection) -> None:
            self._require_conversation(db, conversation_id)
            self._keep_alive(db, conversation_id)
            db.execute(
                "UPDATE conversations SET pinned_at = ? WHERE id = ?",
                (time.time() if pinned else None, conversation_id),
            )

        self._write(write)

    def set_system_prompt(self, conversation_id: int, system_prompt: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            self._require_conversation(db, conversation_id)
            self._keep_alive(db, conversation_id)
            db.execute(
                "UPDATE conversations SET system_prompt = ? WHERE id = ?",
                (system_prompt, conversation_id),
            )

        self._write(write)

    def delete_conversation(self, conversation_id: int) -> None:
        """Hide a conversation; `restore` undoes it until `purge_deleted` removes it for good.

        Remembers the deletion as this instance's (`_keep_alive`): writes from here leave it
        deleted, a write from another Loopchat on the same file undoes it.
        """

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE conversations SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                (time.time(), conversation_id),
            )
            row = db.execute(
                "SELECT deleted_at FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            if row is not None:
                self._deleted_here[conversation_id] = row[0]

        self._write(write)

    def restore(self, conversation_id: int) -> None:
        """Undo `delete_conversation`."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE conversations SET deleted_at = NULL WHERE id = ?", (conversation_id,)
            )
            self._deleted_here.pop(conversation_id, None)

        self._write(write)

    restore_conversation = restore

    def purge_deleted(self, older_than_s: float = 0.0) -> int:
        """Remove deleted conversations (and their messages and steps) from the file; how many.

        Gone from the bytes on disk, not just from the tables (a deleted chat may be private):
        `secure_delete` zeroes what a DELETE frees, a checkpoint copies the zeroed pages into
        the main file and truncates the -wal, which still held the old page versions. The first
        purge also VACUUMs once, for files written before secure_delete was on.
        """
        cutoff = time.time() - older_than_s
        count = self._write(
            lambda db: (
                db.execute(
                    "DELETE FROM conversations WHERE deleted_at IS NOT NULL AND deleted_at <= ?",
                    (cutoff,),
                ).rowcount
            )
        )
        with self._lock:
            try:
                if self.get_meta(_SECURE_SINCE) is None:
                    self._db.execute("VACUUM")
                    self.set_meta(_SECURE_SINCE, str(int(time.time())))
                busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as exc:
                raise StoreError(
                    f"Deleted conversations were removed, but clearing them from the file "
                    f"failed ({exc}); it is retried on the next purge."
                ) from exc
        if busy:  # another program reads the file; the -wal keeps old pages until next time
            log.warning("checkpoint after purge blocked by a reader of %s", self.path)
        return count

    # -- app state -----------------------------------------------------------------------------

    def get_last_open(self) -> int | None:
        """The conversation to reopen on start, if it still exists and is not deleted."""

        def read(db: sqlite3.Connection) -> int | None:
            row = db.execute(
                "SELECT c.id FROM meta JOIN conversations c ON c.id = CAST(meta.value AS INTEGER) "
                "WHERE meta.key = ? AND c.deleted_at IS NULL",
                (_LAST_OPEN,),
            ).fetchone()
            return row[0] if row else None

        return self._read(read)

    def set_last_open(self, conversation_id: int | None) -> None:
        self.set_meta(_LAST_OPEN, None if conversation_id is None else str(conversation_id))

    # -- export / import -----------------------------------------------------------------------

    def export_json(self, conversation_id: int) -> dict:
        """The whole conversation, every branch and step included, in the versioned export
        format (so an import brings back every version)."""
        return conversation_to_json(self.get_conversation(conversation_id, all_versions=True))

    def export_markdown(self, conversation_id: int) -> str:
        """A readable copy of the shown path: title, model, system prompt, turns, and how each
        reply was made."""
        return conversation_to_markdown(self.get_conversation(conversation_id))

    def import_json(self, data: Any) -> int:
        """Add an exported conversation as a new one, marked imported now; StoreError (nothing
        saved) if it is bad."""
        conv = conversation_from_json(data)

        def write(db: sqlite3.Connection) -> int:
            conv_id = insert_conversation(db, conv, time.time())
            if not conv.title:
                self._retitle(db, conv_id)
            return conv_id

        try:
            return self._write(write)
        except (OverflowError, ValueError, TypeError, struct.error) as exc:  # ids beyond int32
            raise StoreError(f"This conversation export is damaged ({exc}).") from None
