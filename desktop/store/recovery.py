"""Opening the conversation database, and what to do when it cannot be opened as it is.

Only a **damaged** file (SQLITE_CORRUPT / NOTADB, a failed quick_check), one from a newer
Loopchat, or one whose upgrade fails on its data is **moved aside** (with its -wal/-shm, so it can
still be opened), never deleted. A healthy file is never moved for the machine's sake: not
writable (file, -wal, -shm or folder) → opened read-only, saying why; disk full or an I/O error →
StoreError naming the cause, the file untouched.

Kept apart from `conversations` because none of it is about conversations: it classifies SQLite
errors and files, and hands the store a ready connection (`open_database`) plus what to tell
the user. It never imports `conversations`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from desktop.store.schema import (
    Migration,
    NewerSchemaError,
    StoreError,
    migrate,
    migration_note,
)

__all__ = ["OpenedDatabase", "open_database"]

log = logging.getLogger(__name__)

_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED: another process holds the file; it is not broken
_CORRUPT = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB: the file itself is damaged
_READ_ONLY = (3, 8, 14, 23)  # SQLITE_PERM, READONLY, CANTOPEN, AUTH: permissions, not damage
_ENVIRONMENT = (*_READ_ONLY, 7, 10, 13, 15)  # + NOMEM, IOERR, FULL, PROTOCOL: not the file's fault


@dataclass
class OpenedDatabase:
    """A connection ready for `ConversationStore`, and what happened on the way to it."""

    db: sqlite3.Connection
    read_only_reason: str | None = None
    """Why the file could only be opened for reading (None: it is writable)."""
    notice: str | None = None
    """What to tell the user now (the file is open read-only, and why)."""
    moved_aside: str | None = None
    """What to tell the user at every start from now on: an unusable file was moved aside to a
    new name (where, why); the store keeps it until the user dismisses it."""


def open_database(
    path: Path, migrations: Sequence[Migration], busy_timeout_s: float
) -> OpenedDatabase:
    """Open (creating, checking and migrating) the database at `path`.

    A damaged or too-new file is moved aside and a new one started; a healthy file that cannot
    be written now is opened read-only; anything else is a StoreError naming the cause.
    """
    return _Opener(path, tuple(migrations), busy_timeout_s).open()


def _contains(haystack: str | None, needle: str) -> bool:
    """SQL `lc_contains(text, casefolded query)`: case-insensitive, no wildcards."""
    return haystack is not None and needle in haystack.casefold()


def _add_functions(db: sqlite3.Connection) -> None:
    """The SQL functions the store's queries use (search: `lc_contains`)."""
    db.create_function("lc_contains", 2, _contains, deterministic=True)


def _code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of an error (Python 3.11+ carries it; None before)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_busy(exc: sqlite3.Error) -> bool:
    """Another process holds the file: say so and leave it alone (it is not broken)."""
    return _code(exc) in _BUSY or "locked" in str(exc)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    """Damage in the file itself, the only sqlite error that justifies moving it aside."""
    text = str(exc).lower()
    return _code(exc) in _CORRUPT or "malformed" in text or "not a database" in text


def _is_read_only(exc: sqlite3.Error) -> bool:
    """Permissions (file, -wal, -shm or folder), not damage: the data is fine, just not ours to
    write."""
    text = str(exc).lower()
    return _code(exc) in _READ_ONLY or "readonly" in text or "unable to open" in text


class _Unusable(Exception):
    """The file at the store's path is damaged or too new; `label` names the moved-aside copy."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(reason)
        self.label = label
        self.reason = reason


class _Kept(Exception):
    """The file is fine but cannot be used now (permissions, disk full, I/O): it stays put."""

    def __init__(self, exc: sqlite3.Error) -> None:
        super().__init__(str(exc))
        self.error = exc
        self.read_only = _is_read_only(exc)


class _Opener:
    """The steps of opening one file; they share its path, migrations and busy timeout."""

    def __init__(
        self, path: Path, migrations: tuple[Migration, ...], busy_timeout_s: float
    ) -> None:
        self.path = path
        self._migrations = migrations
        self._busy_timeout_s = busy_timeout_s

    @property
    def schema_version(self) -> int:
        """The version this code writes (the length of its migration list)."""
        return len(self._migrations)

    def open(self) -> OpenedDatabase:
        """Open the file, moving it aside or opening it read-only where that is what it needs."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"Cannot create the folder for saved conversations, {self.path.parent}: "
                f"{exc.strerror}. Check that it is writable."
            ) from None
        try:
            return OpenedDatabase(self._connect())
        except _Unusable as problem:
            if not self.path.exists():
                raise StoreError(
                    f"Cannot create the conversation database {self.path}: {problem.reason}. "
                    "Check that the folder is writable."
                ) from None
            moved = self._move_aside(problem.label)
            notice = self._notice(problem, moved)
            log.warning("conversation database moved aside to %s: %s", moved, problem.reason)
            try:
                db = self._connect()
            except (_Unusable, _Kept) as again:
                raise StoreError(
                    f"Cannot start a new conversation database at {self.path}: {again}. "
                    "Check that the folder is writable and the disk is not full."
                ) from None
            return OpenedDatabase(db, moved_aside=notice)
        except _Kept as kept:
            return self._open_read_only_or_raise(kept)

    def _connect(self) -> sqlite3.Connection:
        """Check, open and migrate the file.

        `_Unusable` if it is damaged or too new (it gets moved aside), `_Kept` if it is fine but
        cannot be opened for writing now (it stays where it is).
        """
        if self.path.exists():
            self._vet()
        db = None
        try:
            db = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":  # e.g. some network file systems
                log.warning("SQLite refused WAL mode for %s (using %s)", self.path, mode)
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            # Deleted conversations leave no readable bytes behind in the file (privacy).
            db.execute("PRAGMA secure_delete = ON")
            try:
                found = migrate(db, self._migrations)
            except NewerSchemaError as exc:  # only if another process replaced it meanwhile
                raise _Unusable("newer-version", str(exc)) from None
            except sqlite3.Error as exc:
                if _is_busy(exc) or _is_corrupt(exc) or _code(exc) in _ENVIRONMENT:
                    raise
                raise _Unusable("upgrade-failed", f"upgrading it failed ({exc})") from None
            except Exception as exc:  # noqa: BLE001 - a migration meeting data it did not foresee
                # Rolled back, so the file is as it was; failing here would stop every start.
                log.exception("upgrading %s failed", self.path)
                raise _Unusable(
                    "upgrade-failed", f"upgrading it failed ({type(exc).__name__}: {exc})"
                ) from None
            if found < self.schema_version:
                log.info("%s", migration_note(found, self.schema_version))
            # A file that opens but cannot take a write lock (read-only file, -wal or -shm) is
            # found here, at start, rather than at the first message.
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(f"PRAGMA user_version = {self.schema_version:d}")  # a real write
            finally:
                db.execute("ROLLBACK")
            _add_functions(db)
            return db
        except BaseException as exc:
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.Error):
                self._classify(exc)
            raise

    def _open_read_only(self) -> sqlite3.Connection:
        """A read-only connection, also in a read-only folder without -shm (`immutable`, safe
        only when there is no -wal whose content it would skip)."""
        uri = self.path.resolve().as_uri()
        db = None
        try:
            db = sqlite3.connect(
                f"{uri}?mode=ro",
                uri=True,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the real open
            return db
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            if _is_busy(exc) or _is_corrupt(exc) or Path(f"{self.path}-wal").exists():
                raise
        db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        db.isolation_level = None
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _vet(self) -> None:
        """Check an existing file without changing it.

        Read-only, because a read-write connection to a broken file still deletes its -wal on
        close, and the -wal may hold the latest conversations: what is moved aside must be
        exactly what was found.
        """
        db = None
        try:
            try:
                db = self._open_read_only()
            except sqlite3.Error as exc:
                if _is_corrupt(exc) or not Path(f"{self.path}-wal").exists():
                    raise
                db = sqlite3.connect(  # -wal present but no usable -shm: check the main file
                    f"{self.path.resolve().as_uri()}?mode=ro&immutable=1",
                    uri=True,
                    isolation_level=None,
                )
            # quick_check: integrity_check without the index/table cross-checks; several times
            # faster and finds the damage that matters here (pages that cannot be read).
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                log.warning("quick_check of %s: %s", self.path, " | ".join(problems))
                raise _Unusable("unreadable", "it is damaged (its integrity check failed)")
            found = db.execute("PRAGMA user_version").fetchone()[0]
            if found > self.schema_version:
                raise _Unusable("newer-version", str(NewerSchemaError(found, self.schema_version)))
        except sqlite3.Error as exc:
            self._classify(exc)
        finally:
            if db is not None:
                db.close()

    def _classify(self, exc: sqlite3.Error) -> None:
        """Raise what an sqlite error at opening means: busy, damaged or kept."""
        if _is_busy(exc):
            raise StoreError(
                f"The conversation database {self.path} is in use by another program "
                "(is Loopchat already running?). Close it and try again."
            ) from None
        if _is_corrupt(exc):
            raise _Unusable("unreadable", f"it is damaged ({exc})") from None
        raise _Kept(exc) from None

    def _open_read_only_or_raise(self, kept: _Kept) -> OpenedDatabase:
        """The file is fine but not writable now: open it read-only when that is the cause and
        possible, else a StoreError that names the cause. The file is never moved."""
        cause = self._describe(kept.error)
        log.warning("conversation database %s kept as it is: %s", self.path, kept.error)
        if kept.read_only:
            db = None
            try:
                db = self._open_read_only()
                found = db.execute("PRAGMA user_version").fetchone()[0]
                if found != self.schema_version:
                    raise StoreError(
                        f"Your saved conversations in {self.path} need upgrading to this version "
                        f"of Loopchat, but {cause}. Make them writable and restart Loopchat."
                    )
                _add_functions(db)
            except sqlite3.Error as exc:
                if db is not None:
                    db.close()
                raise StoreError(
                    f"Cannot open your saved conversations in {self.path}: {cause}; even "
                    f"reading them failed ({exc}). Nothing was changed or moved."
                ) from None
            return OpenedDatabase(
                db,
                read_only_reason=cause,
                notice=(
                    f"Your saved conversations are open read-only: {cause}. You can read them, "
                    "but nothing new is saved until that is fixed and Loopchat restarted."
                ),
            )
        raise StoreError(
            f"Cannot open your saved conversations in {self.path}: {cause}. The file was left "
            "as it is (nothing was moved or deleted); fix that and restart Loopchat."
        )

    def _describe(self, exc: sqlite3.Error) -> str:
        """The cause of an error in words: which file is not writable, or how full the disk is."""
        folder = self.path.parent
        if _is_read_only(exc):
            if not os.access(folder, os.W_OK):
                return f"the folder {folder} is read-only"
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{self.path}{suffix}")
                if part.exists() and not os.access(part, os.W_OK):
                    return f"{part.name} is read-only"
            return f"it cannot be opened for writing ({exc})"
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return f"a disk error ({exc})"
        free_text = f"{free / 2**20:.0f} MB free" if free < 2**30 else f"{free / 2**30:.1f} GB free"
        if _code(exc) == 13 or "full" in str(exc).lower():
            return f"the disk is full ({free_text} on {folder})"
        return f"a disk error ({exc}; is the disk full? {free_text} on {folder})"

    def _move_aside(self, label: str) -> Path:
        """Rename the file and its -wal/-shm to `<name>.<label>-<timestamp>[-n]` (kept paired)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.{label}-{stamp}")
        n = 2
        while any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm")):
            target = self.path.with_name(f"{self.path.name}.{label}-{stamp}-{n}")
            n += 1
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if not source.exists():
                continue
            try:
                source.rename(f"{target}{suffix}")
            except OSError as exc:
                raise StoreError(
                    f"The conversation database {self.path} cannot be opened and could not be "
                    f"moved aside ({exc.strerror}). Move it somewhere else and restart Loopchat."
                ) from None
        return target

    def _notice(self, problem: _Unusable, moved: Path) -> str:
        """What to tell the user about a file just moved aside: why, where, how to get it back."""
        kept = f"It was moved to {moved} (nothing was deleted) and a new, empty history started."
        if problem.label == "newer-version":
            return (
                f"Your saved conversations were written by a newer version of Loopchat "
                f"({problem.reason}). {kept} Open that file with the newer Loopchat to get them "
                "back."
            )
        if problem.label == "upgrade-failed":
            return (
                f"Your saved conversations could not be upgraded to this version of Loopchat: "
                f"{problem.reason}. {kept}"
            )
        return f"Your saved conversations could not be opened: {problem.reason}. {kept}"
