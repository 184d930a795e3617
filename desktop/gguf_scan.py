"""Looking for the GGUF files already on this computer without holding the window.

`engine.gguf.discover.find_gguf_files` walks the Hugging Face cache and the peer apps' model
folders and reads each file's header: seconds on a slow disk, so it runs in a helper thread and
the answer comes back to the GUI thread as a queued signal (as desktop.opener does for long
conversations).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal

log = logging.getLogger(__name__)

Where = tuple[Path | None, Mapping[str, str] | None]
"""The home folder and environment to look in: (None, None) for this user's own; tests and the
screenshot script give a made-up home, so nothing of the real one is read."""


def search(where: Where) -> tuple[list, list[tuple[str, str]]]:
    """(the GGUF files found, every (source, folder) looked in). Runs in the helper thread."""
    from engine.front_door import find_gguf_files, gguf_locations

    home, env = where
    places = [(source, str(folder)) for source, folder in gguf_locations(home, env)]
    return find_gguf_files(home=home, env=env), places


def looked_in(places: list[tuple[str, str]]) -> str:
    """Where the search looked, in one sentence (the folders' paths go in a tooltip)."""
    sources = list(dict.fromkeys(source for source, _folder in places))
    if not sources:
        return "nowhere"
    if len(sources) == 1:
        return sources[0]
    return ", ".join(sources[:-1]) + " and " + sources[-1]


class GGUFScan(QObject):
    """`start()` ends in `found(files, places)` (FoundGGUF list; (source, folder) pairs looked
    in) or `failed(message)`, on the GUI thread."""

    found = Signal(list, list)
    failed = Signal(str)
    _done = Signal(object)  # a Future, emitted from the helper thread (delivered queued)

    def __init__(self, where: Where = (None, None), parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.where = where
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="loopchat-gguf-scan")
        self._future: Future | None = None
        # Queued even when the scan is over before `start` returns (the callback then runs in
        # this thread): the answer always comes from the event loop, after the dialog is built.
        self._done.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    @property
    def running(self) -> bool:
        return self._future is not None

    def start(self) -> None:
        if self._future is not None:
            return
        self._future = future = self._pool.submit(search, self.where)
        future.add_done_callback(self._report)

    def _report(self, future: Future) -> None:
        try:
            self._done.emit(future)
        except RuntimeError:  # the chooser was closed (and deleted) while the scan ran
            pass

    def _deliver(self, future: Future) -> None:
        if future is not self._future:
            return
        self._future = None
        try:
            files, places = future.result()
        except Exception as exc:  # noqa: BLE001 - a failed search must not take the chooser down
            log.warning("the search for GGUF files failed: %r", exc)
            self.failed.emit(f"The search for GGUF files failed: {exc}")
            return
        self.found.emit(list(files), list(places))

    def shutdown(self) -> None:
        """Stop waiting for the scan (it finishes in its thread; its answer is dropped)."""
        self._future = None
        self._pool.shutdown(wait=False, cancel_futures=True)
