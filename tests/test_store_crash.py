"""Kill -9 mid-reply: the database is intact and holds everything up to the last save point."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from desktop.store import ConversationStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_generation_keeps_saved_steps(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "conversations.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_child", str(tiny_model_dir), str(db)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    saved = 0
    try:
        for line in child.stdout:
            if line.startswith("flushed"):
                saved = int(line.split()[1])
                if saved >= 64:
                    break
            assert not line.startswith("finished"), "the reply ended before the kill"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert saved >= 64, child.stderr.read()

    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    store = ConversationStore(db)
    assert store.recovery_notice is None
    (conv,) = store.list_conversations()
    user, reply = store.get_conversation(conv.id).messages
    assert user.content == "Tell me everything about loops"
    assert reply.role == "assistant" and not reply.finished
    assert len(reply.steps) >= saved
    assert [s["index"] for s in reply.steps] == list(range(len(reply.steps)))
    assert reply.content == "".join(s["text"] for s in reply.steps)
