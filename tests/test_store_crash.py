"""Kill -9 mid-reply: the database is intact and holds everything up to the last save point.

A child process (this module's `child_main`) opens the store, saves a user message, starts a
reply and streams steps through the Autosaver, printing "flushed N" after each save point.
The test SIGKILLs it mid-stream, then reopens the file.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from desktop.store.autosave import Autosaver
from desktop.store.conversations import ConversationStore
from engine.events import Step, TopToken

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Tell me everything about loops"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def fake_step(i: int) -> Step:
    """Step i of an endless made-up reply; every field derives from i, so torn rows show."""
    return Step(
        index=i,
        token_id=i % 500,
        text=f" w{i}",
        piece=f"▁w{i}",
        prob=1 / (1 + i % 7),
        top=[TopToken(i % 500 + k, f"w{i}.{k}", 2.0**-k) for k in range(10)],
    )


def child_main() -> None:
    """argv: fake|model DB [MODEL_DIR]. Streams until killed; never finishes on its own."""
    kind, db = sys.argv[1], sys.argv[2]
    store = ConversationStore(db)
    conv = store.create_conversation("You are terse.", "crash-test")
    store.add_message(conv, "user", QUESTION)
    reply = store.start_reply(conv, "crash-test", {"temperature": 1.0, "seed": 1})
    saver = Autosaver(store, reply)
    print("ready", flush=True)
    for step in _model_steps(sys.argv[3]) if kind == "model" else _fake_steps():
        if saver.add(step):
            print(f"flushed {saver.saved_steps}", flush=True)


def _fake_steps():
    i = 0
    while True:
        time.sleep(0.001)
        yield fake_step(i)
        i += 1


def _model_steps(model_dir: str):
    """Real tokens from the tiny model, one generation after another (so EOS never ends it)."""
    from engine.generation.generate import Generator
    from engine.generation.sampling import SamplingParams
    from engine.loading.loader import load_model
    from engine.text.chat import Message, chat_prompt_ids

    loaded = load_model(model_dir, dtype="float32", device="cpu")
    generator = Generator(loaded)
    ids = chat_prompt_ids(loaded.tokenizer, [Message("user", QUESTION)], loaded.chat_template)
    for seed in range(1_000_000):
        params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
        for step in generator.generate(ids, params, max_new_tokens=64):
            time.sleep(0.002)
            yield step


def run_and_kill(db: Path, kind: str, *extra: str, after_saved: int, delay_s: float) -> int:
    """Start a child, wait until it reports `after_saved` steps saved, wait `delay_s` more
    (so the kill lands anywhere, a save point included), SIGKILL it; return steps reported."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tests.test_store_crash import child_main; child_main()",
            kind,
            str(db),
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    saved = 0
    try:
        deadline = time.monotonic() + 120
        while saved < after_saved:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"the child ended early: {child.stderr.read()}"
            if line.startswith("flushed"):
                saved = int(line.split()[1])
        time.sleep(delay_s)
        while not lines.empty():  # save points reported during the delay count too
            line = lines.get_nowait()
            if line and line.startswith("flushed"):
                saved = int(line.split()[1])
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return saved


def check_after_kill(db: Path, saved: int, round_: int) -> list[Step]:
    """Intact file, user message saved, the partial reply holds at least the reported steps."""
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    raw.close()
    with ConversationStore(db) as store:
        assert store.recovery_notice is None
        listed = store.list_conversations()
        assert len(listed) == round_ + 1
        conv = store.get_conversation(listed[0].id)  # the newest: this round's
        user, reply = conv.messages
        assert (user.role, user.content) == ("user", QUESTION)
        assert reply.role == "assistant" and not reply.finished and reply.stop_reason is None
        assert len(reply.steps) >= saved
        assert [s.index for s in reply.steps] == list(range(len(reply.steps)))
        # Steps and the reply text are saved in the same transaction: they always agree.
        assert reply.content == "".join(s.text for s in reply.steps)
        return reply.steps


def test_sigkill_while_streaming_keeps_every_save_point(tmp_path: Path) -> None:
    db = tmp_path / "conversations.sqlite3"
    for round_, delay in enumerate((0.0, 0.013, 0.037)):  # the same file, killed three times
        saved = run_and_kill(db, "fake", after_saved=64, delay_s=delay)
        steps = check_after_kill(db, saved, round_)
        assert steps == [fake_step(i) for i in range(len(steps))]


def test_sigkill_mid_generation_with_a_real_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "conversations.sqlite3"
    saved = run_and_kill(db, "model", str(tiny_model_dir), after_saved=64, delay_s=0.02)
    steps = check_after_kill(db, saved, 0)
    assert all(0 <= s.token_id < 512 and len(s.top) == 10 for s in steps)
    assert all(s.top[0].prob >= s.top[-1].prob and 0.0 < s.prob <= 1.0 for s in steps)
