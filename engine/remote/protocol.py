"""The OpenAI-compatible wire format: request bodies from the engine's settings, and the tokens
(text, log-probability, top candidates) out of each response or streamed chunk.

Facts this mapping depends on, measured with llama-cpp-python 0.3.36's server
(`python -m llama_cpp.server`, whose sampling fields are those of llama_cpp.Llama):

* `/v1/completions` takes `prompt` as a string only: a list of token ids is refused (HTTP 500,
  "Input should be a valid string"). A text prompt gets BOS prepended, and "<s>"/"</s>" inside
  it are read as the special tokens (it tokenizes with `special=True`).
* `logprobs: N` gives, per token, `tokens` (its text), `token_logprobs` and `top_logprobs`: a
  dict text → logprob of the N most likely tokens plus the chosen one (so N or N+1 entries,
  fewer where two tokens have the same text). The numbers are log-softmax of the raw logits
  (temperature 1, before any sampler setting). No token ids are given.
* Streaming with logprobs sends one token per chunk; a token that is part of a multi-byte
  character comes with empty text (the server decodes each token alone, ignoring bad bytes).
* `echo: true` with `logprobs` returns the prompt's tokens first, BOS left out (also BOS tokens
  inside the prompt are left out), the first one with `null` (OpenAI's convention) though the
  server could compute it.
* `max_tokens` ≤ 0 means "until the context is full"; a larger one is silently cut to fit.
* Unknown fields are ignored, so vLLM's names can be sent beside llama.cpp's.
* Sampling fields honoured: temperature (0 = greedy), top_p, top_k, min_p, repeat_penalty,
  seed, stop. Errors, validation ones included, come as HTTP 500 `{"error": {"message"}}`.

vLLM takes the same body (`top_k`, `min_p`, `repetition_penalty`, `seed` as extra sampling
fields) and caps `logprobs`/`top_logprobs` at 20; llama.cpp's own `llama-server` reads
`top_k`, `min_p`, `repeat_penalty`, `seed` too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from engine.events import SamplingParams
from engine.remote.errors import RemoteError

MAX_TOP_LOGPROBS = 20
"""OpenAI's and vLLM's cap on candidates per token; the top-k panel never asks for more."""


@dataclass(frozen=True)
class WireToken:
    """One token as a server reported it."""

    text: str
    logprob: float | None
    top: list[tuple[str, float]] = field(default_factory=list)
    """Candidates (text, logprob), most likely first."""


@dataclass
class Chunk:
    """What one response or streamed chunk says."""

    tokens: list[WireToken] = field(default_factory=list)
    text: str = ""
    """The text this chunk adds (may differ from the tokens' texts joined, e.g. a held-back
    stop string)."""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def sampling_fields(params: SamplingParams) -> dict[str, Any]:
    """The sampler settings as request fields: OpenAI's (temperature, top_p, seed) and the
    extra ones llama.cpp and vLLM read (top_k, min_p, repeat_penalty / repetition_penalty).
    The 'off' values are sent too so a server's own defaults (llama-cpp-python: top_k 40,
    min_p 0.05) do not apply behind the user's back."""
    body: dict[str, Any] = {
        "temperature": 0.0 if params.greedy else float(params.temperature),
        "top_p": float(params.top_p),
        "top_k": int(params.top_k),
        "min_p": float(params.min_p),
        "repeat_penalty": float(params.repetition_penalty),
        "repetition_penalty": float(params.repetition_penalty),
    }
    if params.seed is not None:
        body["seed"] = int(params.seed) % 2**32  # llama.cpp's seed is 32-bit
    return body


def completion_body(
    model: str,
    prompt: str,
    params: SamplingParams,
    *,
    max_tokens: int,
    top: int,
    stop: list[str] | None = None,
    stream: bool = True,
    echo: bool = False,
) -> dict[str, Any]:
    """A `/v1/completions` request. `top` candidates per token (at least 1: the chosen token's
    own probability comes with them)."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": int(max_tokens),
        "stream": stream,
        "logprobs": max(1, min(int(top), MAX_TOP_LOGPROBS)),
        **sampling_fields(params),
    }
    if stop:
        body["stop"] = list(stop)
    if echo:
        body["echo"] = True
    return body


def chat_body(
    model: str,
    messages: list[dict],
    params: SamplingParams,
    *,
    max_tokens: int,
    top: int,
    stop: list[str] | None = None,
    stream: bool = True,
) -> dict[str, Any]:
    """A `/v1/chat/completions` request (servers without a raw completion endpoint)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": int(max_tokens),
        "stream": stream,
        "logprobs": True,
        "top_logprobs": max(1, min(int(top), MAX_TOP_LOGPROBS)),
        **sampling_fields(params),
    }
    if stop:
        body["stop"] = list(stop)
    return body


def decode_event(data: str, where: str) -> dict:
    """One SSE event's JSON; RemoteError naming what was wrong (the partial reply is kept by
    the caller)."""
    try:
        obj = json.loads(data)
    except ValueError as exc:
        shown = data[:60].replace("\n", " ")
        raise RemoteError(
            f"the server at {where} sent a chunk that is not JSON ({exc.msg} at character "
            f"{exc.pos}: {shown!r})",
            "malformed",
        ) from None
    if not isinstance(obj, dict):
        raise RemoteError(
            f"the server at {where} sent a chunk that is not a JSON object", "malformed"
        )
    if "error" in obj and "choices" not in obj:  # an error reported inside the stream
        error = obj["error"]
        message = error.get("message", "") if isinstance(error, dict) else str(error)
        message = " ".join(str(message).split())[:200]
        raise RemoteError(f"the server at {where} failed mid-reply: {message}", "server_error")
    return obj


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    if math.isnan(value):
        return None
    return max(value, -1e30) if value != math.inf else None


def _top_from_dict(top: Any) -> list[tuple[str, float]]:
    if not isinstance(top, dict):
        return []
    pairs = [(str(k), lp) for k, v in top.items() if (lp := _finite(v)) is not None]
    return sorted(pairs, key=lambda kv: -kv[1])


def _text_of(entry: dict) -> str:
    """A chat logprob entry's token text: exact from `bytes` when given (llama.cpp, vLLM),
    else `token`."""
    raw = entry.get("bytes")
    if isinstance(raw, list) and raw and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw).decode("utf-8", errors="replace")
    return str(entry.get("token", ""))


def parse_choice(obj: dict, where: str, chat: bool) -> Chunk:
    """The tokens of a completion or chat (streamed or not) response."""
    choices = obj.get("choices")
    chunk = Chunk()
    usage = obj.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            chunk.prompt_tokens = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            chunk.completion_tokens = usage["completion_tokens"]
    if choices == [] and usage is not None:  # vLLM's last chunk with stream_options usage
        return chunk
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RemoteError(
            f"the server at {where} sent an answer without choices (not an OpenAI-style "
            "completion)",
            "malformed",
        )
    choice = choices[0]
    reason = choice.get("finish_reason")
    chunk.finish_reason = str(reason) if reason else None
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if chat or isinstance(content, list):
        # Chat responses, and llama.cpp's llama-server, which answers /v1/completions with the
        # chat layout `logprobs.content[]` too (from its source: not checked here).
        if chat:
            delta = choice.get("delta") or choice.get("message") or {}
            chunk.text = str(delta.get("content") or "") if isinstance(delta, dict) else ""
        else:
            chunk.text = str(choice.get("text") or "")
        for entry in content or []:
            if not isinstance(entry, dict):
                continue
            top = [
                (_text_of(t), lp)
                for t in entry.get("top_logprobs") or []
                if isinstance(t, dict) and (lp := _finite(t.get("logprob"))) is not None
            ]
            top.sort(key=lambda kv: -kv[1])
            chunk.tokens.append(WireToken(_text_of(entry), _finite(entry.get("logprob")), top))
    else:
        chunk.text = str(choice.get("text") or "")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
            texts = logprobs["tokens"]
            lps = logprobs.get("token_logprobs") or [None] * len(texts)
            tops = logprobs.get("top_logprobs") or [None] * len(texts)
            for text, lp, top in zip(texts, lps, tops, strict=False):
                chunk.tokens.append(WireToken(str(text), _finite(lp), _top_from_dict(top)))
    if not chunk.tokens and chunk.text:  # a server that sends no logprobs: text only
        chunk.tokens.append(WireToken(chunk.text, None, []))
    return chunk


def model_ids(obj: Any, where: str) -> list[str]:
    """The model ids of a `/v1/models` answer (OpenAI: `{"data": [{"id"}]}`; Ollama's
    OpenAI layer answers the same)."""
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        raise RemoteError(
            f"the server at {where} answered /models without a model list; is this an "
            "OpenAI-compatible base URL (usually ending in /v1)?",
            "malformed",
        )
    return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]


def context_from_models(obj: Any, model: str) -> int | None:
    """The context length a `/v1/models` answer states for `model`, if any: vLLM's
    `max_model_len`, llama.cpp server's `meta.n_ctx_train` (llama-cpp-python states none)."""
    data = obj.get("data") if isinstance(obj, dict) else None
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict) or entry.get("id") != model:
            continue
        for value in (
            entry.get("max_model_len"),
            (entry.get("meta") or {}).get("n_ctx") if isinstance(entry.get("meta"), dict) else None,
            (entry.get("meta") or {}).get("n_ctx_train")
            if isinstance(entry.get("meta"), dict)
            else None,
        ):
            if isinstance(value, int) and value > 0:
                return value
    return None
