"""The engine's front door: `Engine`, one open model and everything about it, and the few
model-finding and download functions the app needs. The desktop imports this module and
`engine.events` only; the CLI uses it too; a second backend (a remote server, a GGUF file)
implements the same door.

Why one door (Meta's `Llama.build()` / `generate()` is the model): the app used to reach into the
loader's `LoadedModel`, the `Generator`, the sampler and the inspector, and the KV cache had
several owners. Here the cache has one: a reply, an inspection and the next reply all go through
`Engine`, which knows what the cache holds and reuses it (the shared prefix of a chat) or forgets
it (an inspection that failed half way).

Not thread-safe: one thread (the app's engine thread, or the CLI) uses an Engine at a time.

Importing this module is cheap (no torch): the window imports it on the GUI thread for model
names and the download functions, and torch loads only when a model is opened, in the engine
thread (desktop/native_preload.py says why that matters).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import EngineError, Hint, Remedy, cli_text
from engine.events import (
    Capabilities,
    GenerationResult,
    Inspection,
    ModelInfo,
    RuntimeInfo,
    SamplerStages,
    SamplingParams,
    Step,
)
from engine.gguf.discover import FoundGGUF, find_gguf_files, gguf_locations
from engine.gguf.reader import is_gguf
from engine.hub.download import DownloadCancelled, download_model, format_progress
from engine.hub.progress_text import format_bytes
from engine.loading.builtin import BUILTIN_NAME, DISPLAY_NAME, builtin_dir, is_builtin
from engine.loading.model_folder import HubSettings, Layout, list_cached_models, resolve_model
from engine.remote import (  # the second backend: a model on an OpenAI-compatible server
    REMOTE_PREFIX,
    RemoteEngine,
    check_base_url,
    display_url,
    is_local_url,
    list_models,
    parse_remote_path,
    remote_path,
)
from engine.text.chat import Message
from engine.text.prompt import PromptPlan, WindowPlan, conversation_ids, fit_prompt, plan_windows

if TYPE_CHECKING:  # torch and the model's code load with the first model, not with this module
    from engine.generation.generate import Generation
    from engine.generation.speculative import Draft
    from engine.loading.loader import LoadedModel

__all__ = [
    "BUILTIN_NAME",
    "DISPLAY_NAME",
    "DownloadCancelled",
    "Engine",
    "EngineError",
    "FoundGGUF",
    "Hint",
    "HubSettings",
    "Layout",
    "Message",
    "PromptPlan",
    "Remedy",
    "REMOTE_PREFIX",
    "RemoteEngine",
    "Reply",
    "WindowPlan",
    "builtin_dir",
    "check_base_url",
    "display_url",
    "download_model",
    "find_gguf_files",
    "format_bytes",
    "format_progress",
    "gguf_locations",
    "is_builtin",
    "is_gguf",
    "is_local_url",
    "list_cached_models",
    "list_models",
    "parse_remote_path",
    "remote_path",
    "resolve_model",
]

Progress = Callable[[float, str], None]
SELF_INT4 = "self-int4"
"""The draft spec for an open model's own 4-bit copy (`Engine.use_draft`)."""


class Reply:
    """One reply's stream of `Step`s, which may stop between any two steps and go on later
    (step mode): the KV cache position, the sampler's random state and the text decoder live in
    the suspended stream. `next_step()` pulls one step; iterating pulls them all."""

    def __init__(self, generation: Generation) -> None:
        self._generation = generation
        self._stream = iter(generation)

    def next_step(self, explain: bool = False) -> Step | None:
        """The next step, or None once the reply has ended (then `result` is set). With
        `explain`, the step's sampling decision is kept in `stages`."""
        self._generation.sampler.explain = explain
        return next(self._stream, None)

    def __iter__(self) -> Iterator[Step]:
        while (step := self.next_step()) is not None:
            yield step

    @property
    def stages(self) -> SamplerStages | None:
        """How the sampler chose the latest token, when it was asked to explain."""
        return self._generation.last_stages

    @property
    def ends_after_this_step(self) -> bool:
        """The step just pulled is the reply's last (max tokens, context full, stop string):
        the next pull ends the stream without another forward pass."""
        return self._generation.last_step_yielded

    @property
    def result(self) -> GenerationResult | None:
        """How the reply ended; None until the stream has ended."""
        return self._generation.result


class Engine:
    """An open model: weights, KV cache, tokenizer, chat format and kernels behind one object."""

    def __init__(self, loaded: LoadedModel) -> None:
        from engine.generation.generate import Generator

        self._loaded = loaded
        self._generator = Generator(loaded)
        self._draft: Draft | None = None
        self._draft_k = 3  # engine.generation.speculative.DRAFT_K (no torch import here)
        self._draft_spec: str | None = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        dtype: str = "auto",
        device: str | None = None,
        quant: str | None = None,
        max_context: int | None = None,
        progress: Progress | None = None,
    ) -> Engine:
        """Open a model folder, a GGUF file, a cached Hub repo id or `builtin`; EngineError says
        what is wrong. `quant` None: the model's own default (none for folders, file for GGUF).

        `progress(fraction, message)` is called as the weights load; raising from it stops the
        load between tensors (the app does this when it closes)."""
        from engine.loading.loader import load_model

        return cls(
            load_model(
                path,
                dtype=dtype or "auto",
                device=device or None,
                max_context=max_context,
                progress=progress,
                quant=quant or None,
            )
        )

    # -- what it is ----------------------------------------------------------------------------

    def describe(self) -> dict:
        """Plain data about the model and how it runs (kernel, threads, compiled build...)."""
        return self._loaded.describe()

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.from_dict(self.describe())

    @property
    def runtime(self) -> RuntimeInfo:
        """How it runs: kernel, threads, compiled build, weight format."""
        return self._loaded.runtime

    @property
    def capabilities(self) -> Capabilities:
        """What this engine can do beyond generating text (a remote backend may do less)."""
        return Capabilities(
            step_mode=True,
            branches=True,
            surprisal=True,
            attention=True,
            exact_logits=True,
            speculative=True,
        )

    @property
    def max_context(self) -> int:
        """Positions the KV cache holds: the most tokens a prompt plus its reply can use."""
        return self._loaded.max_context

    @property
    def vocab_size(self) -> int:
        return self._loaded.args.vocab_size

    @property
    def prefill_chunk(self) -> int:
        """Prompt tokens per forward pass while reading a prompt (progress comes per chunk)."""
        return self._generator.prefill_chunk

    @prefill_chunk.setter
    def prefill_chunk(self, tokens: int) -> None:
        self._generator.prefill_chunk = max(1, int(tokens))

    @property
    def context_note(self) -> str | None:
        """Set when the context was capped below the model's own to fit memory, with the CLI's
        advice (`info.extra["context_note"]` has the note alone, for the window)."""
        note = self._loaded.context_note
        return cli_text(note, self._loaded.context_hint) if note else None

    # -- text ----------------------------------------------------------------------------------

    def tokenize(self, text: str, bos: bool = True) -> list[int]:
        return self._loaded.tokenizer.encode(text, bos=bos)

    def token_name(self, token_id: int) -> str:
        """A single token's readable text (`␣` for a space...); `<id>` past the tokenizer's
        pieces (a padded vocabulary)."""
        if 0 <= token_id < self._loaded.tokenizer.vocab_size:
            return self._generator.display_text(token_id)
        return f"<{token_id}>"

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token's own text within the run `ids` (leading spaces kept)."""
        from engine.text.token_spans import token_texts

        return token_texts(self._loaded.tokenizer, list(ids))

    def message_spans(
        self, ids: Sequence[int], contents: Sequence[str]
    ) -> list[tuple[int, int] | None]:
        """Which positions of a chat prompt's ids hold each message's text."""
        from engine.text.token_spans import message_spans

        return message_spans(self._loaded.tokenizer, list(ids), list(contents))

    def outside_vocabulary(self, ids: Sequence[int]) -> int | None:
        """The first id this model has no embedding for (saved with another model), or None."""
        from engine.generation.inspect import outside_vocabulary

        return outside_vocabulary(self._loaded, ids)

    def conversation_ids(self, messages: Sequence[Message]) -> list[int]:
        """The ids of a conversation in the model's chat format: a prompt when it ends with a
        user turn; one that ends with a reply gets the reply's tokens after the prompt that asked
        for it (engine.text.prompt, the one prompt builder)."""
        loaded = self._loaded
        return conversation_ids(loaded.tokenizer, messages, loaded.chat_template)

    def fit_prompt(self, messages: Sequence[Message], reserve: int) -> PromptPlan:
        """The chat prompt for `messages`, leaving out the oldest turns if it would not fit with
        `reserve` tokens (the reply; at most half the context) after it. The system prompt is
        always kept; turns go in user/assistant pairs so roles still alternate."""
        return fit_prompt(self.conversation_ids, messages, self.max_context, reserve)

    def plan_windows(self, messages: Sequence[Message]) -> WindowPlan:
        """The context-sized passes that score every message of a conversation longer than the
        context (surprisal): whole turns, sliding forward, the system prompt in each."""
        return plan_windows(self.conversation_ids, messages, self.max_context)

    # -- speculative decoding ------------------------------------------------------------------

    def use_draft(
        self,
        spec: str | None,
        *,
        k: int | None = None,
        quant: str = "none",
        progress: Progress | None = None,
    ) -> None:
        """Turn speculative decoding on for the replies that follow, or off (`spec` None).

        `spec` is "lookup" (prompt lookup: no second model), "self-int4" (this model's own
        4-bit copy, for a 16-bit model) or a model like `Engine.open` takes (`builtin-draft` for
        the built-in model, TinyLlama-1.1B-Chat for Llama-2-7B-chat); its vocabulary must be
        this model's. A draft
        model is opened with this model's dtype, device and context, and kept open until
        another draft replaces it. EngineError says why a draft cannot be used (and the previous
        one stays)."""
        from engine.generation.speculative import (
            DRAFT_K,
            MAX_DRAFT_K,
            ModelDraft,
            PromptLookup,
            check_vocabulary,
        )

        k = DRAFT_K if k is None else int(k)
        if not 1 <= k <= MAX_DRAFT_K:
            raise EngineError(f"draft-k must be between 1 and {MAX_DRAFT_K}, got {k}")
        spec = (spec or "").strip() or None
        if spec == self._draft_spec and (spec is None or self._draft is not None):
            self._draft_k = k
            return
        if spec is None:
            draft: Draft | None = None
        elif spec.lower() == "lookup":
            draft = PromptLookup()
        else:
            import torch

            from engine.loading.loader import load_model

            source = spec
            if spec.lower() == SELF_INT4:  # this model's own 4-bit copy drafts for it
                source, quant = str(self._loaded.path), "int4"
            # Loading measures the draft's best thread count and sets torch's (one per
            # process): the model's own, measured when it loaded, must stay. Measured on a
            # 7B-shaped int4 model: 1 thread best, a decode step 0.48 s; after a 1.1B draft's
            # load had set 2, 0.94 s.
            threads = torch.get_num_threads()
            try:
                loaded = load_model(
                    source,
                    dtype=str(self._loaded.dtype).split(".")[-1],
                    device=str(self._loaded.device),
                    max_context=self._loaded.max_context,
                    progress=progress,
                    quant=quant or "none",
                )
            finally:
                torch.set_num_threads(threads)
            check_vocabulary(self._loaded, loaded)
            draft = ModelDraft(loaded)
        if self._draft is not None:
            self._draft.close()
        self._draft, self._draft_spec, self._draft_k = draft, spec, k

    @property
    def draft(self) -> str | None:
        """The draft in use ("lookup", a model's name) or None (speculative decoding off)."""
        if self._draft is None:
            return None
        return self._draft.kind if self._draft.kind == "lookup" else self._draft.name

    # -- generating ----------------------------------------------------------------------------

    def reply(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        *,
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
        report_top: int = 10,
        on_prefill: Callable[[int, int], None] | None = None,
        reply_prefix: Sequence[int] = (),
        forced: Sequence[int] = (),
    ) -> Reply:
        """Start a reply to `prompt_ids` (checked now, so errors come before any step).

        The cached prefix of the previous call is reused. To continue a reply from its middle
        (a branch): `reply_prefix` holds the ids it already has and `forced` those it must go on
        with, whatever the sampler would pick (engine.generation.generate.Generator.generate).
        With a draft (`use_draft`) the steps are decoded speculatively: the same stream, each
        step saying whether the draft proposed it."""
        return Reply(
            self._generator.generate(
                prompt_ids,
                params,
                max_new_tokens=max_new_tokens,
                stop=stop,
                cancel=cancel,
                report_top=report_top,
                on_prefill=on_prefill,
                reply_prefix=reply_prefix,
                forced=forced,
                draft=self._draft,
                draft_k=self._draft_k,
            )
        )

    # -- seeing inside -------------------------------------------------------------------------

    def inspect(
        self,
        ids: Sequence[int],
        *,
        attention: bool = True,
        top: int = 0,
        cancel: threading.Event | None = None,
    ) -> Inspection:
        """Log-probabilities, entropy and (optionally) the last position's attention for `ids`.

        It prefills from position 0, so it overwrites the KV cache: afterwards the cache holds
        `ids`, which the next reply reuses as far as its prompt shares them; if it fails half
        way, the cache is forgotten."""
        from engine.generation.inspect import inspect_tokens

        try:
            found = inspect_tokens(self._loaded, ids, attention=attention, top=top, cancel=cancel)
        except BaseException:
            self._generator.forget_cache()
            raise
        self._generator.adopt_cache(ids)
        return found

    def close(self) -> None:
        """Forget the model (its memory is freed once nothing else holds it)."""
        if self._draft is not None:
            self._draft.close()
            self._draft = None
        self._generator.forget_cache()
        self._loaded = None  # type: ignore[assignment]
        self._generator = None  # type: ignore[assignment]
