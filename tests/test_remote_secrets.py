"""A server's API key lives in the keyring and nowhere else (issue 24).

Through the real window against a real llama.cpp server (tests/fixtures/llama_server.py): add a
server with a distinctive key, chat with its model, export the conversation, then read every
file the app wrote — settings, the conversations database, the exports, the log — for the key.
The keyring is an in-memory test backend (tests/fixtures/memory_keyring.py), never the real one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from desktop.servers import KEYRING_SERVICE, NO_KEYRING, remote_path
from tests.fixtures.llama_server import llama_server, llama_server_handle  # noqa: F401
from tests.fixtures.memory_keyring import memory_keyring, no_keyring  # noqa: F401
from tests.window_helpers import ask, greedy, make_window

pytestmark = pytest.mark.timeout(300)

KEY = "sk-loopchat-7f3a9c-DO-NOT-LEAK-5e1b"


def add_server(qtbot, win, url: str, key: str = "", name: str = "Test server"):
    """Add a server through Models → Servers… as a user does; returns (dialog, server)."""
    dialog = win.show_servers()
    dialog.new_server()
    dialog.name.setText(name)
    dialog.url.setText(url)
    dialog.key.setText(key)
    saved = []
    win.servers.keys.saved.connect(lambda server_id, _problem: saved.append(server_id))
    server = dialog.save()
    assert server is not None, dialog.result.text()
    if key:
        qtbot.waitUntil(lambda: server.id in saved, timeout=10_000)
    return dialog, server


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def test_api_key_is_only_in_the_keyring(qtbot, home, llama_server, memory_keyring):  # noqa: F811
    from desktop.app import setup_logging

    setup_logging()  # the app's own log file, under LOOPCHAT_HOME
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)  # every line any part logs
    try:
        win = make_window(qtbot, home)
        dialog, server = add_server(qtbot, win, llama_server, KEY)
        assert dialog.key.text() == ""  # the field does not keep it
        assert memory_keyring.passwords[(KEYRING_SERVICE, server.id)] == KEY
        model = _first_model(qtbot, win)
        with qtbot.waitSignal(win.model_ready, timeout=120_000) as ready:
            win.load_model(remote_path(server.id, model))
        assert KEY not in repr(ready.args[0])  # nothing the engine thread reports holds it
        greedy(win, 6)
        result = ask(qtbot, win, "Hello there")
        assert not result.get("error"), result.get("error")
        assert win.conversation_id is not None
        exports = home / "exports"
        exports.mkdir()
        win.export_conversation(win.conversation_id, exports / "chat.md", "md")
        win.export_conversation(win.conversation_id, exports / "chat.json", "json")
        win.settings.sync()
        win.close()
    finally:
        root.setLevel(level)
        for handler in list(root.handlers):
            if isinstance(handler, logging.FileHandler):
                root.removeHandler(handler)
                handler.close()
    app_home = home / "home"
    files = files_under(app_home, exports, home)
    names = {p.name for p in files}
    assert "loopchat.ini" in names and "chat.md" in names and "chat.json" in names
    assert any(p.suffix == ".log" for p in files), names
    assert any(p.suffix in (".db", ".sqlite", ".sqlite3") for p in files), names
    needle = KEY.encode()
    leaked = [str(p) for p in files if needle in p.read_bytes()]
    assert leaked == []
    assert memory_keyring.passwords[(KEYRING_SERVICE, server.id)] == KEY


def _first_model(qtbot, win) -> str:
    """The first model the chooser lists under Servers (asked in the background)."""
    chooser = win.show_model_chooser()
    qtbot.waitUntil(lambda: bool(chooser.server_rows.model_rows()), timeout=30_000)
    model = chooser.server_rows.model_rows()[0]["path"].split("/", 1)[1]
    chooser.close()
    return model


def test_removing_a_server_removes_its_key(qtbot, home, memory_keyring):  # noqa: F811
    win = make_window(qtbot, home)
    dialog, server = add_server(qtbot, win, "http://127.0.0.1:9/v1", KEY)
    assert (KEYRING_SERVICE, server.id) in memory_keyring.passwords
    removed = []
    win.servers.keys.saved.connect(lambda server_id, _p: removed.append(server_id))
    dialog.list.setCurrentRow(0)
    qtbot.mouseClick(dialog.remove_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: server.id in removed, timeout=10_000)
    assert (KEYRING_SERVICE, server.id) not in memory_keyring.passwords
    assert win.servers.servers() == []


def test_without_a_keyring_the_key_stays_in_memory(qtbot, home, no_keyring):  # noqa: F811
    """No keyring backend: the dialog says the key is kept for this session only, and the key
    still reaches the server this session (never the settings file)."""
    win = make_window(qtbot, home)
    dialog, server = add_server(qtbot, win, "http://127.0.0.1:9/v1", KEY)
    qtbot.waitUntil(lambda: dialog.key_note.text() == NO_KEYRING, timeout=10_000)
    assert win.servers.directory.connection(server.id) == (server, KEY)
    win.settings.sync()
    assert KEY not in (home / "loopchat.ini").read_text()
