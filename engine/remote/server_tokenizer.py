"""The server's own tokenizer, through whichever endpoint it offers.

* llama-cpp-python: `POST /extras/tokenize {"input": text}` → `{"tokens": [...]}` with BOS
  always added and "<s>"/"</s>" read as special tokens; `POST /extras/detokenize {"tokens"}` →
  `{"text"}`, BOS/EOS rendered as nothing. Measured with 0.3.36, and two hazards with it: an id
  outside the vocabulary ABORTS the whole server process (a C++ exception), and a byte token
  that is not a whole UTF-8 character answers HTTP 500. So only ids the server itself gave are
  ever sent back, one at a time, and a failure leaves that one id without a text.
* llama.cpp's `llama-server`: `POST /tokenize {"content", "add_special"}` → `{"tokens"}`,
  `POST /detokenize {"tokens"}` → `{"content"}` (from its documentation: not checked here).
* vLLM: `POST /tokenize {"model", "prompt"}` → `{"tokens", "count", "max_model_len"}`,
  `POST /detokenize {"model", "tokens"}` → `{"prompt"}` (from its documentation: not checked
  here).
"""

from __future__ import annotations

import logging
from typing import Any

from engine.remote.errors import RemoteError
from engine.remote.http_client import HttpClient

log = logging.getLogger(__name__)


class ServerTokenizer:
    """`encode(text)` with the server's BOS first; `piece(id)` one id's text."""

    def __init__(self, client: HttpClient, kind: str, model: str) -> None:
        self.client = client
        self.kind = kind
        """"extras" (llama-cpp-python), "tokenize" (llama-server or vLLM)."""
        self.model = model
        self.max_model_len: int | None = None

    @classmethod
    def find(cls, client: HttpClient, model: str) -> ServerTokenizer | None:
        """The tokenizer endpoint this server has, or None (then the chat endpoint is used)."""
        base = client.base
        for kind, path, body in (
            ("extras", base.root_endpoint("extras/tokenize"), {"input": "Hi"}),
            (
                "tokenize",
                base.root_endpoint("tokenize"),
                {"model": model, "prompt": "Hi", "content": "Hi", "add_special": True},
            ),
        ):
            try:
                answer = client.post_json(path, body)
            except RemoteError as exc:
                if exc.kind in ("not_found", "bad_request", "server_error", "malformed"):
                    continue
                raise
            tokens = answer.get("tokens") if isinstance(answer, dict) else None
            if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
                found = cls(client, kind, model)
                if isinstance(answer.get("max_model_len"), int):
                    found.max_model_len = answer["max_model_len"]
                return found
        return None

    def encode(self, text: str, cancel: Any = None) -> list[int]:
        """Ids of `text` as the server tokenizes a completion prompt (BOS first)."""
        if self.kind == "extras":
            path, body = self.client.base.root_endpoint("extras/tokenize"), {"input": text}
        else:
            path = self.client.base.root_endpoint("tokenize")
            body = {"model": self.model, "prompt": text, "content": text, "add_special": True}
        answer = self.client.post_json(path, body, cancel)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise RemoteError(
                f"the server at {self.client.where} answered its tokenizer without token ids",
                "malformed",
            )
        return tokens

    def piece(self, token_id: int) -> str | None:
        """One id's text, or None where the server cannot say (a byte of a longer character)."""
        if self.kind == "extras":
            path, body = self.client.base.root_endpoint("extras/detokenize"), {"tokens": [token_id]}
        else:
            path = self.client.base.root_endpoint("detokenize")
            body = {"model": self.model, "tokens": [token_id]}
        try:
            answer = self.client.post_json(path, body)
        except RemoteError as exc:
            if exc.kind in ("server_error", "bad_request", "malformed"):
                log.debug("the server has no text for token %d: %s", token_id, exc)
                return None
            raise
        if not isinstance(answer, dict):
            return None
        text = answer.get("text", answer.get("content", answer.get("prompt")))
        return text if isinstance(text, str) else None
