"""A conversation as Markdown (to read and share) and as JSON (complete, to import back).

The JSON format is versioned and holds everything the store keeps, the token inspector's steps
included; each step has the shape of a line of `python -m engine generate --json` (plus `piece`),
so tools that read one read the other. Importing validates the whole file first and names the
first problem in words fit for a dialog.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from desktop.store.schema import ROLES, Conversation, Message, StoreError, unpack_draft
from engine.events import Step, TopToken

EXPORT_FORMAT = "loopchat-conversation"
EXPORT_VERSION = 2
"""2 added branches: each message names its `parent` (the index of the message before it on its
branch, null for a first message) and whether it is the `shown` version among its siblings.
A version 1 file (no `parent`) is one branch: each message follows the one before it."""
NOT_AN_EXPORT = "This file is not a Loopchat conversation export"
LATEST_TIME = 253402300799.0
"""9999-12-31 23:59:59 UTC: later (or negative) times break date formatting, so never stored."""
MAX_SETTING_TEXT = 1000
"""Longest text value accepted in a reply's sampling settings."""


def valid_time(value: Any) -> bool:
    """A Unix time that every date function can format (also on Windows: not negative)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= LATEST_TIME
    )


def valid_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def clean_timings(timings: Any) -> tuple[dict, bool]:
    """Only the timing values views can format (finite numbers >= 0, or null); True if any
    were dropped. Used for rows already stored, which may predate validation."""
    if not isinstance(timings, dict):
        return {}, True
    kept = {str(k): v for k, v in timings.items() if v is None or (valid_number(v) and v >= 0)}
    return kept, len(kept) != len(timings)


def clean_sampling(sampling: Any) -> tuple[dict, bool]:
    """Only plain settings (numbers, short texts, true/false, null); True if any were dropped."""
    if not isinstance(sampling, dict):
        return {}, True
    kept = {
        str(k): v
        for k, v in sampling.items()
        if v is None
        or isinstance(v, bool)
        or valid_number(v)
        or (isinstance(v, str) and len(v) <= MAX_SETTING_TEXT)
    }
    return kept, len(kept) != len(sampling)


# -- JSON --------------------------------------------------------------------------------------


def parents_first(messages: list[Message]) -> list[Message]:
    """`messages` reordered so that each comes after its parent, siblings (and separate trees)
    keeping their order in `messages`.

    Ids usually grow along a branch, but not always (a database merged or repaired by hand, an
    old import), and an export lists parents first because its import must refuse a forward
    reference (that is how it knows a file has no cycle). A message whose parent is not among
    `messages` starts a tree of its own; messages caught in a cycle (only a hand-edited database
    holds one) come last, in their order.
    """
    ids = {m.id for m in messages}
    children: dict[int | None, list[Message]] = {}
    for m in messages:
        children.setdefault(m.parent_id if m.parent_id in ids else None, []).append(m)
    ordered: list[Message] = []
    stack = list(reversed(children.get(None, [])))
    while stack:  # depth first, without recursion (a branch may be 10,000 messages deep)
        m = stack.pop()
        ordered.append(m)
        stack.extend(reversed(children.get(m.id, [])))
    if len(ordered) < len(messages):
        placed = {id(m) for m in ordered}
        ordered += [m for m in messages if id(m) not in placed]
    return ordered


def conversation_to_json(conv: Conversation) -> dict:
    """Everything about a conversation except database ids (they are local to one store).

    `conv.messages` may hold every version (`get_conversation(all_versions=True)`); they are
    exported parents first (`parents_first`), each message's `parent` an index into the
    exported list, and `shown` says which version of each turn is on screen.
    """
    messages = parents_first(conv.messages)
    index = {m.id: i for i, m in enumerate(messages)}

    def parent_of(i: int, m: Message) -> int | None:
        if m.parent_id is None:
            return None
        parent = index.get(m.parent_id, i - 1 if i else None)
        return parent if parent is None or parent < i else None  # a cycle: cut it here

    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "title": conv.title,
        "title_is_custom": conv.title_is_custom,
        "system_prompt": conv.system_prompt,
        "model": conv.model,
        "model_path": conv.model_path,
        "created_at": conv.created_at,
        "updated_at": conv.updated_at,
        "messages": [
            {
                "parent": parent_of(i, m),
                "shown": m.shown,
                "role": m.role,
                "content": m.content,
                "created_at": m.created_at,
                "finished": m.finished,
                "stop_reason": m.stop_reason,
                "model": m.model,
                "sampling": m.sampling,
                "timings": m.timings,
                "steps": [
                    {
                        "token_id": s.token_id,
                        "text": s.text,
                        "piece": s.piece,
                        "prob": s.prob,
                        "top": [
                            {"token_id": t.token_id, "text": t.text, "prob": t.prob} for t in s.top
                        ],
                        **(
                            {"drafted": s.drafted, "check": s.check and s.check.to_dict()}
                            if s.drafted or s.check is not None
                            else {}
                        ),
                    }
                    for s in m.steps
                ],
            }
            for i, m in enumerate(messages)
        ],
    }


def read_export(path: str | Path) -> Any:
    """The parsed content of an export file; StoreError when it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise StoreError(f"Could not read {path.name}: {reason}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"{NOT_AN_EXPORT}: {path.name} is not valid JSON (line {exc.lineno}, "
            f"column {exc.colno})."
        ) from None
    except RecursionError:
        raise StoreError(
            f"{NOT_AN_EXPORT}, or it is damaged: {path.name} is nested too deeply to read."
        ) from None


_TIME = "a time (seconds since 1970, before year 10000)"


class _Checker:
    """Type checks that say where in the file the problem is (`messages[2].steps[7].prob`)."""

    def fail(self, where: str, expected: str, got: Any) -> None:
        # repr only of scalars: a container may be nested 100,000 deep (RecursionError).
        scalar = got is None or isinstance(got, (str, int, float, bool))
        shown = repr(got) if scalar and len(repr(got)) <= 40 else type(got).__name__
        raise StoreError(
            f"{NOT_AN_EXPORT}, or it is damaged: {where} should be {expected} (found {shown})."
        )

    def field(self, obj: dict, key: str, where: str, kind: str, default: Any = ...) -> Any:
        if key not in obj:
            if default is ...:
                raise StoreError(f"{NOT_AN_EXPORT}, or it is damaged: {where}{key} is missing.")
            return default
        value = obj[key]
        ok = {
            "text": lambda v: isinstance(v, str),
            "text or null": lambda v: v is None or isinstance(v, str),
            "true or false": lambda v: isinstance(v, bool),
            "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "an integer or null": lambda v: (
                v is None or (isinstance(v, int) and not isinstance(v, bool))
            ),
            "a token id": lambda v: (
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31
            ),
            "a number": valid_number,
            "a time (seconds since 1970, before year 10000)": valid_time,
            "a probability": lambda v: (
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0
            ),
            "an object": lambda v: isinstance(v, dict),
            "a list": lambda v: isinstance(v, list),
        }[kind]
        if not ok(value):
            self.fail(f"{where}{key}", kind, value)
        return value


def conversation_from_json(data: Any) -> Conversation:
    """Validate an export and turn it into a Conversation (ids 0: the store assigns them)."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise StoreError(f"{NOT_AN_EXPORT}.")
    check = _Checker()
    version = check.field(data, "version", "", "an integer")
    if version > EXPORT_VERSION:
        raise StoreError(
            f"This conversation was exported by a newer Loopchat (format version {version}); "
            "update Loopchat to import it."
        )
    now = time.time()
    created = check.field(data, "created_at", "", _TIME, now)
    conv = Conversation(
        id=0,
        title=check.field(data, "title", "", "text", ""),
        created_at=created,
        updated_at=check.field(data, "updated_at", "", _TIME, created),
        system_prompt=check.field(data, "system_prompt", "", "text", ""),
        model=check.field(data, "model", "", "text", ""),
        model_path=check.field(data, "model_path", "", "text", ""),
        title_is_custom=check.field(data, "title_is_custom", "", "true or false", False),
    )
    positions: list[int] = []
    for i, m in enumerate(check.field(data, "messages", "", "a list")):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            check.fail(where, "an object", m)
        parent = check.field(m, "parent", f"{where}.", "an integer or null", i - 1 if i else None)
        if parent is not None and not 0 <= parent < i:
            check.fail(f"{where}.parent", f"the index of an earlier message (0 to {i - 1})", parent)
        position = 0 if parent is None else positions[parent] + 1
        positions.append(position)
        role = check.field(m, "role", f"{where}.", "text")
        if role not in ROLES:
            check.fail(f"{where}.role", "'user', 'assistant' or 'system'", role)
        message = Message(
            id=0,
            conversation_id=0,
            position=position,
            role=role,
            content=check.field(m, "content", f"{where}.", "text"),
            created_at=check.field(m, "created_at", f"{where}.", _TIME, conv.created_at),
            finished=check.field(m, "finished", f"{where}.", "true or false", True),
            stop_reason=check.field(m, "stop_reason", f"{where}.", "text or null", None),
            model=check.field(m, "model", f"{where}.", "text", ""),
            sampling=_settings(check, m, "sampling", f"{where}.", clean_sampling),
            timings=_settings(check, m, "timings", f"{where}.", clean_timings),
            parent_id=parent,
            shown=check.field(m, "shown", f"{where}.", "true or false", True),
        )
        for i, s in enumerate(check.field(m, "steps", f"{where}.", "a list", [])):
            message.steps.append(_step_from_json(check, s, f"{where}.steps[{i}]", i))
        conv.messages.append(message)
    return conv


def _settings(check: _Checker, m: dict, key: str, where: str, clean) -> dict:
    """A reply's `sampling` or `timings`: an object of plain values, else the field is named."""
    value = check.field(m, key, where, "an object", {})
    kept, dropped = clean(value)
    if dropped:
        bad = next(k for k in value if k not in kept)
        expected = "a number of 0 or more, or null" if key == "timings" else "a plain value"
        check.fail(f"{where}{key}.{bad}", expected, value[bad])
    return kept


def _step_from_json(check: _Checker, s: Any, where: str, index: int) -> Step:
    if not isinstance(s, dict):
        check.fail(where, "an object", s)
    top = []
    for j, t in enumerate(check.field(s, "top", f"{where}.", "a list", [])):
        if not isinstance(t, dict):
            check.fail(f"{where}.top[{j}]", "an object", t)
        at = f"{where}.top[{j}]."
        top.append(
            TopToken(
                check.field(t, "token_id", at, "a token id"),
                check.field(t, "text", at, "text"),
                float(check.field(t, "prob", at, "a probability")),
            )
        )
    drafted, draft_check = False, None
    if "drafted" in s or "check" in s:  # speculative decoding's marks: kept where readable
        drafted, draft_check = unpack_draft(
            json.dumps({"drafted": s.get("drafted"), "check": s.get("check")})
        )
    return Step(
        index=index,
        token_id=check.field(s, "token_id", f"{where}.", "a token id"),
        text=check.field(s, "text", f"{where}.", "text"),
        piece=check.field(s, "piece", f"{where}.", "text", ""),
        prob=float(check.field(s, "prob", f"{where}.", "a probability")),
        top=top,
        drafted=drafted,
        check=draft_check,
    )


# -- Markdown ----------------------------------------------------------------------------------

_SPEAKERS = {"user": "You", "assistant": "Assistant", "system": "System"}


def _when(ts: Any) -> str:
    if not valid_time(ts):
        return "(unknown time)"
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
    except (OverflowError, OSError, ValueError):
        return "(unknown time)"


def _settings_line(m: Message) -> str:
    """Sampling settings and speed of a reply, one line (how it was made, for the reader)."""
    sampling, _ = clean_sampling(m.sampling)
    parts = [f"{key} {value}" for key, value in sampling.items() if value is not None]
    t, _ = clean_timings(m.timings)  # a damaged stored row must not break the export
    if valid_number(t.get("generated_tokens")):
        parts.append(f"{t['generated_tokens']:.0f} tokens")
    if valid_number(t.get("decode_tokens_per_s")) and t["decode_tokens_per_s"]:
        parts.append(f"{t['decode_tokens_per_s']:.1f} tok/s")
    if valid_number(t.get("ttft_s")):
        parts.append(f"first token after {t['ttft_s']:.2f} s")
    if not m.finished:
        parts.append("interrupted")
    elif m.stop_reason and m.stop_reason != "eos":
        parts.append(f"stopped: {m.stop_reason.replace('_', ' ')}")
    return " · ".join(parts)


def conversation_to_markdown(conv: Conversation) -> str:
    """Title, model, system prompt, then every turn of the shown path (`conv.messages` as
    `get_conversation` gives them) with how each reply was generated."""
    lines = [f"# {conv.title or 'Untitled conversation'}", ""]
    if conv.model:
        model = f"{conv.model} (`{conv.model_path}`)" if conv.model_path else conv.model
        lines.append(f"- Model: {model}")
    lines.append(f"- Started {_when(conv.created_at)}, last message {_when(conv.updated_at)}")
    lines.append(f"- Exported from Loopchat on {_when(time.time())}")
    lines.append("")
    if conv.system_prompt:
        lines += ["## System prompt", "", conv.system_prompt, ""]
    for m in conv.messages:
        speaker = _SPEAKERS.get(m.role, str(m.role).title())
        if m.role == "assistant" and m.model and m.model != conv.model:
            speaker += f" ({m.model})"
        if m.versions > 1:  # the shown path only; say that other versions exist
            speaker += f" · version {m.version} of {m.versions}"
        lines += [f"## {speaker} · {_when(m.created_at)}", "", m.content, ""]
        if m.role == "assistant":
            settings = _settings_line(m)
            if settings:
                lines += [f"*{settings}*", ""]
    return "\n".join(lines).rstrip() + "\n"
