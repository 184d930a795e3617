"""Long chats: the worker leaves out the oldest turns (never the system prompt) to fit."""

from __future__ import annotations

import threading
from pathlib import Path

from engine.chat import Message, chat_prompt_ids
from engine.loader import load_model

GREEDY = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}


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
    limit = loaded_info[0]["max_context"]

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

    worker.generate({"id": 7, "messages": messages, "params": GREEDY, "max_new_tokens": 32})
    assert not failed, failed
    info = started[0]
    assert info["dropped_turns"] > 0 and info["dropped_turns"] % 2 == 0
    assert info["prompt_tokens"] + 32 <= limit
    # What was kept: the system prompt and the newest turns, still alternating.
    kept = [system, *turns[info["dropped_turns"] :]]
    ids = chat_prompt_ids(tok.tokenizer, [Message(**m) for m in kept], tok.chat_template)
    assert len(ids) == info["prompt_tokens"]
    assert finished[0]["prompt_tokens"] == info["prompt_tokens"]


def test_window_shows_a_note_when_turns_are_left_out(qtbot, tmp_path: Path, monkeypatch) -> None:
    from PySide6.QtCore import QSettings

    from desktop.main_window import MainWindow

    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    win = MainWindow(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.model_info = {"name": "m", "max_context": 100}
    win._reply = win.chat.add_message("assistant")
    win._request_id = 3
    win._on_generation_started(
        {"id": 3, "dropped_turns": 4, "prompt_tokens": 90, "max_context": 100}
    )
    notes = [m for m in win.chat.messages if m.role == "note"]
    assert len(notes) == 1 and "4 oldest messages" in notes[0].text
    assert win.chat.messages.index(notes[0]) == win.chat.messages.index(win._reply) - 1
    win._reply = None
    win.close()
