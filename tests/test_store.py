"""The conversation store: CRUD, search, export/import, recovery from bad files, migrations."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from desktop.store import Autosaver, ConversationStore, StoreError


def step(i: int, text: str) -> dict:
    return {
        "index": i,
        "token_id": 100 + i,
        "text": text,
        "piece": text,
        "prob": 0.5,
        "top": [
            {"token_id": 100 + i, "text": text, "prob": 0.5},
            {"token_id": 7, "text": "x", "prob": 0.25},
        ],
    }


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    s = ConversationStore(tmp_path / "c.sqlite3")
    yield s
    s.close()


def add_chat(store: ConversationStore, question: str, answer: str) -> int:
    conv = store.create_conversation("Be brief.", "tiny")
    store.add_message(conv, "user", question)
    reply = store.start_reply(conv, "tiny", {"temperature": 0})
    saver = Autosaver(store, reply, every_steps=2)
    for i, word in enumerate(answer.split(" ")):
        saver.add(step(i, word if i == 0 else " " + word))
    saver.finish(answer, "eos", {"ttft_s": 0.1})
    return conv


def test_roundtrip_and_order(store: ConversationStore) -> None:
    first = add_chat(store, "What is a loop?", "A loop repeats.")
    second = add_chat(store, "And attention?", "It weighs values.")
    listed = store.list_conversations()
    assert [c.id for c in listed] == [second, first]
    conv = store.get_conversation(first)
    assert conv.title == "What is a loop?"
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    reply = conv.messages[1]
    assert reply.content == "A loop repeats."
    assert reply.stop_reason == "eos" and reply.finished
    assert [s["text"] for s in reply.steps] == ["A", " loop", " repeats."]
    assert reply.steps[1]["top"][1] == {"token_id": 7, "text": "x", "prob": 0.25}
    assert reply.timings == {"ttft_s": 0.1}
    assert reply.sampling == {"temperature": 0}


def test_search_rename_delete_undo(store: ConversationStore) -> None:
    a = add_chat(store, "Cats and dogs", "Both are pets.")
    b = add_chat(store, "100% sure_thing", "Fine.")
    assert [c.id for c in store.list_conversations("PETS")] == [a]
    assert [c.id for c in store.list_conversations("100%")] == [b]
    assert [c.id for c in store.list_conversations("e_t")] == [b]
    assert [c.id for c in store.list_conversations("sur_")] == []  # _ is literal, not a wildcard
    assert [c.id for c in store.list_conversations("%")] == [b]
    store.rename(a, "Animals")
    assert store.get_conversation(a).title == "Animals"
    assert [c.id for c in store.list_conversations("animals")] == [a]
    store.delete_conversation(a)
    assert [c.id for c in store.list_conversations()] == [b]
    store.restore_conversation(a)
    assert {c.id for c in store.list_conversations()} == {a, b}
    store.delete_conversation(a)
    assert store.purge_deleted() == 1
    with pytest.raises(StoreError):
        store.get_conversation(a)


def test_truncate_for_edit_and_regenerate(store: ConversationStore) -> None:
    conv = add_chat(store, "one", "two")
    store.add_message(conv, "user", "three")
    store.truncate_from(conv, 1)
    messages = store.get_conversation(conv).messages
    assert [m.content for m in messages] == ["one"]
    # Steps of deleted replies go with them.
    assert store._read("SELECT COUNT(*) FROM steps")[0][0] == 0


def test_export_markdown_and_json_import(store: ConversationStore) -> None:
    conv = add_chat(store, "Explain **bold**", "It is *emphasis*.")
    md = store.export_markdown(conv)
    assert md.startswith("# Explain **bold**")
    assert "Be brief." in md and "## You" in md and "It is *emphasis*." in md
    data = json.loads(json.dumps(store.export_json(conv)))
    copy = store.import_json(data)
    assert copy != conv
    original, imported = store.get_conversation(conv), store.get_conversation(copy)
    assert imported.title == original.title
    assert imported.system_prompt == original.system_prompt
    strip = lambda c: [(m.role, m.content, m.steps, m.sampling, m.timings) for m in c.messages]  # noqa: E731
    assert strip(imported) == strip(original)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"format": "other"},
        {"format": "loopchat-conversation", "version": 99, "messages": []},
        {"format": "loopchat-conversation", "version": 1, "messages": [{"role": "robot"}]},
        {
            "format": "loopchat-conversation",
            "version": 1,
            "messages": [{"role": "user", "content": "x", "steps": [{"index": "a"}]}],
        },
    ],
)
def test_bad_import_is_refused(store: ConversationStore, bad) -> None:
    with pytest.raises(StoreError):
        store.import_json(bad)
    assert store.list_conversations() == []


def test_corrupt_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = ConversationStore(path)
    assert store.recovery_notice and "moved to" in store.recovery_notice
    moved = list(tmp_path.glob("c.sqlite3.unreadable-*"))
    assert len(moved) == 1 and moved[0].read_bytes().startswith(b"this is not")
    assert str(moved[0]) in store.recovery_notice
    add_chat(store, "still works", "yes")
    assert len(store.list_conversations()) == 1


def test_newer_schema_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    store = ConversationStore(path)
    assert "newer Loopchat" in store.recovery_notice
    assert list(tmp_path.glob("c.sqlite3.unreadable-*"))
    assert store.list_conversations() == []


def test_migrations_run_forward_in_order(tmp_path: Path) -> None:
    from desktop.store import MIGRATIONS

    path = tmp_path / "c.sqlite3"
    ConversationStore(path).close()  # schema 1
    added = []

    def v2(db):
        db.execute("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")
        added.append(2)

    store = ConversationStore(path, migrations=[*MIGRATIONS, v2])
    assert added == [2]
    assert store._read("PRAGMA user_version")[0][0] == 2
    assert store.recovery_notice is None
    store.close()
    again = ConversationStore(path, migrations=[*MIGRATIONS, v2])
    assert added == [2]  # not applied twice
    again.close()


def test_last_open_meta(store: ConversationStore) -> None:
    assert store.get_meta("last_open") is None
    store.set_meta("last_open", "3")
    store.set_meta("last_open", "4")
    assert store.get_meta("last_open") == "4"
