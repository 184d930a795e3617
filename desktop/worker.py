"""The engine's home: one QObject living in one QThread, talking to the GUI only through signals.

Every answer is a frozen record from `engine.events` (Step, GenerationResult, ModelInfo, ...)
sent through `Signal(object)`: nothing the GUI receives can be changed by the engine afterwards,
and no field is lost or reordered on the way (a Qt map would sort a dict's keys). The engine and
torch are imported here, lazily, inside the worker thread: the window appears before torch loads.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import traceback
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from desktop.app_text import NO_MODEL_YET, worded
from desktop.servers import REMOTE_PREFIX, ServerDirectory, model_display_name, split_remote_path
from engine.events import (
    GenerationRequest,
    GenerationResult,
    GenerationStarted,
    PrefillProgress,
)

log = logging.getLogger(__name__)


class LoadCancelled(Exception):
    """Raised from the loader's progress callback: the app is closing, stop between tensors."""


def _friendly(exc: BaseException) -> str:
    """A message fit for the window for errors that are not EngineErrors."""
    text = str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return (
            "Not enough memory for this model. Close other programs, choose a smaller model, "
            "or pick bfloat16 instead of float32."
        )
    return f"Unexpected error: {type(exc).__name__}: {text}"


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin")


def available_memory() -> int:
    """Bytes of RAM the system can give without swapping (psutil's `available`)."""
    import psutil

    return int(psutil.virtual_memory().available)


def room_for_another(path: str) -> bool:
    """Can the weights at `path` load while the current model stays resident?

    Linux does not raise MemoryError when RAM runs out: it swaps or kills the process. So a
    switch loads first (keeping the old model if the new one fails) only when the new weights
    fit in the available memory with a margin; otherwise the old model is freed first.
    """
    from engine.front_door import resolve_model

    if path.startswith(REMOTE_PREFIX):
        return True  # a server's model takes no memory here
    try:
        folder = resolve_model(path)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.suffix in WEIGHT_SUFFIXES)
    except Exception:  # noqa: BLE001 - the load itself will say what is wrong
        return True
    return size * 1.2 + 512 * 2**20 < available_memory()


class _EitherSet:
    """A cancel flag that is set when any of its events is: the app's cancel, or this reply's own
    end (a paused step-mode reply is ended without touching the flag other requests share)."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


@dataclasses.dataclass
class _Held:
    """The reply in progress: its suspended token stream (KV cache position, sampler state and
    text decoder live inside it), so a paused step-mode reply continues where it stopped."""

    request_id: int
    reply: Any
    """engine.front_door.Reply"""
    max_context: int
    dropped: int
    ended: threading.Event


class EngineWorker(QObject):
    """Loads a model and generates replies; runs entirely in the controller's QThread."""

    load_progress = Signal(float, str)
    model_loaded = Signal(object)  # ModelInfo
    load_failed = Signal(str)
    model_unloaded = Signal()
    """No model is loaded any more (unload, or a failed switch that had to free the old one)."""
    generation_started = Signal(object)  # GenerationStarted
    prefill_progress = Signal(object)  # PrefillProgress, after each prefill chunk
    token = Signal(object)  # Step
    generation_finished = Signal(object)  # GenerationResult
    generation_failed = Signal(object)  # GenerationResult with `error`
    inspected = Signal(object)  # SurprisalResult / AttentionResult / InspectFailed
    stages = Signal(object)  # SamplerStages: how a step-mode token was picked
    draft_ready = Signal(str)  # the draft now in use ("" = speculative decoding off)
    draft_failed = Signal(str)  # why the chosen draft cannot be used (it was turned off)
    generation_paused = Signal(int)  # request id: a step-mode reply waits for `resume`

    def __init__(
        self,
        cancel: threading.Event,
        load_cancel: threading.Event | None = None,
        pause: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self._cancel = cancel
        self._load_cancel = load_cancel or threading.Event()
        self._pause = pause or threading.Event()
        """Set from the GUI thread: a running reply pauses (step mode) after its next token."""
        self._engine: Any = None
        """engine.front_door.Engine: the open model (imported in this thread, lazily)."""
        self._held: _Held | None = None
        self._draft: tuple[str, int] = ("", 4)
        """Speculative decoding as the settings ask for it: ("" off, "lookup" or a draft
        model; tokens per pass). Applied to the open model before its next reply, so choosing a
        draft never waits for a reply and a new model gets the same setting."""
        self._draft_applied: tuple[str, int] | None = None
        self._servers: ServerDirectory | None = None
        """The servers a `remote:` path names (desktop.servers); None: none can be opened."""

    def use_servers(self, directory: ServerDirectory) -> None:
        """Where `remote:<server id>/<model>` paths are looked up (set once, before any load)."""
        self._servers = directory

    # -- models ----------------------------------------------------------------------------

    @Slot(str, str, str, str)
    def load_model(self, path: str, dtype: str, device: str, quant: str = "none") -> None:
        """Load a model, then replace the current one; emits model_loaded or load_failed.

        The old model keeps working until the new one is ready, so a failed switch changes
        nothing. When both would not fit in memory (`room_for_another`), or the load runs out of
        memory anyway, the old one is freed first and `model_unloaded` says so: the window then
        shows "no model" until a load succeeds.
        """
        self.load_progress.emit(0.0, "Starting the engine")
        try:
            if self._engine is not None and not room_for_another(path):
                log.info("not enough memory to keep the old model while loading %s", path)
                self._release()
                self.model_unloaded.emit()
            try:
                loaded = self._load(path, dtype, device, quant)
            except Exception as exc:
                if self._engine is None or not _out_of_memory(exc):
                    raise
                log.warning("not enough memory for two models; freeing the old one first")
                self._release()
                self.model_unloaded.emit()
                loaded = self._load(path, dtype, device, quant)
            self._release()
            self._engine = loaded
            self._draft_applied = None  # the new model has no draft yet
            self.model_loaded.emit(with_abilities(loaded, self._server_named(path)))
        except LoadCancelled:
            log.info("model load cancelled")
            self.load_failed.emit("Loading the model was cancelled.")
        except Exception as exc:  # noqa: BLE001 - the window must survive anything
            from engine.front_door import EngineError

            if not isinstance(exc, EngineError):
                log.error("model load failed:\n%s", traceback.format_exc())
            self.load_failed.emit(worded(exc) if isinstance(exc, EngineError) else _friendly(exc))

    def _load(self, path: str, dtype: str, device: str, quant: str = "none") -> Any:
        if path.startswith(REMOTE_PREFIX):
            return self._open_remote(path)
        from desktop.native_preload import preload_torch_libraries

        preload_torch_libraries()  # so that importing torch below hardly holds the GIL
        if self._load_cancel.is_set():
            raise LoadCancelled
        from engine.front_door import Engine

        def progress(fraction: float, message: str) -> None:
            if self._load_cancel.is_set():
                raise LoadCancelled
            self.load_progress.emit(float(fraction), str(message))

        return Engine.open(path, dtype=dtype, device=device, quant=quant, progress=progress)

    def _server_named(self, path: str) -> dict:
        """The server a `remote:` path names, as the window shows it ({} for other paths)."""
        parts = split_remote_path(path)
        server = self._servers.server(parts[0]) if parts and self._servers else None
        if server is None:
            return {}
        return {
            "server": server.name,
            "server_url": server.base_url,
            "server_id": server.id,
            "model_id": parts[1],
        }

    def _open_remote(self, path: str) -> Any:
        """A model on a server (`remote:<server id>/<model id>`): its URL from the server list,
        its API key from the keyring, read here in the engine thread (never sent through a
        signal, never logged)."""
        from engine.front_door import EngineError

        parts = split_remote_path(path)
        found = self._servers.connection(parts[0]) if parts and self._servers else None
        if parts is None or found is None:
            raise EngineError(
                "This server is no longer in the list: add it again in Models → Servers…"
            )
        server, key = found
        from engine.front_door import RemoteEngine, is_local_url

        if server.base_url.lower().startswith("http://") and not (
            server.plain_http_ok or is_local_url(server.base_url)
        ):
            raise EngineError(
                f"{server.name} is reached over plain HTTP, which was not allowed: allow it in "
                "Models → Servers…, or use https://"
            )

        def progress(fraction: float, message: str) -> None:
            if self._load_cancel.is_set():
                raise LoadCancelled
            self.load_progress.emit(float(fraction), str(message))

        return RemoteEngine.open(
            server.base_url,
            parts[1],
            api_key=key,
            progress=progress,
            name=model_display_name(parts[1], server.name),
        )

    @Slot()
    def unload(self) -> None:
        """Drop the model so its memory is freed."""
        self._release()
        self.model_unloaded.emit()

    def _release(self) -> None:
        """Drop the model; collect only if there was one (a full collection holds the GIL for
        hundreds of ms once torch is imported, and the GUI thread would wait for it)."""
        had_model = self._engine is not None
        self._end_held()  # a paused reply belongs to the model going away
        if had_model:
            self._engine.close()
        self._engine = None
        if had_model:
            gc.collect()

    # -- speculative decoding ----------------------------------------------------------------

    @Slot(str, int)
    def set_draft(self, spec: str, k: int) -> None:
        """Use this draft for the replies that follow ("" turns speculative decoding off); a
        draft model loads now, if a model is open, rather than before the next reply."""
        self._draft = (spec, int(k))
        if self._engine is not None:
            self._apply_draft(self._engine)

    def _apply_draft(self, engine: Any) -> None:
        """Bring the open model's draft in line with the setting; a draft that cannot be used
        (another vocabulary, a missing folder) turns speculative decoding off, and says why,
        instead of failing the reply."""
        if self._draft_applied == self._draft:
            return
        spec, k = self._draft
        try:
            engine.use_draft(spec or None, k=k)
        except Exception as exc:  # noqa: BLE001 - the reply goes on without a draft
            from engine.front_door import EngineError

            engine.use_draft(None)
            self._draft = ("", k)
            message = worded(exc) if isinstance(exc, EngineError) else _friendly(exc)
            self.draft_failed.emit(message)
        self._draft_applied = self._draft
        self.draft_ready.emit(engine.draft or "")

    # -- replies ---------------------------------------------------------------------------

    @Slot(object)
    def generate(self, request: GenerationRequest) -> None:
        """Run one request to the end (or cancel), streaming every step as a signal; a step-mode
        request (`request.step`) pauses after its first token instead (see `resume`)."""
        rid = request.request_id
        self._end_held()
        try:
            from engine.front_door import EngineError, Message

            engine = self._engine
            if engine is None:
                raise EngineError(NO_MODEL_YET)
            dropped = 0
            if request.prompt is not None:
                ids = engine.tokenize(request.prompt, bos=True)
            else:
                messages = [Message(m["role"], m["content"]) for m in request.messages]
                reserve = request.max_new_tokens + len(request.reply_prefix)
                plan = engine.fit_prompt(messages, reserve)
                ids, dropped = plan.ids, plan.dropped
            self._apply_draft(engine)
            prompt_tokens = len(ids) + len(request.reply_prefix)
            self.generation_started.emit(
                GenerationStarted(rid, prompt_tokens, engine.max_context, dropped)
            )
            ended = threading.Event()
            reply = engine.reply(
                ids,
                request.params,
                max_new_tokens=request.max_new_tokens,
                stop=request.stop,
                cancel=_EitherSet(self._cancel, ended),
                report_top=request.report_top,
                on_prefill=lambda done, total: self.prefill_progress.emit(
                    PrefillProgress(rid, done, total)
                ),
                reply_prefix=request.reply_prefix,
                forced=request.forced,
            )
        except Exception as exc:  # noqa: BLE001 - the window must survive anything
            self._failed(rid, exc)
            return
        self._held = _Held(rid, reply, engine.max_context, dropped, ended)
        self._advance(one=request.step)

    @Slot(int, bool)
    def resume(self, request_id: int, one: bool) -> None:
        """Continue the paused step-mode reply `request_id`: one more token (`one`), or to the end.

        With the cancel flag set this ends the reply at once (how Stop ends a paused reply). A
        request that is no longer held (it already ended) is ignored: its answer was sent.
        """
        if self._held is not None and self._held.request_id == request_id:
            self._advance(one)

    def _advance(self, one: bool) -> None:
        """Stream the held reply's steps until it ends, or pause after one (`one`, step mode) or
        when the GUI asked for a pause. Step mode explains each pick (`stages`)."""
        held = self._held
        assert held is not None
        rid, reply = held.request_id, held.reply
        try:
            while (step := reply.next_step(explain=one)) is not None:
                self.token.emit(dataclasses.replace(step, request_id=rid))
                if one and reply.stages is not None:
                    self.stages.emit(dataclasses.replace(reply.stages, request_id=rid))
                if reply.ends_after_this_step:
                    continue  # the stream ends on the next pull, without another forward pass
                if one or self._pause.is_set():
                    self._pause.clear()
                    self.generation_paused.emit(rid)
                    return
            self._held = None
            result = reply.result
            stages = reply.stages
            if one and result.stop_reason == "eos" and stages is not None and stages.is_eos:
                self.stages.emit(dataclasses.replace(stages, request_id=rid))
            ended = self.generation_failed if result.error else self.generation_finished
            # A reply cut by a fault (a server closing the connection) ends with `error`: the
            # window keeps what streamed, marks it and offers Retry.
            ended.emit(
                dataclasses.replace(
                    result, request_id=rid, max_context=held.max_context, dropped_turns=held.dropped
                )
            )
        except Exception as exc:  # noqa: BLE001 - the window must survive anything
            self._held = None
            self._failed(rid, exc)

    def _end_held(self) -> None:
        """End a paused reply (stopped), e.g. before another request or an unload."""
        if self._held is not None:
            self._held.ended.set()
            self._advance(one=False)

    def _failed(self, rid: int, exc: Exception) -> None:
        from engine.front_door import EngineError

        if not isinstance(exc, EngineError):
            log.error("generation failed:\n%s", traceback.format_exc())
        message = worded(exc) if isinstance(exc, EngineError) else _friendly(exc)
        self.generation_failed.emit(GenerationResult.failed(rid, message))

    @Slot(object)
    def inspect(self, job: Any) -> None:
        """Run an inspection job (desktop.inspect_jobs) with the loaded model.

        It prefills from position 0 and so overwrites the KV cache; the engine keeps track of
        what the cache then holds, so the next chat turn still reuses its shared prefix.
        """
        from desktop.inspect_jobs import InspectFailed
        from engine.front_door import EngineError

        if self._held is not None:  # refused before touching the cache the paused reply uses
            message = "a reply is paused in step mode: press Continue or Stop to finish it first"
            self.inspected.emit(InspectFailed(job.job_id, message))
            return
        try:
            if self._engine is None:
                raise EngineError(NO_MODEL_YET)
            result = job.run(self._engine, cancel=self._load_cancel)  # set when the app closes
        except Exception as exc:  # noqa: BLE001 - the window must survive anything
            if not isinstance(exc, EngineError):
                log.error("inspection failed:\n%s", traceback.format_exc())
            message = worded(exc) if isinstance(exc, EngineError) else _friendly(exc)
            result = InspectFailed(job.job_id, message)
        self.inspected.emit(result)


def with_abilities(engine: Any, server: dict | None = None) -> Any:
    """The engine's ModelInfo with what it can do (`extra["capabilities"]`, plain data), why
    not (`extra["capability_notes"]`), so the window greys what a backend cannot do, and the
    server it runs on (`server`, for a remote model)."""
    info = engine.info
    capabilities = getattr(engine, "capabilities", None)
    notes = getattr(engine, "capability_notes", None) or {}
    extra = {**info.extra, **(server or {})}
    if capabilities is not None:
        extra["capabilities"] = capabilities.to_dict()
    extra["capability_notes"] = {str(k): str(v) for k, v in dict(notes).items()}
    return dataclasses.replace(info, extra=extra)
