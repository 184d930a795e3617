"""The store's one SQLite connection: opening the file, its lock, its transactions, app-state meta.

Its own module so that what every store method rests on (how a write is made safe, how a
failure is worded, which file is open and whether it may be written) is read in one place,
apart from what the store keeps in the file. `MessageStore` and `ConversationStore` build on
`StoreConnection`.

Choices, and why:

* **WAL journal, synchronous=FULL.** Any committed transaction survives the app being killed in
  every synchronous mode; FULL also makes it survive a power cut or an OS crash (a laptop whose
  battery dies mid-generation), which NORMAL does not (it may roll back the last transactions).
  The price is one fsync per commit (a few ms on an SSD), and there are few commits: a user
  message, then one save point a second at most while a reply streams.
* **One connection, one lock**: the GUI and the worker thread may both call any method; each
  call holds the lock for one short transaction.
* Only a **damaged** database (SQLITE_CORRUPT / NOTADB, a failed quick_check), one from a newer
  Loopchat, or one whose upgrade fails on its data is **moved aside** (`recovery`, with its
  -wal/-shm, so it can still be opened), never deleted; `recovery_notice` says where, at every
  start until `dismiss_moved_aside_notice()`. A healthy file is never moved for the machine's
  sake: not writable (file, -wal, -shm or folder) → opened `read_only`, saying why; disk full or
  an I/O error → StoreError naming the cause, the file untouched.

No Qt and no torch here: the worker, tests and a crash-test subprocess all use it directly.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from desktop.store.recovery import open_database
from desktop.store.schema import MIGRATIONS, Migration, StoreError

DB_NAME = "conversations.sqlite3"
_MOVED_ASIDE = "moved_aside_notice"
T = TypeVar("T")
S = TypeVar("S", bound="StoreConnection")


def default_path() -> Path:
    """`<user data dir>/conversations.sqlite3` (platformdirs; LOOPCHAT_HOME overrides)."""
    from desktop.paths import data_dir

    return data_dir() / DB_NAME


class StoreConnection:
    """The open database file and the rules every read and write of it follows.

    Thread-safe: one connection, one lock; each `_write` / `_read` is one short transaction.
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

    def __enter__(self: S) -> S:
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
