"""Faults of the conversation store found by the fault probe of issue 21 (items 2, 6, 7, 11).

Each test builds the situation for real (an old file, two stores on one file, thousands of
versions, ids out of order) and checks what the store does with it. Pure stdlib; no Qt.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from desktop.session import ChatSession
from desktop.store.autosave import Autosaver
from desktop.store.conversations import ConversationStore
from desktop.store.schema import MIGRATIONS, StoreError, migrate
from engine.events import Step, TopToken

# -- item 2: a version 1 file holding what v1's import stored unchecked ------------------------

GOOD_TOP = [{"token_id": 9, "text": "Hi", "prob": 0.75}]
V1_STEPS = [  # (top as v1 stored it, what the step reads back as: top-k list, or None = damaged)
    (json.dumps(GOOD_TOP), [(9, "Hi", 0.75)]),
    ("null", []),  # no top-k was given: nothing to show, nothing lost
    (json.dumps([[9, "Hi", 0.75], [8, "Ho", 0.25]]), [(9, "Hi", 0.75), (8, "Ho", 0.25)]),
    (json.dumps([{"token_id": 9, "text": "Hi", "prob": "0.75"}]), [(9, "Hi", 0.75)]),
    (json.dumps([{"token_id": 9, "prob": 0.75}]), None),  # no text
    (json.dumps([{"token_id": 9, "text": "Hi", "prob": "likely"}]), None),
    (json.dumps([{"token_id": 2**40, "text": "Hi", "prob": 0.5}]), None),  # beyond int32
    (json.dumps([{"token_id": 9, "text": "Hi", "prob": 1e300}]), None),  # beyond float32
    (json.dumps({"token_id": 9}), None),  # not a list
    (json.dumps(["Hi"]), None),
    ("{broken", None),
]


def v1_file(path: Path, tops: list[str]) -> None:
    """A file as the first store wrote it, one reply whose step i has `tops[i]` as its top-k."""
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, MIGRATIONS[:1])
    db.execute("INSERT INTO conversations VALUES (7, 'Old chat', 0, '', 'tiny', 1.0, 2.0, NULL)")
    db.execute("INSERT INTO messages VALUES (3, 7, 0, 'user', 'hello', 1.5, 1, '', '', '{}', '{}')")
    db.execute(
        "INSERT INTO messages VALUES (4, 7, 1, 'assistant', 'Hi', 1.6, 1, 'eos', 'tiny', '{}', "
        "'{}')"
    )
    for i, top in enumerate(tops):
        db.execute("INSERT INTO steps VALUES (4, ?, 9, 'Hi', 'Hi', 0.75, ?)", (i, top))
    db.close()


@pytest.mark.parametrize(("top", "expected"), V1_STEPS)
def test_a_version_1_step_of_any_shape_upgrades_without_a_crash(
    tmp_path: Path, top: str, expected
) -> None:
    """v1's import stored top-k lists unchecked; the upgrade converts what it can and keeps the
    rest as a damaged step (the message says so) instead of aborting every start."""
    path = tmp_path / "c.sqlite3"
    v1_file(path, [json.dumps(GOOD_TOP), top])
    with ConversationStore(path) as s:
        assert s.recovery_notice is None  # upgraded in place, nothing moved aside
        user, reply = s.get_conversation(7).messages
        assert (user.content, reply.content) == ("hello", "Hi")
        if expected is None:
            assert reply.damaged
            assert [step.top for step in reply.steps] == [[TopToken(9, "Hi", 0.75)]]
        else:
            assert not reply.damaged
            expected = [TopToken(*entry) for entry in expected]
            assert [step.top for step in reply.steps] == [[TopToken(9, "Hi", 0.75)], expected]
        s.add_message(7, "user", "the upgraded file takes new messages")


def test_a_migration_that_fails_in_python_moves_the_file_aside_with_a_notice(
    tmp_path: Path,
) -> None:
    """Not only SQL errors: any exception while upgrading (a bug meeting unforeseen data) keeps
    the old file intact, moved aside, and the app starts with a notice saying where it is."""
    path = tmp_path / "c.sqlite3"
    v1_file(path, [json.dumps(GOOD_TOP)])

    def unforeseen(db: sqlite3.Connection) -> None:
        """Fine on a new, empty file; on these data it indexes text as if it were a dict."""
        db.execute("ALTER TABLE conversations ADD COLUMN half INTEGER")
        for (texts,) in db.execute("SELECT top_texts FROM steps"):
            json.loads(texts)[0]["token_id"]

    with ConversationStore(path, migrations=[*MIGRATIONS, unforeseen]) as s:
        assert s.recovery_notice and "could not be upgraded" in s.recovery_notice
        assert s.list_conversations() == []
    (moved,) = [
        p
        for p in tmp_path.glob("c.sqlite3.upgrade-failed-*")
        if not p.name.endswith(("-wal", "-shm"))
    ]
    assert str(moved) in s.recovery_notice
    old = sqlite3.connect(moved)
    assert old.execute("PRAGMA user_version").fetchone()[0] == 1  # exactly as it was
    assert old.execute("SELECT top FROM steps").fetchall() == [(json.dumps(GOOD_TOP),)]
    old.close()


# -- item 6: two instances, one deletes what the other still writes into ----------------------


def test_a_conversation_written_after_its_deletion_elsewhere_is_not_purged(tmp_path: Path) -> None:
    """Instance B saves into a conversation instance A deleted: the write brings it back, so A's
    purge at close cannot take B's messages with it."""
    path = tmp_path / "c.sqlite3"
    with ConversationStore(path) as a, ConversationStore(path) as b:
        conv = a.create_conversation()
        a.add_message(conv, "user", "hello")
        a.delete_conversation(conv)
        b.add_message(conv, "assistant", "B's answer, typed after A deleted it")
        assert a.purge_deleted(0) == 0
        assert [m.content for m in b.get_conversation(conv).messages] == [
            "hello",
            "B's answer, typed after A deleted it",
        ]
        assert [c.id for c in a.list_conversations()] == [conv]


def test_a_reply_streaming_in_another_instance_keeps_its_conversation(tmp_path: Path) -> None:
    """The same for a reply B is streaming (save points only add steps): it survives A's purge."""
    path = tmp_path / "c.sqlite3"
    with ConversationStore(path) as a, ConversationStore(path) as b:
        conv = a.create_conversation()
        a.add_message(conv, "user", "hello")
        reply = b.start_reply(conv)
        a.delete_conversation(conv)
        b.append_steps(reply, [Step(0, 5, "Hi", "", 0.5)], "Hi")
        assert a.purge_deleted(0) == 0
        b.finish_reply(reply, "Hi", "eos")
        assert b.get_conversation(conv).messages[-1].steps == [Step(0, 5, "Hi", "", 0.5)]


def test_an_instance_purges_what_it_deleted_itself(tmp_path: Path) -> None:
    """Deleting a conversation whose reply is still streaming here must still delete it (the
    window keeps saving that reply in the background); and a write that comes after the purge
    is refused with a message, never silently lost."""
    path = tmp_path / "c.sqlite3"
    with ConversationStore(path) as a, ConversationStore(path) as b:
        conv = a.create_conversation()
        a.add_message(conv, "user", "hello")
        saver = Autosaver(a, a.start_reply(conv), max_pending=1)
        a.delete_conversation(conv)
        saver.add(Step(0, 5, "Hi", "", 0.5))
        saver.finish("Hi", "eos")
        assert a.purge_deleted(0) == 1
        with pytest.raises(StoreError, match="no longer exists"):
            b.add_message(conv, "user", "too late")


# -- item 7: thousands of versions of one turn -------------------------------------------------


def versions_export(n: int) -> dict:
    """A conversation whose one reply has `n` versions (built by import: one transaction)."""
    replies = [
        {"parent": 0, "shown": i == n - 1, "role": "assistant", "content": f"v{i}"}
        for i in range(n)
    ]
    return {
        "format": "loopchat-conversation",
        "version": 2,
        "messages": [{"parent": None, "role": "user", "content": "q"}, *replies],
    }


def vm_steps(store: ConversationStore, action) -> int:
    """SQLite virtual-machine instructions `action` runs (counted in hundreds): work done by
    the database, independent of how fast or busy the machine is."""
    ticks = [0]

    def tick() -> int:
        ticks[0] += 1
        return 0

    store._db.set_progress_handler(tick, 100)
    try:
        action()
    finally:
        store._db.set_progress_handler(None, 100)
    return ticks[0]


def test_counting_versions_grows_linearly_with_their_number(tmp_path: Path) -> None:
    """Opening, switching versions (‹ ›) and exporting each read every version's place among
    its siblings; the work must grow about linearly (10x versions → well under 20x work), not
    with the square (100x) as a count per row does."""

    class NoEngine:  # switching versions generates nothing
        def generate(self, request) -> int:
            raise AssertionError("not expected")

        def stop(self) -> None: ...

    work: dict[str, list[int]] = {"open": [], "switch": [], "export": []}
    with ConversationStore(tmp_path / "c.sqlite3") as store:
        for n in (300, 3000):
            conv = store.import_json(versions_export(n))
            session = ChatSession.open(store, NoEngine(), conv)
            assert (session.turns[1].version, session.turns[1].versions) == (n, n)
            work["open"].append(vm_steps(store, lambda c=conv: store.get_conversation(c)))
            work["switch"].append(vm_steps(store, lambda s=session: s.show_version(s.turns[1], 1)))
            assert (session.turns[1].content, session.turns[1].version) == ("v0", 1)
            work["export"].append(vm_steps(store, lambda c=conv: store.export_json(c)))
    for name, (small, large) in work.items():
        assert large < 20 * small, f"{name}: {small} → {large} (x{large / small:.0f})"


# -- item 11: ids that do not grow along a branch ----------------------------------------------


def test_a_branch_whose_ids_go_down_round_trips_through_export(tmp_path: Path) -> None:
    """Imports and merges can give a child a smaller id than its parent; the export must still
    list parents first, so that its own import takes it back as the same conversation."""
    path = tmp_path / "c.sqlite3"
    with ConversationStore(path) as store:
        conv = store.create_conversation(title="Out of order")
        rows = [  # (id, parent, shown, position, role, content)
            (50, None, 1, 0, "user", "first"),
            (10, 50, 0, 1, "assistant", "old reply"),
            (60, 50, 1, 1, "assistant", "new reply"),
            (5, 60, 1, 2, "user", "second"),
            (7, 5, 1, 3, "assistant", "answer"),
        ]
        for r in rows:
            store._db.execute(
                "INSERT INTO messages (id, conversation_id, parent_id, shown, position, role, "
                "content, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 2.0)",
                (r[0], conv, *r[1:]),
            )
        before = store.get_conversation(conv)
        data = json.loads(json.dumps(store.export_json(conv)))
        again = store.get_conversation(store.import_json(data), all_versions=True)

        def tree(c) -> set:
            by_id = {m.id: m for m in c.messages}
            return {
                (
                    m.role,
                    m.content,
                    m.shown,
                    by_id[m.parent_id].content if m.parent_id else None,
                )
                for m in c.messages
            }

        assert tree(again) == tree(store.get_conversation(conv, all_versions=True))
        shown = store.get_conversation(again.id).messages
        assert [m.content for m in shown] == [m.content for m in before.messages]
        assert [(m.version, m.versions) for m in shown] == [
            (m.version, m.versions) for m in before.messages
        ]


@pytest.mark.parametrize(
    ("parents", "says"),
    [
        ([None, 2, 1], "messages[1].parent"),  # a cycle: 1 → 2 → 1
        ([None, 5], "messages[1].parent"),  # there is no message 5
        ([1, 0], "messages[0].parent"),
    ],
)
def test_import_still_refuses_cycles_and_dangling_parents(
    tmp_path: Path, parents: list, says: str
) -> None:
    with ConversationStore(tmp_path / "c.sqlite3") as store:
        data = {
            "format": "loopchat-conversation",
            "version": 2,
            "messages": [{"parent": p, "role": "user", "content": "x"} for p in parents],
        }
        with pytest.raises(StoreError, match=re.escape(f"damaged: {says}")):
            store.import_json(data)
        assert store.list_conversations() == []
