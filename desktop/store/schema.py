"""What the conversation store keeps: the record types, the SQL schema and its forward migrations.

Kept apart from `conversations` so export/import code can use the record types without the
database, and so the history of the schema reads as one ordered list.

No Qt and no torch here (the worker thread, tests and a crash-test subprocess import it).
"""

from __future__ import annotations

import json
import sqlite3
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.events import DraftCheck, Step, TopToken

ROLES = ("system", "user", "assistant")


class StoreError(Exception):
    """A problem with saved conversations, worded for a dialog (what happened, what to do)."""


# -- record types ------------------------------------------------------------------------------
# A message's steps are the engine's own `Step` records (with `TopToken` candidates): what the
# worker streams is what the store keeps and what it reads back (`elapsed_s` 0.0, `request_id`
# 0, `index` the step's place in its reply).


@dataclass
class Message:
    """One turn. An assistant reply being streamed has `finished=False` and no stop reason yet."""

    id: int
    conversation_id: int
    position: int
    """0-based place in the conversation."""
    role: str
    content: str
    created_at: float
    """Unix time, seconds (as all timestamps here)."""
    finished: bool = True
    stop_reason: str | None = None
    model: str = ""
    sampling: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    damaged: bool = False
    """Part of the stored row could not be read (bad JSON, a time out of range, broken steps);
    what could be read is here, the rest replaced by safe defaults. Views may say so."""
    parent_id: int | None = None
    """The message before this one on its branch (None for a conversation's first message).
    In an export read back, the index of that message in the file instead."""
    shown: bool = True
    """This version is the one shown among its siblings (the messages with the same parent)."""
    version: int = 1
    """1-based place among its siblings, oldest first (the `2` of `‹ 2/3 ›`)."""
    versions: int = 1
    """How many siblings (versions of this turn) there are, itself included."""

    @property
    def token_ids(self) -> list[int]:
        return [s.token_id for s in self.steps]


@dataclass
class Conversation:
    """A conversation; `messages` is filled by `get_conversation`, empty in listings."""

    id: int
    title: str
    created_at: float
    updated_at: float
    system_prompt: str = ""
    model: str = ""
    model_path: str = ""
    title_is_custom: bool = False
    deleted_at: float | None = None
    messages: list[Message] = field(default_factory=list)
    imported_at: float | None = None
    """When File → Import added it (None: it was made in this app)."""
    damaged: bool = False
    """The stored row (not its messages) had values that could not be used as they were."""
    pinned_at: float | None = None
    """When the user pinned it to the top of the list (None: not pinned)."""


# -- packed top-k ------------------------------------------------------------------------------
# A reply of 1000 tokens has 1000 top-k lists. Ids as int32 and probabilities as float32 (the
# engine computes them in float32, so nothing is lost) take 8 bytes a candidate; JSON would take
# ~30. The candidate texts stay JSON (any character may occur in a token's text).


def pack_top(top: Sequence[TopToken]) -> tuple[bytes, bytes, str]:
    """(ids blob, probs blob, texts JSON) for the `steps` table."""
    n = len(top)
    ids = struct.pack(f"<{n}i", *(t.token_id for t in top))
    probs = struct.pack(f"<{n}f", *(t.prob for t in top))
    texts = json.dumps([t.text for t in top], ensure_ascii=False, separators=(",", ":"))
    return ids, probs, texts


def unpack_top(ids: bytes, probs: bytes, texts: str) -> list[TopToken]:
    n = len(ids) // 4
    return [
        TopToken(*entry)
        for entry in zip(
            struct.unpack(f"<{n}i", ids),
            json.loads(texts),
            struct.unpack(f"<{n}f", probs),
            strict=True,
        )
    ]


def pack_draft(step: Step) -> str | None:
    """Speculative decoding's account of a step as JSON (None for a plain step)."""
    if not step.drafted and step.check is None:
        return None
    check = step.check.to_dict() if step.check is not None else None
    return json.dumps({"drafted": step.drafted, "check": check}, ensure_ascii=False)


def unpack_draft(raw: Any) -> tuple[bool, DraftCheck | None]:
    """(drafted, check) from `pack_draft`'s JSON; a damaged value reads as a plain step (the
    mark is lost, the token is not)."""
    if raw is None:
        return False, None
    try:
        data = json.loads(raw)
        check = data.get("check")
        return bool(data.get("drafted")), None if check is None else DraftCheck.from_dict(check)
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError):
        return False, None


# -- schema and migrations ---------------------------------------------------------------------

Migration = Callable[[sqlite3.Connection], None]
"""Brings a database from version i to i + 1, inside the caller's transaction."""


def sql_migration(*statements: str) -> Migration:
    """A migration made of SQL statements (not `executescript`, which would commit midway)."""

    def run(db: sqlite3.Connection) -> None:
        for statement in statements:
            db.execute(statement)

    return run


# Version 1: the first store (Loopchat 0.1 before packed steps). Kept verbatim: migrations
# replay history, so a fresh database and an upgraded one end up identical.
_V1 = sql_migration(
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        title_is_custom INTEGER NOT NULL DEFAULT 0,
        system_prompt TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        deleted_at REAL
    )""",
    """CREATE TABLE messages (
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
    )""",
    """CREATE TABLE steps (
        message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        token_id INTEGER NOT NULL,
        text TEXT NOT NULL,
        piece TEXT NOT NULL,
        prob REAL NOT NULL,
        top TEXT NOT NULL,
        PRIMARY KEY (message_id, idx)
    ) WITHOUT ROWID""",
    "CREATE INDEX conversations_recent ON conversations(updated_at DESC)",
)


UNREADABLE_TOP_IDS = b"\xff"
"""The `top_ids` of a step whose version 1 top-k could not be converted: no reader unpacks it
(its length is not a multiple of 4), so the step reads back as damaged (`Message.damaged`),
while `top_texts` keeps the original JSON in the file for whoever wants to recover it."""


def _v1_top_entry(entry: Any) -> TopToken:
    """One candidate as v1 stored it (a dict, or a [id, text, prob] list), checked the way
    import checks it today; ValueError/TypeError when it is not one."""
    if isinstance(entry, Mapping):
        token_id, text, prob = entry.get("token_id"), entry.get("text"), entry.get("prob")
    elif isinstance(entry, list) and len(entry) == 3:
        token_id, text, prob = entry
    else:
        raise ValueError("not a top-k entry")
    if isinstance(token_id, bool) or not isinstance(text, str):
        raise ValueError("not a top-k entry")
    token_id, prob = int(token_id), float(prob)  # "0.75" (v1 kept strings) is a number
    if not (0 <= token_id < 2**31 and 0.0 <= prob <= 1.0):
        raise ValueError("out of range")
    return TopToken(token_id, text, prob)


def _v1_top_packed(raw: Any) -> tuple[bytes, bytes, Any]:
    """A v1 step's JSON top-k, packed for v2.

    v1's import stored it unchecked (null, entries without text, lists, probabilities as
    strings, not JSON at all). A failed upgrade would stop the app at every start, so one odd
    step must not fail it: what converts is packed, anything else is kept verbatim behind
    UNREADABLE_TOP_IDS (a damaged step).
    """
    try:
        entries = json.loads(raw)
        if entries is None:  # no top-k given: nothing to show, nothing lost
            entries = []
        if not isinstance(entries, list):
            raise ValueError("not a list")
        return pack_top([_v1_top_entry(e) for e in entries])
    except (TypeError, ValueError, OverflowError, RecursionError, struct.error):
        return UNREADABLE_TOP_IDS, b"", raw


def _v2(db: sqlite3.Connection) -> None:
    """Model path, system messages, ids never reused, stop_reason NULL until known, and the
    top-k of each step packed (JSON dicts took ~3x the space).

    Tables are rebuilt (create new, copy, drop old, rename), SQLite's way to change constraints.
    A step whose old top-k cannot be converted is kept as a damaged step (`_v1_top_packed`).
    """
    for statement in (
        # AUTOINCREMENT: a purged conversation's id is never handed out again, so an id held by
        # the window (last open, an undo banner) cannot come to mean another conversation.
        """CREATE TABLE new_conversations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL DEFAULT '',
            title_is_custom INTEGER NOT NULL DEFAULT 0 CHECK (title_is_custom IN (0, 1)),
            system_prompt TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            model_path TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            deleted_at REAL
        )""",
        """CREATE TABLE new_messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            finished INTEGER NOT NULL DEFAULT 1 CHECK (finished IN (0, 1)),
            stop_reason TEXT,
            model TEXT NOT NULL DEFAULT '',
            sampling TEXT NOT NULL DEFAULT '{}',
            timings TEXT NOT NULL DEFAULT '{}',
            UNIQUE (conversation_id, position)
        )""",
        # Append-only while a reply streams: a save point inserts the new rows and touches
        # nothing already written. Clustered on (message_id, idx): a reply reads back in one
        # range scan.
        """CREATE TABLE new_steps (
            message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            token_id INTEGER NOT NULL,
            prob REAL NOT NULL,
            text TEXT NOT NULL,
            piece TEXT NOT NULL,
            top_ids BLOB NOT NULL,
            top_probs BLOB NOT NULL,
            top_texts TEXT NOT NULL,
            PRIMARY KEY (message_id, idx)
        ) WITHOUT ROWID""",
        "INSERT INTO new_conversations (id, title, title_is_custom, system_prompt, model, "
        "created_at, updated_at, deleted_at) SELECT id, title, title_is_custom <> 0, "
        "system_prompt, model, created_at, updated_at, deleted_at FROM conversations",
        "INSERT INTO new_messages (id, conversation_id, position, role, content, created_at, "
        "finished, stop_reason, model, sampling, timings) SELECT id, conversation_id, position, "
        "role, content, created_at, finished <> 0, NULLIF(stop_reason, ''), model, sampling, "
        "timings FROM messages",
    ):
        db.execute(statement)
    rows = db.execute("SELECT message_id, idx, token_id, prob, text, piece, top FROM steps")
    while batch := rows.fetchmany(2000):
        db.executemany(
            "INSERT INTO new_steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*r[:6], *_v1_top_packed(r[6])) for r in batch],
        )
    for statement in (
        "DROP TABLE steps",
        "DROP TABLE messages",
        "DROP TABLE conversations",
        "ALTER TABLE new_conversations RENAME TO conversations",
        "ALTER TABLE new_messages RENAME TO messages",
        "ALTER TABLE new_steps RENAME TO steps",
        "CREATE INDEX conversations_recent ON conversations (updated_at DESC, id DESC)",
    ):
        db.execute(statement)


def _v3(db: sqlite3.Connection) -> None:
    """Branches and imported conversations.

    A message now has a parent (the message before it on its branch; NULL for the first), so a
    reply can have several versions: siblings under one parent, of which the one with `shown`
    set is on screen. A conversation's shown path goes from the shown first message down through
    each shown child; `position` stays the depth in that tree (several messages may share it,
    hence the rebuild: the UNIQUE (conversation_id, position) constraint goes). An existing
    conversation becomes one branch: each message's parent is the one before it by position.

    `imported_at` is when File → Import added the conversation (NULL: made here).
    """
    for statement in (
        """CREATE TABLE new_messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            parent_id INTEGER REFERENCES messages (id) ON DELETE CASCADE,
            shown INTEGER NOT NULL DEFAULT 1 CHECK (shown IN (0, 1)),
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            finished INTEGER NOT NULL DEFAULT 1 CHECK (finished IN (0, 1)),
            stop_reason TEXT,
            model TEXT NOT NULL DEFAULT '',
            sampling TEXT NOT NULL DEFAULT '{}',
            timings TEXT NOT NULL DEFAULT '{}'
        )""",
        # The old UNIQUE (conversation_id, position) index finds each parent in one lookup.
        "INSERT INTO new_messages (id, conversation_id, parent_id, shown, position, role, "
        "content, created_at, finished, stop_reason, model, sampling, timings) SELECT m.id, "
        "m.conversation_id, (SELECT p.id FROM messages p WHERE p.conversation_id = "
        "m.conversation_id AND p.position < m.position ORDER BY p.position DESC LIMIT 1), 1, "
        "m.position, m.role, m.content, m.created_at, m.finished, m.stop_reason, m.model, "
        "m.sampling, m.timings FROM messages m",
        "DROP TABLE messages",
        "ALTER TABLE new_messages RENAME TO messages",
        "CREATE INDEX messages_conversation ON messages (conversation_id, position)",
        # Children of a message (the path walk, and ON DELETE CASCADE of a branch).
        "CREATE INDEX messages_parent ON messages (parent_id, shown, id)",
        "CREATE INDEX messages_roots ON messages (conversation_id, shown, id) "
        "WHERE parent_id IS NULL",
        "ALTER TABLE conversations ADD COLUMN imported_at REAL",
    ):
        db.execute(statement)


# Version 4: a conversation can be pinned to the top of the list (NULL: not pinned). Pinned ones
# are listed first, most recently pinned first; a plain column, so no rebuild.
_V4 = sql_migration("ALTER TABLE conversations ADD COLUMN pinned_at REAL")


# Version 5: speculative decoding's account of a step (was it drafted; the check made there), as
# JSON, NULL for the steps of plain decoding (all steps before this version).
_V5 = sql_migration("ALTER TABLE steps ADD COLUMN draft TEXT")


MIGRATIONS: tuple[Migration, ...] = (_V1, _v2, _v3, _V4, _V5)
"""Migration i brings schema version i to i + 1 (`PRAGMA user_version`). Only ever append."""


class NewerSchemaError(Exception):
    """The database was written by a newer Loopchat."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"schema version {found}, this Loopchat reads up to {known}")
        self.found = found
        self.known = known


def schema_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migration_note(found: int, target: int) -> str:
    """What the log says after `migrate` took a database from version `found` to `target`:
    a brand-new file (version 0) was created at `target`, not "upgraded from v0"; "" if nothing
    changed."""
    if found >= target:
        return ""
    if found == 0:
        return f"conversations database created at v{target}"
    return f"conversations upgraded from v{found} to v{target}"


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the pending migrations in order, all in one transaction; return the old version.

    All or nothing: a failure leaves the file exactly as it was. Foreign keys are off meanwhile
    (a migration may rebuild a table, SQLite's documented way to change a column) and checked
    before the commit. `db` must be in autocommit mode (isolation_level=None).
    """
    found, target = schema_version(db), len(migrations)
    if found > target:
        raise NewerSchemaError(found, target)
    if found == target:
        return found
    db.execute("PRAGMA foreign_keys = OFF")
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in migrations[found:]:
            step(db)
        broken = db.execute("PRAGMA foreign_key_check").fetchone()
        if broken is not None:
            raise sqlite3.IntegrityError(f"foreign key broken in table {broken[0]}")
        db.execute(f"PRAGMA user_version = {target:d}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.execute("PRAGMA foreign_keys = ON")
    return found
