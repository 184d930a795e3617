"""Rows of the conversation database and the records they stand for, both ways.

Reading: the column lists `ConversationStore` selects and the functions that turn those rows
into records. They never raise on a stored value views cannot use (a time of 1e300, broken JSON,
bytes where text belongs): it comes back as a safe default with `damaged=True`, so one bad row
never stops the list or the app from starting.

Writing: the one INSERT for a message and the one for a batch of steps, shared by saving as the
user chats and by import, so both write the same columns the same way.

Plain functions over an `sqlite3.Connection`: no transactions or locking here (the store's
`_write`/`_read` hold those), no Qt, no torch.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from collections.abc import Callable, Sequence
from typing import Any

from desktop.store.export import clean_sampling, clean_timings, valid_time
from desktop.store.schema import (
    Conversation,
    Message,
    pack_draft,
    pack_top,
    unpack_draft,
    unpack_top,
)
from engine.events import Step

CONV_COLUMNS = (
    "id, title, created_at, updated_at, system_prompt, model, model_path, title_is_custom, "
    "deleted_at, imported_at, pinned_at"
)
MSG_COLUMNS = (
    "id, conversation_id, position, role, content, created_at, finished, stop_reason, model, "
    "sampling, timings, parent_id, shown"
)
VERSION_COLUMNS = (
    "ROW_NUMBER() OVER (PARTITION BY m.parent_id ORDER BY m.id), "
    "COUNT(*) OVER (PARTITION BY m.parent_id)"
)
"""Which version a message is among its siblings, oldest first, and how many there are
(`‹ 2/3 ›`), for a query over one conversation's messages (`WHERE conversation_id = ?`: the
first messages, parent NULL, form one partition). Window functions sort once, O(n log n); a
count per row was O(siblings²): 4,000 versions of one turn held the GUI for seconds."""
STEP_COLUMNS = "idx, token_id, prob, text, piece, top_ids, top_probs, top_texts, draft"
"""A step row as `step_from_row` reads it (steps share no column name with messages)."""

DAMAGED_TEXT = "[This message could not be read from the database.]"
"""Shown for a stored message whose text is not text (a damaged row)."""


def _time(value: Any) -> tuple[float, bool]:
    """A stored time views can format; (0.0, True) for one out of range (e.g. 1e300)."""
    return (float(value), False) if valid_time(value) else (0.0, True)


def _text(value: Any, placeholder: str = "") -> tuple[str, bool]:
    """Stored text as (text, damaged): bytes are decoded leniently, anything else is
    `placeholder`, so a damaged row still shows something."""
    if isinstance(value, str):
        return value, False
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace"), True
    return placeholder, True


def _json_dict(text: Any, clean: Callable[[Any], tuple[dict, bool]]) -> tuple[dict, bool]:
    """A stored JSON object, passed through the same `clean` that import uses, as
    (dict, damaged)."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return {}, True
    return clean(value)


def conversation_from_row(row: tuple) -> Conversation:
    """A conversation row as a record; damaged values become safe defaults (`damaged=True`),
    so one bad row never stops the list or the app from starting."""
    title, bad_title = _text(row[1])
    created, bad_created = _time(row[2])
    updated, bad_updated = _time(row[3])
    system_prompt, bad_prompt = _text(row[4])
    model, bad_model = _text(row[5])
    model_path, bad_path = _text(row[6])
    deleted_at = row[8] if row[8] is None else _time(row[8])[0]
    imported_at = row[9] if row[9] is None else _time(row[9])[0]
    pinned_at = row[10] if len(row) < 11 or row[10] is None else _time(row[10])[0]
    return Conversation(
        row[0],
        title,
        created,
        updated,
        system_prompt,
        model,
        model_path,
        title_is_custom=bool(row[7]),
        deleted_at=deleted_at,
        imported_at=imported_at,
        pinned_at=pinned_at,
        damaged=bad_title or bad_created or bad_updated or bad_prompt or bad_model or bad_path,
    )


def message_from_row(row: tuple) -> Message:
    """A message row (`MSG_COLUMNS`, then optionally version and versions) as a record; damaged
    values become safe defaults (`damaged=True`)."""
    content, bad_content = _text(row[4], DAMAGED_TEXT)
    created, bad_created = _time(row[5])
    stop_reason, bad_stop = (None, False) if row[7] is None else _text(row[7])
    model, bad_model = _text(row[8])
    sampling, bad_sampling = _json_dict(row[9], clean_sampling)
    timings, bad_timings = _json_dict(row[10], clean_timings)
    return Message(
        row[0],
        row[1],
        row[2],
        row[3],
        content,
        created,
        finished=bool(row[6]),
        stop_reason=stop_reason,
        model=model,
        sampling=sampling,
        timings=timings,
        damaged=bad_content or bad_created or bad_stop or bad_model or bad_sampling or bad_timings,
        parent_id=row[11],
        shown=bool(row[12]),
        version=row[13] if len(row) > 13 else 1,
        versions=row[14] if len(row) > 14 else 1,
    )


def step_from_row(r: tuple) -> Step | None:
    """(idx, token_id, prob, text, piece, top_ids, top_probs, top_texts, draft) as the engine's
    `Step` it was saved from (timing and request id left out), or None when the row cannot be
    read."""
    try:
        top = unpack_top(r[5], r[6], r[7])
        if not (isinstance(r[3], str) and isinstance(r[4], str)):
            return None
        drafted, check = unpack_draft(r[8] if len(r) > 8 else None)
        return Step(
            int(r[0]), int(r[1]), r[3], r[4], float(r[2]), top, drafted=drafted, check=check
        )
    except (TypeError, ValueError, struct.error, RecursionError):
        return None


def insert_message(
    db: sqlite3.Connection,
    conversation_id: int,
    parent_id: int | None,
    position: int,
    role: str,
    content: str,
    created_at: float,
    *,
    finished: bool,
    stop_reason: str | None,
    model: str,
    sampling: dict,
    timings: dict,
    shown: bool = True,
) -> int:
    """Insert one message row; return its id. The caller checks the parent and marks siblings."""
    return db.execute(
        "INSERT INTO messages (conversation_id, parent_id, shown, position, role, content, "
        "created_at, finished, stop_reason, model, sampling, timings) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            conversation_id,
            parent_id,
            int(shown),
            position,
            role,
            content,
            created_at,
            int(finished),
            stop_reason,
            model,
            json.dumps(sampling),
            json.dumps(timings),
        ),
    ).lastrowid


def insert_steps(
    db: sqlite3.Connection, message_id: int, start: int, records: Sequence[Step]
) -> None:
    """Insert `records` as a message's steps `start`, `start + 1`, … (top-k packed)."""
    db.executemany(
        "INSERT INTO steps (message_id, idx, token_id, prob, text, piece, top_ids, "
        "top_probs, top_texts, draft) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                message_id,
                start + i,
                s.token_id,
                s.prob,
                s.text,
                s.piece,
                *pack_top(s.top),
                pack_draft(s),
            )
            for i, s in enumerate(records)
        ],
    )
