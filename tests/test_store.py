"""The conversation store: CRUD, search, titles, delete/undo, truncation, export/import, autosave,
recovery from bad files and the migration runner. Pure stdlib; the whole file runs in seconds."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import platformdirs
import pytest

from desktop.store.autosave import Autosaver
from desktop.store.connection import default_path
from desktop.store.conversations import ConversationStore
from desktop.store.export import read_export
from desktop.store.messages import make_title
from desktop.store.schema import MIGRATIONS, StoreError, migrate, pack_top
from engine.events import Step, TopToken

ROOT = Path(__file__).resolve().parents[1]


def step(i: int, text: str) -> Step:
    """Step `i` as a store reads it back; its numbers are exact in float32 (as the engine's are)."""
    return Step(
        index=i,
        token_id=100 + i,
        text=text,
        piece=text.replace(" ", "▁"),
        prob=0.5,
        top=[
            TopToken(100 + i, text.strip() or "·", 0.5),
            TopToken(7, "x", 0.25),
            TopToken(8, "<0xE2>", 0.125),
        ],
    )


@pytest.fixture
def store(tmp_path: Path):
    s = ConversationStore(tmp_path / "c.sqlite3")
    yield s
    s.close()


def chat(store: ConversationStore, question: str, answer: str, system: str = "Be brief.") -> int:
    """A conversation with one question and a streamed, finished answer."""
    conv = store.create_conversation(system, "tiny", model_path="/models/tiny")
    store.add_message(conv, "user", question)
    reply = store.start_reply(conv, "tiny", {"temperature": 0.0, "top_k": 40, "seed": None})
    saver = Autosaver(store, reply, max_pending=2)
    for i, word in enumerate(answer.split(" ")):
        saver.add(step(i, word if i == 0 else " " + word))
    saver.finish(answer, "eos", {"prompt_tokens": 12, "ttft_s": 0.25, "decode_tokens_per_s": 40.0})
    return conv


def ids(conversations) -> list[int]:
    return [c.id for c in conversations]


# -- basics ------------------------------------------------------------------------------------


def test_conversation_reads_back_with_messages_and_steps(store: ConversationStore) -> None:
    conv_id = chat(store, "What is a loop?", "A loop repeats.")
    conv = store.get_conversation(conv_id)
    assert (conv.title, conv.system_prompt, conv.model, conv.model_path) == (
        "What is a loop?",
        "Be brief.",
        "tiny",
        "/models/tiny",
    )
    assert not conv.title_is_custom and conv.deleted_at is None
    user, reply = conv.messages
    assert (user.role, user.content, user.position, user.finished) == (
        "user",
        "What is a loop?",
        0,
        True,
    )
    assert (reply.role, reply.position, reply.model) == ("assistant", 1, "tiny")
    assert reply.content == "A loop repeats." and reply.finished and reply.stop_reason == "eos"
    assert reply.sampling == {"temperature": 0.0, "top_k": 40, "seed": None}
    assert reply.timings == {"prompt_tokens": 12, "ttft_s": 0.25, "decode_tokens_per_s": 40.0}
    assert reply.steps == [step(0, "A"), step(1, " loop"), step(2, " repeats.")]
    assert [s.index for s in reply.steps] == [0, 1, 2]
    assert reply.token_ids == [100, 101, 102]
    # Stored steps are the engine's own records, as the views get them live.
    assert reply.steps[1].top[1] == TopToken(7, "x", 0.25)
    assert reply.steps[1].piece == "▁loop" and reply.steps[1].index == 1


def test_streamed_steps_read_back_numbered_by_arrival(store: ConversationStore) -> None:
    """The engine's steps are saved as they stream; read back, each is numbered by its place in
    the reply (whatever index it streamed with) and has no timing or request id."""
    conv = store.create_conversation()
    reply = store.start_reply(conv)
    streamed = [
        Step(7, 5, "a", "a", 0.75, [TopToken(5, "a", 0.75)], elapsed_s=0.1, request_id=3),
        Step(8, 6, "", "<0xE2>", 0.5, [TopToken(6, "<0xE2>", 0.5)], elapsed_s=0.2, request_id=3),
    ]
    store.append_steps(reply, [*streamed, step(2, "€")], "a€")
    saved = store.get_steps(reply)
    assert saved == [
        Step(0, 5, "a", "a", 0.75, [TopToken(5, "a", 0.75)]),
        Step(1, 6, "", "<0xE2>", 0.5, [TopToken(6, "<0xE2>", 0.5)]),
        step(2, "€"),
    ]
    assert store.get_conversation(conv).messages[0].content == "a€"


def test_pragmas_are_set_for_crash_safety(store: ConversationStore) -> None:
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_errors_for_missing_things(store: ConversationStore) -> None:
    with pytest.raises(StoreError, match="no longer exists"):
        store.get_conversation(12345)
    with pytest.raises(StoreError, match="no longer exists"):
        store.add_message(12345, "user", "hi")
    conv = store.create_conversation()
    with pytest.raises(ValueError):
        store.add_message(conv, "robot", "beep")
    reply = store.start_reply(conv)
    store.finish_reply(reply, "done", "eos")
    with pytest.raises(StoreError, match="already finished"):
        store.append_steps(reply, [step(0, "x")], "x")
    with pytest.raises(StoreError, match="no longer exists"):
        store.append_steps(999, [step(0, "x")], "x")


# -- listing, search, titles -------------------------------------------------------------------


def test_list_is_newest_activity_first(store: ConversationStore) -> None:
    a = chat(store, "first", "one")
    b = chat(store, "second", "two")
    c = store.create_conversation()
    assert ids(store.list_conversations()) == [c, b, a]
    store.add_message(a, "user", "back to the first")
    assert ids(store.list_conversations()) == [a, c, b]
    assert store.list_conversations()[0].messages == []  # listings stay light


def test_search_matches_titles_messages_and_system_prompt(store: ConversationStore) -> None:
    cats = chat(store, "Cats and dogs", "Both are PETS.")
    percent = chat(store, "100% sure_thing", "Fine.")
    german = chat(store, "Über Ärger", "Straße", system="Antworte auf Deutsch.")
    store.rename(cats, "Animals")
    assert ids(store.list_conversations("pets")) == [cats]  # reply text, any case
    assert ids(store.list_conversations("  ANIMALS ")) == [cats]  # custom title, trimmed
    assert ids(store.list_conversations("dogs")) == [cats]  # question text
    assert ids(store.list_conversations("deutsch")) == [german]  # system prompt
    assert ids(store.list_conversations("ärger")) == [german]  # non-ASCII case folding
    assert ids(store.list_conversations("STRASSE")) == [german]  # full Unicode case folding
    assert ids(store.list_conversations("100%")) == [percent]
    assert ids(store.list_conversations("%")) == [percent]  # literal, not "anything"
    assert ids(store.list_conversations("e_t")) == [percent]
    assert ids(store.list_conversations("sur_")) == []  # _ is literal, not one character
    assert ids(store.list_conversations("_")) == [percent]
    assert ids(store.list_conversations("nowhere")) == []
    assert len(store.list_conversations("")) == 3
    store.delete_conversation(cats)
    assert store.list_conversations("pets") == []


def test_titles_come_from_the_first_user_message(store: ConversationStore) -> None:
    long = "Explain   how the loop attention\nwalks the cache " + "in blocks " * 10
    conv = store.create_conversation()
    assert store.get_conversation(conv).title == ""
    store.add_message(conv, "user", long)
    title = store.get_conversation(conv).title
    assert len(title) <= 60 and title.endswith("…") and "\n" not in title
    assert title.startswith("Explain how the loop attention walks the cache in")
    store.add_message(conv, "user", "a later question")
    assert store.get_conversation(conv).title == title
    store.rename(conv, "  My   loops ")
    assert store.get_conversation(conv).title == "My loops"
    assert store.get_conversation(conv).title_is_custom
    store.truncate_after(conv, -1)
    store.add_message(conv, "user", "new start")
    assert store.get_conversation(conv).title == "My loops"  # the user's title stays
    store.rename(conv, "")  # back to automatic
    assert store.get_conversation(conv).title == "new start"
    assert make_title("short") == "short"
    assert make_title("x" * 100) == "x" * 59 + "…"


# -- delete, undo, truncate, last open ---------------------------------------------------------


def count(store: ConversationStore, table: str) -> int:
    return store._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_delete_undo_and_purge(store: ConversationStore) -> None:
    a = chat(store, "keep me", "ok")
    b = chat(store, "delete me", "ok then")
    store.delete_conversation(b)
    assert ids(store.list_conversations()) == [a]
    with pytest.raises(StoreError):
        store.get_conversation(b)
    assert store.get_conversation(b, include_deleted=True).messages  # still there for undo
    store.restore(b)
    assert ids(store.list_conversations()) == [b, a]
    store.delete_conversation(b)
    assert store.purge_deleted(older_than_s=3600) == 0  # deleted just now: kept
    assert store.purge_deleted() == 1
    store.restore(b)  # too late: nothing to restore
    assert ids(store.list_conversations()) == [a]
    assert count(store, "messages") == 2 and count(store, "steps") == 1
    assert store.create_conversation() > b  # a purged id is never reused


def test_truncate_after_for_edit_and_regenerate(store: ConversationStore) -> None:
    conv = chat(store, "one", "two")
    store.add_message(conv, "user", "three")
    reply = store.start_reply(conv)
    store.append_steps(reply, [step(0, "four")], "four")
    assert store.truncate_after(conv, 1) == 2  # regenerate from the 2nd message on
    messages = store.get_conversation(conv).messages
    assert [m.content for m in messages] == ["one", "two"]
    assert count(store, "steps") == 1  # the removed reply's steps went with it
    store.add_message(conv, "user", "three again")
    assert [m.position for m in store.get_conversation(conv).messages] == [0, 1, 2]
    # Edit the first message: everything goes, and the title follows the new first message.
    store.truncate_after(conv, -1)
    assert store.get_conversation(conv).messages == []
    assert store.get_conversation(conv).title == ""
    store.add_message(conv, "user", "edited one")
    conv_now = store.get_conversation(conv)
    assert conv_now.title == "edited one" and conv_now.messages[0].position == 0
    assert store.truncate_from(conv, 0) == 1  # old name: delete from a position on


def test_versions_branch_show_and_truncate(store: ConversationStore) -> None:
    """Replies with versions: the shown path, switching, deleting one, truncating after a turn."""
    conv = chat(store, "question", "first answer")
    user, first = store.get_conversation(conv).messages
    second = store.start_reply(conv, "tiny", parent_id=user.id)
    store.finish_reply(second, "second answer", "eos")
    follow_up = store.add_message(conv, "user", "and?")  # after the shown (second) version
    shown = store.get_conversation(conv).messages
    assert [m.id for m in shown] == [user.id, second, follow_up]
    assert [(m.version, m.versions) for m in shown] == [(1, 1), (2, 2), (1, 1)]
    assert store.versions_of(first.id) == [first.id, second]

    store.show_version(first.id)  # the follow-up belongs to the other version
    assert [m.content for m in store.get_conversation(conv).messages] == [
        "question",
        "first answer",
    ]
    store.show_version(second)  # back, with what followed it
    assert [m.id for m in store.get_conversation(conv).messages] == [user.id, second, follow_up]
    with ConversationStore(store.path) as reopened:  # the choice is saved
        assert [m.id for m in reopened.get_conversation(conv).messages][-1] == follow_up

    assert store.delete_message(second) == 2  # a version and what followed it
    assert [m.id for m in store.get_conversation(conv).messages] == [user.id, first.id]
    third = store.start_reply(conv, parent_id=user.id)
    assert store.truncate_after(conv, 0) == 2  # every version of the reply goes
    assert count(store, "messages") == 1 and count(store, "steps") == 0
    with pytest.raises(StoreError, match="no longer exists"):
        store.show_version(third)
    with pytest.raises(StoreError, match="follows no longer exists"):
        store.add_message(conv, "user", "x", parent_id=third)


def test_last_open(store: ConversationStore) -> None:
    assert store.get_last_open() is None
    a, b = store.create_conversation(), store.create_conversation()
    store.set_last_open(a)
    store.set_last_open(b)
    assert store.get_last_open() == b
    store.delete_conversation(b)
    assert store.get_last_open() is None  # never reopen a deleted conversation
    store.restore(b)
    assert store.get_last_open() == b
    store.set_last_open(None)
    assert store.get_last_open() is None
    store.set_meta("sidebar", "collapsed")
    assert store.get_meta("sidebar") == "collapsed" and store.get_meta("nope", "x") == "x"


# -- export / import ---------------------------------------------------------------------------


def test_export_markdown_is_readable(store: ConversationStore) -> None:
    conv = chat(store, "Explain **bold**", "It is *emphasis*.")
    store.add_message(conv, "user", "Go on")
    cut = store.start_reply(conv, "tiny", {"temperature": 0.7})
    store.finish_reply(cut, "It is also", "max_tokens", {"generated_tokens": 3})
    store.add_message(conv, "user", "And?")
    store.start_reply(conv, "other-model")  # interrupted: never finished
    md = store.export_markdown(conv)
    assert md.startswith("# Explain **bold**\n")
    assert "- Model: tiny (`/models/tiny`)" in md
    assert "## System prompt\n\nBe brief.\n" in md
    assert md.index("## You") < md.index("It is *emphasis*.") < md.index("Go on")
    assert "temperature 0.0 · top_k 40 · 40.0 tok/s · first token after 0.25 s" in md
    assert "temperature 0.7 · 3 tokens · stopped: max tokens" in md
    assert "## Assistant (other-model)" in md and "interrupted" in md


def comparable(conv) -> tuple:
    """A conversation without its database ids."""
    return (
        conv.title,
        conv.title_is_custom,
        conv.system_prompt,
        conv.model,
        conv.model_path,
        conv.created_at,
        conv.updated_at,
        [
            (
                m.position,
                m.role,
                m.content,
                m.created_at,
                m.finished,
                m.stop_reason,
                m.model,
                m.sampling,
                m.timings,
                m.steps,
            )
            for m in conv.messages
        ],
    )


def test_json_export_reimports_to_an_equal_conversation(store: ConversationStore) -> None:
    conv = chat(store, "Ünïcode ✓ and “quotes”", "Fine 👍 thanks")
    store.rename(conv, "Custom title")
    store.add_message(conv, "user", "more?")
    store.start_reply(conv, "tiny", {"temperature": 1.0})  # an interrupted reply exports too
    exported = store.export_json(conv)
    assert exported["format"] == "loopchat-conversation" and exported["version"] == 2
    assert exported["messages"][1]["steps"][1] == {
        "token_id": 101,
        "text": " 👍",
        "piece": "▁👍",
        "prob": 0.5,
        "top": [
            {"token_id": 101, "text": "👍", "prob": 0.5},
            {"token_id": 7, "text": "x", "prob": 0.25},
            {"token_id": 8, "text": "<0xE2>", "prob": 0.125},
        ],
    }
    copy = store.import_json(json.loads(json.dumps(exported)))
    assert copy != conv
    assert comparable(store.get_conversation(copy)) == comparable(store.get_conversation(conv))
    again = store.export_json(copy)
    assert {**again, "exported_at": None} == {**exported, "exported_at": None}


def test_import_accepts_a_minimal_hand_written_file(store: ConversationStore) -> None:
    conv = store.import_json(
        {
            "format": "loopchat-conversation",
            "version": 1,
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
            ],
            "unknown_future_field": True,
        }
    )
    loaded = store.get_conversation(conv)
    assert loaded.title == "hello"
    assert [(m.role, m.content, m.finished, m.steps) for m in loaded.messages] == [
        ("user", "hello", True, []),
        ("assistant", "hi", True, []),
    ]


GOOD_STEP = {"token_id": 1, "text": "a", "prob": 0.5, "top": []}


def export_with(message: dict | None = None, **top) -> dict:
    data = {"format": "loopchat-conversation", "version": 1, "messages": []}
    if message is not None:
        data["messages"] = [message]
    return {**data, **top}


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (None, "not a Loopchat conversation export"),
        ([1, 2], "not a Loopchat conversation export"),
        ({"format": "something else"}, "not a Loopchat conversation export"),
        (export_with(version=99), "newer Loopchat"),
        (export_with(version="1"), "version should be an integer"),
        ({"format": "loopchat-conversation", "version": 1}, "messages is missing"),
        (export_with(messages="hi"), "messages should be a list"),
        (export_with({"role": "robot", "content": "x"}), "messages[0].role should be"),
        (export_with({"role": "user"}), "messages[0].content is missing"),
        (export_with({"role": "user", "content": 5}), "messages[0].content should be text"),
        (export_with(title=["x"]), "title should be text"),
        (
            export_with(
                {"role": "user", "content": "x", "steps": [{**GOOD_STEP, "token_id": "a"}]}
            ),
            "messages[0].steps[0].token_id should be a token id",
        ),
        (
            export_with({"role": "user", "content": "x", "steps": [{**GOOD_STEP, "prob": 2}]}),
            "messages[0].steps[0].prob should be a probability",
        ),
        (
            export_with(
                {"role": "user", "content": "x", "steps": [{**GOOD_STEP, "top": [[1, "a", 0.5]]}]}
            ),
            "messages[0].steps[0].top[0] should be an object",
        ),
        (
            export_with(
                {"role": "user", "content": "x", "steps": [{**GOOD_STEP, "token_id": 2**40}]}
            ),
            "token_id should be a token id",
        ),
        (export_with({"role": "user", "content": "x", "sampling": None}), "sampling should be"),
        (export_with(created_at=float("nan")), "created_at should be a time"),
        (
            export_with({"role": "user", "content": "x", "parent": 0}),
            "messages[0].parent should be the index of an earlier message",
        ),
        (
            export_with(
                messages=[
                    {"role": "user", "content": "x"},
                    {"role": "user", "content": "y", "parent": "0"},
                ]
            ),
            "messages[1].parent should be an integer or null",
        ),
    ],
)
def test_bad_import_raises_a_clear_store_error(store: ConversationStore, bad, says: str) -> None:
    with pytest.raises(StoreError) as caught:
        store.import_json(bad)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message and len(message) < 300  # fits a dialog
    assert store.list_conversations() == []  # nothing half-imported


def test_read_export_reports_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(StoreError, match="bad.json is not valid JSON"):
        read_export(bad)
    with pytest.raises(StoreError, match="Could not read missing.json"):
        read_export(tmp_path / "missing.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(export_with()), encoding="utf-8")
    assert read_export(good)["format"] == "loopchat-conversation"


# -- autosave ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def saved_steps(store: ConversationStore, message_id: int) -> int:
    return len(store.get_steps(message_id))


def test_autosaver_saves_every_32_steps_or_every_second(store: ConversationStore) -> None:
    conv = store.create_conversation()
    store.add_message(conv, "user", "go")
    reply = store.start_reply(conv)
    clock = FakeClock()
    saver = Autosaver(store, reply, clock=clock)
    flushed = [saver.add(step(i, f" t{i}")) for i in range(40)]
    assert flushed.count(True) == 1 and flushed[31] is True  # the 32nd step saved 32
    assert saved_steps(store, reply) == 32 and saver.pending == 8
    clock.now += 0.5
    assert not saver.add(step(40, " t40"))
    clock.now += 0.5  # one second since the last save: the next step saves everything
    assert saver.add(step(41, " t41"))
    assert saved_steps(store, reply) == 42 and saver.saved_steps == 42
    reopened = store.get_conversation(conv).messages[1]
    assert reopened.content == "".join(f" t{i}" for i in range(42)) and not reopened.finished
    saver.add(step(42, " t42"))
    clock.now += 2.0
    assert saver.flush_if_due()  # a stall: a timer can save without a new step
    saver.add(step(43, " end"))
    saver.finish(stop_reason="cancelled", timings={"ttft_s": 0.5})
    saver.finish(stop_reason="eos")  # a second finish changes nothing
    reply_now = store.get_conversation(conv).messages[1]
    assert len(reply_now.steps) == 44 and reply_now.finished
    assert reply_now.stop_reason == "cancelled" and reply_now.timings == {"ttft_s": 0.5}
    assert reply_now.content.endswith(" t42 end")


def test_autosaver_keeps_steps_when_a_save_fails(store: ConversationStore, monkeypatch) -> None:
    conv = store.create_conversation()
    reply = store.start_reply(conv)
    saver = Autosaver(store, reply, max_pending=2)
    real = store.append_steps
    failures = iter([True])

    def flaky(*args, **kwargs):
        if next(failures, False):
            raise StoreError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "append_steps", flaky)
    saver.add(step(0, "a"))
    with pytest.raises(StoreError):
        saver.add(step(1, "b"))
    assert saver.pending == 2 and saver.saved_steps == 0
    saver.add(step(2, "c"))  # backing off: kept, not tried at once
    assert saver.pending == 3 and saver.last_error is not None
    assert saver.flush() == 3  # an explicit retry writes them all
    assert [s.text for s in store.get_steps(reply)] == ["a", "b", "c"]


# -- threads -----------------------------------------------------------------------------------


def test_gui_and_worker_threads_share_one_store(store: ConversationStore) -> None:
    conv = store.create_conversation()
    reply = store.start_reply(conv)
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            saver = Autosaver(store, reply, max_pending=5)
            for i in range(300):
                saver.add(step(i, "x"))
            saver.finish()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=stream)
    worker.start()
    for i in range(30):  # the GUI thread keeps working meanwhile
        other = store.create_conversation(title=f"c{i}")
        store.add_message(other, "user", "hello")
        store.list_conversations("hello")
        store.get_conversation(conv)
    worker.join()
    assert errors == []
    assert [s.index for s in store.get_steps(reply)] == list(range(300))
    assert len(store.list_conversations()) == 31


def test_backup_is_a_complete_database(store: ConversationStore, tmp_path: Path) -> None:
    conv = chat(store, "back me up", "done")
    copy = store.backup_to(tmp_path / "backup.sqlite3")
    with ConversationStore(copy) as restored:
        assert restored.recovery_notice is None
        assert comparable(restored.get_conversation(conv)) == comparable(
            store.get_conversation(conv)
        )
    with pytest.raises(StoreError, match="already exists"):
        store.backup_to(copy)


# -- where the file lives, and what the module imports ----------------------------------------


def test_default_path_is_the_user_data_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LOOPCHAT_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # keep the real one untouched
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = Path(platformdirs.user_data_dir("Loopchat", "Loopchat")) / "conversations.sqlite3"
    assert default_path() == expected
    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "portable"))
    assert default_path() == tmp_path / "portable" / "data" / "conversations.sqlite3"
    with ConversationStore() as s:
        assert s.path == default_path() and s.path.exists()


def test_store_imports_neither_qt_nor_torch() -> None:
    code = (
        "import sys, desktop.store.autosave, desktop.store.conversations, desktop.store.export; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'torch')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# -- recovery ----------------------------------------------------------------------------------


def moved_aside(folder: Path, label: str) -> Path:
    (moved,) = [
        p for p in folder.glob(f"c.sqlite3.{label}-*") if not p.name.endswith(("-wal", "-shm"))
    ]
    return moved


def test_garbage_file_is_moved_aside_with_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not a database" * 200)
    Path(f"{path}-wal").write_bytes(b"wal garbage")
    with ConversationStore(path) as s:
        moved = moved_aside(tmp_path, "unreadable")
        assert moved.read_bytes().startswith(b"this is not a database")
        assert Path(f"{moved}-wal").read_bytes() == b"wal garbage"  # kept beside it
        assert s.recovery_notice and str(moved) in s.recovery_notice
        assert "moved to" in s.recovery_notice and "nothing was deleted" in s.recovery_notice
        chat(s, "still works", "yes")
        assert len(s.list_conversations()) == 1
        notice = s.recovery_notice
    with ConversationStore(path) as again:  # the fresh file is fine next time ...
        assert len(again.list_conversations()) == 1
        # ... and the notice is repeated at every start until the user dismisses it
        assert again.recovery_notice == again.moved_aside_notice() == notice
        again.dismiss_moved_aside_notice()
        assert again.moved_aside_notice() is None
    with ConversationStore(path) as third:
        assert third.recovery_notice is None and third.moved_aside_notice() is None


def test_damaged_pages_are_detected_and_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    with ConversationStore(path) as s:
        for i in range(12):
            chat(s, f"question {i} " + "padding " * 2000, "answer")
    size = path.stat().st_size
    assert size > 40 * 4096
    with open(path, "r+b") as f:  # scribble over pages in the middle (page 1, the header, is kept)
        f.seek(4096 * 5)
        f.write(os.urandom(4096 * 20))
    with ConversationStore(path) as s:
        assert s.recovery_notice and "could not be opened: it is damaged" in s.recovery_notice
        assert "\n" not in s.recovery_notice
        assert moved_aside(tmp_path, "unreadable").stat().st_size == size
        assert s.list_conversations() == []


def test_newer_schema_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE from_the_future (x)")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with ConversationStore(path) as s:
        moved = moved_aside(tmp_path, "newer-version")
        assert s.recovery_notice and "newer version of Loopchat" in s.recovery_notice
        assert str(moved) in s.recovery_notice
        assert s.list_conversations() == []
    old = sqlite3.connect(moved)
    assert old.execute("PRAGMA user_version").fetchone()[0] == 99  # untouched
    old.close()


def test_a_locked_database_is_reported_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, MIGRATIONS[:1])  # an old file that needs upgrading ...
    db.execute("BEGIN IMMEDIATE")  # ... while another program writes to it
    try:
        with pytest.raises(StoreError, match="in use by another program"):
            ConversationStore(path, busy_timeout_s=0.05)
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert not list(tmp_path.glob("c.sqlite3.*-*"))


def test_unwritable_folder_gives_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="Cannot create the folder"):
        ConversationStore(blocker / "sub" / "c.sqlite3")


# -- migrations --------------------------------------------------------------------------------


def test_version_1_database_is_upgraded_with_its_data(tmp_path: Path) -> None:
    """A file written by the first store (JSON top-k, no model path) opens with everything."""
    path = tmp_path / "c.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, MIGRATIONS[:1])
    db.execute("INSERT INTO conversations VALUES (7, 'Old chat', 0, 'sys', 'tiny', 1.0, 2.0, NULL)")
    db.execute("INSERT INTO messages VALUES (3, 7, 0, 'user', 'hello', 1.5, 1, '', '', '{}', '{}')")
    db.execute(
        "INSERT INTO messages VALUES (4, 7, 1, 'assistant', 'Hi', 1.6, 0, '', 'tiny', "
        "'{\"temperature\": 0.7}', '{}')"
    )
    top = [{"token_id": 9, "text": "Hi", "prob": 0.75}, {"token_id": 8, "text": "Ho", "prob": 0.25}]
    db.execute("INSERT INTO steps VALUES (4, 0, 9, 'Hi', 'Hi', 0.75, ?)", (json.dumps(top),))
    db.execute("INSERT INTO meta VALUES ('last_open', '7')")
    db.close()

    with ConversationStore(path) as s:
        assert s.recovery_notice is None
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 5
        assert s._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert s._db.execute("PRAGMA foreign_key_check").fetchall() == []
        conv = s.get_conversation(7)
        assert (conv.title, conv.system_prompt, conv.model, conv.model_path) == (
            "Old chat",
            "sys",
            "tiny",
            "",
        )
        user, reply = conv.messages
        assert (user.content, user.stop_reason) == ("hello", None)
        assert (reply.content, reply.finished, reply.sampling) == (
            "Hi",
            False,
            {"temperature": 0.7},
        )
        assert reply.steps == [
            Step(0, 9, "Hi", "Hi", 0.75, [TopToken(9, "Hi", 0.75), TopToken(8, "Ho", 0.25)])
        ]
        assert s.get_last_open() == 7
        s.add_message(7, "system", "a system note")  # the new schema's role works
        s.delete_conversation(7)
        assert s.purge_deleted() == 1 and count(s, "steps") == 0  # cascades survive the rebuild


def test_version_2_database_is_upgraded_to_branches_with_every_message(tmp_path: Path) -> None:
    """A file of Loopchat before branches (v2: one line of messages per conversation) opens with
    every message, step and reply as it was: each conversation becomes a single branch."""
    path = tmp_path / "c.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, MIGRATIONS[:2])
    db.execute("INSERT INTO conversations VALUES (5, 'Two', 0, '', 'tiny', '', 1.0, 9.0, NULL)")
    db.execute(
        "INSERT INTO conversations VALUES (6, 'One', 1, 'sys', 'tiny', '/m', 1.0, 8.0, NULL)"
    )
    rows = [  # (id, conversation, position, role, content); position 3 missing (an old import)
        (10, 5, 0, "user", "first"),
        (11, 5, 1, "assistant", "reply one"),
        (12, 5, 2, "user", "second"),
        (13, 5, 4, "assistant", "reply two"),
        (20, 6, 0, "user", "only"),
    ]
    for r in rows:
        db.execute(
            "INSERT INTO messages (id, conversation_id, position, role, content, created_at) "
            "VALUES (?, ?, ?, ?, ?, 2.0)",
            r,
        )
    ids_blob, probs_blob, texts = pack_top([TopToken(9, "re", 0.75), TopToken(8, "ra", 0.25)])
    db.execute(
        "INSERT INTO steps VALUES (13, 0, 9, 0.75, 're', 're', ?, ?, ?)",
        (ids_blob, probs_blob, texts),
    )
    db.close()

    with ConversationStore(path) as s:
        assert s.recovery_notice is None
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 5
        assert s._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert s._db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert count(s, "messages") == 5 and count(s, "steps") == 1
        conv = s.get_conversation(5)
        assert [(m.id, m.role, m.content, m.position) for m in conv.messages] == [
            (10, "user", "first", 0),
            (11, "assistant", "reply one", 1),
            (12, "user", "second", 2),
            (13, "assistant", "reply two", 4),
        ]
        assert [m.parent_id for m in conv.messages] == [None, 10, 11, 12]
        assert all((m.version, m.versions, m.shown) == (1, 1, True) for m in conv.messages)
        assert conv.messages[-1].steps == [
            Step(0, 9, "re", "re", 0.75, [TopToken(9, "re", 0.75), TopToken(8, "ra", 0.25)])
        ]
        assert conv.imported_at is None
        assert [m.content for m in s.get_conversation(6).messages] == ["only"]
        # The upgraded file takes branches: a new version of the last reply, shown at once.
        again = s.start_reply(5, "tiny", parent_id=12)
        assert [m.id for m in s.get_conversation(5).messages] == [10, 11, 12, again]
        assert s.get_conversation(5).messages[-1].versions == 2
        s.show_version(13)
        assert s.get_conversation(5).messages[-1].content == "reply two"
        s.delete_conversation(5)
        assert s.purge_deleted() == 1 and count(s, "steps") == 0 and count(s, "messages") == 1


def test_appending_a_migration_is_all_it_takes(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    with ConversationStore(path) as s:
        chat(s, "hello", "world")
    applied = []

    def pinned(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")
        applied.append(len(MIGRATIONS) + 1)

    with ConversationStore(path, migrations=[*MIGRATIONS, pinned]) as s:
        assert applied == [len(MIGRATIONS) + 1] and s.recovery_notice is None
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
        assert s._db.execute("SELECT title, pinned FROM conversations").fetchall() == [("hello", 0)]
    with ConversationStore(path, migrations=[*MIGRATIONS, pinned]):
        assert applied == [len(MIGRATIONS) + 1]  # never applied twice


def test_migrations_apply_in_order_in_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    order = []

    def record(n: int):
        return lambda db: order.append(n)

    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, [record(1), record(2), record(3)]) == 0
    assert order == [1, 2, 3]
    db.execute("PRAGMA user_version = 1")
    order.clear()
    assert migrate(db, [record(1), record(2), record(3)]) == 1
    assert order == [2, 3]  # only the pending ones

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise sqlite3.OperationalError("bug in migration")

    with pytest.raises(sqlite3.OperationalError):
        migrate(db, [record(1), record(2), record(3), broken])
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None
    db.close()


def test_a_failed_upgrade_keeps_the_old_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    with ConversationStore(path) as s:
        chat(s, "precious", "data")

        chat(s, "twice", "same model")

    def strict(db: sqlite3.Connection) -> None:
        """Fine on a fresh file, fails on these data (a constraint they break)."""
        db.execute("ALTER TABLE conversations ADD COLUMN half INTEGER")
        db.execute("CREATE UNIQUE INDEX one_per_model ON conversations (model)")

    with ConversationStore(path, migrations=[*MIGRATIONS, strict]) as s:
        assert s.recovery_notice and "could not be upgraded" in s.recovery_notice
        moved = moved_aside(tmp_path, "upgrade-failed")
    with ConversationStore(moved) as old:  # the moved file is the old, intact version
        assert old.recovery_notice is None
        assert [c.title for c in old.list_conversations()] == ["twice", "precious"]
