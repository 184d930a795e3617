"""Owns the engine thread: starts it, forwards requests as queued signals, stops it cleanly."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable

from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal

from desktop.reply_state import ALLOWED, ReplyState
from desktop.worker import EngineWorker
from engine.events import GenerationRequest
from engine.front_door import REMOTE_PREFIX

log = logging.getLogger(__name__)
PREFILLING = ReplyState.PREFILLING


class EngineController(QObject):
    """The GUI's only handle on the engine. All calls return at once; answers come as signals.

    It owns the reply's state machine (desktop.reply_state): every change goes through
    `_transition` and is emitted once as `state_changed`; `busy`, `paused` and `loading` are
    read from it. Listen to the controller's relayed answers (`token`, `generation_finished`…),
    not the worker's: they arrive with the state already updated, and `state_changed` follows
    them, so nothing depends on which slot was connected first.

    Two cancel flags, set directly from the GUI thread (a queued "stop" could not run while the
    worker is busy): one stops a reply between tokens, the other a model load between tensors,
    so closing the window during a load does not wait for the whole model.

    Timings are relayed as compute time: the seconds a step-mode reply waited for the user's
    next click (`paused_s`) are taken out of each `Step.elapsed_s` and of the result's speed, so
    the status bar's tok/s is the model's speed, not the user's clicking.
    """

    # The reply's state (desktop.reply_state): emitted once per change, after the answer that
    # caused it has reached every listener below.
    state_changed = Signal(object)  # ReplyState
    # The worker's answers, relayed after the controller's state has taken them into account:
    # listen here, not on the worker, so `state`, `busy` and `paused` already tell the truth.
    generation_started = Signal(object)  # GenerationStarted
    prefill_progress = Signal(object)  # PrefillProgress
    token = Signal(object)  # Step
    generation_paused = Signal(int)  # request id
    generation_finished = Signal(object)  # GenerationResult
    generation_failed = Signal(object)  # GenerationResult with `error`
    model_loaded = Signal(object)  # ModelInfo
    load_failed = Signal(str)

    # Requests, delivered to the worker's thread by queued connections.
    _load_requested = Signal(str, str, str, str)
    _generate_requested = Signal(object)
    _unload_requested = Signal()
    _inspect_requested = Signal(object)
    _resume_requested = Signal(int, bool)
    _draft_requested = Signal(str, int)
    draft_ready = Signal(str)  # the draft in use now ("" = speculative decoding off)
    draft_failed = Signal(str)  # why the chosen draft cannot be used (it was turned off)

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
        self._draft_requested.connect(self.worker.set_draft)
        self.worker.draft_ready.connect(self.draft_ready)
        self.worker.draft_failed.connect(self.draft_failed)
        self._thread.finished.connect(self.worker.deleteLater)
        self._thread.start()
        self._running = True
        self._state = ReplyState.IDLE
        self._unannounced: collections.deque[ReplyState] = collections.deque()
        self._holding = 0
        """>0 while an answer is relayed: changes made meanwhile are announced after it."""
        self._request: int | None = None
        """The id of the reply the state describes (routing data: older answers are stale)."""
        self._one_step = False
        """The running reply pauses after its next token (a step, or a pause asked for)."""
        self._paused_total = 0.0
        """Seconds the current reply has spent PAUSED, up to its last resume."""
        self._paused_since: float | None = None
        """When the current pause began (monotonic clock); None unless PAUSED."""
        self._loads: collections.deque[tuple[str, str]] = collections.deque()
        self.answered_load: tuple[str, str] = ("", "none")
        """(path, quant) of the load that the latest `model_loaded`/`load_failed` answers.

        Set before the answer is relayed: with two loads in flight (a model chosen while another
        loads) an answer still names its own load, and a failed 8-bit load is never mistaken
        for the 16-bit one queued behind it.
        """
        w = self.worker
        w.generation_started.connect(self._on_started)
        w.prefill_progress.connect(self._on_prefill)
        w.token.connect(self._on_token)
        w.generation_paused.connect(self._on_paused)
        w.generation_finished.connect(self._on_finished)
        w.generation_failed.connect(self._on_failed)
        w.model_loaded.connect(self._on_loaded)
        w.load_failed.connect(self._on_load_failed)

    # -- the state ---------------------------------------------------------------------------

    @property
    def state(self) -> ReplyState:
        return self._state

    @property
    def busy(self) -> bool:
        """A reply is being written or stopped (not while it is paused in step mode)."""
        return self._state.busy

    @property
    def paused(self) -> int | None:
        """The request id of a step-mode reply waiting for `resume` (None unless PAUSED)."""
        return self._request if self._state is ReplyState.PAUSED else None

    @property
    def loading(self) -> bool:
        """A load was asked for and its answer has not arrived yet (the state is LOADING once
        no reply runs before it)."""
        return self._state is ReplyState.LOADING or bool(self._loads)

    @property
    def stepping(self) -> bool:
        """The running reply will pause after its next token (step mode)."""
        return self._state.busy and self._one_step

    @property
    def paused_s(self) -> float:
        """Seconds the current reply has waited in PAUSED so far (the ongoing pause included):
        time the engine did not compute, kept out of its speed."""
        ongoing = time.monotonic() - self._paused_since if self._paused_since is not None else 0.0
        return self._paused_total + ongoing

    def _end_pause(self) -> None:
        if self._paused_since is not None:
            self._paused_total += time.monotonic() - self._paused_since
            self._paused_since = None

    @property
    def request_id(self) -> int | None:
        """The id of the reply running, paused or stopping; None when none is."""
        return self._request if self._state.active else None

    def _transition(self, new: ReplyState, relay: Callable[[], None] | None = None) -> bool:
        """The one way the state changes: check `ALLOWED`, set it, relay the answer that caused
        it (`relay`, so its listeners read the new state), then emit `state_changed` once.

        An impossible change is logged and ignored (the answer is still relayed). Changes made
        by listeners during the relay are announced after this one, in order.
        """
        old = self._state
        changed = new is not old and new in ALLOWED[old]
        if new is not old and not changed:
            log.warning("reply state: %s -> %s is not a possible change; ignored", old, new)
        if changed:
            self._state = new
            self._unannounced.append(new)
        self._holding += 1
        try:
            if relay is not None:
                relay()
        finally:
            self._holding -= 1
        self._announce()
        return changed

    def _announce(self) -> None:
        if self._holding:
            return
        self._holding += 1
        try:
            while self._unannounced:
                self.state_changed.emit(self._unannounced.popleft())
        finally:
            self._holding -= 1

    def _settled(self) -> ReplyState:
        """Where the controller rests when no reply runs: LOADING while a load is queued."""
        return ReplyState.LOADING if self._loads else ReplyState.IDLE

    # -- requests ----------------------------------------------------------------------------

    def load(
        self, path: str, dtype: str = "auto", device: str = "auto", quant: str = "none"
    ) -> None:
        self.stop()  # a running (or paused) generation stops before the model is swapped
        self._loads.append((path, quant))
        self._load_requested.emit(path, dtype, device, quant)
        if not self._state.active:
            self._transition(ReplyState.LOADING)

    def set_draft(self, spec: str, k: int) -> None:
        """Speculative decoding for the replies that follow: "" off, "lookup", or a draft
        model (loaded in the engine thread; `draft_ready` or `draft_failed` answers)."""
        self._draft_requested.emit(spec, int(k))

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
        self._request = request_id  # the worker ends a paused reply before starting this one
        self._one_step = request.step
        self._paused_total, self._paused_since = 0.0, None
        self._generate_requested.emit(dataclasses.replace(request, request_id=request_id))
        self._transition(ReplyState.PREFILLING)
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
        if self._state is not ReplyState.PAUSED:
            return False
        self._cancel.clear()
        self._pause.clear()
        self._end_pause()
        self._run(one)
        self._transition(ReplyState.STREAMING)
        return True

    def pause(self) -> None:
        """Pause the running reply after its next token (thread-safe); it waits for `resume`."""
        if self.busy:
            self._one_step = True
            self._pause.set()

    def stop(self) -> None:
        """Stop the running generation after its current token (thread-safe, immediate); a
        paused reply ends at once (its `generation_finished` follows)."""
        self._cancel.set()
        if self._state is ReplyState.PAUSED:
            self._end_pause()
            self._run(False)  # sees the cancel flag before reading anything
        if self._state.active:
            self._transition(ReplyState.STOPPING)

    def _run(self, one: bool) -> None:
        self._one_step = one
        self._resume_requested.emit(self._request, one)

    # -- answers -----------------------------------------------------------------------------

    def _current(self, request_id: object) -> bool:
        return request_id == self._request and self._state.active

    def _on_started(self, started: object) -> None:
        self.generation_started.emit(started)

    def _on_prefill(self, progress: object) -> None:
        self.prefill_progress.emit(progress)

    def _on_token(self, step: object) -> None:
        if self._current(getattr(step, "request_id", None)) and self._paused_total:
            step = compute_time_step(step, self._paused_total)
        if self._current(getattr(step, "request_id", None)) and self._state is PREFILLING:
            self._transition(ReplyState.STREAMING, lambda: self.token.emit(step))
        else:
            self.token.emit(step)

    def _on_paused(self, request_id: int) -> None:
        if not self._current(request_id):
            self.generation_paused.emit(request_id)
            return
        if self._state is ReplyState.STOPPING or self._cancel.is_set():
            # Stop came while the step was being computed: end it now.
            self._run(False)
            self._transition(ReplyState.STOPPING, lambda: self.generation_paused.emit(request_id))
            return
        self._one_step = False
        self._paused_since = time.monotonic()
        self._transition(ReplyState.PAUSED, lambda: self.generation_paused.emit(request_id))

    def _on_finished(self, result: object) -> None:
        self._ended(result, self.generation_finished, failed=False)

    def _on_failed(self, result: object) -> None:
        self._ended(result, self.generation_failed, failed=True)

    def _ended(self, result: object, relay: Signal, failed: bool) -> None:
        if not self._current(getattr(result, "request_id", None)):
            relay.emit(result)  # a stale answer (a replaced reply): routed, no state change
            return
        self._one_step = False
        self._end_pause()
        if self._paused_total:
            result = compute_time_result(result, self._paused_total)
        if failed:  # announced, then settled: the failure's listeners read IDLE, as on finish
            self._transition(ReplyState.FAILED)
        self._transition(self._settled(), lambda: relay.emit(result))

    @property
    def model_is_remote(self) -> bool:
        """The open model answers from a server: its replies are saved at every chunk, since a
        connection can drop at any moment (a local reply is saved in batches)."""
        return self.answered_load[0].startswith(REMOTE_PREFIX)

    def _on_loaded(self, info: object) -> None:
        self.answered_load = self._loads.popleft() if self._loads else ("", "none")
        new = self._state if self._state.active else self._settled()
        self._transition(new, lambda: self.model_loaded.emit(info))

    def _on_load_failed(self, message: str) -> None:
        self.answered_load = self._loads.popleft() if self._loads else ("", "none")
        if self._state.active:  # a reply asked for meanwhile runs next: it stays as it is
            self.load_failed.emit(message)
            return
        self._transition(ReplyState.FAILED)
        self._transition(self._settled(), lambda: self.load_failed.emit(message))

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


def compute_time_step(step: object, paused_s: float) -> object:
    """`step` with the time its reply spent paused taken out of `elapsed_s` (never below 0)."""
    elapsed = getattr(step, "elapsed_s", None)
    if not isinstance(elapsed, float) or not dataclasses.is_dataclass(step):
        return step
    return dataclasses.replace(step, elapsed_s=max(0.0, elapsed - paused_s))


def compute_time_result(result: object, paused_s: float) -> object:
    """`result` with its decode speed over compute time only: the engine timed its decode loop
    from the first token to the end, pauses between step-mode clicks included (all of them
    after the first token, so time to first token is already right)."""
    tps = getattr(result, "decode_tokens_per_s", 0.0)
    tokens = getattr(result, "generated_tokens", 0)
    if not dataclasses.is_dataclass(result) or not tps or tokens < 2:
        return result
    decode_s = (tokens - 1) / tps - paused_s
    if decode_s <= 0:  # the pause was measured on another clock; keep what the engine said
        return result
    return dataclasses.replace(result, decode_tokens_per_s=(tokens - 1) / decode_s)
