"""Chatting with a model on a server through the real window (issue 24).

The server is a real llama.cpp server (llama-cpp-python) serving the built-in model on
127.0.0.1, started once for the session (tests/fixtures/llama_server.py); faults come from a
small proxy in front of it (tests/fixtures/fault_proxy.py). Everything goes through the window
as a user drives it: Models → Servers…, the model chooser, the message box, Stop, Regenerate,
the top-k panel's Branch, step mode, the attention view.
"""

from __future__ import annotations

import socket

import pytest
from PySide6.QtCore import Qt

from desktop.views.servers_dialog import PLAIN_HTTP_REFUSED
from tests.fixtures.llama_server import llama_server, llama_server_handle  # noqa: F401
from tests.fixtures.memory_keyring import memory_keyring  # noqa: F401
from tests.test_remote_secrets import add_server
from tests.window_helpers import ask, branch_to_row, greedy, make_window

pytestmark = pytest.mark.timeout(300)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_remote(qtbot, win, server) -> tuple[object, str]:
    """Choose the server's first model in the chooser (listed in the background) and wait for
    it to load; returns (ModelInfo, its path)."""
    chooser = win.show_model_chooser()
    qtbot.waitUntil(lambda: bool(chooser.server_rows.model_rows()), timeout=30_000)
    entry = next(e for e in chooser.server_rows.model_rows() if f":{server.id}/" in e["path"])
    row = next(
        r
        for r in range(chooser.items.count())
        if (chooser.items.item(r).data(Qt.ItemDataRole.UserRole) or {}).get("path") == entry["path"]
    )
    chooser.items.setCurrentRow(row)
    assert "remote" in chooser.items.item(row).text()
    with qtbot.waitSignal(win.model_ready, timeout=120_000) as ready:
        qtbot.mouseClick(chooser.go_button, Qt.MouseButton.LeftButton)
    return ready.args[0], entry["path"]


@pytest.fixture
def remote_win(qtbot, home, llama_server, memory_keyring):  # noqa: F811
    """A window with the session's server added (through the dialog) and its model open."""
    win = make_window(qtbot, home)
    dialog, server = add_server(qtbot, win, llama_server)
    with qtbot.waitSignal(dialog.tested, timeout=30_000) as tested:
        qtbot.mouseClick(dialog.test_button, Qt.MouseButton.LeftButton)
    assert tested.args[0].startswith("Connected: "), tested.args[0]
    dialog.close()
    info, path = open_remote(qtbot, win, server)
    win.remote_server, win.remote_path = server, path
    return win


# -- the dialog, no server needed ----------------------------------------------------------


def test_plain_http_to_another_computer_asks_once(qtbot, home, memory_keyring):  # noqa: F811
    win = make_window(qtbot, home)
    dialog = win.show_servers()
    dialog.name.setText("Far away")
    dialog.url.setText("http://192.0.2.10:8000/v1")  # TEST-NET-1: never reached
    assert dialog.plain_http.isVisible()
    assert dialog.save() is None
    assert dialog.result.text() == PLAIN_HTTP_REFUSED
    dialog.plain_http.setChecked(True)
    server = dialog.save()
    assert server is not None and server.plain_http_ok
    dialog.close()
    again = win.show_servers()  # remembered: asked once
    again.list.setCurrentRow(0)
    assert again.plain_http.isChecked()
    # This computer is never asked about; https never shows the box.
    again.new_server()
    again.url.setText("http://127.0.0.1:8000/v1")
    assert not again.plain_http.isVisible()
    again.url.setText("https://llm.example.org/v1")
    assert not again.plain_http.isVisible()


def test_a_url_with_credentials_is_refused(qtbot, home, memory_keyring):  # noqa: F811
    win = make_window(qtbot, home)
    dialog = win.show_servers()
    dialog.url.setText("https://me:sk-secret@llm.example.org/v1")
    assert dialog.save() is None
    assert "API key" in dialog.result.text()
    assert "sk-secret" not in dialog.result.text()
    assert win.servers.servers() == []


def test_test_connection_says_why_it_failed(qtbot, home, memory_keyring):  # noqa: F811
    win = make_window(qtbot, home)
    dialog = win.show_servers()
    dialog.url.setText(f"http://127.0.0.1:{closed_port()}/v1")
    with qtbot.waitSignal(dialog.tested, timeout=30_000) as tested:
        qtbot.mouseClick(dialog.test_button, Qt.MouseButton.LeftButton)
    text = tested.args[0]
    assert text.startswith("Could not connect: ") and "\n" not in text
    assert dialog.test_button.isEnabled()


def test_an_unreachable_server_is_listed_greyed_in_the_chooser(qtbot, home, memory_keyring):  # noqa: F811
    win = make_window(qtbot, home)
    add_server(qtbot, win, f"http://127.0.0.1:{closed_port()}/v1", name="Offline box")
    chooser = win.show_model_chooser()

    def greyed_row():
        for r in range(chooser.items.count()):
            item = chooser.items.item(r)
            if "Offline box: can't list its models" in item.text():
                return item
        return None

    qtbot.waitUntil(lambda: greyed_row() is not None, timeout=30_000)
    assert greyed_row().flags() == Qt.ItemFlag.NoItemFlags


def test_what_a_server_names_is_shown_as_data(qtbot, home, memory_keyring):  # noqa: F811
    """A model id with markup in it is listed and described as text, never rendered."""
    win = make_window(qtbot, home)
    _dialog, server = add_server(qtbot, win, f"http://127.0.0.1:{closed_port()}/v1")
    chooser = win.show_model_chooser()
    hostile = "<img src='http://example.org/x.png'><b>bold</b>"
    win.server_models.listed.emit(server.id, [hostile])
    rows = chooser.server_rows.model_rows()
    assert len(rows) == 1
    row = next(
        r
        for r in range(chooser.items.count())
        if (chooser.items.item(r).data(Qt.ItemDataRole.UserRole) or {}).get("kind") == "remote"
    )
    assert chooser.items.item(row).text().startswith(hostile)
    chooser.items.setCurrentRow(row)
    assert "&lt;img" in chooser.details.text() and "<img" not in chooser.details.text()
    assert rows[0]["path"].endswith("/" + hostile)


def test_what_the_backend_cannot_do_is_greyed_with_its_reason(qtbot, home):
    """A server without a tokenizer endpoint: no step mode, branches or tint; each control says
    why (the engine's own notes), and nothing is asked of the engine."""
    from engine.events import ModelInfo

    win = make_window(qtbot, home)
    notes = {
        "step_mode": "step mode needs the server's token ids (it has no tokenizer endpoint)",
        "branches": "branches need the server's token ids",
        "surprisal": "the server gives no prompt log-probabilities",
        "attention": "attention weights are not available from a server",
    }
    capabilities = {name: False for name in notes}
    info = ModelInfo(
        "m · Box", "remote", "remote", "server", 1024,
        extra={"capabilities": capabilities, "capability_notes": notes, "server": "Box"},
    )  # fmt: skip
    win.models.info = info
    win.models.loaded.emit(info, "")
    assert not win.step_mode.action.isEnabled()
    assert win.step_mode.action.toolTip().startswith("Step mode needs the server's token ids")
    assert not win.step_mode.next_token_button.isEnabled()
    assert not win.surprisal.action.isEnabled()
    assert "prompt log-probabilities" in win.surprisal.action.toolTip()
    assert not win.topk.branchable
    assert win.attention.view.title.text() == "Attention weights are not available from a server."
    notices = []
    win.error_shown.connect(notices.append)
    win.step_mode.next_token()
    assert notices[-1].startswith("Step mode needs")
    summary = win.pane.model_bar.summary
    assert (summary.name, summary.format) == ("m", "on Box")


# -- chatting through a real server --------------------------------------------------------


def test_chat_streams_with_the_top_k_panel(qtbot, remote_win):
    win = remote_win
    info = win.model_info
    assert "Test server" in info.name
    assert "Test server" in win.pane.model_bar.full_text()
    shown = []
    win.token_shown.connect(shown.append)
    greedy(win, 8)
    result = ask(qtbot, win, "Hello")
    assert not result.get("error"), result.get("error")
    assert result.generated_tokens == len(shown) > 0
    assert win.history[-1]["content"] == result.text
    rows = win.topk.shown_rows()
    assert rows and any(chosen for *_rest, chosen in rows)
    assert all(0.0 <= prob <= 1.0 for _id, _text, prob, _chosen in rows)
    # Recent models remember it by "model · server name".
    win.menus.refresh_recent()
    names = [a.text() for a in win.menus.recent_menu.actions()]
    assert any(name.endswith(" · Test server") for name in names), names


def test_attention_view_is_greyed_with_its_reason(qtbot, remote_win):
    win = remote_win
    view = win.attention.view
    assert view.unavailable
    assert "attention" in view.unavailable.lower()
    assert not view.layer.isEnabled() and not view.text.isEnabled()
    win.attention.action.setChecked(True)
    assert view.title.text().startswith(view.unavailable)
    greedy(win, 4)
    ask(qtbot, win, "Hi")
    card = win.chat.messages[-1]
    assert win.attention.select(card, 0) is None  # nothing is asked of the server


def test_stop_mid_reply_keeps_what_streamed(qtbot, remote_win):
    win = remote_win
    greedy(win, 200)
    win.sampling.temperature.setValue(1.0)  # a long reply, so Stop lands mid-way
    win.input.setPlainText("Tell me a long story")

    def stop_after_two(step) -> None:
        if step.index == 1:
            win.stop()

    win.token_shown.connect(stop_after_two)
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as done:
        qtbot.keyClick(win.input, Qt.Key.Key_Return)
    result = done.args[0]
    assert result.stop_reason == "cancelled", result
    assert 2 <= result.generated_tokens < 200
    assert win.history[-1]["role"] == "assistant" and win.history[-1]["content"]
    assert not win.controller.busy


def test_regenerate_and_branch_from_another_token(qtbot, remote_win):
    win = remote_win
    greedy(win, 6)
    first = ask(qtbot, win, "Hello")
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as again:
        win.regenerate()
    assert again.args[0].text == first.text  # greedy: the same reply, a second version
    reply = win.session.turns[-1]
    assert (reply.version, reply.versions) == (2, 2)
    if win.chat_screen.branches_unavailable:
        pytest.skip(win.chat_screen.branches_unavailable)
    step = win.session.turns[-1].steps[0]
    alternative = next(t for t in step.top if t.token_id != step.token_id)
    win.topk.show_step(step)
    win.topk.flush_now()
    row = next(i for i, r in enumerate(win.topk.shown_rows()) if r[0] == alternative.token_id)
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as branched:
        branch_to_row(qtbot, win, row)
    assert not branched.args[0].get("error"), branched.args[0].get("error")
    new = win.session.turns[-1]
    assert new.steps[0].token_id == alternative.token_id
    assert (new.version, new.versions) == (3, 3)
    assert new.branched_at == 0


def test_step_mode_one_token_per_click(qtbot, remote_win):
    win = remote_win
    if win.step_mode.unavailable:
        assert not win.step_mode.action.isEnabled()
        pytest.skip(win.step_mode.unavailable)
    greedy(win, 5)
    win.input.setPlainText("Hello")
    with qtbot.waitSignal(win.controller.generation_paused, timeout=120_000):
        win.step_mode.next_token()
    assert len(win.session.reply.steps) == 1
    with qtbot.waitSignal(win.controller.generation_paused, timeout=120_000):
        win.step_mode.next_token()
    assert len(win.session.reply.steps) == 2
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as done:
        win.step_mode.continue_reply()
    assert not done.args[0].get("error"), done.args[0].get("error")


# -- faults --------------------------------------------------------------------------------


@pytest.fixture
def proxy(llama_server):  # noqa: F811
    from tests.fixtures.fault_proxy import FaultProxy

    proxy = FaultProxy(llama_server)
    yield proxy
    proxy.close()


def test_a_reply_cut_by_the_server_keeps_its_text_and_offers_retry(
    qtbot,
    home,
    proxy,
    memory_keyring,  # noqa: F811
):
    win = make_window(qtbot, home)
    _dialog, server = add_server(qtbot, win, proxy.base_url, name="Flaky server")
    open_remote(qtbot, win, server)
    greedy(win, 60)
    proxy.set("cut", cut_after=6000)
    errors = []
    win.error_shown.connect(errors.append)
    result = ask(qtbot, win, "Tell me about loops")
    assert result.stop_reason == "error" and result.error
    reply = win.session.turns[-1]
    assert reply.role == "assistant" and reply.content  # what streamed is kept
    card = win.chat.messages[-1]
    assert "cut off" in card.meta_label.toolTip()
    assert errors and errors[-1].startswith("Cut off: ")
    assert win.banner.isVisible() and win.banner.action.text() == "Retry"
    assert not win.controller.busy and win.input.isEnabled()
    proxy.set("pass")
    with qtbot.waitSignal(win.reply_finished, timeout=120_000) as retried:
        qtbot.mouseClick(win.banner.action, Qt.MouseButton.LeftButton)
    assert not retried.args[0].get("error"), retried.args[0].get("error")
    assert win.history[-1]["content"] == retried.args[0].text


def test_stop_closes_the_connection_at_once(qtbot, home, proxy, memory_keyring):  # noqa: F811
    """Stop while the server holds its first byte: the window is free at once and the proxy
    sees the connection closed (nothing left waiting on the server)."""
    import time

    win = make_window(qtbot, home)
    _dialog, server = add_server(qtbot, win, proxy.base_url, name="Slow server")
    open_remote(qtbot, win, server)
    greedy(win, 20)
    proxy.set("delay", delay_s=30.0)
    win.input.setPlainText("Hello")
    qtbot.keyClick(win.input, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: bool(proxy.requests()), timeout=30_000)
    started = time.monotonic()
    with qtbot.waitSignal(win.reply_finished, timeout=10_000):
        win.stop()
    assert time.monotonic() - started < 3.0
    qtbot.waitUntil(lambda: proxy.requests()[0].closed_by_client is not None, timeout=5_000)


def test_a_remote_reply_is_saved_at_every_chunk(qtbot, remote_win):
    """A server can drop the connection at any moment: every token it sent is on disk as soon as
    it is shown (a local reply is saved in batches of 32 or every second)."""
    win = remote_win
    greedy(win, 12)
    saved: list[tuple[int, int]] = []

    def count_saved(step) -> None:
        reply = win.session.reply
        saved.append((step.index + 1, len(win.store.get_steps(reply.message_id))))

    win.token_shown.connect(count_saved)
    ask(qtbot, win, "Hello")
    assert saved and all(on_disk == shown for shown, on_disk in saved), saved
