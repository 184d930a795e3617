"""Deleted conversations leave the database file (issue 11, item 6: privacy).

A DELETE alone leaves the text in freed pages of the main file and in old page versions in the
-wal; `purge_deleted` must leave no byte of it behind, while the store stays open (as the app
keeps it).
"""

from __future__ import annotations

from pathlib import Path

from desktop.store.autosave import Autosaver
from desktop.store.conversations import ConversationStore
from engine.events import Step, TopToken

SECRET = "zq-private-7731-"


def file_bytes(path: Path) -> bytes:
    return b"".join(
        Path(f"{path}{suffix}").read_bytes()
        for suffix in ("", "-wal", "-shm")
        if Path(f"{path}{suffix}").exists()
    )


def private_chat(store: ConversationStore) -> int:
    conv = store.create_conversation(system_prompt=f"system {SECRET}")
    store.add_message(conv, "user", f"short {SECRET}")
    store.add_message(conv, "assistant", f"long {SECRET} " * 400)  # overflow pages
    store.add_message(conv, "user", f"again {SECRET}")
    saver = Autosaver(store, store.start_reply(conv), max_pending=4)
    for i, piece in enumerate([*SECRET] * 6):  # the reply text is rewritten at every save
        top = [TopToken(i + 10, piece, 0.5), TopToken(3, SECRET, 0.1)]
        saver.add(Step(i, i + 10, piece, piece, 0.5, top))
    saver.finish()
    return conv


def test_purge_removes_the_text_from_the_file_and_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    with ConversationStore(path) as store:
        kept = store.create_conversation()
        store.add_message(kept, "user", "keep this one " * 100)
        gone = private_chat(store)
        assert SECRET.encode() in file_bytes(path)

        store.delete_conversation(gone)
        assert store.purge_deleted() == 1
        assert SECRET.encode() not in file_bytes(path)  # also while the store is open

        assert [c.id for c in store.list_conversations()] == [kept]
        assert store.get_conversation(kept).messages[0].content == "keep this one " * 100
        again = private_chat(store)  # and the store keeps working after the purge
        assert store.get_conversation(again).messages[-1].finished
    with ConversationStore(path) as store:  # later purges (no VACUUM any more) too
        assert SECRET.encode() in file_bytes(path)
        store.delete_conversation(again)
        assert store.purge_deleted() == 1
        assert SECRET.encode() not in file_bytes(path)


def test_a_conversation_still_in_the_undo_window_is_kept(tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "c.sqlite3") as store:
        conv = private_chat(store)
        store.delete_conversation(conv)
        assert store.purge_deleted(older_than_s=60) == 0
        store.restore(conv)
        assert store.get_conversation(conv).system_prompt == f"system {SECRET}"
