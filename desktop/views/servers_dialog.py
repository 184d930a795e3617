"""Models → Servers…: add, edit and remove the OpenAI-compatible servers Loopchat can chat
through (vLLM, llama.cpp's server, Ollama, TGI…).

Each server has a name, a base URL and an optional API key, typed in a password field and kept
in the system keyring (desktop.servers), never in Loopchat's files. "Test connection" lists the
server's models in the background and shows them, or the one-line reason it could not. Plain
`http://` to anything but this computer needs a tick in a box, once (remembered per server);
certificates of `https://` servers are always checked. Nothing here waits on the network or the
keyring: the dialog never blocks the window.
"""

from __future__ import annotations

import itertools

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop.server_models import ServerModels
from desktop.servers import IN_KEYRING, Server, ServerList, has_credentials

PLAIN_HTTP_TEXT = (
    "Allow plain HTTP to this server: the API key and the conversation travel unencrypted"
)
PLAIN_HTTP_REFUSED = (
    "This address is plain http:// to another computer: anyone on the network could read the "
    "key and the chat. Tick “Allow plain HTTP” to use it anyway, or use https://."
)
MAX_SHOWN_MODELS = 8


def needs_consent(url: str) -> bool:
    """Plain `http://` to anything but this computer (asked once per server)."""
    from engine.front_door import is_local_url

    return url.strip().lower().startswith("http://") and not is_local_url(url.strip())


def url_problem(url: str) -> str:
    """Why `url` cannot be a server's base URL ("" when it can)."""
    from engine.front_door import EngineError, check_base_url

    if not url.strip():
        return "Type the server's base URL, e.g. http://localhost:8000/v1."
    if has_credentials(url):
        return (
            "Take the user name and password out of the URL: put the key in the API key field "
            "(it is kept in the keyring, never in Loopchat's files)."
        )
    try:
        check_base_url(url.strip())
    except EngineError as exc:
        return str(exc)
    return ""


def models_text(models: list[str]) -> str:
    """The result of a test: how many models, and the first few by name."""
    if not models:
        return "Connected, but the server lists no models."
    shown = ", ".join(models[:MAX_SHOWN_MODELS])
    more = f" and {len(models) - MAX_SHOWN_MODELS} more" if len(models) > MAX_SHOWN_MODELS else ""
    noun = "model" if len(models) == 1 else "models"
    return f"Connected: {len(models)} {noun} — {shown}{more}."


class ServersDialog(QDialog):
    """The server list on the left, the chosen server's fields on the right."""

    tested = Signal(str)
    """The result line of "Test connection", once shown (tests, screenshots)."""

    def __init__(self, servers: ServerList, models: ServerModels, parent: QWidget | None = None):
        super().__init__(parent)
        self.servers, self.models = servers, models
        self._tokens = itertools.count(1)
        self._test_token = ""
        self._editing: Server | None = None
        self.setWindowTitle("Servers")
        self.setMinimumSize(640, 380)
        intro = QLabel(
            "Chat with models served elsewhere — vLLM, llama.cpp's server, Ollama or any "
            "OpenAI-compatible server. Their models appear in the model chooser under Servers."
        )
        intro.setWordWrap(True)
        self.list = QListWidget()
        self.list.setMinimumWidth(180)
        self.list.currentItemChanged.connect(self._selected)
        self.name = QLineEdit()
        self.name.setPlaceholderText("e.g. Lab GPU box")
        self.url = QLineEdit()
        self.url.setPlaceholderText("http://localhost:8000/v1 or https://…")
        self.url.textChanged.connect(self._url_changed)
        self.key = QLineEdit()
        self.key.setEchoMode(QLineEdit.EchoMode.Password)
        self.key.setPlaceholderText("Optional")
        self.plain_http = QCheckBox(PLAIN_HTTP_TEXT)
        self.plain_http.hide()
        self.key_note = QLabel(IN_KEYRING)
        self.key_note.setWordWrap(True)
        self.key_note.setTextFormat(Qt.TextFormat.PlainText)
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setTextFormat(Qt.TextFormat.PlainText)  # a server's words are data
        self.result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("Base URL", self.url)
        form.addRow("API key", self.key)
        form.addRow("", self.plain_http)
        form.addRow("", self.key_note)

        self.add_button = QPushButton("New server")
        self.add_button.clicked.connect(self.new_server)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)
        self.save_button = QPushButton("Save")
        self.save_button.setObjectName("primary")
        self.save_button.setDefault(True)
        self.save_button.clicked.connect(self.save)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.accept)

        right = QVBoxLayout()
        right.addLayout(form)
        right.addWidget(self.result)
        right.addStretch(1)
        tests = QHBoxLayout()
        tests.addWidget(self.test_button)
        tests.addStretch(1)
        tests.addWidget(self.save_button)
        right.addLayout(tests)
        left = QVBoxLayout()
        left.addWidget(self.list, 1)
        row = QHBoxLayout()
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        left.addLayout(row)
        columns = QHBoxLayout()
        columns.addLayout(left, 2)
        columns.addLayout(right, 3)
        bottom = QHBoxLayout()
        bottom.addStretch(1)
        bottom.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(columns, 1)
        layout.addLayout(bottom)

        models.listed.connect(self._on_listed)
        models.failed.connect(self._on_failed)
        servers.keys.saved.connect(self._on_key_saved)
        servers.keys.probe()
        self._fill()
        if self.list.count():
            self.list.setCurrentRow(0)
        else:
            self.new_server()

    # -- the list ----------------------------------------------------------------------------

    def _fill(self, select: str = "") -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for server in self.servers.servers():
            item = QListWidgetItem(server.name)
            item.setToolTip(server.base_url)
            item.setData(Qt.ItemDataRole.UserRole, server.id)
            self.list.addItem(item)
            if server.id == select:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        self.remove_button.setEnabled(self.list.currentItem() is not None)

    def _selected(self, item: QListWidgetItem | None, _previous=None) -> None:
        server = self.servers.get(item.data(Qt.ItemDataRole.UserRole)) if item else None
        self._show(server)

    def _show(self, server: Server | None) -> None:
        self._editing = server
        self.name.setText(server.name if server else "")
        self.url.setText(server.base_url if server else "")
        self.key.clear()
        self.key.setPlaceholderText(
            "Leave empty to keep the saved key (if any)" if server else "Optional"
        )
        self.plain_http.setChecked(bool(server and server.plain_http_ok))
        self._url_changed(self.url.text())
        self.result.clear()
        self.remove_button.setEnabled(server is not None)

    def new_server(self) -> None:
        """Empty fields for a server to add."""
        self.list.clearSelection()
        self.list.setCurrentItem(None)
        self._show(None)
        self.name.setFocus()

    def remove_selected(self) -> None:
        if self._editing is None:
            return
        name = self._editing.name
        self.servers.remove(self._editing.id)
        self._fill()
        self.new_server()
        self.result.setText(f"Removed {name} (and its key).")

    # -- the fields ----------------------------------------------------------------------------

    def _url_changed(self, text: str) -> None:
        try:
            ask = needs_consent(text)
        except Exception:  # noqa: BLE001 - half-typed URL: nothing to ask yet
            ask = False
        self.plain_http.setVisible(ask)

    def save(self) -> Server | None:
        """Add or update the server from the fields; returns it (None when refused, the reason
        shown)."""
        url = self.url.text().strip()
        problem = url_problem(url)
        if problem:
            self.result.setText(problem)
            return None
        if needs_consent(url) and not self.plain_http.isChecked():
            self.plain_http.show()
            self.result.setText(PLAIN_HTTP_REFUSED)
            return None
        name = self.name.text().strip() or url
        allowed = self.plain_http.isChecked() and needs_consent(url)
        key = self.key.text()
        self.key.clear()  # the field does not keep it once handed to the keyring
        if self._editing is None:
            server = self.servers.add(name, url, key, allowed)
        else:
            server = Server(self._editing.id, name, url, allowed)
            self.servers.update(server, key or None)
        self._fill(select=server.id)
        self._editing = server
        self.remove_button.setEnabled(True)
        self.key.setPlaceholderText("Leave empty to keep the saved key (if any)")
        self.result.setText(f"Saved {name}.")
        return server

    def test_connection(self) -> None:
        """List the server's models in the background; the answer shows below the fields."""
        url = self.url.text().strip()
        problem = url_problem(url)
        if problem:
            self._show_result(problem)
            return
        if needs_consent(url) and not self.plain_http.isChecked():
            self.plain_http.show()
            self._show_result(PLAIN_HTTP_REFUSED)
            return
        self._test_token = f"test:{next(self._tokens)}"
        self.result.setText("Connecting…")
        self.test_button.setEnabled(False)
        saved = self._editing.id if self._editing is not None else ""
        self.models.test(self._test_token, url, self.key.text() or None, keep_key_of=saved)

    def _on_listed(self, token: str, models: object) -> None:
        if token == self._test_token:
            self._show_result(models_text(list(models)))  # type: ignore[arg-type]

    def _on_failed(self, token: str, message: str) -> None:
        if token == self._test_token:
            self._show_result(f"Could not connect: {message}")

    def _show_result(self, text: str) -> None:
        self._test_token = ""
        self.test_button.setEnabled(True)
        self.result.setText(text)
        self.tested.emit(text)

    def _on_key_saved(self, _server_id: str, problem: str) -> None:
        self.key_note.setText(problem or IN_KEYRING)
