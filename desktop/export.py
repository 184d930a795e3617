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

from desktop.store_schema import ROLES, Conversation, Message, StepRecord, StoreError

EXPORT_FORMAT = "loopchat-conversation"
EXPORT_VERSION = 1
NOT_AN_EXPORT = "This file is not a Loopchat conversation export"


# -- JSON --------------------------------------------------------------------------------------


def conversation_to_json(conv: Conversation) -> dict:
    """Everything about a conversation except database ids (they are local to one store)."""
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
                        "top": [{"token_id": i, "text": t, "prob": p} for i, t, p in s.top],
                    }
                    for s in m.steps
                ],
            }
            for m in conv.messages
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


class _Checker:
    """Type checks that say where in the file the problem is (`messages[2].steps[7].prob`)."""

    def fail(self, where: str, expected: str, got: Any) -> None:
        shown = repr(got) if len(repr(got)) <= 40 else type(got).__name__
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
            "a token id": lambda v: (
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31
            ),
            "a number": lambda v: (
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ),
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
    created = check.field(data, "created_at", "", "a number", now)
    conv = Conversation(
        id=0,
        title=check.field(data, "title", "", "text", ""),
        created_at=created,
        updated_at=check.field(data, "updated_at", "", "a number", created),
        system_prompt=check.field(data, "system_prompt", "", "text", ""),
        model=check.field(data, "model", "", "text", ""),
        model_path=check.field(data, "model_path", "", "text", ""),
        title_is_custom=check.field(data, "title_is_custom", "", "true or false", False),
    )
    for position, m in enumerate(check.field(data, "messages", "", "a list")):
        where = f"messages[{position}]"
        if not isinstance(m, dict):
            check.fail(where, "an object", m)
        role = check.field(m, "role", f"{where}.", "text")
        if role not in ROLES:
            check.fail(f"{where}.role", "'user', 'assistant' or 'system'", role)
        message = Message(
            id=0,
            conversation_id=0,
            position=position,
            role=role,
            content=check.field(m, "content", f"{where}.", "text"),
            created_at=check.field(m, "created_at", f"{where}.", "a number", conv.created_at),
            finished=check.field(m, "finished", f"{where}.", "true or false", True),
            stop_reason=check.field(m, "stop_reason", f"{where}.", "text or null", None),
            model=check.field(m, "model", f"{where}.", "text", ""),
            sampling=check.field(m, "sampling", f"{where}.", "an object", {}),
            timings=check.field(m, "timings", f"{where}.", "an object", {}),
        )
        for i, s in enumerate(check.field(m, "steps", f"{where}.", "a list", [])):
            message.steps.append(_step_from_json(check, s, f"{where}.steps[{i}]", i))
        conv.messages.append(message)
    return conv


def _step_from_json(check: _Checker, s: Any, where: str, index: int) -> StepRecord:
    if not isinstance(s, dict):
        check.fail(where, "an object", s)
    top = []
    for j, t in enumerate(check.field(s, "top", f"{where}.", "a list", [])):
        if not isinstance(t, dict):
            check.fail(f"{where}.top[{j}]", "an object", t)
        at = f"{where}.top[{j}]."
        top.append(
            (
                check.field(t, "token_id", at, "a token id"),
                check.field(t, "text", at, "text"),
                float(check.field(t, "prob", at, "a probability")),
            )
        )
    return StepRecord(
        token_id=check.field(s, "token_id", f"{where}.", "a token id"),
        text=check.field(s, "text", f"{where}.", "text"),
        prob=float(check.field(s, "prob", f"{where}.", "a probability")),
        top=top,
        piece=check.field(s, "piece", f"{where}.", "text", ""),
        index=index,
    )


# -- Markdown ----------------------------------------------------------------------------------

_SPEAKERS = {"user": "You", "assistant": "Assistant", "system": "System"}


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _settings_line(m: Message) -> str:
    """Sampling settings and speed of a reply, one line (how it was made, for the reader)."""
    parts = [f"{key} {value}" for key, value in m.sampling.items() if value is not None]
    t = m.timings
    if "generated_tokens" in t:
        parts.append(f"{t['generated_tokens']} tokens")
    if t.get("decode_tokens_per_s"):
        parts.append(f"{t['decode_tokens_per_s']:.1f} tok/s")
    if t.get("ttft_s") is not None:
        parts.append(f"first token after {t['ttft_s']:.2f} s")
    if not m.finished:
        parts.append("interrupted")
    elif m.stop_reason and m.stop_reason != "eos":
        parts.append(f"stopped: {m.stop_reason.replace('_', ' ')}")
    return " · ".join(parts)


def conversation_to_markdown(conv: Conversation) -> str:
    """Title, model, system prompt, then every turn with how each reply was generated."""
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
        speaker = _SPEAKERS[m.role]
        if m.role == "assistant" and m.model and m.model != conv.model:
            speaker += f" ({m.model})"
        lines += [f"## {speaker} · {_when(m.created_at)}", "", m.content, ""]
        if m.role == "assistant":
            settings = _settings_line(m)
            if settings:
                lines += [f"*{settings}*", ""]
    return "\n".join(lines).rstrip() + "\n"
