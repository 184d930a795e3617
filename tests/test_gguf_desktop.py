"""GGUF files in the window: the chooser's list of files on this computer, File → Open model file…,
drag and drop, the catalogue's one-file downloads, Recent models and Models → Weights.

Every GGUF file is written here with llama.cpp's own `gguf` package; the search for files on this
computer is given a made-up home and environment, so nothing of the real home is read.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from tests.window_helpers import make_window

pytest.importorskip("gguf")

TINY_REPO = "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"
TINY_DEFAULT = "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
TINY_Q8 = "tinyllama-1.1b-chat-v1.0.Q8_0.gguf"


# -- files -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tokenizer_path: Path) -> Path:
    """A runnable tiny Llama as one GGUF file (float weights, the session's tokenizer)."""
    from tests.fixtures.gguf_files import write_gguf
    from tests.fixtures.models import random_llama

    model = random_llama(kv_heads=2, seed=5)
    folder = tmp_path_factory.mktemp("gguf")
    return write_gguf(model, folder / "tiny-llama.F16.gguf", tokenizer_path)


def odd_gguf(path: Path, arch: str, tokenizer: str | None = None) -> Path:
    """A small GGUF file Loopchat cannot run (another architecture, or Llama 3's tokenizer)."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    if tokenizer:
        writer.add_tokenizer_model(tokenizer)
        writer.add_token_list([b"a", b"b"])
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def fake_home(tmp_path: Path, tiny_gguf: Path) -> tuple[Path, dict]:
    """A made-up home: LM Studio holds the tiny model and a Qwen file, Jan a Llama 3 file."""
    home = tmp_path / "user"
    lm = home / ".lmstudio" / "models" / "someone" / "tiny-GGUF"
    lm.mkdir(parents=True)
    shutil.copy(tiny_gguf, lm / tiny_gguf.name)
    odd_gguf(lm / "qwen2-0.5b.Q8_0.gguf", "qwen2")
    odd_gguf(home / "jan" / "models" / "llama3" / "llama-3-8b.Q4_0.gguf", "llama", "gpt2")
    env = {"HF_HOME": str(tmp_path / "hf"), "XDG_DATA_HOME": str(home / ".local" / "share")}
    return home, env


@pytest.fixture
def window(qtbot, home: Path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    win = make_window(qtbot, home)
    win.gguf_where = (home / "nobody", {"HF_HOME": str(home / "hf")})  # an empty home
    yield win
    win.close()


def rows(chooser) -> list:
    """(text, data, enabled, tooltip) of every row of the chooser's list."""
    out = []
    for i in range(chooser.items.count()):
        item = chooser.items.item(i)
        enabled = bool(item.flags() & Qt.ItemFlag.ItemIsEnabled)
        out.append((item.text(), item.data(Qt.ItemDataRole.UserRole) or {}, enabled,
                    item.toolTip()))  # fmt: skip
    return out


def row_of(chooser, match) -> int:
    for i, (text, data, _enabled, _tip) in enumerate(rows(chooser)):
        if match(text, data):
            return i
    raise AssertionError(f"no such row in {[r[0] for r in rows(chooser)]}")


def listed(qtbot, win):
    """The chooser, once its search for GGUF files has answered."""
    chooser = win.show_model_chooser()
    with qtbot.waitSignal(chooser.gguf_listed, timeout=30_000):
        pass
    return chooser


def drop(win, *paths: Path, on=None) -> QDropEvent:
    """Drop `paths` on the window (or on the widget `on`), as a file manager does."""
    target = on or win
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    mime.setText("\n".join(str(p) for p in paths))
    middle = QPoint(target.width() // 2, target.height() // 2)
    enter = QDragEnterEvent(middle, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)  # fmt: skip
    QApplication.sendEvent(target, enter)
    assert enter.isAccepted()
    event = QDropEvent(QPointF(middle), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)  # fmt: skip
    QApplication.sendEvent(target, event)
    return event


# -- the chooser's list of GGUF files ----------------------------------------------------------


def test_chooser_lists_the_gguf_files_found_and_greys_what_cannot_run(
    qtbot, window, fake_home, tiny_gguf: Path
) -> None:
    from engine.gguf.discover import find_gguf_files

    window.gguf_where = fake_home
    chooser = window.show_model_chooser()
    # The search runs in a helper thread: the dialog is up at once and says it is looking.
    texts = [r[0] for r in rows(chooser)]
    assert "GGUF files on this computer" in texts
    assert any("Looking for GGUF files…" in t for t in texts)
    with qtbot.waitSignal(chooser.gguf_listed, timeout=30_000):
        pass
    assert not any("Looking for GGUF files" in r[0] for r in rows(chooser))

    found = {f.name: f for f in find_gguf_files(*fake_home)}
    tiny = next(f for f in found.values() if f.runnable)
    row = row_of(chooser, lambda _t, d: d.get("kind") == "gguf")
    text, data, enabled, tip = rows(chooser)[row]
    assert enabled and data["path"] == str(tiny.path)
    assert text.split("   ·   ")[:4] == [tiny.name, tiny.quant, data_size(tiny), "LM Studio"]
    assert str(tiny.path) in tip

    qwen = rows(chooser)[row_of(chooser, lambda t, _d: "qwen2" in t)]
    assert not qwen[2]  # greyed: not selectable
    assert "Can't run" in qwen[0] and "architecture 'qwen2'" in qwen[0]
    assert "architecture 'qwen2'" in qwen[3]
    llama3 = rows(chooser)[row_of(chooser, lambda t, _d: "llama-3-8b" in t)]
    assert not llama3[2] and "Jan" in llama3[0]
    assert "Llama 3 files use a different tokenizer" in llama3[0]

    chooser.items.setCurrentRow(row)
    assert chooser.go_button.text() == "Open"
    assert "LM Studio" in chooser.details.text()
    assert not chooser.quant_row.isVisible()
    chooser.close()


def data_size(found) -> str:
    from engine.front_door import format_bytes

    return format_bytes(found.size_bytes)


def test_nothing_found_says_where_it_looked(qtbot, window, home: Path) -> None:
    chooser = listed(qtbot, window)
    note = next(r for r in rows(chooser) if "None found" in r[0])
    assert "Hugging Face cache" in note[0] and "LM Studio" in note[0] and "Ollama" in note[0]
    assert str(home / "nobody" / ".lmstudio" / "models") in note[3]  # the folders, in the tooltip
    assert not note[2]
    chooser.close()


def test_chooser_answers_while_the_search_runs(qtbot, window, fake_home, monkeypatch) -> None:
    import engine.front_door as front_door

    release, started = threading.Event(), threading.Event()
    real = front_door.find_gguf_files

    def slow(*args, **kwargs):
        started.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(front_door, "find_gguf_files", slow)
    window.gguf_where = fake_home
    chooser = window.show_model_chooser()
    try:
        assert started.wait(10)
        # The search is stuck, and the dialog still does what it is asked.
        gguf_row = row_of(chooser, lambda _t, d: d.get("repo_id") == TINY_REPO)
        chooser.items.setCurrentRow(gguf_row)
        qtbot.waitUntil(chooser.quant_row.isVisible, timeout=2000)
        assert any("Looking for GGUF files…" in r[0] for r in rows(chooser))
    finally:
        release.set()
    with qtbot.waitSignal(chooser.gguf_listed, timeout=30_000):
        pass
    assert chooser.items.currentRow() == gguf_row  # the answer kept the user's selection
    assert any(r[1].get("kind") == "gguf" for r in rows(chooser))
    chooser.close()


def test_closing_the_chooser_while_it_searches_is_safe(qtbot, window, fake_home, monkeypatch):
    import engine.front_door as front_door

    release = threading.Event()
    real = front_door.find_gguf_files
    monkeypatch.setattr(
        front_door, "find_gguf_files", lambda *a, **k: (release.wait(30), real(*a, **k))[1]
    )
    window.gguf_where = fake_home
    chooser = window.show_model_chooser()
    chooser.close()
    release.set()
    qtbot.wait(300)  # the answer arrives for a closed (deleted) dialog: dropped, no crash
    assert window.isVisible()


# -- the catalogue's GGUF repos ----------------------------------------------------------------


def test_catalogue_offers_each_quantization_with_its_size(qtbot, window) -> None:
    from desktop.catalogue import load_catalogue
    from engine.front_door import format_bytes

    gguf = [e for e in load_catalogue() if e["layout"] == "gguf"]
    assert {e["repo_id"] for e in gguf} >= {TINY_REPO, "TheBloke/Llama-2-7B-Chat-GGUF"}
    entry = next(e for e in gguf if e["repo_id"] == TINY_REPO)
    chooser = listed(qtbot, window)
    row = row_of(chooser, lambda _t, d: d.get("repo_id") == TINY_REPO)
    chooser.items.setCurrentRow(row)
    assert chooser.quant_row.isVisible()
    choice = chooser.quant_choice
    assert choice.count() == len(entry["files"])
    assert choice.currentData() == TINY_DEFAULT  # Q4_K_M unless another is picked
    assert "Q4_K_M" in choice.currentText() and "recommended" in choice.currentText()
    q8 = next(f for f in entry["files"] if f["filename"] == TINY_Q8)
    q8_index = choice.findData(TINY_Q8)
    assert format_bytes(q8["size_bytes"]) in choice.itemText(q8_index)
    assert chooser.items.item(row).text().split("   ·   ")[1] == "Q4_K_M"
    assert chooser.go_button.text() == "Download and open"
    choice.setCurrentIndex(q8_index)
    text = chooser.items.item(row).text()
    assert "Q8_0" in text and format_bytes(q8["size_bytes"]) in text
    assert chooser.entry()["file"] == TINY_Q8
    # Folder models have no choice of file.
    chooser.items.setCurrentRow(row_of(chooser, lambda _t, d: d.get("layout") == "hf"))
    assert not chooser.quant_row.isVisible()
    chooser.close()


def test_catalogue_file_fit_uses_the_file_size() -> None:
    from desktop.catalogue import file_fit_text, load_catalogue

    entry = next(e for e in load_catalogue() if e["repo_id"] == TINY_REPO)
    gb = 10**9
    assert file_fit_text(entry, 700_000_000, memory=(8 * gb, 16 * gb))[0] == "fits"
    assert file_fit_text(entry, 700_000_000, memory=(int(0.5 * gb), 16 * gb))[0] == "tight"
    assert file_fit_text(entry, 700_000_000, memory=(gb // 2, gb))[0] == "won't fit"


@pytest.fixture
def gguf_hub(monkeypatch, home: Path, tiny_gguf: Path):
    from tests.hub_server import FakeHub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    data = tiny_gguf.read_bytes()
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.add(TINY_REPO, files={TINY_DEFAULT: data, TINY_Q8: data, "README.md": b"# tiny"})
        yield server


def test_catalogue_download_fetches_one_file_and_opens_it(qtbot, window, gguf_hub) -> None:
    chooser = listed(qtbot, window)
    chooser.items.setCurrentRow(row_of(chooser, lambda _t, d: d.get("repo_id") == TINY_REPO))
    progress: list[dict] = []
    chooser.downloads.worker.progress.connect(progress.append)
    with qtbot.waitSignal(window.model_ready, timeout=120_000) as ready:
        qtbot.mouseClick(chooser.go_button, Qt.MouseButton.LeftButton)
    path = window.current_model_path()
    assert Path(path).name == TINY_DEFAULT and Path(path).is_file()
    assert ready.args[0].vocab_size > 0
    assert progress and progress[-1]["done"] == progress[-1]["total"]
    assert [r.path.rsplit("/", 1)[-1] for r in gguf_hub.gets() if r.path.endswith(".gguf")] == [
        TINY_DEFAULT
    ]  # the one quantization chosen, not the others
    # Listed as downloaded now, and opened without a second download.
    again = window.show_model_chooser()
    row = row_of(again, lambda _t, d: d.get("repo_id") == TINY_REPO)
    assert "downloaded" in again.items.item(row).text()
    again.items.setCurrentRow(row)
    assert again.go_button.text() == "Open"
    again.close()


def test_catalogue_download_can_be_cancelled(qtbot, window, gguf_hub) -> None:
    release = threading.Event()
    gguf_hub.hold[".gguf"] = release
    chooser = listed(qtbot, window)
    chooser.items.setCurrentRow(row_of(chooser, lambda _t, d: d.get("repo_id") == TINY_REPO))
    chooser.quant_choice.setCurrentIndex(chooser.quant_choice.findData(TINY_Q8))
    ended: list[str] = []
    worker = chooser.downloads.worker
    worker.failed.connect(lambda m: ended.append(f"failed: {m}"))
    worker.finished.connect(lambda p: ended.append(f"finished: {p}"))
    qtbot.mouseClick(chooser.go_button, Qt.MouseButton.LeftButton)
    assert chooser.cancel_button.isVisible() and TINY_Q8 in chooser.progress_label.text()
    with qtbot.waitSignal(worker.cancelled, timeout=20_000, raising=False) as cancelled:
        qtbot.mouseClick(chooser.cancel_button, Qt.MouseButton.LeftButton)
        release.set()
    assert cancelled.signal_triggered, ended
    qtbot.waitUntil(lambda: "cancelled" in chooser.error.text(), timeout=5000)
    assert chooser.entry()["path"] is None
    assert chooser.go_button.text() == "Download and open"
    chooser.close()


# -- opening a file: File → Open model file…, drag and drop ------------------------------------


def test_open_model_file_action_opens_a_gguf_file(qtbot, window, tiny_gguf: Path, monkeypatch):
    import desktop.menus as menus

    asked = {}

    def pick(_parent, _title, _folder, filters):
        asked["filters"] = filters
        return str(tiny_gguf), filters

    monkeypatch.setattr(menus.QFileDialog, "getOpenFileName", staticmethod(pick))
    action = window.menus.open_file_action
    assert action in window.menus.file_menu.actions()
    file_actions = window.menus.file_menu.actions()
    assert file_actions.index(action) == file_actions.index(window.menus.open_action) + 1
    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        action.trigger()
    assert "*.gguf" in asked["filters"]
    assert window.current_model_path() == str(tiny_gguf)


def test_dropping_a_gguf_file_or_a_folder_opens_it(
    qtbot, window, tiny_gguf: Path, tiny_model_dir: Path
) -> None:
    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        drop(window, tiny_gguf)
    assert window.current_model_path() == str(tiny_gguf)
    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        drop(window, tiny_model_dir)
    assert window.current_model_path() == str(tiny_model_dir)
    # Dropped on the message box, the file opens too (its path is not pasted as text).
    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        drop(window, tiny_gguf, on=window.input.viewport())
    assert window.current_model_path() == str(tiny_gguf)
    assert window.input.toPlainText() == ""


def test_dropping_something_else_says_so(qtbot, window, home: Path) -> None:
    text = home / "notes.txt"
    text.write_text("not a model")
    fake = home / "broken.gguf"
    fake.write_bytes(b"NOPE" + bytes(60))
    notices: list[str] = []
    window.error_shown.connect(notices.append)
    drop(window, text)
    assert "Loopchat cannot open notes.txt" in notices[-1]
    assert ".gguf" in notices[-1]
    drop(window, fake)
    assert "cannot open broken.gguf: it is not a GGUF file" in notices[-1]
    assert not window.models.in_progress and window.current_model_path() == ""


# -- Recent models and Models → Weights --------------------------------------------------------


def weights_shown(win) -> dict[str, tuple[str, bool]]:
    """The Weights menu's visible entries: quant -> (text, checked)."""
    return {
        quant: (action.text().replace("&", ""), action.isChecked())
        for quant, action in win.menus.weights_actions.items()
        if action.isVisible()
    }


def test_recent_and_weights_for_a_gguf_file(qtbot, window, tiny_gguf: Path, tiny_model_dir):
    from desktop.model_loading import weights_for

    with qtbot.waitSignal(window.model_ready, timeout=120_000) as ready:
        window.load_model(str(tiny_gguf))
    assert window.models.loaded_quant() == "file"
    shown = weights_shown(window)
    assert set(shown) == {"file", "none"}  # no 8/4-bit requantization of a GGUF file
    quant = ready.args[0].extra["file_format"].removeprefix("GGUF ")  # as the loader read it
    assert shown["file"] == (f"As in the file ({quant})", True)
    assert shown["none"][0] == f"Dequantized ({ready.args[0].dtype})"

    window.menus.refresh_recent()
    recent = window.menus.recent_menu.actions()
    assert recent[0].text() == tiny_gguf.name and recent[0].data() == str(tiny_gguf)
    assert recent[0].toolTip() == str(tiny_gguf)

    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        window.menus.weights_actions["none"].trigger()
    assert window.models.loaded_quant() == "none"
    assert weights_shown(window)["none"][1]
    assert weights_for(window.settings, str(tiny_gguf)) == "none"  # remembered for this file

    # A folder shows its own formats; the file keeps its choice for next time.
    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        window.load_model(str(tiny_model_dir))
    assert set(weights_shown(window)) == {"none", "int8", "int4"}
    assert weights_shown(window)["none"][0] == "16-bit (as the model ships)"
    action = next(a for a in window.menus.recent_menu.actions() if a.data() == str(tiny_gguf))
    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        action.trigger()
    assert window.models.loaded_quant() == "none"

    # The chooser lists it under "Opened before" as a GGUF file.
    chooser = window.show_model_chooser()
    row = rows(chooser)[row_of(chooser, lambda _t, d: d.get("path") == str(tiny_gguf))]
    assert "GGUF file" in row[0] and "open now" in row[0]
    chooser.close()


def test_weights_remembered_per_gguf_file(tmp_path: Path) -> None:
    from desktop.model_loading import (
        default_weights,
        offered_weights,
        quant_in_name,
        remember_weights,
        weights_for,
    )

    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    gguf, folder = "/m/llama-2-7b-chat.Q4_K_M.gguf", "/m/llama"
    assert default_weights(gguf) == "file" and offered_weights(gguf) == ("file", "none")
    assert default_weights(folder) == "none" and "int4" in offered_weights(folder)
    assert weights_for(settings, gguf) == "file"
    remember_weights(settings, gguf, "int4")  # not a GGUF format: the default stays
    assert weights_for(settings, gguf) == "file"
    remember_weights(settings, gguf, "none")
    assert weights_for(settings, gguf) == "none" and weights_for(settings, folder) == "none"
    remember_weights(settings, gguf, "file")
    assert settings.allKeys() == []  # the default is no key at all
    assert quant_in_name(gguf) == "Q4_K_M" and quant_in_name("/m/x.gguf") == ""


def test_blocks_without_a_kernel_are_said_in_the_window(
    qtbot, window, tmp_path: Path, tokenizer_path: Path
) -> None:
    """A file whose blocks Loopchat converts while loading (Q5_0 → Q8_0) opens, and says so."""
    from tests.fixtures.gguf_files import k_quant_llama, mostly, write_gguf

    path = write_gguf(
        k_quant_llama(seed=9), tmp_path / "mixed.Q5_0.gguf", tokenizer_path, mostly("Q5_0"),
        file_type=8,
    )  # fmt: skip
    with qtbot.waitSignal(window.model_ready, timeout=120_000) as ready:
        window.load_model(str(path))
    assert ready.args[0].extra["file_format"] == "GGUF Q5_0"
    assert window.banner.isVisible()
    text = window.banner.label.text()
    assert "Q5_0 tensors run as Q8_0 (Loopchat has no Q5_0 kernel yet)." in text, text
