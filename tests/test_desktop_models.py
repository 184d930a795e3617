"""First run: the model chooser downloads a catalogue model from a (local) Hub, loads it, chats."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PySide6.QtCore import QObject, QSettings, Qt, Slot

from engine.errors import EngineError
from engine.loading.model_folder import list_cached_models, resolve_model
from tests.hub_server import FakeHub

DEFAULT = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


@pytest.fixture
def hub(monkeypatch, tmp_path: Path, tiny_model_dir: Path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.add(DEFAULT, tiny_model_dir)  # the catalogue's default, served locally
        yield server


@pytest.fixture
def window(qtbot, tmp_path: Path, hub):
    from desktop.main_window import MainWindow

    settings = QSettings(str(tmp_path / "loopchat.ini"), QSettings.Format.IniFormat)
    settings.setValue("engine/dtype", "float32")
    win = MainWindow(settings)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()


def test_first_run_downloads_the_default_and_chats(qtbot, window, hub) -> None:
    # A fresh start opens the built-in model (tests/test_builtin.py); the chooser is one click away.
    chooser = window.show_model_chooser()
    assert chooser.isVisible()
    assert chooser.entry()["repo_id"] == DEFAULT
    assert chooser.go_button.text() == "Download and open"
    progress = []
    chooser.downloads.worker.progress.connect(progress.append)
    with qtbot.waitSignal(window.model_ready, timeout=120_000) as ready:
        qtbot.mouseClick(chooser.go_button, Qt.MouseButton.LeftButton)
    assert ready.args[0]["name"] == DEFAULT
    assert progress and progress[-1]["done"] == progress[-1]["total"]
    assert window.send_button.isEnabled()
    window.input.setPlainText("Hello")
    with qtbot.waitSignal(window.reply_finished, timeout=60_000) as done:
        qtbot.keyClick(window.input, Qt.Key.Key_Return)
    assert "text" in done.args[0]
    # Next start reopens it, and the chooser now lists it as downloaded.
    assert window.recent_models()[0] == DEFAULT
    again = window.show_model_chooser()
    assert again.go_button.text() == "Open"


def test_cancelled_download_leaves_nothing_selectable(qtbot, window, hub) -> None:
    chooser = window.show_model_chooser()

    def cancel_on_weights(p: dict) -> None:
        if p["filename"].endswith(".safetensors"):
            chooser.downloads.cancel()

    chooser.downloads.worker.progress.connect(cancel_on_weights)
    with qtbot.waitSignal(chooser.downloads.worker.cancelled, timeout=60_000):
        qtbot.mouseClick(chooser.go_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "cancelled" in chooser.error.text(), timeout=5000)
    assert chooser.entry()["path"] is None
    assert chooser.go_button.text() == "Download and open"
    assert list_cached_models() == []
    with pytest.raises(EngineError):
        resolve_model(DEFAULT)
    assert window.model_info is None


def test_gated_entry_asks_for_a_token(qtbot, window, hub, tiny_model_dir: Path) -> None:
    hub.add("meta-llama/Llama-2-7b-chat-hf", tiny_model_dir, gated=True, token="hf_ok")
    chooser = window.show_model_chooser()
    rows = [
        chooser.items.item(i).data(Qt.ItemDataRole.UserRole)["repo_id"]
        for i in range(chooser.items.count())
    ]
    chooser.items.setCurrentRow(rows.index("meta-llama/Llama-2-7b-chat-hf"))
    assert chooser.token_row.isVisible()
    assert "accept the licence" in chooser.details.text()
    with qtbot.waitSignal(chooser.downloads.worker.failed, timeout=60_000) as failed:
        qtbot.mouseClick(chooser.go_button, Qt.MouseButton.LeftButton)
    assert "gated" in failed.args[0]
    qtbot.waitUntil(chooser.error.isVisible, timeout=5000)
    chooser.token.setText("hf_ok")
    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        qtbot.mouseClick(chooser.go_button, Qt.MouseButton.LeftButton)
    assert "hf_ok" not in Path(window.settings.fileName()).read_text()


def test_download_survives_closing_the_chooser(qtbot, window, hub) -> None:
    release = threading.Event()
    hub.hold[".safetensors"] = release  # the weights wait until the chooser is closed
    chooser = window.show_model_chooser()
    assert chooser.entry()["repo_id"] == DEFAULT
    qtbot.mouseClick(chooser.go_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: any(r.path.endswith(".safetensors") for r in hub.gets()), timeout=60_000
    )
    status = window.status_line.download_label.text()
    assert status.startswith("Downloading ") and DEFAULT in status
    chooser.close()
    assert window.downloads.active
    with qtbot.waitSignal(window.model_ready, timeout=120_000) as ready:
        release.set()
    assert ready.args[0]["name"] == DEFAULT
    assert not window.status_line.download_label.isVisible()
    assert [m["repo_id"] for m in list_cached_models()] == [DEFAULT]
    # Opening the chooser again shows it as downloaded.
    assert window.show_model_chooser().go_button.text() == "Open"


class _Recorder(QObject):
    """Lives on the GUI thread, so the worker's progress reaches it queued, after the chooser's."""

    def __init__(self, chooser) -> None:
        super().__init__()
        self.chooser, self.shown = chooser, []

    @Slot(dict)
    def record(self, _p: dict) -> None:
        self.shown.append((self.chooser.progress.text(), self.chooser.progress_label.text()))


def test_progress_bar_and_line_agree(qtbot, window, hub) -> None:
    chooser = window.show_model_chooser()
    recorder = _Recorder(chooser)
    chooser.downloads.worker.progress.connect(recorder.record)
    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        qtbot.mouseClick(chooser.go_button, Qt.MouseButton.LeftButton)
    assert recorder.shown
    for bar, line in recorder.shown:
        assert f"({bar})" in line
