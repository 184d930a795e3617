"""Server addresses: checking a base URL, showing it without credentials, naming a remote model.

A base URL is what a user types (`http://localhost:8000/v1`, `https://llm.example.org/v1`); every
endpoint is joined onto its path. Credentials never belong in it (the API key lives in the OS
keyring, desktop/servers.py), so a URL carrying `user:password@` is refused rather than stored,
and every message shows `display_url`, which drops them anyway.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from engine.errors import EngineError

REMOTE_PREFIX = "remote:"
"""A model on a server is opened by the path `remote:<server id>/<model id>` (the app's model
chooser, recent models, the store): one string, like a local path."""

LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class BaseUrl:
    """A checked base URL, split into what a connection needs."""

    scheme: str
    """"http" or "https"."""
    host: str
    port: int
    path: str
    """The path every endpoint is joined onto, without a trailing slash ("/v1", or "")."""

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def endpoint(self, name: str) -> str:
        """The request path of `name` ("/completions") under this base ("/v1/completions")."""
        return self.path + "/" + name.lstrip("/")

    def root_endpoint(self, name: str) -> str:
        """A path at the server's root whatever the base path (llama-cpp-python's `/extras/...`
        and llama.cpp's `/props` live beside `/v1`, not under it)."""
        return "/" + name.lstrip("/")

    def __str__(self) -> str:
        netloc = self.host if ":" not in self.host else f"[{self.host}]"
        default = 443 if self.tls else 80
        if self.port != default:
            netloc += f":{self.port}"
        return urlunsplit((self.scheme, netloc, self.path, "", ""))


def display_url(text: str) -> str:
    """`text` as a URL fit for a message or a log line: user, password, query and fragment
    dropped (a key pasted into a URL must not reach a log). Never raises."""
    try:
        parts = urlsplit(text.strip())
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(an unreadable URL)"


def check_base_url(text: str) -> BaseUrl:
    """The base URL `text` checked: http or https, a host, a valid port, no credentials, no query.

    EngineError (one line, the URL shown without credentials) says what is wrong."""
    raw = (text or "").strip()
    if not raw:
        raise EngineError("the server address is empty: give a URL like http://localhost:8000/v1")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise EngineError(f"the server address {display_url(raw)} is not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise EngineError(
            f"the server address {display_url(raw)} must start with http:// or https://"
        )
    if parts.username is not None or parts.password is not None:
        raise EngineError(
            f"the server address {display_url(raw)} holds a user name or password: remove it "
            "and give the key as the server's API key instead"
        )
    if not parts.hostname:
        raise EngineError(f"the server address {display_url(raw)} has no host name")
    if parts.query or parts.fragment:
        raise EngineError(
            f"the server address {display_url(raw)} has a query or fragment (?...#...): give "
            "only the base URL, like http://localhost:8000/v1"
        )
    path = parts.path.rstrip("/")
    return BaseUrl(scheme, parts.hostname, port or (443 if scheme == "https" else 80), path)


def is_local_url(text: str) -> bool:
    """The URL names this computer (localhost, 127.0.0.0/8, ::1): plain http to it is not sent
    over any network, so the app asks no question about it. False for anything unreadable."""
    try:
        host = (urlsplit(text.strip()).hostname or "").lower()
    except ValueError:
        return False
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_remote_path(text: str) -> tuple[str, str] | None:
    """(server id, model id) of a `remote:<server id>/<model id>` path, or None for any other
    path (a local folder, a file, a Hub repo id). The model id may itself hold slashes (vLLM
    serves `meta-llama/Llama-2-70b-chat-hf`): only the first slash splits."""
    if not isinstance(text, str) or not text.startswith(REMOTE_PREFIX):
        return None
    rest = text[len(REMOTE_PREFIX) :]
    server, sep, model = rest.partition("/")
    if not sep or not server or not model:
        return None
    return server, model


def remote_path(server_id: str, model_id: str) -> str:
    """The path string that opens `model_id` on server `server_id` (see `parse_remote_path`)."""
    return f"{REMOTE_PREFIX}{server_id}/{model_id}"
