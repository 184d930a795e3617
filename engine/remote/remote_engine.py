"""`RemoteEngine`: a model served elsewhere, behind the same door as a local `Engine`.

The window and the CLI call the same methods (describe/info, capabilities, max_context,
tokenize, conversation_ids, fit_prompt, plan_windows, reply, inspect, close...) and get the
same records back. What a server cannot give is said by `capabilities` and, for each thing it
cannot do, `capability_notes` (the reason a greyed control shows).

Prompts are built here, as text, in Llama 2's chat format (engine/remote/prompt_text.py), and
sent to `/v1/completions`; the server's tokenizer endpoint gives the real ids, so context
fitting counts real tokens and a branch continues exactly the text of the reply it came from.
Token ids: see engine/remote/token_table.py.

Not thread-safe, like `Engine`: one thread uses it at a time, and it never has two requests in
flight (llama.cpp's server would interrupt the first).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from engine.errors import EngineError
from engine.events import Capabilities, Inspection, ModelInfo, RuntimeInfo, SamplingParams
from engine.remote.errors import RemoteError
from engine.remote.http_client import HttpClient, Limits
from engine.remote.prompt_text import BOS_TEXT, EOS_TEXT, conversation_text, without_bos
from engine.remote.protocol import (
    MAX_TOP_LOGPROBS,
    completion_body,
    context_from_models,
    model_ids,
    parse_choice,
)
from engine.remote.reply import RemoteReply
from engine.remote.server_tokenizer import ServerTokenizer
from engine.remote.token_table import TokenTable
from engine.remote.urls import check_base_url
from engine.text.chat import Message
from engine.text.prompt import PromptPlan, WindowPlan, fit_prompt, plan_windows

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

DEFAULT_CONTEXT = 4096
"""Llama 2's context, used when the server states none and cannot be asked."""
CONTEXT_PROBE_CHARS = 1 << 20
"""llama-cpp-python states no context length anywhere; a prompt of ~500k tokens (1 MB of text)
is refused at once with "This model's maximum context length is N tokens", which tells it.
(Measured: 0.5 s for 300k tokens on the test server; no model runs with a longer context.)"""
PROBE_LIMITS = Limits(first_byte_s=20.0, idle_s=20.0, max_json_s=20.0, max_json_bytes=2**20)
"""The probe is refused at once by the servers it is for; anything slower is not told."""
APPROX_CHARS = 4
MAX_REMEMBERED_TEXTS = 256
"""Prompt texts kept by their ids (fitting a long chat tokenizes several candidates per reply);
an older one is rebuilt from its pieces if it is ever needed again."""
CONTEXT_RE = re.compile(r"maximum context length is (\d+) tokens")

NOTES = {
    "attention": "attention weights are not available from a server",
    "exact_logits": "the probabilities are the server's log-probabilities (as it rounded them, "
    "at most its top 20 per token), not computed here",
    "speculative": "speculative decoding runs on the server (its own settings), not here",
    "step_mode": "a server does not show how its sampler chose a token: step mode pauses after "
    "each token but cannot show the sampler's stages",
}
NOTES_NO_TOKENIZER = {
    "branches": "the server has no tokenizer endpoint, so a reply cannot be continued from one of "
    "its tokens",
    "surprisal": "the server has no tokenizer endpoint and no prompt log-probabilities",
    "step_mode": "the server has no tokenizer endpoint, so replies cannot be made token by token",
}


def entropy_lower_bound(logprobs: Sequence[float]) -> float:
    """A lower bound on a distribution's entropy (nats) from its most likely tokens only."""
    probs = [math.exp(lp) for lp in logprobs if lp is not None]
    if not probs:
        return 0.0
    h = -sum(p * math.log(p) for p in probs if p > 0)
    rest = 1.0 - sum(probs)
    p_min = min(probs)
    if rest > 1e-9 and 0 < p_min < 1:
        h += -rest * math.log(p_min)
    return max(h, 0.0)


def list_models(
    base_url: str, api_key: str | None = None, limits: Limits | None = None
) -> list[str]:
    """The model ids a server offers (`GET /v1/models`); RemoteError (one line) if it cannot
    be asked."""
    client = HttpClient(check_base_url(base_url), api_key, limits)
    return model_ids(client.get_json(client.base.endpoint("models")), client.where)


class RemoteEngine:
    """A model on an OpenAI-compatible server (see the module docstring)."""

    def __init__(
        self,
        client: HttpClient,
        model: str,
        tokenizer: ServerTokenizer | None,
        max_context: int,
        name: str | None = None,
        context_source: str = "",
    ) -> None:
        self.client = client
        self.model = model
        self.tokenizer = tokenizer
        self.table = TokenTable()
        self._max_context = max_context
        self._context_source = context_source
        self._name = name or model
        self._path = f"{client.where} {model}"
        self._texts: dict[tuple[int, ...], str] = {}
        """The text each id list was made from (prompts built here)."""
        self._server_ids: set[int] = set()
        """Real ids the server itself gave (its tokenizer): the only ones ever sent back to its
        detokenizer, because llama-cpp-python's aborts the whole server on an id outside the
        vocabulary (measured: 0.3.36, `/extras/detokenize` with id 15043 of 4096)."""
        self._prefill_chunk = 512
        self.bos_id: int | None = None
        self.eos_id: int | None = None
        self.completions_path = client.base.endpoint("completions")
        self.chat_path = client.base.endpoint("chat/completions")
        self._chats: dict[tuple[int, ...], list[dict]] = {}
        """Chat mode: the conversation each id list stands for."""

    @classmethod
    def open(
        cls,
        base_url: str,
        model: str,
        api_key: str | None = None,
        progress: Progress | None = None,
        name: str | None = None,
        limits: Limits | None = None,
        chat: bool | None = None,
        path: str | None = None,
    ) -> RemoteEngine:
        """Connect to the server at `base_url` and check that it serves `model`; RemoteError
        (an EngineError: one line, URL without credentials) says what is wrong.

        `chat` None: raw completions with prompts built here when the server has a tokenizer
        endpoint, else chat mode (`/v1/chat/completions`: the server applies its own chat
        template; ids are approximate, no branches, step mode or surprisal). True forces chat
        mode. `path` is what `describe()["path"]` says (the app's `remote:<server>/<model>`);
        default: the URL and the model."""

        def say(fraction: float, message: str) -> None:
            if progress is not None:
                progress(fraction, message)

        client = HttpClient(check_base_url(base_url), api_key, limits)
        say(0.1, f"Asking {client.where} for its models")
        listing = client.get_json(client.base.endpoint("models"))
        served = model_ids(listing, client.where)
        if model not in served:
            shown = ", ".join(served[:5]) + (" ..." if len(served) > 5 else "")
            raise RemoteError(
                f"the server at {client.where} does not serve the model {model!r} (it serves: "
                f"{shown or 'nothing'}); choose one of its models",
                "not_found",
            )
        say(0.4, "Looking for the server's tokenizer")
        tokenizer = None if chat else ServerTokenizer.find(client, model)
        say(0.6, "Reading the server's context length")
        context, source = context_from_models(listing, model), "server"
        if context is None and tokenizer is not None and tokenizer.max_model_len:
            context = tokenizer.max_model_len
        if context is None and tokenizer is not None and tokenizer.kind == "extras":
            context, source = cls._probe_context(client, model), "probe"
        if context is None and tokenizer is not None and tokenizer.kind == "tokenize":
            context = cls._props_context(client)
        if context is None:
            context, source = DEFAULT_CONTEXT, "default"
        engine = cls(client, model, tokenizer, context, name=name, context_source=source)
        engine._path = path or f"{client.where} {model}"
        if tokenizer is not None:
            say(0.8, "Reading the special tokens")
            engine._find_specials()
        say(1.0, "Ready")
        return engine

    @staticmethod
    def _probe_context(client: HttpClient, model: str) -> int | None:
        body = completion_body(
            model,
            "a " * (CONTEXT_PROBE_CHARS // 2),
            SamplingParams(),
            max_tokens=1,
            top=1,
            stream=False,
        )
        probe = HttpClient(client.base, client._api_key, PROBE_LIMITS)
        try:
            probe.post_json(client.base.endpoint("completions"), body)
        except RemoteError as exc:
            found = CONTEXT_RE.search(str(exc))
            if found:
                return int(found.group(1))
            if exc.kind in ("key", "refused", "dns", "tls"):
                raise
            log.info("the context probe told nothing: %s", exc)
        return None

    @staticmethod
    def _props_context(client: HttpClient) -> int | None:
        """llama.cpp's llama-server states its context in `GET /props`
        (`default_generation_settings.n_ctx`; from its documentation: not checked here)."""
        try:
            props = client.get_json(client.base.root_endpoint("props"))
        except RemoteError as exc:
            if exc.kind in ("key", "refused", "dns", "tls"):
                raise
            return None
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        for holder in (settings, props):
            value = holder.get("n_ctx") if isinstance(holder, dict) else None
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _find_specials(self) -> None:
        assert self.tokenizer is not None
        empty = self.tokenizer.encode("")
        self.bos_id = empty[0] if len(empty) == 1 else None
        ends = self.tokenizer.encode(EOS_TEXT)
        if self.bos_id is not None and len(ends) == 2 and ends[0] == self.bos_id:
            self.eos_id = ends[1]
        for token_id, text in ((self.bos_id, ""), (self.eos_id, "")):
            if token_id is not None:
                self.table.pieces[token_id] = text
                self._server_ids.add(token_id)

    # -- what it is ----------------------------------------------------------------------------

    def describe(self) -> dict:
        """Plain data for the status bar and the done line; the URL without credentials."""
        return {
            "name": self._name,
            "path": self._path,
            "device": "remote",
            "dtype": "server",
            "max_context": self._max_context,
            "vocab_size": 0,
            "n_layers": 0,
            "has_chat_template": False,
            "remote": True,
            "server": self.client.where,
            "model": self.model,
            "context_source": self._context_source,
            "tokenizer": self.tokenizer.kind if self.tokenizer else None,
            "endpoint": "completions" if self.tokenizer else "chat/completions",
            "kernel": "remote",
            "kernel_source": "server",
            "native": None,
            "quant": "none",
        }

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.from_dict(self.describe())

    @property
    def runtime(self) -> RuntimeInfo:
        return RuntimeInfo(kernel="remote", kernel_source="server")

    @property
    def capabilities(self) -> Capabilities:
        """Branches, surprisal (echo + logprobs) and step mode (one-token requests) with a
        tokenizer endpoint; never attention, exact logits or a local draft."""
        ids = self.tokenizer is not None
        return Capabilities(
            step_mode=ids,
            branches=ids,
            surprisal=ids,
            attention=False,
            exact_logits=False,
            speculative=False,
        )

    @property
    def capability_notes(self) -> dict[str, str]:
        """Why, for each capability that is False (and for step mode, what it lacks)."""
        notes = dict(NOTES)
        if self.tokenizer is None:
            notes.update(NOTES_NO_TOKENIZER)
        return notes

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def vocab_size(self) -> int:
        """Not told by the servers measured: 0 (only the attention view, which a server cannot
        offer, uses it)."""
        return 0

    @property
    def prefill_chunk(self) -> int:
        """Kept for the door's sake: the server reads prompts in its own batches."""
        return self._prefill_chunk

    @prefill_chunk.setter
    def prefill_chunk(self, tokens: int) -> None:
        self._prefill_chunk = max(1, int(tokens))

    @property
    def context_note(self) -> str | None:
        if self._context_source == "default":
            return (
                f"the server does not say its context length; {DEFAULT_CONTEXT} tokens is assumed"
            )
        return None

    # -- text ----------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return self._approximate_ids(text)
        ids = self.tokenizer.encode(without_bos(text))
        self._server_ids.update(ids)
        self._texts[tuple(ids)] = text if text.startswith(BOS_TEXT) else BOS_TEXT + text
        while len(self._texts) > MAX_REMEMBERED_TEXTS:  # the oldest first (dicts keep order)
            del self._texts[next(iter(self._texts))]
        return ids

    def _approximate_ids(self, text: str) -> list[int]:
        """Chat mode: no tokenizer, so a text counts as one interned id per 4 characters (about
        a Llama token's length in English); `text_of` gives the text back exactly."""
        text = without_bos(text)
        step = APPROX_CHARS
        return [self.table.intern(text[i : i + step]) for i in range(0, len(text), step)]

    def tokenize(self, text: str, bos: bool = True) -> list[int]:
        """The server's ids for `text` (its tokenizer adds the BOS; `bos=False` drops it)."""
        ids = self._encode(text)
        if not bos and ids and ids[0] == self.bos_id:
            return ids[1:]
        return ids

    def piece_text(self, token_id: int) -> str:
        """One id's raw text ('' for BOS/EOS); asks the server once for a real id it has not
        seen in an echo. `<id>` where nothing is known."""
        text = self.table.text(int(token_id))
        if text is None and self.tokenizer is not None and int(token_id) in self._server_ids:
            text = self.tokenizer.piece(int(token_id))
            if text is not None:
                self.table.pieces[int(token_id)] = text
        return text if text is not None else f"<{token_id}>"

    def token_name(self, token_id: int) -> str:
        """A single token's readable text (as the server gave it)."""
        if token_id == self.bos_id:
            return BOS_TEXT
        if token_id == self.eos_id:
            return EOS_TEXT
        return self.piece_text(token_id)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token's own text within `ids` (raw pieces; BOS/EOS as '')."""
        return [self.piece_text(t) for t in ids]

    def message_spans(
        self, ids: Sequence[int], contents: Sequence[str]
    ) -> list[tuple[int, int] | None]:
        """Where each message's tokens sit in `ids`: its encoding after a space ('▁' first) or
        after a newline (no '▁': the first user turn after the system prompt), searched in
        order, as engine/text/token_spans.py does locally."""
        from engine.text.token_spans import spans_in_order

        if self.tokenizer is None:
            return [None] * len(contents)
        newline = self.tokenize("\n", bos=False)

        def candidates(text: str) -> list[list[int]]:
            if not text:
                return []
            after_newline = self.tokenize("\n" + text, bos=False)
            if after_newline[: len(newline)] == newline:
                after_newline = after_newline[len(newline) :]
            return [self.tokenize(text, bos=False), after_newline]

        return spans_in_order(ids, [candidates(text.strip()) for text in contents])

    def outside_vocabulary(self, ids: Sequence[int]) -> int | None:
        """The first id this engine did not get from this server (its tokenizer or its
        streams), or None: only those can be sent back (as text). Ids saved with a local model
        or an earlier connection are refused here rather than guessed at."""
        for t in ids:
            t = int(t)
            if t not in self._server_ids and self.table.text(t) is None:
                return t
        return None

    def conversation_ids(self, messages: Sequence[Message]) -> list[int]:
        """The server's ids of the conversation in Llama 2's chat format (built here as text);
        in chat mode approximate ids, remembered with the messages they stand for."""
        if self.tokenizer is None:
            ids = self._approximate_ids(conversation_text(messages))
            self._chats[tuple(ids)] = [{"role": m.role, "content": m.content} for m in messages]
            while len(self._chats) > MAX_REMEMBERED_TEXTS:
                del self._chats[next(iter(self._chats))]
            return ids
        return self._encode(conversation_text(messages))

    def fit_prompt(self, messages: Sequence[Message], reserve: int) -> PromptPlan:
        return fit_prompt(self.conversation_ids, messages, self.max_context, reserve)

    def plan_windows(self, messages: Sequence[Message]) -> WindowPlan:
        return plan_windows(self.conversation_ids, messages, self.max_context)

    def text_of(self, ids: Sequence[int]) -> str:
        """The prompt text that `ids` stand for: the text they were made from, or their pieces
        (BOS/EOS as "<s>"/"</s>", which the server reads back as those tokens). A piece right
        after a special token (or first) loses one leading space: the server's SentencePiece
        tokenizer adds that '▁' itself."""
        known = self._texts.get(tuple(int(t) for t in ids))
        if known is not None:
            return known
        parts = []
        after_special = True
        for t in ids:
            if t in (self.bos_id, self.eos_id):
                parts.append(BOS_TEXT if t == self.bos_id else EOS_TEXT)
                after_special = True
                continue
            text = self.table.text(int(t))
            if text is None:
                text = self.piece_text(int(t))
            if after_special and text.startswith(" "):
                text = text[1:]
            parts.append(text)
            after_special = False
        return "".join(parts)

    # -- speculative decoding: on the server, if anywhere ---------------------------------------

    def use_draft(
        self,
        spec: str | None,
        *,
        k: int | None = None,
        quant: str = "none",
        progress: Progress | None = None,
    ) -> None:
        if spec and str(spec).strip():
            raise EngineError(NOTES["speculative"])

    @property
    def draft(self) -> str | None:
        return None

    # -- generating ----------------------------------------------------------------------------

    def reply(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        *,
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        cancel: Any = None,
        report_top: int = 10,
        on_prefill: Callable[[int, int], None] | None = None,
        reply_prefix: Sequence[int] = (),
        forced: Sequence[int] = (),
    ) -> RemoteReply:
        """Start a reply (nothing is sent until the first `next_step`). Sampling settings go to
        the server as its fields (protocol.sampling_fields); `report_top` is capped at 20."""
        params = params or SamplingParams()
        params.validate()
        if not prompt_ids:
            raise EngineError("the prompt is empty: give at least one token")
        if max_new_tokens < 1:
            raise EngineError("max new tokens must be at least 1")
        if report_top < 0:
            raise EngineError("report-top must be 0 or more")
        for name, ids in (("prompt", prompt_ids), ("reply", reply_prefix), ("forced", forced)):
            bad = self.outside_vocabulary(ids)
            if bad is not None:
                raise EngineError(
                    f"{name} token id {bad} was not made by this server connection; reopen the "
                    "model or regenerate the reply"
                )
        messages = None
        if self.tokenizer is None:
            if reply_prefix or forced:
                raise EngineError(NOTES_NO_TOKENIZER["branches"])
            messages = self._chats.get(tuple(int(t) for t in prompt_ids))
            if messages is None:  # a plain prompt: sent as one user message
                messages = [{"role": "user", "content": without_bos(self.text_of(prompt_ids))}]
        total = len(prompt_ids) + len(reply_prefix)
        if total >= self._max_context:
            raise EngineError(
                f"the prompt is {total} tokens but the model's context holds "
                f"{self._max_context}; shorten the conversation or start a new chat"
            )
        return RemoteReply(
            self,
            without_bos(self.text_of(prompt_ids)),
            total,
            params,
            max_new_tokens=max_new_tokens,
            stop=list(stop),
            cancel=cancel,
            report_top=min(int(report_top), MAX_TOP_LOGPROBS),
            on_prefill=on_prefill,
            prefix=[int(t) for t in reply_prefix],
            forced=[int(t) for t in forced],
            messages=messages,
        )

    # -- seeing inside -------------------------------------------------------------------------

    def inspect(
        self,
        ids: Sequence[int],
        *,
        attention: bool = False,
        top: int = 0,
        cancel: Any = None,
    ) -> Inspection:
        """Log-probabilities of every token of `ids` from the server's echo (`echo: true` with
        `logprobs`); entropy a LOWER BOUND from the server's top tokens only
        (`entropy_lower_bound`: −Σ p·ln p over them plus the leftover mass spread as thinly as
        the least likely listed token allows; 0.0 where the server gave nothing, after a BOS it
        leaves out). No attention."""
        if attention:
            raise EngineError(NOTES["attention"])
        if self.tokenizer is None:
            raise EngineError(NOTES_NO_TOKENIZER["surprisal"])
        ids = [int(t) for t in ids]
        if not ids:
            raise EngineError("the prompt is empty: give at least one token")
        bad = self.outside_vocabulary(ids)
        if bad is not None:
            raise EngineError(
                f"token id {bad} was not made by this server connection; reopen the model"
            )
        want = max(10, min(int(top), MAX_TOP_LOGPROBS))
        body = completion_body(
            self.model,
            without_bos(self.text_of(ids)),
            SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0),
            max_tokens=1,
            top=want,
            stream=False,
            echo=True,
        )
        answer = self.client.post_json(self.completions_path, body, cancel)
        tokens = parse_choice(answer, self.client.where, chat=False).tokens
        # The echo leaves out every BOS: match its entries to the other positions in order.
        positions = [i for i, t in enumerate(ids) if t != self.bos_id]
        if len(tokens) < len(positions):
            raise RemoteError(
                f"the server at {self.client.where} echoed {len(tokens)} tokens for a prompt of "
                f"{len(positions)}; it tokenized the prompt differently",
                "malformed",
            )
        n = len(ids)
        logprobs: list[float | None] = [None] * n
        tops: list[list[tuple[str, float]]] = [[] for _ in range(n + 1)]
        for k, i in enumerate(positions):
            logprobs[i] = tokens[k].logprob
            tops[i] = tokens[k].top
            if ids[i] not in self.table.pieces and tokens[k].text:
                self.table.pieces[ids[i]] = tokens[k].text
        if len(tokens) > len(positions):  # the one generated token: the distribution after all
            tops[n] = tokens[len(positions)].top
        # Each dict holds the top `want` and, after them, the token that was there if it was
        # not among them: only the top `want` bound the entropy.
        entropy = [entropy_lower_bound([lp for _, lp in tops[i + 1][:want]]) for i in range(n)]
        ranks: list[int | None] = []
        top_ids: list[list[int]] = []
        top_probs: list[list[float]] = []
        for i in range(n):
            dist, own = tops[i], logprobs[i]
            if own is None or not dist:
                ranks.append(None)
            else:
                above = sum(1 for _, lp in dist if lp > own)
                ranks.append(above + 1 if above < want else None)
            shown = dist[: int(top)] if top else []
            top_ids.append([self.table.intern(text) for text, _ in shown])
            top_probs.append([math.exp(lp) for _, lp in shown])
        return Inspection(
            token_ids=ids,
            pieces=[self.token_name(t) for t in ids],
            logprobs=logprobs,
            entropy=entropy,
            ranks=ranks,
            top_ids=top_ids,
            top_probs=top_probs,
        )

    def close(self) -> None:
        """Nothing stays open between requests; forget the tables."""
        self._texts.clear()
        self._chats.clear()
