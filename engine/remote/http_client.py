"""HTTP/1.1 to one server with the standard library: a socket (TLS through
`ssl.create_default_context()`, certificates and host names always verified) and a small
response reader of our own.

Why not `http.client` for the reads: a streamed reply is read with a short socket timeout
(`Limits.poll_s`) so a cancel flag set by the window is seen within ~0.1 s and Stop closes the
connection at once; `http.client` cannot go on reading after a timeout inside a chunked body
(its parser state is lost), our reader keeps every byte it got and simply reads again. Requests
are small and written whole, so only the reading needed care.

Each request gets its own connection (`Connection: close`): llama.cpp's server interrupts a
running completion when another request arrives, so the engine never overlaps requests anyway,
and a closed socket is the one signal every server understands as "the client went away".

Faults become `RemoteError`s with one line that names the server (URL without credentials),
says what happened and what to do, and `retry_after` where the server sent Retry-After.
"""

from __future__ import annotations

import email.utils
import errno
import json
import logging
import select
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from engine.remote.errors import RemoteError
from engine.remote.urls import BaseUrl

log = logging.getLogger(__name__)

USER_AGENT = "Loopchat"
MAX_HEADER_BYTES = 64 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """How long to wait, and for how much. Separate limits because they guard different faults:
    a dead address (connect), a server reading a long prompt for a big model (first byte: a
    70B model's prefill of a few thousand tokens takes tens of seconds), a stalled stream (idle
    gap), and a server that never stops sending (the reply caps)."""

    connect_s: float = 10.0
    first_byte_s: float = 60.0
    idle_s: float = 60.0
    max_reply_s: float = 3600.0
    """One streamed reply's whole duration."""
    max_reply_bytes: int = 256 * 2**20
    """One response's bytes (a streamed reply of 4096 tokens with 20 top tokens each is ~10 MB)."""
    max_json_bytes: int = 64 * 2**20
    """A plain JSON answer (an echo of a long prompt with its top tokens is the largest)."""
    max_json_s: float = 600.0
    """One plain JSON answer's whole duration (an echo of a long prompt on a slow server)."""
    poll_s: float = 0.1
    """How often a blocked read looks at the cancel flag."""


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


class _Never:
    def is_set(self) -> bool:
        return False


class Cancelled(Exception):
    """The cancel flag was set while waiting: the connection is closed, nothing is wrong."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    """Lower-case names; a repeated header keeps its last value."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, 24 * 3600.0))


def server_message(body: bytes) -> str:
    """The server's own words from an error body, one short line: OpenAI's
    `{"error": {"message"}}`, llama.cpp's `{"error": {"message", "code"}}`, FastAPI's
    `{"detail"}`, or the text itself. Only the first line is kept (llama-cpp-python appends
    a Python traceback to its messages)."""
    text = ""
    try:
        data = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error.get("msg", ""))
        if isinstance(error, list) and error and isinstance(error[0], dict):
            error = error[0].get("msg", "")
        text = str(error or "")
    elif body:
        text = body.decode("utf-8", errors="replace")
        if text.lstrip().startswith("<"):  # an HTML error page: never shown, never rendered
            text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if first.endswith("validation error:") or first.endswith("validation errors:"):
        first = " ".join(lines[:2])
    return first[:200]


def status_error(
    status: int, reason: str, body: bytes, where: str, headers: dict[str, str]
) -> RemoteError:
    """The RemoteError for an HTTP error status from `where` (the server's URL)."""
    said = server_message(body)
    said_part = f": {said}" if said else ""
    retry = retry_after_seconds(headers.get("retry-after"))
    wait = f"try again in {retry:.0f} s" if retry is not None else "try again later"
    if status in (401, 403):
        return RemoteError(
            f"the server at {where} refused the API key (HTTP {status}{said_part}); check the "
            "server's API key",
            "key",
            status=status,
        )
    if status == 404:
        return RemoteError(
            f"the server at {where} answered 404 Not Found{said_part}; the model may be gone "
            "from the server, or the address may lack its /v1: check the server and the model",
            "not_found",
            status=status,
        )
    if status == 429:
        return RemoteError(
            f"the server at {where} is busy (HTTP 429, too many requests{said_part}); {wait}",
            "rate_limited",
            retry_after=retry,
            status=status,
        )
    if status >= 500:
        return RemoteError(
            f"the server at {where} failed (HTTP {status} {reason}{said_part}); {wait}",
            "server_error",
            retry_after=retry,
            status=status,
        )
    return RemoteError(
        f"the server at {where} refused the request (HTTP {status} {reason}{said_part})",
        "bad_request",
        status=status,
    )


class HttpClient:
    """Requests to one server (a checked base URL) with an optional bearer key.

    The key is sent only in the Authorization header, over the connection to this base URL;
    it never appears in a message, a log line or `repr`."""

    def __init__(self, base: BaseUrl, api_key: str | None = None, limits: Limits | None = None):
        self.base = base
        self._api_key = api_key or None
        self.limits = limits or Limits()

    def __repr__(self) -> str:
        return f"HttpClient({self.base})"

    @property
    def where(self) -> str:
        return str(self.base)

    # -- requests --------------------------------------------------------------------------

    def get_json(self, path: str, cancel: CancelFlag | None = None) -> Any:
        return self._json("GET", path, None, cancel)

    def post_json(self, path: str, body: dict, cancel: CancelFlag | None = None) -> Any:
        return self._json("POST", path, body, cancel)

    def _json(self, method: str, path: str, body: dict | None, cancel: CancelFlag | None) -> Any:
        with _Exchange(self, method, path, body, cancel or _Never()) as exchange:
            data = b"".join(exchange.body(self.limits.max_json_bytes))
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RemoteError(
                f"the server at {self.where} answered {path} with something that is not JSON "
                f"({type(exc).__name__}); is this an OpenAI-compatible server?",
                "malformed",
            ) from None

    def stream(self, path: str, body: dict, cancel: CancelFlag | None = None) -> Iterator[bytes]:
        """POST `body` and yield the response body's bytes as they arrive. Closing the
        generator (or a cancel) closes the connection at once. A set cancel flag ends the
        iteration quietly (`Cancelled` is not raised to the caller)."""
        exchange = _Exchange(self, "POST", path, body, cancel or _Never(), streaming=True)
        try:
            exchange.open()
            yield from exchange.body(self.limits.max_reply_bytes)
        except Cancelled:
            return
        finally:
            exchange.close()

    # -- pieces the exchange uses ----------------------------------------------------------

    def _request_bytes(self, method: str, path: str, body: dict | None) -> bytes:
        payload = b"" if body is None else json.dumps(body).encode("utf-8")
        host = self.base.host if ":" not in self.base.host else f"[{self.base.host}]"
        default = 443 if self.base.tls else 80
        if self.base.port != default:
            host += f":{self.base.port}"
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {host}",
            f"User-Agent: {USER_AGENT}",
            "Accept: application/json, text/event-stream",
            "Accept-Encoding: identity",
            "Connection: close",
        ]
        if self._api_key:
            lines.append(f"Authorization: Bearer {self._api_key}")
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


class _Exchange:
    """One request and its response on one connection."""

    def __init__(
        self,
        client: HttpClient,
        method: str,
        path: str,
        body: dict | None,
        cancel: CancelFlag,
        streaming: bool = False,
    ) -> None:
        self.client = client
        self.limits = client.limits
        self.method, self.path, self.body_json = method, path, body
        self.cancel = cancel
        self.streaming = streaming
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        self.eof = False
        self.response: Response | None = None
        self.started = 0.0

    def __enter__(self) -> _Exchange:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return self.client.where

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    # -- connect, send, read the head ------------------------------------------------------

    def open(self) -> None:
        self.started = time.monotonic()
        self.sock = self._connect()
        try:
            self.sock.settimeout(self.limits.connect_s)
            self.sock.sendall(self.client._request_bytes(self.method, self.path, self.body_json))
        except (TimeoutError, OSError) as exc:
            raise RemoteError(
                f"the connection to {self.where} broke while sending the request "
                f"({_os_reason(exc)}); check that the server is running",
                "cut",
            ) from None
        self.response = self._read_head()
        if self.response.status >= 400:
            body = b""
            try:
                body = b"".join(self.body(MAX_ERROR_BODY_BYTES, cap_error=False))
            except RemoteError:
                pass
            r = self.response
            raise status_error(r.status, r.reason, body, self.where, r.headers)

    def _connect(self) -> socket.socket:
        base = self.client.base
        try:
            infos = socket.getaddrinfo(base.host, base.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise RemoteError(
                f"cannot find the server {base.host} (name lookup failed: {exc.strerror}); "
                "check the address and the network",
                "dns",
            ) from None
        last: OSError | None = None
        deadline = time.monotonic() + self.limits.connect_s
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                self._connect_one(sock, address, deadline)
            except Cancelled:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                last = exc
                continue
            if base.tls:
                return self._wrap_tls(sock)
            return sock
        if isinstance(last, TimeoutError):
            raise RemoteError(
                f"the server at {self.where} did not answer within {self.limits.connect_s:.0f} "
                "s (connecting); check the address, the network and any firewall",
                "connect_timeout",
            )
        if isinstance(last, ConnectionRefusedError):
            raise RemoteError(
                f"the server at {self.where} refused the connection; is it running, and on "
                "that port?",
                "refused",
            )
        raise RemoteError(
            f"cannot connect to {self.where} ({_os_reason(last)}); check the address and the "
            "network",
            "refused",
        )

    def _connect_one(self, sock: socket.socket, address: Any, deadline: float) -> None:
        """A non-blocking connect, polled so that a cancel is seen while it waits."""
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            raise OSError(code, errno.errorcode.get(code, str(code)))
        while code != 0:
            if self.cancel.is_set():
                raise Cancelled
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("connect timed out")
            _, writable, _ = select.select([], [sock], [], min(self.limits.poll_s, remaining))
            if writable:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    if code == errno.ECONNREFUSED:
                        raise ConnectionRefusedError(code, "connection refused")
                    raise OSError(code, errno.errorcode.get(code, str(code)))
                break
        sock.setblocking(True)

    def _wrap_tls(self, sock: socket.socket) -> socket.socket:
        context = ssl.create_default_context()  # verifies the certificate and the host name
        try:
            sock.settimeout(self.limits.connect_s)
            return context.wrap_socket(sock, server_hostname=self.client.base.host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise RemoteError(
                f"the server at {self.where} presented a certificate that cannot be trusted "
                f"({exc.verify_message}); fix the server's certificate or use its right name",
                "tls",
            ) from None
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise RemoteError(
                f"the secure connection to {self.where} failed ({_os_reason(exc)}); is it an "
                "https server?",
                "tls",
            ) from None

    def _read_head(self) -> Response:
        deadline = self.started + self.limits.first_byte_s
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise RemoteError(
                    f"the server at {self.where} sent more than 64 kB of headers", "malformed"
                )
            if not self._fill(deadline, "first_byte"):
                if not self.buffer:
                    raise RemoteError(
                        f"the server at {self.where} closed the connection without answering; "
                        "check that it is an OpenAI-compatible server and try again",
                        "cut",
                    )
                raise RemoteError(
                    f"the server at {self.where} cut its answer short (in the headers)", "cut"
                )
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise RemoteError(
                f"the server at {self.where} did not answer in HTTP ({lines[0][:60]!r})",
                "malformed",
            )
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers)

    # -- the body ----------------------------------------------------------------------------

    def body(self, cap: int, cap_error: bool = True) -> Iterator[bytes]:
        """The body's bytes as they arrive (chunked, sized or until close), at most `cap`."""
        assert self.response is not None
        headers = self.response.headers
        seen = 0
        if "chunked" in headers.get("transfer-encoding", "").lower():
            pieces = self._chunked()
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise RemoteError(
                    f"the server at {self.where} sent a bad Content-Length", "malformed"
                ) from None
            pieces = self._sized(length)
        else:
            pieces = self._until_close()
        for piece in pieces:
            seen += len(piece)
            if seen > cap:
                if not cap_error:
                    return
                raise RemoteError(
                    f"the server at {self.where} sent more than {cap // 2**20} MB for one "
                    "answer; it was cut off",
                    "too_long",
                )
            yield piece

    def _sized(self, length: int) -> Iterator[bytes]:
        left = length
        while left > 0:
            if not self.buffer and not self._fill(self._idle_deadline(), "idle"):
                raise self._cut()
            piece = bytes(self.buffer[:left])
            del self.buffer[: len(piece)]
            left -= len(piece)
            yield piece

    def _until_close(self) -> Iterator[bytes]:
        while True:
            if self.buffer:
                piece = bytes(self.buffer)
                self.buffer.clear()
                yield piece
            if not self._fill(self._idle_deadline(), "idle"):
                return

    def _chunked(self) -> Iterator[bytes]:
        while True:
            while (end := self.buffer.find(b"\r\n")) < 0:
                if len(self.buffer) > 1024:
                    raise RemoteError(
                        f"the server at {self.where} sent a malformed chunked body", "malformed"
                    )
                if not self._fill(self._idle_deadline(), "idle"):
                    raise self._cut()
            size_text = bytes(self.buffer[:end]).split(b";")[0].strip()
            del self.buffer[: end + 2]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise RemoteError(
                    f"the server at {self.where} sent a malformed chunked body", "malformed"
                ) from None
            if size == 0:
                return
            yield from self._sized(size)
            while len(self.buffer) < 2:
                if not self._fill(self._idle_deadline(), "idle"):
                    raise self._cut()
            del self.buffer[:2]

    def _cut(self) -> RemoteError:
        return RemoteError(
            f"the connection to {self.where} was cut in the middle of the answer; try again",
            "cut",
        )

    def _total_s(self) -> float:
        return self.limits.max_reply_s if self.streaming else self.limits.max_json_s

    def _idle_deadline(self) -> float:
        now = time.monotonic()
        idle = now + self.limits.idle_s
        total = self.started + self._total_s()
        if now >= total:
            raise self._too_long()
        return min(idle, total)

    def _too_long(self) -> RemoteError:
        what = "the reply" if self.streaming else "the answer"
        return RemoteError(
            f"the server at {self.where} was still sending after {self._total_s():.0f} s; "
            f"{what} was cut off",
            "too_long",
        )

    def _fill(self, deadline: float, phase: str) -> bool:
        """Read more into the buffer; False at the end of the stream. Polls the cancel flag
        every `poll_s`; past `deadline` raises the timeout of `phase`."""
        sock = self.sock
        assert sock is not None
        sock.settimeout(self.limits.poll_s)
        while True:
            if self.cancel.is_set():
                raise Cancelled
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise self._timeout(phase) from None
                continue
            except ssl.SSLError as exc:
                raise RemoteError(
                    f"the secure connection to {self.where} broke ({exc.reason}); try again",
                    "cut",
                ) from None
            except OSError as exc:
                raise RemoteError(
                    f"the connection to {self.where} broke ({_os_reason(exc)}); try again", "cut"
                ) from None
            if not data:
                self.eof = True
                return False
            self.buffer += data
            return True

    def _timeout(self, phase: str) -> RemoteError:
        if phase == "first_byte":
            return RemoteError(
                f"the server at {self.where} sent nothing for {self.limits.first_byte_s:.0f} s "
                "after the request; it may be overloaded or still reading a long prompt: try "
                "again",
                "first_byte_timeout",
            )
        if time.monotonic() >= self.started + self._total_s():
            return self._too_long()
        return RemoteError(
            f"the server at {self.where} stopped sending for {self.limits.idle_s:.0f} s in the "
            "middle of the answer; try again",
            "idle_timeout",
        )


def _os_reason(exc: BaseException | None) -> str:
    if exc is None:
        return "no address to try"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
