"""Listing a server's models (`/v1/models`) in the background, so no dialog ever waits on the
network: the model chooser's "Servers" section and the Servers dialog's "Test connection".

Each request runs on its own short-lived thread (the HTTP client has its own time limits) and
answers with `listed(token, models)` or `failed(token, message)` on the GUI thread. The key is
read from the keyring in that thread, never passed through a signal.
"""

from __future__ import annotations

import logging
import threading

from PySide6.QtCore import QObject, Signal

from desktop.servers import Server, ServerDirectory

log = logging.getLogger(__name__)


def _list(base_url: str, api_key: str | None) -> list[str]:
    from engine.front_door import list_models

    return [str(m) for m in list_models(base_url, api_key)]


def error_text(exc: BaseException) -> str:
    """One line for the window (an EngineError's own message; anything else named)."""
    from engine.front_door import EngineError

    if isinstance(exc, EngineError):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else "the server failed"
    return f"Unexpected error: {type(exc).__name__}"


class ServerModels(QObject):
    """Asks servers for their models in background threads; the answers come as signals."""

    listed = Signal(str, object)  # token, list[str] of model ids
    failed = Signal(str, str)  # token, one-line message

    def __init__(self, directory: ServerDirectory, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.directory = directory

    def list_server(self, server_id: str) -> None:
        """The models of a saved server; answers with `server_id` as the token."""
        self._start(server_id, lambda: self._saved(server_id))

    def test(self, token: str, base_url: str, api_key: str | None, keep_key_of: str = "") -> None:
        """The models at `base_url` with the key typed in the dialog (or, when none was typed,
        the saved key of `keep_key_of`)."""

        def run() -> list[str]:
            key = api_key
            if not key and keep_key_of:
                key = self.directory.keys.key(keep_key_of)
            return _list(base_url, key)

        self._start(token, run)

    def _saved(self, server_id: str) -> list[str]:
        from engine.front_door import EngineError

        found = self.directory.connection(server_id)
        if found is None:
            raise EngineError("this server was removed")
        server, key = found
        return _list(server.base_url, key)

    def _start(self, token: str, work) -> None:
        def run() -> None:
            try:
                models = work()
            except Exception as exc:  # noqa: BLE001 - reported to the window
                self._answer(self.failed, token, error_text(exc))
                return
            self._answer(self.listed, token, models)

        threading.Thread(target=run, name="loopchat-list-models", daemon=True).start()

    @staticmethod
    def _answer(signal, *args) -> None:
        try:
            signal.emit(*args)
        except RuntimeError:  # the window closed meanwhile
            log.debug("model list answered after the window closed")


def describe(server: Server) -> str:
    """A server as the lists show it: its name and URL."""
    return f"{server.name} ({server.base_url})"
