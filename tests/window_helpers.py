"""Driving the real main window in tests: make it, load a model, make it greedy, ask."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Qt

from engine.events import GREEDY


def make_window(qtbot, home: Path, **values):
    """A shown MainWindow whose settings live in `home` (float32 on the CPU, plus `values`)."""
    from desktop.main_window import MainWindow

    settings = QSettings(str(home / "loopchat.ini"), QSettings.Format.IniFormat)
    settings.setValue("engine/dtype", "float32")
    settings.setValue("engine/device", "cpu")
    for key, value in values.items():
        settings.setValue(key, value)
    win = MainWindow(settings)
    qtbot.addWidget(win)
    win.show()
    return win


def greedy(win, n: int) -> None:
    """Set the sampling panel to engine.events.GREEDY and `n` new tokens."""
    s = win.sampling
    s.temperature.setValue(GREEDY.temperature)
    s.top_k.setValue(GREEDY.top_k)
    s.top_p.setValue(GREEDY.top_p)
    s.min_p.setValue(GREEDY.min_p)
    s.repetition_penalty.setValue(GREEDY.repetition_penalty)
    s.max_new_tokens.setValue(n)


def load(qtbot, win, folder: Path):
    """Load a model through the window; returns its ModelInfo."""
    with qtbot.waitSignal(win.model_ready, timeout=120_000) as ready:
        win.load_model(str(folder))
    return ready.args[0]


def ask(qtbot, win, text: str):
    """Type `text`, press Enter, wait for the reply; returns its GenerationResult."""
    win.input.setPlainText(text)
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as done:
        qtbot.keyClick(win.input, Qt.Key.Key_Return)
    return done.args[0]


def broken_model_folder(base: Path) -> Path:
    """A folder that looks like a model but is not one (bad config.json, 8-byte weights)."""
    broken = base / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"12345678")
    return broken


def branch_to_row(qtbot, win, row: int) -> None:
    """Branch to row `row` of the top-k panel as a user does (issue 26): click the row (which
    only selects it), then press Enter on it (the row's Branch button does the same)."""
    panel = win.topk
    point = panel.row_rect(row).center().toPoint()
    qtbot.mouseClick(panel, Qt.MouseButton.LeftButton, pos=point)
    assert panel.selected == row and panel.branch_button.isVisible()
    qtbot.keyClick(panel, Qt.Key.Key_Return)
