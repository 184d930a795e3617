"""Prefill and decode: turn prompt ids into a stream of `Step`s, one per sampled token.

The `Generator` keeps the KV cache of the last call. A follow-up chat turn whose prompt starts with
what is already cached (the usual case: the same conversation plus one more message) prefills only
the new tokens, which keeps the time to first token flat as a conversation grows.

A reply can also be continued from the middle (a branch: "what if it had picked this token at step
k?"): `reply_prefix` is the reply's first k tokens, `forced` the token(s) it must go on with. The
prefix is still cached from the reply it came from, so only its last position is run again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from engine.errors import EngineError
from engine.events import DraftStats, GenerationResult, Step, TopToken
from engine.generation.sampler import Sampler
from engine.generation.sampling import SamplingParams, reported
from engine.generation.speculative import DRAFT_K, MAX_DRAFT_K, Draft, Pick, Verifier, round_size
from engine.kernels.quant import kernel_of
from engine.kernels.threads import ThreadGovernor, decoding
from engine.loading.loader import LoadedModel
from engine.model.transformer import Interrupted
from engine.text.tokenizer import StreamDecoder

log = logging.getLogger(__name__)

STOP_EOS = "eos"
STOP_MAX_TOKENS = "max_tokens"
STOP_STRING = "stop_string"
STOP_CANCELLED = "cancelled"
STOP_CONTEXT_FULL = "context_full"
PREFILL_CHUNK = 512
"""Prompt tokens per forward pass. GEMMs on 64 rows ran ~10-15% below their speed on 256-512 (bf16,
2 threads, development machine), which made prefill slower than transformers' single pass; 512
was another 2-3% faster than 256 for a 512-token prompt. A cancel is still honoured within one
layer, and progress is reported layer by layer (`Transformer.forward`'s `between_layers`): a
512-token chunk of a 7B model on a laptop CPU takes many seconds."""


@dataclass
class _StopStringFilter:
    """Holds back streamed text that could still turn out to be the start of a stop string.

    Without it, the first half of a stop string would already be on screen before we know to cut.
    """

    stops: Sequence[str]
    pending: str = ""
    hit: bool = field(default=False, init=False)

    def feed(self, text: str) -> str:
        """Add streamed text; return the part that is safe to show now."""
        if self.hit:
            return ""
        self.pending += text
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                self.hit = True
                safe, self.pending = self.pending[:at], ""
                return safe
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        safe = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(safe) :]
        return safe

    def flush(self) -> str:
        """The held-back text, once no more tokens will come."""
        rest, self.pending = ("" if self.hit else self.pending), ""
        return rest


class Generation:
    """One call's token stream: iterate for `Step`s; `result` is set once the stream ends.

    The stream may be paused between any two steps and resumed later (step mode holds it
    suspended between clicks): the KV cache position, the sampler's random state and the text
    decoder all live in the suspended stream, so resuming continues exactly where it stopped.
    """

    def __init__(self, sampler: Sampler) -> None:
        self._steps: Iterator[Step] = iter(())
        self.sampler = sampler
        """Set `sampler.explain` to get each pick's stage-by-stage account in `last_stages`."""
        self.result: GenerationResult | None = None
        self.last_step_yielded = False
        """The step just yielded is the reply's last one (max tokens, context full, stop
        string): resuming ends the stream without another forward pass."""

    def __iter__(self) -> Iterator[Step]:
        self.result = yield from self._steps

    @property
    def last_stages(self):
        """How the sampler chose the most recent token (`SamplerStages`), if it was explaining."""
        return self.sampler.last_stages


def invalid_numbers_message(index: int, dtype: torch.dtype) -> str:
    """What to tell the user when the logits hold NaN or infinity (never sample or print them)."""
    hint = "" if dtype == torch.float32 else " or it overflows in " + str(dtype).split(".")[-1]
    return (
        f"the model produced invalid numbers (NaN/Inf) at generated token {index + 1}; its "
        f"weights may be damaged{hint}: try float32, or download the model again"
    )


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Generator:
    """Runs prompts through one loaded model, reusing its KV cache across calls.

    Not thread-safe: one thread (the desktop's worker, the CLI's main thread) owns it.
    """

    def __init__(self, loaded: LoadedModel, prefill_chunk: int = PREFILL_CHUNK) -> None:
        if prefill_chunk < 1:
            raise EngineError("prefill chunk must be at least 1 token")
        self.loaded = loaded
        self.prefill_chunk = prefill_chunk
        self._cached_ids: list[int] = []
        self._display: dict[int, str] = {}
        self._governor = ThreadGovernor.for_runtime(getattr(loaded, "runtime", {}))
        """Moves decode between thread counts when another process takes a core."""
        self._native = kernel_of(loaded.model)

    def forget_cache(self) -> None:
        """Make the next call prefill from scratch (e.g. after the model was used elsewhere)."""
        self._cached_ids = []

    def adopt_cache(self, ids: Sequence[int]) -> None:
        """The model's KV cache now holds exactly `ids` from position 0, written by someone else
        with the same model (e.g. `engine.generation.inspect.inspect_tokens`): reuse it as if
        prefilled here, so an inspection between two chat turns does not cost the next turn its
        prefix."""
        self._cached_ids = [int(t) for t in ids]

    @property
    def cached_tokens(self) -> int:
        """How many prompt positions hold valid keys and values right now."""
        return len(self._cached_ids)

    def _scores(self, logits: torch.Tensor, speakable: int, index: int) -> torch.Tensor:
        """The logits of real tokens (checkpoints may pad the vocabulary past the tokenizer's, to
        a multiple of 64, say: those rows are no token at all, so they are neither chosen nor
        reported), refusing NaN and infinity: they would be sampled and shown as numbers."""
        scores = logits[:speakable]
        if not bool(torch.isfinite(scores).all()):
            raise EngineError(invalid_numbers_message(index, self.loaded.dtype))
        return scores

    def display_text(self, token_id: int) -> str:
        """Readable text of a single token, memoised: the top-k asks for the same ids often."""
        text = self._display.get(token_id)
        if text is None:
            text = self._display[token_id] = self.loaded.tokenizer.display_text(token_id)
        return text

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
        report_top: int = 10,
        reuse_cache: bool = True,
        on_prefill: Callable[[int, int], None] | None = None,
        reply_prefix: Sequence[int] = (),
        forced: Sequence[int] = (),
        draft: Draft | None = None,
        draft_k: int = DRAFT_K,
    ) -> Generation:
        """Validate the request now (so errors surface before iteration) and return the stream.

        `on_prefill(done, total)` is called after each prefill chunk (from the iterating thread).

        To continue a reply from its middle: `reply_prefix` holds the ids the reply already has
        (read as part of the prompt, not streamed again) and `forced` the ids it must continue
        with whatever the sampler would pick; each forced id is streamed as a Step carrying the
        model's own probabilities there. Steps are then numbered from `len(reply_prefix)`, their
        text follows on from the prefix's, and the result's `text`/`token_ids` are the whole
        reply's (prefix included) while `generated_tokens` counts this call's tokens.

        With a `draft` (engine/generation/speculative.py), up to `draft_k` tokens are proposed
        and checked per forward pass; the steps are the same stream, each saying whether it was
        drafted.
        """
        reply = [int(t) for t in reply_prefix]
        force = [int(t) for t in forced]
        prompt = [int(t) for t in prompt_ids]
        vocab = self.loaded.args.vocab_size
        if not prompt:
            raise EngineError("the prompt is empty: give at least one token")
        for name, ids in (("prompt", prompt), ("reply", reply), ("forced", force)):
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise EngineError(
                    f"{name} token id {bad[0]} is outside the vocabulary (0..{vocab - 1})"
                )
        prompt += reply
        if max_new_tokens < 1:
            raise EngineError("max new tokens must be at least 1")
        if report_top < 0:
            raise EngineError("report-top must be 0 or more")
        if draft is not None and not 1 <= draft_k <= MAX_DRAFT_K:
            raise EngineError(f"draft-k must be between 1 and {MAX_DRAFT_K}, got {draft_k}")
        limit = self.loaded.max_context
        if len(prompt) >= limit:
            raise EngineError(
                f"the prompt is {len(prompt)} tokens but the model's context holds {limit}; "
                "shorten the conversation or start a new chat"
            )
        sampler = Sampler(params or SamplingParams())
        sampler.names = self.display_text
        sampler.eos_id = self.loaded.tokenizer.eos_id
        stops = [s for s in stop if s]
        generation = Generation(sampler)
        generation._steps = self._run(
            prompt,
            sampler,
            max_new_tokens,
            stops,
            cancel,
            report_top,
            reuse_cache,
            on_prefill,
            generation,
            reply,
            force,
            draft,
            draft_k,
        )
        return generation

    @torch.inference_mode()
    def _run(
        self,
        prompt: list[int],
        sampler: Sampler,
        max_new_tokens: int,
        stops: list[str],
        cancel: threading.Event | None,
        report_top: int,
        reuse_cache: bool,
        on_prefill: Callable[[int, int], None] | None = None,
        generation: Generation | None = None,
        reply: Sequence[int] = (),
        forced: Sequence[int] = (),
        draft: Draft | None = None,
        draft_k: int = DRAFT_K,
    ) -> Iterator[Step]:
        started = time.perf_counter()
        model = self.loaded.model
        tokenizer = self.loaded.tokenizer
        speakable = tokenizer.vocab_size
        device = self.loaded.device
        limit = self.loaded.max_context

        def cancelled() -> bool:
            return cancel is not None and cancel.is_set()

        # Reuse the cached prefix, but always run at least the last prompt token: its logits
        # are what the first sampled token comes from.
        reused = common_prefix_len(self._cached_ids, prompt) if reuse_cache else 0
        reused = min(reused, len(prompt) - 1)
        self._cached_ids = self._cached_ids[:reused]

        verifier: Verifier | None = None
        if draft is not None:
            verifier = Verifier(
                sampler.params,
                sampler.generator,
                lambda scores, seen: sampler.sample(scores, seen, report_top=report_top),
                self.display_text,
                report_top,
                draft.kind,
            )
        passes = 0

        def result(
            reason: str, generated: list[int], text: str, **timing: float
        ) -> GenerationResult:
            return GenerationResult(
                text=text,
                token_ids=[*reply, *generated],
                prompt_tokens=len(prompt),
                generated_tokens=len(generated),
                reused_tokens=reused,
                stop_reason=reason,
                prefill_s=timing.get("prefill_s", time.perf_counter() - started),
                ttft_s=timing.get("ttft_s", 0.0),
                decode_tokens_per_s=timing.get("tps", 0.0),
                draft=None
                if verifier is None
                else DraftStats(verifier.draft_kind, verifier.proposed, verifier.accepted, passes),
            )

        # Prefill in chunks; between layers a cancel is honoured and progress reported, as the
        # positions read so far plus the share of the chunk's layers done (an estimate of the
        # work, never ahead of it, only ever growing).
        logits = None
        pos = reused
        shown_done = reused
        n_layers = max(1, len(model.layers))

        def report(done: int) -> None:
            nonlocal shown_done
            if on_prefill is not None and done > shown_done:
                shown_done = done
                on_prefill(done, len(prompt))

        while pos < len(prompt):
            if cancelled():
                return result(STOP_CANCELLED, [], "")
            chunk = prompt[pos : pos + self.prefill_chunk]
            tokens = torch.tensor(chunk, dtype=torch.long, device=device)

            def between_layers(done_layers: int, start: int = pos, size: int = len(chunk)) -> bool:
                report(start + size * done_layers // n_layers)
                return cancelled()

            try:
                logits = model(tokens, pos, last_only=True, between_layers=between_layers)[-1]
            except Interrupted:
                return result(STOP_CANCELLED, [], "")
            pos += len(chunk)
            self._cached_ids = prompt[:pos]
            report(pos)
        prefill_s = time.perf_counter() - started
        log.debug(
            "prefill %d tokens (%d reused) in %.3f s", len(prompt) - reused, reused, prefill_s
        )

        decoder = StreamDecoder(tokenizer)
        for token in reply:  # its text was streamed before: what follows must join onto it
            decoder.push(token)
        forced = list(forced)
        stop_filter = _StopStringFilter(stops)
        history = list(prompt)
        generated: list[int] = []
        ttft = 0.0
        first_token_at = 0.0
        reason = STOP_MAX_TOKENS
        assert logits is not None

        def picks() -> Iterator[Pick]:
            """The tokens, one by one; each is in `history` when this resumes. A pass feeds the
            latest token (not yet in the cache) with the draft's guesses after it, if any."""
            nonlocal passes
            rows = [logits]  # rows[i]: the model's logits after history + the first i guesses
            pending = False  # history[-1] is not in the KV cache yet
            while True:
                proposal = None
                if draft is not None and not forced:
                    k = round_size(draft_k, len(history), limit, len(generated), max_new_tokens)
                    if k:
                        proposal = draft.propose(history, k, sampler.params, sampler.generator)
                guesses = proposal.tokens if proposal is not None else []
                if pending or guesses:
                    feed = [history[-1]] * pending + guesses
                    at = len(history) - pending
                    tokens = torch.tensor(feed, dtype=torch.long, device=device)
                    step_started = time.perf_counter()
                    out = model(tokens, at, last_only=not guesses)
                    if self._governor is not None and not guesses:
                        self._governor.observe(time.perf_counter() - step_started)
                    passes += 1
                    if pending:
                        self._cached_ids.append(history[-1])
                    rows = list(out) if pending else [rows[0], *out]
                for i, guess in enumerate(guesses):
                    scores = self._scores(rows[i], speakable, len(generated))
                    assert verifier is not None and proposal is not None
                    pick = verifier.check(scores.float().cpu(), history, guess, proposal.q[i])
                    if not sampler.params.greedy:
                        sampler.last_stages = None  # the check is this place's account
                    if pick.drafted:
                        self._cached_ids.append(guess)  # written by this pass at its place
                        yield pick
                        continue
                    yield pick  # the model's token instead: fed by the next pass
                    break
                else:
                    scores = self._scores(rows[len(guesses)], speakable, len(generated))
                    if forced:
                        yield Pick(reported(scores.float().cpu(), forced.pop(0), report_top))
                    else:
                        yield Pick(sampler.sample(scores, history, report_top=report_top))
                pending = True

        # The decode loop: torch keeps one thread if the compiled int8/int4 kernels have the cores.
        with decoding(self._native, self._governor):
            for pick in picks():
                sample = pick.sample
                now = time.perf_counter()
                if not generated:
                    ttft = now - started
                    first_token_at = now
                token = sample.token_id
                if token == tokenizer.eos_id:
                    reason = STOP_EOS
                    break
                generated.append(token)
                history.append(token)
                text = stop_filter.feed(decoder.push(token))
                context_full = len(history) - 1 >= limit  # no place left to read this token
                last = len(generated) >= max_new_tokens or context_full
                if not stop_filter.hit and last:
                    # The last step: nothing more will complete held-back text, so it goes out now
                    # and the streamed pieces add up to the final text.
                    text += stop_filter.feed(decoder.flush())
                    text += stop_filter.flush()
                if generation is not None:
                    generation.last_step_yielded = last or stop_filter.hit
                yield Step(
                    index=len(reply) + len(generated) - 1,
                    token_id=token,
                    text=text,
                    piece=self.display_text(token),
                    prob=sample.prob,
                    top=[
                        TopToken(i, self.display_text(i), p)
                        for i, p in zip(sample.top_ids, sample.top_probs, strict=True)
                    ],
                    elapsed_s=now - started,
                    drafted=pick.drafted,
                    check=pick.check,
                )
                if stop_filter.hit:
                    reason = STOP_STRING
                    break
                if len(generated) >= max_new_tokens:
                    reason = STOP_MAX_TOKENS
                    break
                if context_full:
                    reason = STOP_CONTEXT_FULL
                    break
                if cancelled():
                    reason = STOP_CANCELLED
                    break

        decode_s = time.perf_counter() - first_token_at if generated else 0.0
        tps = (len(generated) - 1) / decode_s if len(generated) > 1 and decode_s > 0 else 0.0
        text = tokenizer.decode([*reply, *generated])
        if reason == STOP_STRING:
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        return result(reason, generated, text, prefill_s=prefill_s, ttft_s=ttft, tps=tps)
