"""Owns the engine thread: starts it, forwards requests as queued signals, stops it cleanly."""

from __future__ import annotations

import itertools
import threading

from PySide6.QtCore import QObject, QThread, Signal

from desktop.worker import EngineWorker


class EngineController(QObject):
    """The GUI's only handle on the engine. All calls return at once; answers come as signals."""

    # Requests, delivered to the worker's thread by queued connections.
    _load_requested = Signal(str, str, str)
    _generate_requested = Signal(dict)
    _unload_requested = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cancel = threading.Event()
        self._ids = itertools.count(1)
        self._thread = QThread()
        self._thread.setObjectName("loopchat-engine")
        self.worker = EngineWorker(self._cancel)
        self.worker.moveToThread(self._thread)
        self._load_requested.connect(self.worker.load_model)
        self._generate_requested.connect(self.worker.generate)
        self._unload_requested.connect(self.worker.unload)
        self._thread.finished.connect(self.worker.deleteLater)
        self._thread.start()
        self._running = True
        self.busy = False
        self.worker.generation_finished.connect(self._idle)
        self.worker.generation_failed.connect(self._idle)

    def load(self, path: str, dtype: str = "auto", device: str = "auto") -> None:
        self._cancel.set()  # a running generation stops before the model is swapped
        self._load_requested.emit(path, dtype, device)

    def unload(self) -> None:
        self._cancel.set()
        self._unload_requested.emit()

    def generate(self, request: dict) -> int:
        """Queue a request; returns its id, which every answering signal carries."""
        request = dict(request)
        request["id"] = next(self._ids)
        self._cancel.clear()
        self.busy = True
        self._generate_requested.emit(request)
        return request["id"]

    def stop(self) -> None:
        """Stop the running generation after its current token (thread-safe, immediate)."""
        self._cancel.set()

    def _idle(self, _result: dict) -> None:
        self.busy = False

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Cancel, end the thread's event loop and wait for it. Safe to call twice."""
        if not self._running:
            return True
        self._running = False
        self._cancel.set()
        self._thread.quit()
        return self._thread.wait(timeout_ms)
