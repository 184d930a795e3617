"""Server-sent events (the `text/event-stream` a streaming completion arrives as), parsed from
bytes as they come.

The format (WHATWG HTML, "server-sent events"): lines end with LF, CRLF or CR; a blank line ends
an event; `data:` lines add to its data (joined with LF); a line starting with ':' is a comment
(llama-cpp-python's server sends `: ping - <time>` every 15 s while a long prompt is read);
`event:`, `id:` and `retry:` are kept or ignored. OpenAI-style servers send each chunk as one
`data: {json}` event and end with `data: [DONE]`.

Our own parser rather than a library: it must bound what it holds (a server that sends one
endless line must not grow memory without limit) and be fed from a socket read that returns
whenever the cancel flag is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from engine.remote.errors import RemoteError

MAX_LINE_BYTES = 1 << 20
"""One SSE line longer than this is not a completion chunk (a chunk with 20 top tokens is a few
kB): the stream is refused as malformed instead of buffered without end."""
DONE = "[DONE]"


@dataclass(frozen=True)
class Event:
    data: str
    event: str = "message"


class SseParser:
    """Feed bytes with `feed`; it yields each complete event's data. `finish()` at the end of
    the stream yields an event left without its blank line (some servers close right after)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max_line = max_line
        self._buffer = bytearray()
        self._data: list[str] = []
        self._event = ""
        self._skip_lf = False

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """The events `chunk` completes (with what was fed before)."""
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        self._buffer += chunk
        while True:
            cut = _line_end(self._buffer)
            if cut < 0:
                break
            line = bytes(self._buffer[:cut])
            ending = self._buffer[cut : cut + 2]
            if ending == b"\r\n":
                del self._buffer[: cut + 2]
            elif ending[:1] == b"\r" and len(ending) == 1:  # a CR at the end: LF may follow
                del self._buffer[: cut + 1]
                self._skip_lf = True
            else:
                del self._buffer[: cut + 1]
            event = self._line(line)
            if event is not None:
                yield event
        if len(self._buffer) > self._max_line:
            raise RemoteError(
                f"the server sent a line of more than {self._max_line} bytes in its event "
                "stream: this is not an OpenAI-compatible stream",
                "malformed",
            )

    def finish(self) -> Iterator[Event]:
        """What is left when the stream ends (a last line without its newline)."""
        if self._buffer:
            event = self._line(bytes(self._buffer))
            self._buffer.clear()
            if event is not None:
                yield event
        if self._data:
            yield self._dispatch()

    def _line(self, raw: bytes) -> Event | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteError(
                f"the server's event stream is not UTF-8 text (bad byte at {exc.start})",
                "malformed",
            ) from None
        if not line:
            return self._dispatch() if self._data or self._event else None
        if line.startswith(":"):
            return None  # a comment: keep-alive pings
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None  # id, retry and unknown fields are ignored, as the standard says

    def _dispatch(self) -> Event:
        event = Event("\n".join(self._data), self._event or "message")
        self._data, self._event = [], ""
        return event


def _line_end(buffer: bytearray) -> int:
    """Index of the first CR or LF in `buffer`, or -1."""
    lf = buffer.find(b"\n")
    cr = buffer.find(b"\r")
    if cr < 0:
        return lf
    if lf < 0:
        return cr
    return min(cr, lf)
