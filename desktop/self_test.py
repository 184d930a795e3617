"""The `--self-test` run's receiver: asks for one generation once the model is loaded."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal, Slot

from desktop.controller import EngineController


class SelfTest(QObject):
    """Collects the worker's answers on the main thread; `done` fires on success or failure."""

    done = Signal()

    def __init__(self, controller: EngineController, request: dict) -> None:
        super().__init__()
        self._controller = controller
        self._request = request
        self.result: dict | None = None
        self.failure: str | None = None
        worker = controller.worker
        worker.model_loaded.connect(self._loaded)
        worker.load_failed.connect(self._load_failed)
        worker.generation_finished.connect(self._finished)
        worker.generation_failed.connect(self._generation_failed)

    @Slot(dict)
    def _loaded(self, _info: dict) -> None:
        self._controller.generate(self._request)

    @Slot(str)
    def _load_failed(self, message: str) -> None:
        self.failure = message
        self.done.emit()

    @Slot(dict)
    def _finished(self, result: dict) -> None:
        self.result = result
        self.done.emit()

    @Slot(dict)
    def _generation_failed(self, failure: dict) -> None:
        self.failure = str(failure.get("message", failure))
        self.done.emit()
