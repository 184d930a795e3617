"""Writing an imported conversation into the database, as a new conversation.

The file is validated before this runs (`export.conversation_from_json`, format v1 and
v2, naming the first bad field); what is left here is mapping the file's message indexes to new
row ids. Kept apart from `conversations` so the store's core holds only what the app does while
chatting; this module never imports `conversations`.
"""

from __future__ import annotations

import sqlite3

from desktop.store.rows import insert_message, insert_steps
from desktop.store.schema import Conversation

__all__ = ["insert_conversation"]


def insert_conversation(db: sqlite3.Connection, conv: Conversation, imported_at: float) -> int:
    """Insert a validated conversation with every message and step; return its new id.

    In `conv`, a message's `parent_id` is the index of its parent in `conv.messages` (parents
    come first), not a row id. The caller runs this in one transaction and retitles the
    conversation when it has no title.
    """
    conv_id = db.execute(
        "INSERT INTO conversations (title, title_is_custom, system_prompt, model, "
        "model_path, created_at, updated_at, imported_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            conv.title,
            int(conv.title_is_custom),
            conv.system_prompt,
            conv.model,
            conv.model_path,
            conv.created_at,
            conv.updated_at,
            imported_at,
        ),
    ).lastrowid
    ids: list[int] = []  # database id of each message in the file, by its index
    for m in conv.messages:
        parent = None if m.parent_id is None else ids[m.parent_id]
        message_id = insert_message(
            db,
            conv_id,
            parent,
            m.position,
            m.role,
            m.content,
            m.created_at,
            finished=m.finished,
            stop_reason=m.stop_reason,
            model=m.model,
            sampling=m.sampling,
            timings=m.timings,
            shown=m.shown,
        )
        ids.append(message_id)
        insert_steps(db, message_id, 0, m.steps)
    return conv_id
