"""The real window driven with pytest-qt and a tiny real model (offscreen)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QFontDatabase, QFontInfo, QGuiApplication, QTextCursor

from engine.events import GREEDY, Step
from engine.generation.generate import Generator
from engine.loading.loader import load_model
from engine.text.chat import Message, chat_prompt_ids
from tests.window_helpers import broken_model_folder, greedy

ROOT = Path(__file__).resolve().parents[1]


class Heartbeat:
    """A 10 ms timer on the GUI thread; the largest gap between ticks is how long it was blocked."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = 0.0
        self.worst = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last:
            self.worst = max(self.worst, now - self.last)
        self.last = now

    def __enter__(self) -> Heartbeat:
        self.last = 0.0
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch) -> QSettings:
    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    s = QSettings(str(tmp_path / "loopchat.ini"), QSettings.Format.IniFormat)
    s.setValue("engine/dtype", "float32")
    s.setValue("engine/device", "cpu")
    return s


@pytest.fixture
def window(qtbot, settings):
    from desktop.main_window import MainWindow

    win = MainWindow(settings)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()


def make_greedy(win, max_new_tokens: int = 24) -> None:
    greedy(win, max_new_tokens)
    win.sampling.system_prompt.setPlainText("")


def load(qtbot, win, folder: Path) -> dict:
    with qtbot.waitSignal(win.model_ready, timeout=120_000) as blocker:
        win.load_model(str(folder))
    return blocker.args[0]


def expected_reply(folder: Path, messages: list[Message], n: int):
    loaded = load_model(folder, dtype="float32", device="cpu")
    ids = chat_prompt_ids(loaded.tokenizer, messages, loaded.chat_template)
    generation = Generator(loaded).generate(ids, GREEDY, max_new_tokens=n)
    steps = list(generation)
    return steps, generation.result


def test_prompt_streams_the_engines_greedy_reply(qtbot, window, tiny_model_dir: Path) -> None:
    with Heartbeat() as load_beat:
        info = load(qtbot, window, tiny_model_dir)
    assert info["dtype"] == "float32"
    make_greedy(window)
    rows_seen: list[list] = []
    window.topk.rows_changed.connect(rows_seen.append)
    streamed: list[str] = []
    window.token_shown.connect(lambda step: streamed.append(step["text"]))  # main thread

    qtbot.keyClicks(window.input, "Hello there")
    with Heartbeat() as gen_beat, qtbot.waitSignal(window.reply_finished, timeout=120_000) as done:
        qtbot.keyClick(window.input, Qt.Key.Key_Return)
    result = done.args[0]
    window.topk.flush_now()

    steps, expected = expected_reply(tiny_model_dir, [Message("user", "Hello there")], 24)
    assert result["token_ids"] == expected.token_ids
    reply = window.chat.messages[-1]
    assert reply.role == "assistant"
    assert reply.text == expected.text
    assert "".join(streamed) == "".join(s.text for s in steps)
    assert window.history[-1] == {"role": "assistant", "content": expected.text}
    assert [s["token_id"] for s in reply.steps] == expected.token_ids

    # The panel showed k rows per step, probabilities summing to at most 1, the choice among them.
    assert rows_seen
    for rows in rows_seen:
        assert len(rows) == window.topk.k == 10
        assert sum(r[2] for r in rows) <= 1.0 + 1e-6
        assert any(r[3] for r in rows)
    # Status bar reports prompt size, time to first token, speed and context.
    status = window.status_line.speed_label.text()
    assert f"prompt {result['prompt_tokens']} tok" in status
    assert "first token" in status and "tok/s" in status
    assert f"/ {info['max_context']}" in window.status_line.context_label.text()

    print(
        f"worst GUI heartbeat gap: load {1000 * load_beat.worst:.0f} ms, "
        f"generation {1000 * gen_beat.worst:.0f} ms"
    )
    assert load_beat.worst < 0.1
    assert gen_beat.worst < 0.1


def test_clicking_a_token_shows_its_top_k(qtbot, window, tiny_model_dir: Path) -> None:
    load(qtbot, window, tiny_model_dir)
    make_greedy(window, 12)
    window.input.setPlainText("What is a loop")
    with qtbot.waitSignal(window.reply_finished, timeout=120_000):
        qtbot.keyClick(window.input, Qt.Key.Key_Return)
    reply = window.chat.messages[-1]
    qtbot.mouseClick(reply.tokens_button, Qt.MouseButton.LeftButton)
    assert reply.token_view
    # Find where a token with visible text sits in the document and click it.
    index = next(i for i, s in enumerate(reply.steps) if s["text"].strip() and i > 0)
    offset = sum(len(s["text"]) for s in reply.steps[:index]) + len(reply.steps[index]["text"]) // 2
    cursor = QTextCursor(reply.body.document())
    cursor.setPosition(offset)
    rect = reply.body.cursorRect(cursor)
    with qtbot.waitSignal(reply.token_clicked, timeout=5000) as clicked:
        qtbot.mouseClick(reply.body.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert clicked.args[1] == index
    shown = window.topk.shown_rows()
    step = reply.steps[index]
    assert [r[0] for r in shown] == [t["token_id"] for t in step["top"]][: window.topk.k]
    assert any(r[3] for r in shown)


def test_stop_keeps_the_partial_reply(qtbot, window, tiny_model_dir: Path) -> None:
    load(qtbot, window, tiny_model_dir)
    make_greedy(window, 400)
    shown: list[dict] = []
    after_stop: list[int] = []
    cancel = window.controller._cancel
    # Runs in the worker thread (a plain callable on a worker signal): counts the steps the
    # engine still produced once the GUI had set the cancel flag.
    window.controller.worker.token.connect(
        lambda step: after_stop.append(step["index"]) if cancel.is_set() else None
    )

    def on_shown(step: dict) -> None:
        shown.append(step)
        if len(shown) == 3:
            qtbot.keyClick(window.input, Qt.Key.Key_Escape)  # the user presses Esc

    window.token_shown.connect(on_shown)
    with qtbot.waitActive(window):  # shortcuts (Esc) reach only the active window
        window.activateWindow()
    window.input.setFocus()
    window.input.setPlainText("Tell me a long story")
    with qtbot.waitSignal(window.reply_finished, timeout=120_000) as done:
        qtbot.keyClick(window.input, Qt.Key.Key_Return)
    result = done.args[0]
    assert result["stop_reason"] == "cancelled"
    # The flag is checked between tokens: at most the token in flight follows the Stop.
    assert len(after_stop) <= 1, after_stop
    assert result["generated_tokens"] < 400
    reply = window.chat.messages[-1]
    assert reply.text == result["text"]
    assert [s["token_id"] for s in reply.steps] == result["token_ids"]
    assert "stopped" in reply.meta_label.text()
    assert window.send_button.isEnabled() and not window.stop_button.isEnabled()
    # The partial reply is part of the conversation, and Regenerate can replace it.
    assert window.history[-1]["content"] == result["text"]


def test_closing_mid_generation_exits_cleanly(qtbot, settings, tiny_model_dir: Path) -> None:
    from desktop.main_window import MainWindow

    win = MainWindow(settings)
    qtbot.addWidget(win)
    win.show()
    load(qtbot, win, tiny_model_dir)
    make_greedy(win, 400)
    win.input.setPlainText("Go on and on")
    with qtbot.waitSignal(win.token_shown, timeout=60_000):
        qtbot.keyClick(win.input, Qt.Key.Key_Return)
    assert win.controller.busy
    started = time.perf_counter()
    win.close()
    assert time.perf_counter() - started < 5
    assert not win.controller._thread.isRunning()


def test_finished_reply_renders_markdown_and_copies(qtbot, window) -> None:
    reply = window.chat.add_message("assistant", author="m")
    text = "Some **bold** words.\n\n```python\nfor t in range(pos + 1):\n    pass\n```\n"
    for i, piece in enumerate(["Some ", "**bold** words.", text[len("Some **bold** words.") :]]):
        reply.append_step(Step(i, 3, piece, piece, 0.5))
    reply.finish(text, "3 tokens")
    doc = reply.body.document()
    assert "```" not in doc.toPlainText() and "**" not in doc.toPlainText()
    block = doc.begin()
    while block.isValid() and "for t in range" not in block.text():
        block = block.next()
    assert block.isValid()
    font = QTextCursor(block).charFormat().font()
    fixed = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    assert QFontInfo(font).family() == QFontInfo(fixed).family()  # the system's monospace font
    qtbot.mouseClick(reply.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == text


def test_new_messages_open_no_windows(qtbot, window) -> None:
    """A message's buttons must never flash up as windows of their own (and steal the focus)."""
    from PySide6.QtWidgets import QApplication

    with qtbot.waitActive(window):
        window.activateWindow()
    for role in ("user", "assistant", "note"):
        window.chat.add_message(role, "hi")
    qtbot.wait(50)
    assert [w for w in QApplication.topLevelWidgets() if w.isVisible()] == [window]
    assert QApplication.activeWindow() is window


def test_topk_panel_labels_are_readable() -> None:
    from desktop.views.topk_panel import visible_token

    assert visible_token(" the") == "␣the"
    assert visible_token("\n") == "⏎"
    assert visible_token("\t") == "→"
    assert visible_token("<0xE2>") == "byte 0xE2"
    assert visible_token("") == "∅"


def test_broken_model_folder_shows_error_and_window_stays_usable(
    qtbot, window, tmp_path: Path, tiny_model_dir: Path
) -> None:
    broken = broken_model_folder(tmp_path)
    with qtbot.waitSignal(window.error_shown, timeout=60_000) as error:
        window.load_model(str(broken))
    assert "broken" in error.args[0]
    assert window.banner.isVisible()
    assert not window.send_button.isEnabled()
    # Sending without a model explains what to do and loses nothing typed.
    window.input.setPlainText("hello")
    qtbot.keyClick(window.input, Qt.Key.Key_Return)
    assert window.input.toPlainText() == "hello"
    assert "open a model" in window.banner.label.text().lower()
    load(qtbot, window, tiny_model_dir)
    assert window.send_button.isEnabled()


def test_settings_and_layout_persist(qtbot, settings, tiny_model_dir: Path) -> None:
    from desktop.main_window import MainWindow

    first = MainWindow(settings)
    qtbot.addWidget(first)
    first.resize(720, 540)  # inside the offscreen screen, so restoring does not clamp it
    first.show()
    first.sampling.temperature.setValue(1.25)
    first.sampling.top_k.setValue(7)
    first.sampling.seed.setText("42")
    first.sampling.seed.editingFinished.emit()
    first.splitter.setSizes([450, 270])
    sizes = first.splitter.sizes()
    geometry = first.geometry()
    first.close()
    second = MainWindow(settings)
    qtbot.addWidget(second)
    second.show()
    assert second.sampling.temperature.value() == pytest.approx(1.25)
    assert second.sampling.top_k.value() == 7
    assert second.sampling.values()["params"]["seed"] == 42
    assert second.geometry().size() == geometry.size()
    qtbot.waitUntil(lambda: sum(second.splitter.sizes()) == sum(sizes), timeout=2000)
    assert second.splitter.sizes() == sizes
    second.close()


def test_self_test_command(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ, LOOPCHAT_HOME=str(tmp_path), QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(
        [sys.executable, "-m", "desktop", "--self-test", str(tiny_model_dir), "--dtype", "float32"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = load_model(tiny_model_dir, dtype="float32", device="cpu")
    prompt = loaded.tokenizer.encode("Hello", bos=True)
    generation = Generator(loaded).generate(prompt, GREEDY, max_new_tokens=16)
    list(generation)
    assert done["done"] is True
    assert done["token_ids"] == generation.result.token_ids
    assert done["text"] == generation.result.text
    assert done["prompt_tokens"] == len(prompt)


def test_self_test_reports_a_bad_model(tmp_path: Path) -> None:
    env = dict(os.environ, LOOPCHAT_HOME=str(tmp_path), QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(
        [sys.executable, "-m", "desktop", "--self-test", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "missing" in proc.stderr


def test_every_default_comes_from_one_place(qtbot, tmp_path: Path) -> None:
    """Sampling defaults from SamplingParams, dtype names from one list (panel, CLI, app)."""
    from desktop.app import parse_args
    from desktop.views.sampling_panel import SamplingPanel
    from engine.cli import build_parser
    from engine.events import CLI_SAMPLING, DTYPE_NAMES, SamplingParams
    from engine.loading.loader import DTYPES

    panel = SamplingPanel(QSettings(str(tmp_path / "fresh.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(panel)
    assert panel.options().params == SamplingParams()
    args = build_parser().parse_args(["generate", "--model", "m", "--prompt", "p"])
    cli = SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p)
    assert cli == SamplingParams(
        CLI_SAMPLING.temperature, CLI_SAMPLING.top_k, CLI_SAMPLING.top_p, CLI_SAMPLING.min_p
    )
    assert args.repetition_penalty == CLI_SAMPLING.repetition_penalty
    assert set(DTYPE_NAMES) == {"auto", *DTYPES}
    assert parse_args(["--dtype", "bfloat16"]).dtype == "bfloat16"
