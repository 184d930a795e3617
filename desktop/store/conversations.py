"""Conversations on disk: one SQLite database, saved as the user sends and as the model streams.

Choices, and why:

* **WAL journal, synchronous=FULL.** Any committed transaction survives the app being killed in
  every synchronous mode; FULL also makes it survive a power cut or an OS crash (a laptop whose
  battery dies mid-generation), which NORMAL does not (it may roll back the last transactions).
  The price is one fsync per commit (a few ms on an SSD), and there are few commits: a user
  message, then one save point a second at most while a reply streams.
* **Steps in an append-only table** keyed (message_id, idx): a save point inserts the new steps
  and rewrites only the reply's text, never what was saved before, so its cost does not grow
  with the reply. Top-k ids/probabilities are packed (see `schema.pack_top`).
* **Search** is a case-insensitive substring match over titles, system prompts and messages,
  done by a small SQL function with Python's `str.casefold` (right for any language, unlike
  LIKE's ASCII-only case folding, and it has no wildcards, so `%` and `_` are literal).
  It scans: a few ms per MB of text, fine for a personal history. FTS5 would need a trigram
  index (3+ characters per query) and is not built into every Python's SQLite.
* **One connection, one lock**: the GUI and the worker thread may both call any method; each
  call holds the lock for one short transaction.
* Only a **damaged** database (SQLITE_CORRUPT / NOTADB, a failed quick_check), one from a newer
  Loopchat, or one whose upgrade fails on its data is **moved aside** (`recovery`, with its
  -wal/-shm, so it can still be opened), never deleted; `recovery_notice` says where, at every
  start until `dismiss_moved_aside_notice()`. A healthy file is never moved for the machine's
  sake: not writable (file, -wal, -shm or folder) → opened `read_only`, saying why; disk full or
  an I/O error → StoreError naming the cause, the file untouched.
* **Deleted means gone from the file**: `secure_delete` zeroes freed content and
  `purge_deleted` checkpoints and truncates the -wal, which still held the old pages.
* **Rows are data too**: a stored value views cannot use (a time of 1e300, broken JSON) comes
  back as a safe default with `damaged=True` instead of an exception; import checks the same
  ranges and types up front and names the bad field.

The other parts of the store, one job each, are listed in `desktop/store/__init__.py`.

No Qt and no torch here: the worker, tests and a crash-test subprocess all use it directly.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from desktop.store.export import (
    conversation_from_json,
    conversation_to_json,
    conversation_to_markdown,
    parents_first,
)
from desktop.store.importing import insert_conversation
from desktop.store.recovery import open_database
from desktop.store.rows import (
    CONV_COLUMNS,
    MSG_COLUMNS,
    STEP_COLUMNS,
    VERSION_COLUMNS,
    conversation_from_row,
    insert_message,
    insert_steps,
    message_from_row,
    step_from_row,
)
from desktop.store.schema import (
    MIGRATIONS,
    ROLES,
    Conversation,
    Migration,
    StoreError,
)
from engine.events import Step

log = logging.getLogger(__name__)

DB_NAME = "conversations.sqlite3"
TITLE_LENGTH = 60
_LAST_OPEN = "last_open"
_MOVED_ASIDE = "moved_aside_notice"
_SECURE_SINCE = "vacuumed_for_secure_delete"
_REPLY_GONE = "The reply being saved no longer exists."
T = TypeVar("T")


def default_path() -> Path:
    """`<user data dir>/conversations.sqlite3` (platformdirs; LOOPCHAT_HOME overrides)."""
    from desktop.paths import data_dir

    return data_dir() / DB_NAME


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


class ConversationStore:
    """Every saved conversation. Thread-safe; each method is one short transaction.

    `path` defaults to `default_path()`. `migrations` is for tests of the migration runner;
    `busy_timeout_s` is how long a write waits for another process holding the file.

    Only damage (SQLITE_CORRUPT / NOTADB, a failed quick_check) or a newer schema moves a file
    aside. A healthy file that cannot be written now (read-only file, -wal, -shm or folder) is
    opened read-only (`read_only`, with `recovery_notice` saying why); any other problem (disk
    full, I/O error) leaves it untouched and raises StoreError naming the cause.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        busy_timeout_s: float = 5.0,
    ) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._migrations = tuple(migrations)
        self._lock = threading.RLock()
        self._deleted_here: dict[int, float] = {}
        """Conversation id → the `deleted_at` this instance gave it (see `_keep_alive`)."""
        opened = open_database(self.path, self._migrations, busy_timeout_s)
        self._db = opened.db
        self.read_only = opened.read_only_reason is not None
        """True when the file could only be opened for reading; every write raises StoreError."""
        self._read_only_reason = opened.read_only_reason or ""
        if opened.moved_aside is not None:
            self.set_meta(_MOVED_ASIDE, opened.moved_aside)
        notices = (opened.notice, self.moved_aside_notice())
        self.recovery_notice: str | None = " ".join(n for n in notices if n) or None
        """What to tell the user at start: the file was opened read-only (and why), or an
        earlier file was moved aside (repeated at every start until
        `dismiss_moved_aside_notice`)."""

    # -- opening, notices, closing -------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The version this code writes (the length of its migration list)."""
        return len(self._migrations)

    def moved_aside_notice(self) -> str | None:
        """What happened when an earlier file was moved aside (where it went, why), or None.

        Kept in the database so it is shown at every start until the user dismisses it: the
        old conversations are still there to recover, and a notice seen once is easily lost.
        """
        return self.get_meta(_MOVED_ASIDE)

    def dismiss_moved_aside_notice(self) -> None:
        """The user has seen the moved-aside notice; stop repeating it (the file stays)."""
        self.set_meta(_MOVED_ASIDE, None)
        self.recovery_notice = None

    def close(self) -> None:
        """Close the file (SQLite folds the WAL back into it)."""
        with self._lock:
            try:
                self._db.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass
            self._db.close()

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions --------------------------------------------------------------------------

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one write transaction; a database failure becomes a StoreError."""
        with self._lock:
            if self.read_only:
                raise StoreError(
                    f"Nothing can be saved: your conversations are open read-only "
                    f"({self._read_only_reason})."
                )
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._db)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(
                    f"Could not save to the conversation database ({exc}). Check that the disk "
                    f"is not full and {self.path.parent} is writable."
                ) from exc
            return result

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one read transaction, so several SELECTs see the same snapshot."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    return fn(self._db)
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"Could not read the conversation database ({exc}).") from exc

    @staticmethod
    def _require_conversation(db: sqlite3.Connection, conversation_id: int) -> tuple:
        row = db.execute(
            "SELECT title_is_custom, deleted_at FROM conversations WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        if row is None:
            raise StoreError("This conversation no longer exists.")
        return row

    @staticmethod
    def _require_message(
        db: sqlite3.Connection, message_id: int, columns: str, missing: str
    ) -> tuple:
        """The message's `columns`; StoreError(`missing`), fit for a dialog, if it is gone
        (deleted by another call since the caller got its id)."""
        row = db.execute(f"SELECT {columns} FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise StoreError(missing)
        return row

    def _keep_alive(self, db: sqlite3.Connection, conversation_id: int) -> None:
        """A write into a conversation that another Loopchat deleted undoes that deletion.

        Two instances may share the file: B still shows (and saves into) a conversation that
        A deleted, and A purges its deleted conversations at close. Without this, A's purge
        takes B's new messages with it and B is never told. Done in the write's transaction,
        so against a purge it is all or nothing: the write lands first and the conversation is
        kept, or the purge does and the write fails with "no longer exists".
        A deletion made by this instance stands: a reply it is still saving in the background
        of a conversation the user deleted here must not bring it back.
        """
        db.execute(
            "UPDATE conversations SET deleted_at = NULL "
            "WHERE id = ? AND deleted_at IS NOT NULL AND deleted_at IS NOT ?",
            (conversation_id, self._deleted_here.get(conversation_id)),
        )

    @staticmethod
    def _touch(db: sqlite3.Connection, conversation_id: int, when: float) -> None:
        """Mark a conversation active at `when` (the list shows the most recent first)."""
        db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (when, conversation_id))

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
        sql += " ORDER BY updated_at DESC, id DESC"
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

    # -- app state -----------------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._read(
            lambda db: db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        )
        return row[0] if row else default

    def set_meta(self, key: str, value: str | None) -> None:
        """Set a small app-state value; None removes it."""

        def write(db: sqlite3.Connection) -> None:
            if value is None:
                db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

        self._write(write)

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

    def backup_to(self, destination: str | Path) -> Path:
        """Copy every conversation into a new SQLite file; consistent even while in use.

        (Copying conversations.sqlite3 by hand while Loopchat runs can miss what is still in
        its -wal file; this uses SQLite's online backup instead.)
        """
        dest = Path(destination)
        if dest.exists():
            raise StoreError(f"{dest} already exists; choose a new name for the backup.")
        with self._lock:
            try:
                target = sqlite3.connect(dest)
                try:
                    self._db.backup(target)
                finally:
                    target.close()
            except sqlite3.Error as exc:
                raise StoreError(f"Could not write the backup {dest}: {exc}.") from None
        return dest

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
