"""Long chats: the worker leaves out the oldest turns (never the system prompt) to fit."""

from __future__ import annotations

import threading
from pathlib import Path

from engine.events import GREEDY, GenerationRequest
from engine.loading.loader import load_model
from engine.text.chat import Message, chat_prompt_ids


def test_oldest_turns_are_dropped_to_fit(qtbot, tiny_model_dir: Path) -> None:
    from desktop.worker import EngineWorker

    worker = EngineWorker(threading.Event())
    loaded_info, started, finished, failed = [], [], [], []
    worker.model_loaded.connect(loaded_info.append)
    worker.generation_started.connect(started.append)
    worker.generation_finished.connect(finished.append)
    worker.generation_failed.connect(failed.append)
    worker.load_model(str(tiny_model_dir), "float32", "cpu")  # runs here, synchronously
    assert loaded_info, "model did not load"
    limit = loaded_info[0].max_context

    system = {"role": "system", "content": "Always answer briefly."}
    turns = []
    for i in range(40):
        turns.append({"role": "user", "content": f"Question number {i} about the attention loop"})
        turns.append({"role": "assistant", "content": f"Answer {i}: it sums weighted values"})
    turns.append({"role": "user", "content": "And the last question?"})
    messages = [system, *turns]
    tok = load_model(tiny_model_dir, dtype="float32", device="cpu")
    full = chat_prompt_ids(tok.tokenizer, [Message(**m) for m in messages], tok.chat_template)
    assert len(full) > limit  # the whole chat would not fit

    worker.generate(GenerationRequest(tuple(messages), GREEDY, max_new_tokens=32, request_id=7))
    assert not failed, failed
    info = started[0]
    assert info.request_id == 7 and finished[0].request_id == 7
    assert info.dropped_turns > 0 and info.dropped_turns % 2 == 0
    assert info.prompt_tokens + 32 <= limit
    # What was kept: the system prompt and the newest turns, still alternating.
    kept = [system, *turns[info.dropped_turns :]]
    ids = chat_prompt_ids(tok.tokenizer, [Message(**m) for m in kept], tok.chat_template)
    assert len(ids) == info.prompt_tokens
    assert finished[0].prompt_tokens == info.prompt_tokens
    assert finished[0].dropped_turns == info.dropped_turns


def test_note_and_stats_are_shown_live_and_on_reopening(
    qtbot, tmp_path: Path, monkeypatch, tiny_model_dir: Path
) -> None:
    """Defect 8: a reply keeps its stats line and its "oldest turns left out" note reopened."""
    from PySide6.QtCore import QSettings

    from desktop.main_window import MainWindow
    from desktop.store.conversations import ConversationStore

    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    settings.setValue("engine/dtype", "float32")
    win = MainWindow(settings)
    qtbot.addWidget(win)
    store = win.store
    conv = store.create_conversation("Always answer briefly.", "m")
    for i in range(40):
        store.add_message(conv, "user", f"Question number {i} about the attention loop")
        store.add_message(conv, "assistant", f"Answer {i}: it sums weighted values")
    win.open_conversation(conv)
    with qtbot.waitSignal(win.model_ready, timeout=120_000):
        win.load_model(str(tiny_model_dir))
    win.sampling.max_new_tokens.setValue(8)
    win.sampling.temperature.setValue(0.0)
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as done:
        win.send("And the last question?")
    result = done.args[0]
    reply = win.chat.messages[-1]
    notes = [m for m in win.chat.messages if m.role == "note"]
    assert len(notes) == 1 and "oldest messages" in notes[0].text
    note = notes[0].text
    assert win.chat.messages.index(notes[0]) == win.chat.messages.index(reply) - 1
    live_stats = reply.meta_label.text()
    assert f"{result['generated_tokens']} tokens" in live_stats and "tok/s" in live_stats
    win.close()

    again = MainWindow(settings)
    qtbot.addWidget(again)
    assert again.conversation_id == conv
    reply = again.chat.messages[-1]
    assert reply.role == "assistant" and reply.text == result["text"]
    assert reply.meta_label.text() == live_stats
    notes = [m for m in again.chat.messages if m.role == "note"]
    assert [n.text for n in notes] == [note]
    assert again.chat.messages.index(notes[0]) == again.chat.messages.index(reply) - 1
    again.close()
    ConversationStore(store.path).close()
