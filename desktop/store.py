"""Conversations on disk: one SQLite database, saved as the user types and as the model streams.

Design choices, and why:
* WAL journal with synchronous=NORMAL: every committed transaction survives the app being killed
  (only a power cut may lose the last moments), and readers never block the writer.
* Streamed tokens go into an append-only `steps` table keyed by (message_id, idx): saving a batch
  of 32 tokens is 32 small inserts in one short transaction, never a rewrite of the whole reply.
  Each step keeps what the token inspector needs: id, text, piece, probability and the top-k.
* Search uses LIKE over titles and message text with the wildcards escaped: exact for any input,
  and fast enough for a personal history (FTS5 is not in every Python's SQLite build).
* A database that is corrupt or from a newer Loopchat is moved aside (never deleted) and a fresh
  one is started; `recovery_notice` tells the window what happened and where the old file went.
No Qt and no torch here: the worker, tests and a crash-test subprocess all use it directly.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPORT_FORMAT = "loopchat-conversation"
EXPORT_VERSION = 1
TITLE_LENGTH = 60


class StoreError(Exception):
    """A problem with saved conversations that the user can act on (message fit for a dialog)."""


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Run DDL statements inside the caller's transaction (executescript would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL DEFAULT '',
            title_is_custom INTEGER NOT NULL DEFAULT 0,
            system_prompt TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            deleted_at REAL
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            content TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            finished INTEGER NOT NULL DEFAULT 1,
            stop_reason TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            sampling TEXT NOT NULL DEFAULT '{}',
            timings TEXT NOT NULL DEFAULT '{}',
            UNIQUE (conversation_id, position)
        );
        CREATE TABLE steps (
            message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            token_id INTEGER NOT NULL,
            text TEXT NOT NULL,
            piece TEXT NOT NULL,
            prob REAL NOT NULL,
            top TEXT NOT NULL,
            PRIMARY KEY (message_id, idx)
        ) WITHOUT ROWID;
        CREATE INDEX conversations_recent ON conversations(updated_at DESC);
        """,
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1]
"""Migration i brings a database from schema version i to i + 1. Only ever append."""


@dataclass
class Message:
    id: int
    role: str
    content: str
    position: int
    finished: bool = True
    stop_reason: str = ""
    model: str = ""
    sampling: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    """Each: {"index", "token_id", "text", "piece", "prob", "top": [{"token_id","text","prob"}]}"""


@dataclass
class Conversation:
    id: int
    title: str
    system_prompt: str
    model: str
    created_at: float
    updated_at: float
    title_is_custom: bool = False
    messages: list[Message] = field(default_factory=list)


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class ConversationStore:
    """All saved conversations. Thread-safe: one connection guarded by a lock, short writes."""

    def __init__(self, path: Path, migrations: list | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrations = MIGRATIONS if migrations is None else migrations
        self._lock = threading.RLock()
        self.recovery_notice: str | None = None
        try:
            self._db = self._open()
        except (sqlite3.DatabaseError, StoreError) as exc:
            moved = self._move_aside()
            self.recovery_notice = (
                f"Your conversation database could not be opened ({exc}). It was moved to "
                f"{moved} and a new one was started; nothing was deleted."
            )
            self._db = self._open()

    @property
    def schema_version(self) -> int:
        return len(self._migrations)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"integrity check failed: {check}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > self.schema_version:
                raise StoreError(
                    f"it was written by a newer Loopchat (schema {version}, this one knows "
                    f"{self.schema_version})"
                )
            if version < self.schema_version:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for migrate in self._migrations[version:]:
                        migrate(db)
                    db.execute(f"PRAGMA user_version={self.schema_version}")
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.unreadable-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.unreadable-{stamp}-{n}")
            n += 1
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                shutil.move(source, Path(str(target) + suffix))
        return target

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
                self._db.execute("COMMIT")
                return out
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # -- conversations -----------------------------------------------------------------------

    def create_conversation(self, system_prompt: str = "", model: str = "", title: str = "") -> int:
        now = time.time()
        return self._write(
            lambda db: (
                db.execute(
                    "INSERT INTO conversations (title, title_is_custom, system_prompt, model, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (title, int(bool(title)), system_prompt, model, now, now),
                ).lastrowid
            )
        )

    def list_conversations(self, search: str = "") -> list[Conversation]:
        """Newest first; `search` matches any text of a conversation, case-insensitively."""
        sql = (
            "SELECT id, title, system_prompt, model, created_at, updated_at, title_is_custom "
            "FROM conversations c WHERE deleted_at IS NULL"
        )
        args: list = []
        if search.strip():
            pattern = _like(search.strip())
            sql += (
                " AND (title LIKE ? ESCAPE '\\' OR system_prompt LIKE ? ESCAPE '\\' OR EXISTS "
                "(SELECT 1 FROM messages m WHERE m.conversation_id = c.id "
                "AND m.content LIKE ? ESCAPE '\\'))"
            )
            args = [pattern, pattern, pattern]
        sql += " ORDER BY updated_at DESC, id DESC"
        return [
            Conversation(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]))
            for r in self._read(sql, args)
        ]

    def get_conversation(self, conversation_id: int) -> Conversation:
        rows = self._read(
            "SELECT id, title, system_prompt, model, created_at, updated_at, title_is_custom "
            "FROM conversations WHERE id = ? AND deleted_at IS NULL",
            (conversation_id,),
        )
        if not rows:
            raise StoreError(f"conversation {conversation_id} does not exist")
        conv = Conversation(*rows[0][:6], bool(rows[0][6]))
        messages = self._read(
            "SELECT id, role, content, position, finished, stop_reason, model, sampling, timings "
            "FROM messages WHERE conversation_id = ? ORDER BY position",
            (conversation_id,),
        )
        for r in messages:
            conv.messages.append(
                Message(
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    bool(r[4]),
                    r[5],
                    r[6],
                    json.loads(r[7]),
                    json.loads(r[8]),
                    self._steps(r[0]),
                )
            )
        return conv

    def _steps(self, message_id: int) -> list[dict]:
        return [
            {
                "index": r[0],
                "token_id": r[1],
                "text": r[2],
                "piece": r[3],
                "prob": r[4],
                "top": json.loads(r[5]),
            }
            for r in self._read(
                "SELECT idx, token_id, text, piece, prob, top FROM steps WHERE message_id = ? "
                "ORDER BY idx",
                (message_id,),
            )
        ]

    def rename(self, conversation_id: int, title: str) -> None:
        self._write(
            lambda db: db.execute(
                "UPDATE conversations SET title = ?, title_is_custom = 1 WHERE id = ?",
                (title.strip(), conversation_id),
            )
        )

    def set_system_prompt(self, conversation_id: int, system_prompt: str) -> None:
        self._write(
            lambda db: db.execute(
                "UPDATE conversations SET system_prompt = ? WHERE id = ?",
                (system_prompt, conversation_id),
            )
        )

    def delete_conversation(self, conversation_id: int) -> None:
        """Hide it (undo with `restore_conversation`); `purge_deleted` removes it for good."""
        self._write(
            lambda db: db.execute(
                "UPDATE conversations SET deleted_at = ? WHERE id = ?",
                (time.time(), conversation_id),
            )
        )

    def restore_conversation(self, conversation_id: int) -> None:
        self._write(
            lambda db: db.execute(
                "UPDATE conversations SET deleted_at = NULL WHERE id = ?", (conversation_id,)
            )
        )

    def purge_deleted(self, older_than_s: float = 0.0) -> int:
        cutoff = time.time() - older_than_s
        return self._write(
            lambda db: (
                db.execute(
                    "DELETE FROM conversations WHERE deleted_at IS NOT NULL AND deleted_at <= ?",
                    (cutoff,),
                ).rowcount
            )
        )

    # -- messages ----------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        finished: bool = True,
        model: str = "",
        sampling: dict | None = None,
    ) -> int:
        """Append a message; a conversation's first user message becomes its title."""
        now = time.time()

        def write(db: sqlite3.Connection) -> int:
            position = db.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()[0]
            message_id = db.execute(
                "INSERT INTO messages (conversation_id, position, role, content, created_at, "
                "finished, model, sampling) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    position,
                    role,
                    content,
                    now,
                    int(finished),
                    model,
                    json.dumps(sampling or {}),
                ),
            ).lastrowid
            db.execute(
                "UPDATE conversations SET updated_at = ?, "
                "title = CASE WHEN title_is_custom = 0 AND title = '' AND ? = 'user' "
                "THEN ? ELSE title END WHERE id = ?",
                (now, role, _title_from(content), conversation_id),
            )
            return message_id

        return self._write(write)

    def start_reply(self, conversation_id: int, model: str, sampling: dict) -> int:
        return self.add_message(
            conversation_id, "assistant", "", finished=False, model=model, sampling=sampling
        )

    def append_steps(self, message_id: int, steps: list[dict], content: str) -> None:
        """Save streamed steps and the reply text so far (one short transaction)."""

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO steps (message_id, idx, token_id, text, piece, prob, top) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        message_id,
                        s["index"],
                        s["token_id"],
                        s["text"],
                        s.get("piece", ""),
                        s["prob"],
                        json.dumps(s.get("top", []), ensure_ascii=False),
                    )
                    for s in steps
                ],
            )
            db.execute("UPDATE messages SET content = ? WHERE id = ?", (content, message_id))

        self._write(write)

    def finish_reply(
        self, message_id: int, content: str, stop_reason: str, timings: dict | None = None
    ) -> None:
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE messages SET content = ?, finished = 1, stop_reason = ?, timings = ? "
                "WHERE id = ?",
                (content, stop_reason, json.dumps(timings or {}), message_id),
            )
            db.execute(
                "UPDATE conversations SET updated_at = ? WHERE id = "
                "(SELECT conversation_id FROM messages WHERE id = ?)",
                (now, message_id),
            )

        self._write(write)

    def truncate_from(self, conversation_id: int, position: int) -> None:
        """Delete the message at `position` and everything after it (edit, regenerate)."""
        self._write(
            lambda db: db.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND position >= ?",
                (conversation_id, position),
            )
        )

    # -- app state ---------------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        self._write(
            lambda db: db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    # -- export / import ---------------------------------------------------------------------

    def export_json(self, conversation_id: int) -> dict:
        """Everything, steps included: re-importable and readable by other tools."""
        conv = self.get_conversation(conversation_id)
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "title": conv.title,
            "system_prompt": conv.system_prompt,
            "model": conv.model,
            "created_at": conv.created_at,
            "messages": [
                {
                    "role": m.role,
                    "content": m.content,
                    "finished": m.finished,
                    "stop_reason": m.stop_reason,
                    "model": m.model,
                    "sampling": m.sampling,
                    "timings": m.timings,
                    "steps": m.steps,
                }
                for m in conv.messages
            ],
        }

    def export_markdown(self, conversation_id: int) -> str:
        conv = self.get_conversation(conversation_id)
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(conv.created_at))
        lines = [f"# {conv.title or 'Untitled conversation'}", "", f"*{created}*"]
        if conv.model:
            lines[-1] += f" · model: {conv.model}"
        lines.append("")
        if conv.system_prompt:
            lines += ["**System prompt:**", "", conv.system_prompt, ""]
        for m in conv.messages:
            who = "You" if m.role == "user" else (m.model or "Assistant")
            lines += [f"## {who}", "", m.content, ""]
            if m.role == "assistant" and m.sampling:
                settings = ", ".join(f"{k} {v}" for k, v in m.sampling.items() if v is not None)
                lines += [f"<sub>{settings}</sub>", ""]
        return "\n".join(lines).rstrip() + "\n"

    def import_json(self, data: Any) -> int:
        """Add an exported conversation as a new one; a bad file raises StoreError."""
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise StoreError("This file is not a Loopchat conversation export.")
        if int(data.get("version", 0)) > EXPORT_VERSION:
            raise StoreError("This export comes from a newer Loopchat; update to import it.")
        messages = data.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict)
            and m.get("role") in ("user", "assistant")
            and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise StoreError("This export is damaged: its messages are missing or malformed.")
        now = time.time()

        def write(db: sqlite3.Connection) -> int:
            conv_id = db.execute(
                "INSERT INTO conversations (title, title_is_custom, system_prompt, model, "
                "created_at, updated_at) VALUES (?, 1, ?, ?, ?, ?)",
                (
                    str(data.get("title", "")),
                    str(data.get("system_prompt", "")),
                    str(data.get("model", "")),
                    float(data.get("created_at", now)),
                    now,
                ),
            ).lastrowid
            for position, m in enumerate(messages):
                message_id = db.execute(
                    "INSERT INTO messages (conversation_id, position, role, content, created_at, "
                    "finished, stop_reason, model, sampling, timings) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        conv_id,
                        position,
                        m["role"],
                        m["content"],
                        now,
                        int(m.get("finished", True)),
                        str(m.get("stop_reason", "")),
                        str(m.get("model", "")),
                        json.dumps(m.get("sampling", {})),
                        json.dumps(m.get("timings", {})),
                    ),
                ).lastrowid
                for s in m.get("steps", []):
                    db.execute(
                        "INSERT INTO steps (message_id, idx, token_id, text, piece, prob, top) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            message_id,
                            int(s["index"]),
                            int(s["token_id"]),
                            str(s["text"]),
                            str(s.get("piece", "")),
                            float(s["prob"]),
                            json.dumps(s.get("top", []), ensure_ascii=False),
                        ),
                    )
            return conv_id

        try:
            return self._write(write)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"This export is damaged ({exc}).") from None


class Autosaver:
    """Buffers a streaming reply's steps and saves them every 32 tokens or every second."""

    def __init__(
        self,
        store: ConversationStore,
        message_id: int,
        every_steps: int = 32,
        every_s: float = 1.0,
    ) -> None:
        self.store = store
        self.message_id = message_id
        self.every_steps = every_steps
        self.every_s = every_s
        self._pending: list[dict] = []
        self._content = ""
        self._last = time.monotonic()
        self.saved_steps = 0

    def add(self, step: dict) -> bool:
        """Record one step; returns True when this call saved to disk."""
        self._pending.append(step)
        self._content += step.get("text", "")
        if len(self._pending) >= self.every_steps or time.monotonic() - self._last >= self.every_s:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        if self._pending:
            self.store.append_steps(self.message_id, self._pending, self._content)
            self.saved_steps += len(self._pending)
            self._pending = []
        self._last = time.monotonic()

    def finish(self, content: str, stop_reason: str, timings: dict | None = None) -> None:
        self.flush()
        self.store.finish_reply(self.message_id, content, stop_reason, timings)
