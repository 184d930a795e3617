"""A download's progress and cancel: huggingface_hub's per-file byte counts become events.

huggingface_hub reports bytes through a tqdm-like class it is given (per 10 MiB read over plain
HTTP, every ~100 ms from hf_xet's own thread for Xet storage); `ProgressTracker.bar_class` is that
class. It turns the counts into `DownloadProgress` events for the whole model and raises
`DownloadCancelled` from inside the transfer when the user cancels.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from engine.errors import EngineError
from engine.hub.progress_text import DownloadProgress

log = logging.getLogger(__name__)


class DownloadCancelled(EngineError):
    """The user cancelled. Finished files stay in the cache; the model is not complete yet."""


class ProgressTracker:
    """Turns huggingface_hub's per-file byte counts into DownloadProgress events; checks cancel.

    Byte counts arrive per 10 MiB read (plain HTTP) or every ~100 ms from hf_xet's own thread (Xet
    storage), hence the lock.
    """

    def __init__(
        self,
        repo_id: str,
        sizes: dict[str, int],
        report: Callable[[DownloadProgress], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        self.repo_id = repo_id
        self.sizes = sizes
        self.total = sum(sizes.values())
        self.report = report
        self.cancel = cancel
        self.finished_bytes = 0
        self.finished_files = 0
        self.current = ""
        self.current_done = 0
        self.received = 0
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.cancelled_text: str | None = None
        """What a cancel leaves behind, when not the default (files fetched stay in the cache)."""

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(
                self.cancelled_text
                or f"download of {self.repo_id} cancelled; files already fetched stay in the "
                "cache and a new download continues from there"
            )

    def begin(self, name: str) -> None:
        with self.lock:
            self.current, self.current_done = name, 0
        self._emit()

    def advance(self, n: float) -> None:
        """Bytes written for the current file (negative when a transfer starts over)."""
        with self.lock:
            self.current_done = max(0, self.current_done + int(n))
            if n > 0:
                self.received += int(n)
        self._emit()
        self.check_cancel()

    def finish(self, name: str, fetched: bool) -> None:
        with self.lock:
            self.finished_bytes += self.sizes.get(name, 0)
            self.finished_files += 1
            self.current_done = 0
        if fetched:
            self._emit(name)

    def _emit(self, finished: str | None = None) -> None:
        if self.report is None or not self.sizes:
            return  # nothing to report before the plan (the config is fetched to make it)
        with self.lock:
            name = finished or self.current
            file_total = self.sizes.get(name, 0)
            file_done = file_total if finished else min(self.current_done, file_total)
            done = min(self.total, self.finished_bytes + (0 if finished else self.current_done))
            elapsed = max(time.monotonic() - self.started, 1e-6)
            speed = self.received / elapsed
            eta = (self.total - done) / speed if speed > 0 else None
            event = DownloadProgress(
                self.repo_id,
                name,
                done,
                self.total,
                speed,
                eta,
                file_done,
                file_total,
                self.finished_files,
                len(self.sizes),
            )
        self.report(event)

    def bar_class(self) -> type:
        """A stand-in for tqdm that huggingface_hub drives while it fetches one file."""
        tracker = self

        class _Bar:
            # huggingface_hub builds a non-tqdm class with keyword arguments only and then calls
            # update(); update_transfer() makes Xet downloads use this one bar for both counts.
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.n = 0
                self.total = kwargs.get("total")

            def update(self, n: float | None = 1) -> None:
                if n:
                    self.n += n
                    try:
                        tracker.advance(n)
                    except DownloadCancelled:
                        _abort_xet()  # an exception here does not stop hf_xet's transfer
                        raise

            def update_transfer(self, n: float | None = 1) -> None:
                tracker.check_cancel()

            def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
                pass

            set_transfer_postfix_str = set_postfix_str
            set_description = set_postfix_str
            refresh = set_postfix_str

            def close(self) -> None:
                pass

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                self.close()

        return _Bar


def _abort_xet() -> None:
    """Stop an Xet transfer in flight (huggingface_hub's own Ctrl-C path); best effort."""
    try:  # a private module: absent or renamed in some huggingface_hub releases
        from huggingface_hub.utils._xet import abort_xet_session
    except ImportError:
        return
    try:
        abort_xet_session()
    except Exception as exc:  # best effort: the download is being cancelled anyway
        log.debug("could not abort the Xet session: %s", exc)
