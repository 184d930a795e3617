"""Owns the engine thread: starts it, forwards requests as queued signals, stops it cleanly."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading

from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal

from desktop.worker import EngineWorker
from engine.events import GenerationRequest


class EngineController(QObject):
    """The GUI's only handle on the engine. All calls return at once; answers come as signals.

    Two cancel flags, set directly from the GUI thread (a queued "stop" could not run while the
    worker is busy): one stops a reply between tokens, the other a model load between tensors,
    so closing the window during a load does not wait for the whole model.
    """

    # Requests, delivered to the worker's thread by queued connections.
    _load_requested = Signal(str, str, str, str)
    _generate_requested = Signal(object)
    _unload_requested = Signal()
    _inspect_requested = Signal(object)
    _resume_requested = Signal(int, bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cancel = threading.Event()
        self._load_cancel = threading.Event()
        self._pause = threading.Event()
        self._ids = itertools.count(1)
        self._thread = QThread()
        self._thread.setObjectName("loopchat-engine")
        self.worker = EngineWorker(self._cancel, self._load_cancel, self._pause)
        self.worker.moveToThread(self._thread)
        self._load_requested.connect(self.worker.load_model)
        self._generate_requested.connect(self.worker.generate)
        self._unload_requested.connect(self.worker.unload)
        self._inspect_requested.connect(self.worker.inspect)
        self._resume_requested.connect(self.worker.resume)
        self._thread.finished.connect(self.worker.deleteLater)
        self._thread.start()
        self._running = True
        self.busy = False
        """True from `generate` until that request's finished/failed answer arrives."""
        self._pending: int | None = None
        self.paused: int | None = None
        """The request id of a step-mode reply waiting for `resume` (not busy meanwhile)."""
        self.worker.generation_finished.connect(self._idle)
        self.worker.generation_failed.connect(self._idle)
        self.worker.generation_paused.connect(self._on_paused)
        self._loads: collections.deque[tuple[str, str]] = collections.deque()
        self.answered_load: tuple[str, str] = ("", "none")
        """(path, quant) of the load that the latest `model_loaded`/`load_failed` answers.

        Connected before any other receiver, so it is set when theirs run: with two loads in
        flight (a model chosen while another loads) an answer still names its own load, and a
        failed 8-bit load is never mistaken for the 16-bit one queued behind it.
        """
        self.worker.model_loaded.connect(self._load_answered)
        self.worker.load_failed.connect(self._load_answered)

    def load(
        self, path: str, dtype: str = "auto", device: str = "auto", quant: str = "none"
    ) -> None:
        self.stop()  # a running (or paused) generation stops before the model is swapped
        self._loads.append((path, quant))
        self._load_requested.emit(path, dtype, device, quant)

    @property
    def loading(self) -> bool:
        """A load was asked for and its answer has not arrived yet."""
        return bool(self._loads)

    def _load_answered(self, _answer: object) -> None:
        self.answered_load = self._loads.popleft() if self._loads else ("", "none")

    def unload(self) -> None:
        self.stop()
        self._unload_requested.emit()

    def generate(self, request: GenerationRequest) -> int:
        """Queue a request; returns its id, which every answering record carries.

        A step-mode request (`request.step`) pauses after its first token: `paused` holds its
        id until `resume` (or `stop`) asks for more.
        """
        request_id = next(self._ids)
        self._cancel.clear()
        self._pause.clear()
        self.paused = None  # the worker ends a paused reply before starting this one
        self.busy = True
        self._pending = request_id
        self._generate_requested.emit(dataclasses.replace(request, request_id=request_id))
        return request_id

    def inspect(self, job: object) -> int:
        """Queue an inspection job (desktop.inspect_jobs); the answer comes as `inspected`
        carrying the returned id. It runs after any reply in progress."""
        job_id = next(self._ids)
        self._inspect_requested.emit(dataclasses.replace(job, job_id=job_id))
        return job_id

    def resume(self, one: bool) -> bool:
        """Continue the paused step-mode reply: one token (`one`) or normally to its end.

        False (and nothing asked) when no reply is paused.
        """
        request_id = self.paused
        if request_id is None:
            return False
        self._cancel.clear()
        self._pause.clear()
        self._run(request_id, one)
        return True

    def pause(self) -> None:
        """Pause the running reply after its next token (thread-safe); it waits for `resume`."""
        if self.busy:
            self._pause.set()

    def stop(self) -> None:
        """Stop the running generation after its current token (thread-safe, immediate); a
        paused reply ends at once (its `generation_finished` follows)."""
        self._cancel.set()
        if self.paused is not None:
            self._run(self.paused, False)  # sees the cancel flag before reading anything

    def _run(self, request_id: int, one: bool) -> None:
        self.paused = None
        self.busy = True
        self._pending = request_id
        self._resume_requested.emit(request_id, one)

    def _on_paused(self, request_id: int) -> None:
        if request_id != self._pending:
            return
        if self._cancel.is_set():  # Stop came while the step was being computed: end it now
            self._run(request_id, False)
            return
        self.busy = False
        self._pending = None
        self.paused = request_id

    def _idle(self, result: object) -> None:
        if getattr(result, "request_id", None) == self._pending:
            self.busy = False
            self._pending = None

    @property
    def running(self) -> bool:
        """The engine thread has not ended yet."""
        return self._thread.isRunning()

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Cancel any reply or load, end the thread's event loop and wait. Safe to call twice.

        False if the thread is still busy after `timeout_ms` (a cold `import torch` cannot be
        interrupted): the controller then moves under the application object, so the running
        QThread is never destroyed with the window ("QThread: Destroyed while thread is still
        running" aborts the process); `desktop.app.main` exits without waiting for it.
        """
        if self._running:
            self._running = False
            self._cancel.set()
            self._load_cancel.set()
            self._thread.quit()
        if self._thread.wait(timeout_ms):
            return True
        app = QCoreApplication.instance()
        if app is not None:
            self.setParent(app)
        return False
