"""The engine's home: one QObject living in one QThread, talking to the GUI only through signals.

Every signal carries plain Python data (dict, list, str, float) so nothing the GUI receives can be
mutated by the engine afterwards. The engine and torch are imported here, lazily, inside the worker
thread: the window appears before torch is ever loaded.
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

log = logging.getLogger(__name__)


def _friendly(exc: BaseException) -> str:
    """A message fit for the window for errors that are not EngineErrors."""
    text = str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return (
            "Not enough memory for this model. Close other programs, choose a smaller model, "
            "or pick bfloat16 instead of float32."
        )
    return f"Unexpected error: {type(exc).__name__}: {text}"


class EngineWorker(QObject):
    """Loads a model and generates replies; runs entirely in the controller's QThread."""

    load_progress = Signal(float, str)
    model_loaded = Signal(dict)
    load_failed = Signal(str)
    model_unloaded = Signal()
    generation_started = Signal(dict)
    token = Signal(dict)
    generation_finished = Signal(dict)
    generation_failed = Signal(dict)

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__()
        self._cancel = cancel
        self._loaded: Any = None
        self._generator: Any = None

    @Slot(str, str, str)
    def load_model(self, path: str, dtype: str, device: str) -> None:
        """Load (replacing any current model); emits model_loaded or load_failed."""
        self.load_progress.emit(0.0, "Starting the engine")
        try:
            from desktop.native_preload import preload_torch_libraries

            preload_torch_libraries()  # so that importing torch below hardly holds the GIL
            from engine.errors import EngineError
            from engine.generate import Generator
            from engine.loader import load_model

            self._release()
            loaded = load_model(
                path,
                dtype=dtype or "auto",
                device=device or None,
                progress=lambda f, m: self.load_progress.emit(float(f), str(m)),
            )
            self._loaded = loaded
            self._generator = Generator(loaded)
            self.model_loaded.emit(loaded.describe())
        except EngineError as exc:
            self.load_failed.emit(str(exc))
        except Exception as exc:  # noqa: BLE001 - the window must survive anything
            log.error("model load failed:\n%s", traceback.format_exc())
            self.load_failed.emit(_friendly(exc))

    @Slot()
    def unload(self) -> None:
        """Drop the model so its memory is freed."""
        self._release()
        self.model_unloaded.emit()

    def _release(self) -> None:
        self._generator = None
        self._loaded = None
        import gc

        gc.collect()

    @Slot(dict)
    def generate(self, request: dict) -> None:
        """Run one request to the end (or cancel) and stream every step as a signal.

        request: {"id": int, "messages": [{"role", "content"}], "prompt": str (plain, with BOS,
        instead of messages), "params": {...SamplingParams}, "max_new_tokens": int,
        "report_top": int}
        """
        request_id = request.get("id", 0)
        try:
            from engine.chat import Message
            from engine.errors import EngineError
            from engine.sampling import SamplingParams

            if self._generator is None:
                raise EngineError(
                    "No model is loaded: open a model first (File → Open model folder…)"
                )
            loaded = self._loaded
            dropped = 0
            if "prompt" in request:
                ids = loaded.tokenizer.encode(request["prompt"], bos=True)
            else:
                messages = [Message(m["role"], m["content"]) for m in request["messages"]]
                ids, dropped = self._fit(messages, request)
            self.generation_started.emit(
                {
                    "id": request_id,
                    "dropped_turns": dropped,
                    "prompt_tokens": len(ids),
                    "max_context": loaded.max_context,
                }
            )
            params = SamplingParams(**request.get("params", {}))
            generation = self._generator.generate(
                ids,
                params,
                max_new_tokens=int(request.get("max_new_tokens", 256)),
                stop=request.get("stop", ()),
                cancel=self._cancel,
                report_top=int(request.get("report_top", 10)),
            )
            for step in generation:
                data = step.to_dict()
                data["id"] = request_id
                self.token.emit(data)
            result = generation.result.to_dict()
            result["done_json"] = generation.result.to_json()
            result["id"] = request_id
            result["max_context"] = loaded.max_context
            self.generation_finished.emit(result)
        except EngineError as exc:
            self.generation_failed.emit({"id": request_id, "message": str(exc)})
        except Exception as exc:  # noqa: BLE001
            log.error("generation failed:\n%s", traceback.format_exc())
            self.generation_failed.emit({"id": request_id, "message": _friendly(exc)})

    def _fit(self, messages: list, request: dict) -> tuple[list[int], int]:
        """Prompt ids for the conversation, leaving out the oldest turns if it would not fit.

        The system prompt is always kept; turns go in user/assistant pairs so roles still
        alternate. Room is left for the reply (max_new_tokens, up to half the context).
        """
        from engine.chat import chat_prompt_ids
        from engine.errors import EngineError

        loaded = self._loaded
        limit = loaded.max_context
        reserve = min(int(request.get("max_new_tokens", 256)), limit // 2)
        system = [m for m in messages[:1] if m.role == "system"]
        turns = messages[len(system) :]
        dropped = 0
        while True:
            ids = chat_prompt_ids(loaded.tokenizer, system + turns, loaded.chat_template)
            if len(ids) + reserve <= limit or len(turns) <= 1:
                break
            turns = turns[2:]
            dropped += 2
        if len(ids) >= limit:
            raise EngineError(
                f"The message is {len(ids)} tokens but the model's context holds {limit}: "
                "shorten it or start a new chat"
            )
        return ids, dropped
