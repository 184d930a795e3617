"""One reply from a server, pulled step by step like the local `engine.front_door.Reply`.

The reply is a sequence of requests to `/v1/completions`, each streamed (SSE): normally one for
the whole reply; in step mode (`next_step(explain=True)`) one per token (`max_tokens: 1`), each
prompt being the prompt plus the reply so far, so a paused reply holds no connection open; a
branch adds one request first that reads the distribution where the forced token goes.
Nothing else is sent while a request streams: llama.cpp's server interrupts a running
completion when another request arrives.

Timing is measured here, at the client: time to first token (`ttft_s`, also `prefill_s`: the
server's prefill cannot be seen apart from the network) and tokens per second from the first
token to the last.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from engine.events import GenerationResult, SamplerStages, SamplingParams, Step, TopToken
from engine.remote.errors import RemoteError
from engine.remote.protocol import (
    MAX_TOP_LOGPROBS,
    WireToken,
    chat_body,
    completion_body,
    decode_event,
    parse_choice,
)
from engine.remote.sse import DONE, SseParser

if TYPE_CHECKING:
    from engine.remote.http_client import HttpClient
    from engine.remote.token_table import TokenTable


class ReplySource(Protocol):
    """What a reply needs of its RemoteEngine (named here, so the two modules do not import
    each other): the connection, the endpoints, the model's name and context, and the token
    table that gives a server's token texts their ids."""

    client: HttpClient
    table: TokenTable
    model: str
    chat_path: str
    completions_path: str
    max_context: int

    def piece_text(self, token_id: int) -> str: ...


log = logging.getLogger(__name__)

STOP_EOS, STOP_MAX_TOKENS, STOP_STRING = "eos", "max_tokens", "stop_string"
STOP_CANCELLED, STOP_CONTEXT_FULL, STOP_ERROR = "cancelled", "context_full", "error"
STOP_SERVER = "stop"
"""The server said "stop" and stop strings were given: it does not say whether it met one of
them or the end-of-sequence token."""


class RemoteReply:
    """A reply in progress on a server: `next_step()`, iteration, `result`, `stages` (always
    None: a server does not show its sampler's stages) and `ends_after_this_step`."""

    def __init__(
        self,
        engine: ReplySource,
        prompt_text: str,
        prompt_tokens: int,
        params: SamplingParams,
        *,
        max_new_tokens: int,
        stop: Sequence[str],
        cancel: Any,
        report_top: int,
        on_prefill: Callable[[int, int], None] | None,
        prefix: Sequence[int],
        forced: Sequence[int],
        messages: list[dict] | None = None,
    ) -> None:
        self._engine = engine
        self._messages = messages
        """Chat mode (a server without a tokenizer): the conversation sent to
        /v1/chat/completions; no step mode, no branches."""
        self._prompt_text = prompt_text
        self._prompt_tokens = prompt_tokens
        self._params = params
        self._max_new = max_new_tokens
        self._stops = [s for s in stop if s]
        self._cancel = cancel
        self._report_top = report_top
        self._on_prefill = on_prefill
        self._prefix = list(prefix)
        self._prefix_pieces = "".join(engine.piece_text(t) for t in prefix)
        self._forced = list(forced)
        self._ids: list[int] = []
        self._pieces: list[str] = []
        """The raw text of each generated token (what the next request's prompt is built of)."""
        self._shown: list[str] = []
        """The text each step added to the reply as shown."""
        self._request: Iterator[tuple[WireToken, str]] | None = None
        self._request_single = False
        self._request_count = 0
        self._finish: str | None = None
        self._result: GenerationResult | None = None
        self._started = time.perf_counter()
        self._first: float | None = None
        self._last: float | None = None
        self.last_step_yielded = False

    # -- the door's interface -----------------------------------------------------------------

    def next_step(self, explain: bool = False) -> Step | None:
        """The next step, or None once the reply has ended (then `result` is set). `explain`
        asks for step mode: the next token comes from a request of its own."""
        if self._result is not None:
            return None
        try:
            return self._next(explain)
        except RemoteError as exc:
            self._close_request()
            self._result = self._make_result(STOP_ERROR, error=str(exc))
            exc.partial = self._result
            raise

    def __iter__(self) -> Iterator[Step]:
        while (step := self.next_step()) is not None:
            yield step

    @property
    def stages(self) -> SamplerStages | None:
        """Always None: a server does not tell how its sampler chose a token."""
        return None

    @property
    def ends_after_this_step(self) -> bool:
        return self.last_step_yielded

    @property
    def result(self) -> GenerationResult | None:
        return self._result

    def close(self) -> None:
        """Stop now: the open request's connection is closed (Stop, a reply ended early)."""
        self._close_request()
        if self._result is None:
            self._result = self._make_result(STOP_CANCELLED)

    # -- the work -----------------------------------------------------------------------------

    def _next(self, explain: bool) -> Step | None:
        explain = explain and self._messages is None  # a chat reply cannot be continued
        if self._cancelled():
            return self._end(STOP_CANCELLED)
        if self._forced:
            return self._forced_step()
        while True:
            if self._request is None:
                left = self._max_new - len(self._ids)
                if left <= 0:
                    return self._end(STOP_MAX_TOKENS)
                self._request_single = explain
                self._request = self._open(1 if explain else left)
                self._request_count = 0
            item = next(self._request, None)
            if item is None:
                self._request = None
                if self._cancelled():
                    return self._end(STOP_CANCELLED)
                reason = self._finish
                if self._request_single and self._request_count > 0 and reason == "length":
                    if len(self._ids) >= self._max_new:
                        return self._end(STOP_MAX_TOKENS)
                    if not explain:
                        continue  # step mode was left: the rest comes in one request
                    self._request_single = True
                    self._request = self._open(1)
                    self._request_count = 0
                    continue
                return self._end(self._stop_reason(reason))
            wire, shown = item
            self._request_count += 1
            if self._request_count > (1 if self._request_single else self._max_new):
                log.warning("the server sent more tokens than asked for; the reply ends here")
                return self._end(STOP_MAX_TOKENS)
            step = self._step(wire, shown)
            if step is not None or self._result is not None:
                return step

    def _step(self, wire: WireToken, shown: str, forced_id: int | None = None) -> Step | None:
        now = time.perf_counter()
        if self._first is None:
            self._first = now
            if self._on_prefill is not None:
                self._on_prefill(self._prompt_tokens, self._prompt_tokens)
        self._last = now
        if not self._prefix and not self._ids and shown.startswith(" "):
            shown = shown[1:]  # SentencePiece: a reply's first '▁' is not shown (as locally)
        text_before = "".join(self._shown)
        if self._stops:
            reply = self._prefix_shown() + text_before + shown
            for stop in self._stops:
                at = reply.find(stop, max(0, len(self._prefix_shown() + text_before) - len(stop)))
                if at >= 0:
                    return self._end(STOP_STRING, cut=at)
        token_id = forced_id if forced_id is not None else self._engine.table.intern(wire.text)
        index = len(self._prefix) + len(self._ids)
        self._ids.append(token_id)
        self._pieces.append(wire.text)
        self._shown.append(shown)
        top = [
            TopToken(self._engine.table.intern(text), text, math.exp(lp))
            for text, lp in wire.top[: self._report_top]
        ]
        prob = math.exp(wire.logprob) if wire.logprob is not None else 0.0
        self.last_step_yielded = len(self._ids) >= self._max_new
        return Step(
            index=index,
            token_id=token_id,
            text=shown,
            piece=wire.text,
            prob=prob,
            top=top,
            elapsed_s=now - self._started,
        )

    def _forced_step(self) -> Step | None:
        """A branch's forced token, with the server's probabilities at that place (read by a
        one-token request; the forced token's own probability is its entry among the top 20,
        0.0 when it is not among them)."""
        forced_id = self._forced.pop(0)
        piece = self._engine.piece_text(forced_id)
        request = self._open(1, top=MAX_TOP_LOGPROBS)
        try:
            first = next(request, None)
        finally:
            request.close()
        if self._cancelled():
            return self._end(STOP_CANCELLED)
        top = first[0].top if first is not None else []
        logprob = next((lp for text, lp in top if text == piece), None)
        wire = WireToken(piece, logprob, top)
        return self._step(wire, piece, forced_id=forced_id)

    def _open(self, max_tokens: int, top: int | None = None) -> Iterator[tuple[WireToken, str]]:
        engine = self._engine
        top = top if top is not None else max(1, self._report_top)
        self._finish = None
        if self._messages is not None:
            body = chat_body(
                engine.model,
                self._messages,
                self._params,
                max_tokens=max_tokens,
                top=top,
                stop=self._stops,
            )
            raw = engine.client.stream(engine.chat_path, body, self._cancel)
            return self._tokens(raw, chat=True)
        prompt = self._prompt_text + self._prefix_pieces + "".join(self._pieces)
        body = completion_body(
            engine.model, prompt, self._params, max_tokens=max_tokens, top=top, stop=self._stops
        )
        return self._tokens(engine.client.stream(engine.completions_path, body, self._cancel))

    def _tokens(self, raw: Iterator[bytes], chat: bool = False) -> Iterator[tuple[WireToken, str]]:
        """The (token, shown text) pairs of one streamed request; its finish reason is kept."""
        parser = SseParser()
        where = self._engine.client.where
        try:
            for data in raw:
                for event in parser.feed(data):
                    if event.data.strip() == DONE:
                        return
                    chunk = parse_choice(decode_event(event.data, where), where, chat=chat)
                    if chunk.finish_reason:
                        self._finish = chunk.finish_reason
                    for token in chunk.tokens:
                        yield token, chunk.text if len(chunk.tokens) == 1 else token.text
            for event in parser.finish():
                if event.data.strip() == DONE:
                    return
            if self._cancelled():
                return
            if self._finish is None:
                raise RemoteError(
                    f"the connection to {where} was cut in the middle of the reply; try again",
                    "cut",
                )
        finally:
            close = getattr(raw, "close", None)
            if close is not None:
                close()

    # -- ending -------------------------------------------------------------------------------

    def _stop_reason(self, finish: str | None) -> str:
        if finish == "length":
            if len(self._ids) < self._max_new:
                return STOP_CONTEXT_FULL  # the server cut max_tokens to fit its context
            return STOP_MAX_TOKENS
        if finish == "stop":
            return STOP_SERVER if self._stops else STOP_EOS
        return finish or STOP_EOS

    def _cancelled(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    def _close_request(self) -> None:
        if self._request is not None:
            close = getattr(self._request, "close", None)
            if close is not None:
                close()
            self._request = None

    def _end(self, reason: str, cut: int | None = None) -> None:
        self._close_request()
        self._result = self._make_result(reason, cut=cut)
        return None

    def _prefix_shown(self) -> str:
        text = self._prefix_pieces
        return text[1:] if text.startswith(" ") else text

    def _make_result(
        self, reason: str, error: str = "", cut: int | None = None
    ) -> GenerationResult:
        text = self._prefix_shown() + "".join(self._shown)
        if cut is not None:
            text = text[:cut]
        first = self._first
        ttft = (first - self._started) if first is not None else 0.0
        n = len(self._ids)
        span = (self._last or 0.0) - (first or 0.0)
        tps = (n - 1) / span if n > 1 and span > 0 else 0.0
        return GenerationResult(
            text=text,
            token_ids=[*self._prefix, *self._ids],
            prompt_tokens=self._prompt_tokens,
            generated_tokens=n,
            prefill_s=ttft,
            ttft_s=ttft,
            decode_tokens_per_s=tps,
            stop_reason=reason,
            max_context=self._engine.max_context,
            error=error,
        )
