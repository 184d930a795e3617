"""Import checks types and ranges; a bad row already stored is shown as damaged, never raised
(issue 11, item 13).

`created_at: 1e300` used to import, then every start failed (OverflowError formatting the list);
`timings: {"decode_tokens_per_s": "fast"}` broke the Markdown export; 100,000-deep nesting raised
RecursionError out of the import.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from desktop.store.conversations import ConversationStore
from desktop.store.export import read_export
from desktop.store.schema import StoreError
from engine.events import Step

REPLY = {"role": "assistant", "content": "hi", "timings": {"decode_tokens_per_s": 12.5}}


def export(*messages: dict, **fields) -> dict:
    return {
        "format": "loopchat-conversation",
        "version": 1,
        "messages": [{"role": "user", "content": "hello"}, *messages],
        **fields,
    }


@pytest.fixture
def store(tmp_path: Path):
    with ConversationStore(tmp_path / "c.sqlite3") as s:
        yield s


@pytest.mark.parametrize(
    ("bad", "names"),
    [
        (export(created_at=1e300), "created_at should be a time"),
        (export(updated_at=-5), "updated_at should be a time"),
        (export({**REPLY, "created_at": 1e20}), "messages[1].created_at should be a time"),
        (
            export({**REPLY, "timings": {"decode_tokens_per_s": "fast"}}),
            "messages[1].timings.decode_tokens_per_s should be a number",
        ),
        (
            export({**REPLY, "timings": {"ttft_s": -1}}),
            "messages[1].timings.ttft_s should be a number of 0 or more",
        ),
        (
            export({**REPLY, "timings": {"prefill_s": {"nested": 1}}}),
            "messages[1].timings.prefill_s should be",
        ),
        (
            export({**REPLY, "sampling": {"temperature": [0.7]}}),
            "messages[1].sampling.temperature should be a plain value",
        ),
        (export({**REPLY, "timings": "fast"}), "messages[1].timings should be an object"),
        (export({**REPLY, "finished": "yes"}), "messages[1].finished should be true or false"),
        (export(title_is_custom=1), "title_is_custom should be true or false"),
    ],
)
def test_bad_values_are_refused_naming_the_field(store: ConversationStore, bad, names) -> None:
    with pytest.raises(StoreError) as caught:
        store.import_json(bad)
    assert names in str(caught.value)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300
    assert store.list_conversations() == []  # nothing imported


def deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_deep_nesting_is_a_store_error_not_a_recursion_error(
    store: ConversationStore, tmp_path: Path
) -> None:
    path = tmp_path / "deep.json"
    path.write_text(
        '{"format": "loopchat-conversation", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    with pytest.raises(StoreError, match="nested too deeply"):
        read_export(path)
    for bad in (
        export(messages=[deep(100_000)]),
        export({**REPLY, "timings": {"prefill_s": deep(100_000)}}),
        export(title=deep(100_000)),
    ):
        with pytest.raises(StoreError):
            store.import_json(bad)
    assert store.list_conversations() == []


def test_a_good_export_still_imports_with_its_timings(store: ConversationStore) -> None:
    conv = store.import_json(export(REPLY, created_at=1_700_000_000))
    reply = store.get_conversation(conv).messages[1]
    assert reply.timings == {"decode_tokens_per_s": 12.5} and not reply.damaged
    assert "12.5 tok/s" in store.export_markdown(conv)


def test_bad_rows_already_stored_are_shown_damaged_never_raised(tmp_path: Path) -> None:
    """Rows written by an older Loopchat (before validation) or by hand."""
    path = tmp_path / "c.sqlite3"
    with ConversationStore(path) as s:
        good = s.import_json(export(REPLY))
        bad = s.import_json(export(REPLY))
        reply_id = s.get_conversation(bad).messages[1].id
        s.append_steps(s.start_reply(bad), [Step(0, 1, "a", "a", 0.5)], "a")
    db = sqlite3.connect(path)
    db.execute(
        "UPDATE conversations SET created_at = 1e300, updated_at = 1e300 WHERE id = ?", (bad,)
    )
    db.execute(
        "UPDATE messages SET timings = ?, sampling = 'not json', created_at = -1e300, "
        "content = x'00ff' WHERE id = ?",
        (json.dumps({"decode_tokens_per_s": "fast", "generated_tokens": 3}), reply_id),
    )
    db.execute("UPDATE steps SET top_ids = x'0102', top_texts = '[' ")
    db.commit()
    db.close()

    with ConversationStore(path) as s:
        listed = {c.id: c for c in s.list_conversations()}
        assert set(listed) == {good, bad}
        assert listed[bad].damaged and not listed[good].damaged
        time.localtime(listed[bad].created_at)  # formattable: the list can show it
        conv = s.get_conversation(bad)
        reply = conv.messages[1]
        assert reply.damaged and reply.timings == {"generated_tokens": 3}
        assert reply.sampling == {} and isinstance(reply.content, str)
        assert conv.messages[2].damaged and conv.messages[2].steps == []
        markdown = s.export_markdown(bad)
        assert "3 tokens" in markdown
        again = s.import_json(s.export_json(bad))  # the export of a damaged row re-imports
        assert s.get_conversation(again).messages[1].timings == {"generated_tokens": 3}
