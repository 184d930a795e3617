"""The `--self-test` run's receiver: asks for one generation once the model is loaded."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal, Slot

from desktop.controller import EngineController
from engine.events import GenerationRequest, GenerationResult, ModelInfo


class SelfTest(QObject):
    """Collects the worker's answers on the main thread; `done` fires on success or failure."""

    done = Signal()

    def __init__(self, controller: EngineController, request: GenerationRequest) -> None:
        super().__init__()
        self._controller = controller
        self._request = request
        self.result: GenerationResult | None = None
        self.info: ModelInfo | None = None
        self.failure: str | None = None
        worker = controller.worker
        worker.model_loaded.connect(self._loaded)
        worker.load_failed.connect(self._load_failed)
        worker.generation_finished.connect(self._finished)
        worker.generation_failed.connect(self._generation_failed)

    @Slot(object)
    def _loaded(self, info: ModelInfo) -> None:
        self.info = info
        self._controller.generate(self._request)

    @Slot(str)
    def _load_failed(self, message: str) -> None:
        self.failure = message
        self.done.emit()

    @Slot(object)
    def _finished(self, result: GenerationResult) -> None:
        self.result = result
        self.done.emit()

    @Slot(object)
    def _generation_failed(self, failure: GenerationResult) -> None:
        self.failure = failure.error
        self.done.emit()
