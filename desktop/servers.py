"""The servers a user has added (Models → Servers…): the list in the settings, the API keys in
the operating system's keyring.

A server is an id, a name, a base URL and whether plain `http://` to it was allowed (asked once
for anything but this computer). Its API key is never in the settings file: it is kept in the
OS keyring (the `keyring` package: service "Loopchat", username = the server's id), or, where no
keyring backend works, in this process's memory only, for this session (the dialog says so).

Keyring calls may block (a D-Bus round trip, a keychain asking to be unlocked), so none runs on
the GUI thread: writes go to one background thread in order, reads happen where the key is
needed (the engine thread opening a model, the thread listing a server's models).
`ServerDirectory` is what those threads read: a locked snapshot of the list and the keys kept in
memory.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import uuid
from dataclasses import dataclass

from PySide6.QtCore import QObject, QSettings, Signal

from engine.front_door import REMOTE_PREFIX, parse_remote_path, remote_path

__all__ = [
    "IN_KEYRING",
    "KEYRING_SERVICE",
    "NO_KEYRING",
    "REMOTE_PREFIX",
    "KeyStore",
    "Server",
    "ServerDirectory",
    "ServerList",
    "has_credentials",
    "is_remote_path",
    "model_display_name",
    "remote_path",
    "split_remote_path",
]

log = logging.getLogger(__name__)

KEYRING_SERVICE = "Loopchat"
"""The keyring's service name; the username is the server's id."""
GROUP = "servers"
NO_KEYRING = (
    "No keyring is available on this computer: the key is kept in memory for this session only "
    "and asked for again next time."
)
IN_KEYRING = "The key is kept in your system's keyring, never in Loopchat's files."


@dataclass(frozen=True)
class Server:
    """One server as the user added it (no secret in here: the key lives in the keyring)."""

    id: str
    name: str
    base_url: str
    plain_http_ok: bool = False
    """The user allowed plain `http://` to it (asked once; for this computer never asked)."""


def split_remote_path(path: str) -> tuple[str, str] | None:
    """(server id, model id) of a `remote:` path, or None for any other path."""
    return parse_remote_path(path)


def is_remote_path(path: str) -> bool:
    return split_remote_path(path) is not None


def has_credentials(url: str) -> bool:
    """`user:password@` in a URL: refused, the key belongs in the keyring, not the settings."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    return bool(parts.username or parts.password)


def model_display_name(model_id: str, server_name: str) -> str:
    """How lists name a server's model: "model · server name"."""
    return f"{model_id} · {server_name}"


class KeyStore(QObject):
    """API keys: the OS keyring when one works, else memory for this session.

    Every keyring write runs on one background thread, in order; `saved(server id, message)`
    answers on the GUI thread ("" when the key is in the keyring, else why it is only in
    memory). `key()` may be called from any thread but the GUI's.
    """

    saved = Signal(str, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._memory: dict[str, str] = {}
        self._no_key: set[str] = set()
        """Servers the keyring was asked about and had no key for (not asked again)."""
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="keyring")
        self.problem = ""
        """Why the keyring could not keep the last key ("" when it could, or was not tried)."""

    def set_key(self, server_id: str, key: str) -> None:
        """Keep `key` for `server_id` (memory at once; the keyring in the background); an empty
        key removes the one kept."""
        with self._lock:
            self._no_key.discard(server_id)
            if key:
                self._memory[server_id] = key
            else:
                self._memory.pop(server_id, None)
                self._no_key.add(server_id)
        self._writer.submit(self._write, server_id, key)

    def probe(self) -> None:
        """Find out in the background whether a keyring works; `saved("", problem)` answers."""
        self._writer.submit(self._probe)

    def _probe(self) -> None:
        try:
            import keyring
            from keyring.backends import fail

            works = not isinstance(keyring.get_keyring(), fail.Keyring)
        except Exception:  # noqa: BLE001 - a broken backend: memory only
            works = False
        self.problem = "" if works else NO_KEYRING
        try:
            self.saved.emit("", self.problem)
        except RuntimeError:
            pass

    def forget(self, server_id: str) -> None:
        """The server was removed: its key goes from memory and the keyring."""
        self.set_key(server_id, "")

    def in_memory(self, server_id: str) -> bool:
        with self._lock:
            return server_id in self._memory

    def key(self, server_id: str) -> str | None:
        """The key for `server_id`, or None. Reads the keyring: never call it on the GUI
        thread."""
        with self._lock:
            if server_id in self._memory:
                return self._memory[server_id]
            if server_id in self._no_key:
                return None
        found: str | None = None
        try:
            import keyring

            found = keyring.get_password(KEYRING_SERVICE, server_id)
        except Exception as exc:  # noqa: BLE001 - no keyring: no key, the user is asked
            log.info("keyring unavailable (%s)", type(exc).__name__)
        with self._lock:
            if found:
                self._memory[server_id] = found
            else:
                self._no_key.add(server_id)
        return found or None

    def _write(self, server_id: str, key: str) -> None:
        try:
            import keyring
            import keyring.errors

            if key:
                keyring.set_password(KEYRING_SERVICE, server_id, key)
            else:
                try:
                    keyring.delete_password(KEYRING_SERVICE, server_id)
                except keyring.errors.PasswordDeleteError:
                    pass  # there was none
            message = ""
        except Exception as exc:  # noqa: BLE001 - any backend failure: memory only
            log.info("keyring could not keep a key (%s)", type(exc).__name__)
            message = NO_KEYRING if key else ""
        self.problem = message
        try:
            self.saved.emit(server_id, message)
        except RuntimeError:  # the window closed meanwhile
            pass

    def shutdown(self) -> None:
        """No more writes; those already asked for still finish (the process waits for them
        at exit, not the window)."""
        self._writer.shutdown(wait=False)


class ServerDirectory:
    """What other threads read about the servers: the list as last saved, and the keys.

    The GUI thread replaces the list (`update`) after each change; the engine thread and the
    model listers call `connection`.
    """

    def __init__(self, keys: KeyStore) -> None:
        self._lock = threading.Lock()
        self._servers: dict[str, Server] = {}
        self.keys = keys

    def update(self, servers: list[Server]) -> None:
        with self._lock:
            self._servers = {s.id: s for s in servers}

    def server(self, server_id: str) -> Server | None:
        with self._lock:
            return self._servers.get(server_id)

    def connection(self, server_id: str) -> tuple[Server, str | None] | None:
        """(server, its API key or None) — reads the keyring: not on the GUI thread."""
        server = self.server(server_id)
        if server is None:
            return None
        return server, self.keys.key(server_id)


class ServerList(QObject):
    """The servers in the settings (`servers/<n>/…`), their keys in `keys`; `changed` after any
    edit."""

    changed = Signal()

    def __init__(self, settings: QSettings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.keys = KeyStore(self)
        self.directory = ServerDirectory(self.keys)
        self._servers = self._read()
        self.directory.update(self._servers)

    def servers(self) -> list[Server]:
        return list(self._servers)

    def get(self, server_id: str) -> Server | None:
        return next((s for s in self._servers if s.id == server_id), None)

    def add(self, name: str, base_url: str, api_key: str = "", plain_http_ok: bool = False):
        server = Server(uuid.uuid4().hex[:12], name.strip(), base_url.strip(), plain_http_ok)
        self._servers.append(server)
        self._save()
        if api_key:
            self.keys.set_key(server.id, api_key)
        return server

    def update(self, server: Server, api_key: str | None = None) -> None:
        """Replace the server with the same id; `api_key` None leaves its key as it is, "" removes
        it."""
        self._servers = [server if s.id == server.id else s for s in self._servers]
        self._save()
        if api_key is not None:
            self.keys.set_key(server.id, api_key)

    def remove(self, server_id: str) -> None:
        self._servers = [s for s in self._servers if s.id != server_id]
        self._save()
        self.keys.forget(server_id)

    def display_name(self, path: str) -> str | None:
        """ "model · server name" for a `remote:` path (None for other paths)."""
        parts = split_remote_path(path)
        if parts is None:
            return None
        server = self.get(parts[0])
        return model_display_name(parts[1], server.name if server else "a removed server")

    def _read(self) -> list[Server]:
        s = self.settings
        servers = []
        count = s.beginReadArray(GROUP)
        for i in range(count):
            s.setArrayIndex(i)
            server_id, url = str(s.value("id", "") or ""), str(s.value("base_url", "") or "")
            if not server_id or not url or "/" in server_id:
                continue  # a damaged entry: left out
            name = str(s.value("name", "") or url)
            plain = str(s.value("plain_http_ok", "false")).lower() == "true"
            servers.append(Server(server_id, name, url, plain))
        s.endArray()
        return servers

    def _save(self) -> None:
        s = self.settings
        s.remove(GROUP)
        s.beginWriteArray(GROUP, len(self._servers))
        for i, server in enumerate(self._servers):
            s.setArrayIndex(i)
            s.setValue("id", server.id)
            s.setValue("name", server.name)
            s.setValue("base_url", server.base_url)
            s.setValue("plain_http_ok", "true" if server.plain_http_ok else "false")
        s.endArray()
        s.sync()
        self.directory.update(self._servers)
        self.changed.emit()
