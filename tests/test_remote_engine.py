"""RemoteEngine against a real OpenAI-compatible server: llama-cpp-python's, serving the
built-in model as a GGUF file (tests/fixtures/llama_server.py), and the pure parts (URLs, SSE)
without any server."""

from __future__ import annotations

import math
import threading
import time

import pytest

from engine.errors import EngineError
from engine.events import GREEDY, SamplingParams
from engine.remote import (
    INTERNED_BASE,
    RemoteEngine,
    RemoteError,
    check_base_url,
    display_url,
    is_local_url,
    list_models,
    parse_remote_path,
    remote_path,
)
from engine.remote.http_client import HttpClient, retry_after_seconds, server_message
from engine.remote.protocol import completion_body, parse_choice
from engine.remote.sse import SseParser
from engine.text.chat import Message
from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.llama_server import RunningServer, llama_server, llama_server_handle  # noqa: F401

pytestmark = pytest.mark.timeout(120)

QUESTION = [Message("user", "What is a dog?")]
CONVERSATION = [
    Message("system", "Define words."),
    Message("user", "What is a dog?"),
    Message("assistant", "A dog is an animal."),
    Message("user", "And a cat?"),
]


@pytest.fixture(scope="module")
def engine(llama_server_handle: RunningServer) -> RemoteEngine:  # noqa: F811
    return RemoteEngine.open(llama_server_handle.base_url, llama_server_handle.model)


@pytest.fixture(scope="module")
def local():
    from engine.front_door import Engine

    return Engine.open("builtin", dtype="float32")  # the GGUF holds the F32 weights


@pytest.fixture
def proxy(llama_server: str):  # noqa: F811
    found = FaultProxy(llama_server)
    yield found
    found.close()


# -- pure parts ----------------------------------------------------------------------------


def test_base_urls_are_checked_and_shown_without_credentials() -> None:
    base = check_base_url(" http://localhost:8000/v1/ ")
    assert (base.scheme, base.host, base.port, base.path) == ("http", "localhost", 8000, "/v1")
    assert base.endpoint("completions") == "/v1/completions"
    assert base.root_endpoint("extras/tokenize") == "/extras/tokenize"
    assert str(check_base_url("https://llm.example.org/v1")) == "https://llm.example.org/v1"
    for bad in ("", "ftp://x/v1", "http:///v1", "http://host:99999/v1", "http://h/v1?key=1"):
        with pytest.raises(EngineError):
            check_base_url(bad)
    with pytest.raises(EngineError) as caught:
        check_base_url("https://bob:sk-secret@llm.example.org/v1")
    assert "sk-secret" not in str(caught.value) and "bob" not in str(caught.value)
    assert display_url("https://bob:sk-secret@h.org:8443/v1?k=sk-2#x") == "https://h.org:8443/v1"


def test_local_urls_and_remote_paths() -> None:
    for local_url in ("http://localhost:8000/v1", "http://127.0.0.5/v1", "http://[::1]:80/"):
        assert is_local_url(local_url)
    for far in ("http://192.168.1.2/v1", "https://llm.example.org/v1", "not a url"):
        assert not is_local_url(far)
    path = remote_path("srv1", "meta-llama/Llama-2-70b-chat-hf")
    assert parse_remote_path(path) == ("srv1", "meta-llama/Llama-2-70b-chat-hf")
    for other in ("builtin", "/models/x", "remote:", "remote:srv", "remote:/m", None):
        assert parse_remote_path(other) is None


def test_sse_parser_handles_line_endings_comments_and_split_reads() -> None:
    stream = (
        b': ping\r\n\r\ndata: {"a": 1}\r\n\r\n'
        b"data: x\ndata: y\n\nevent: e\rdata: z\r\rdata: [DONE]\n\n"
    )
    for size in (1, 2, 3, 7, len(stream)):
        parser = SseParser()
        events = []
        for i in range(0, len(stream), size):
            events += parser.feed(stream[i : i + size])
        events += parser.finish()
        assert [e.data for e in events] == ['{"a": 1}', "x\ny", "z", "[DONE]"]
        assert events[2].event == "e"
    with pytest.raises(RemoteError) as caught:
        list(SseParser(max_line=100).feed(b"data: " + b"x" * 200))
    assert caught.value.kind == "malformed"
    assert [e.data for e in SseParser().finish()] == []
    tail = SseParser()
    assert list(tail.feed(b"data: last")) == []
    assert [e.data for e in tail.finish()] == ["last"]


def test_error_bodies_and_retry_after() -> None:
    assert server_message(b'{"error": {"message": "bad key\\n  File x"}}') == "bad key"
    assert server_message(b'{"detail": "Not Found"}') == "Not Found"
    assert server_message(b"<html><b>502</b></html>") == ""
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert (
        29
        <= retry_after_seconds(
            time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
        )
        <= 31
    )
    assert retry_after_seconds("soon") is None


# -- against the real server ---------------------------------------------------------------


def test_models_and_description(llama_server_handle: RunningServer, engine: RemoteEngine) -> None:  # noqa: F811
    assert list_models(llama_server_handle.base_url) == [llama_server_handle.model]
    info = engine.info
    assert info.max_context == 1024  # the server's n_ctx, found by its own refusal
    assert engine.describe()["remote"] is True
    assert engine.describe()["server"] == llama_server_handle.base_url
    assert engine.runtime.kernel == "remote"
    assert engine.context_note is None
    with pytest.raises(RemoteError) as caught:
        RemoteEngine.open(llama_server_handle.base_url, "no-such-model")
    assert caught.value.kind == "not_found" and "no-such-model" in str(caught.value)


def test_conversation_ids_are_the_local_engines(engine: RemoteEngine, local) -> None:
    """The prompt built as text here and tokenized by the server is, id for id, the prompt the
    local engine builds for the same model (Meta's Llama 2 format)."""
    for messages in (QUESTION, CONVERSATION, CONVERSATION[:3]):
        assert engine.conversation_ids(messages) == local.conversation_ids(messages)
    assert engine.tokenize("Hello there") == local.tokenize("Hello there")
    assert engine.tokenize("Hello", bos=False) == local.tokenize("Hello", bos=False)
    ids = engine.conversation_ids(CONVERSATION)
    contents = [m.content for m in CONVERSATION]
    assert engine.message_spans(ids, contents) == local.message_spans(ids, contents)
    plan = engine.fit_prompt(CONVERSATION, 100)
    assert plan.ids == ids and plan.dropped == 0
    # A prompt whose text was forgotten is rebuilt from its pieces, to the same ids.
    text = engine.text_of(ids)
    engine._texts.clear()
    assert engine.text_of(ids) == text
    assert engine.tokenize(text) == ids


def _non_streamed(engine: RemoteEngine, ids: list[int], n: int, top: int) -> dict:
    body = completion_body(
        engine.model, engine.text_of(ids)[3:], GREEDY, max_tokens=n, top=top, stream=False
    )
    return engine.client.post_json(engine.completions_path, body)


def test_streamed_reply_equals_a_non_streamed_greedy_request(engine: RemoteEngine) -> None:
    ids = engine.conversation_ids(QUESTION)
    reply = engine.reply(ids, GREEDY, max_new_tokens=16, report_top=5)
    steps = list(reply)
    result = reply.result
    assert result is not None and result.stop_reason in ("max_tokens", "eos")
    answer = _non_streamed(engine, ids, 16, 5)
    whole = answer["choices"][0]["text"]
    assert "".join(s.piece for s in steps) == whole
    assert result.text == whole.removeprefix(" ")  # the reply's first '▁' is not shown
    assert "".join(s.text for s in steps) == result.text
    assert result.token_ids == [s.token_id for s in steps]
    assert all(t >= INTERNED_BASE for t in result.token_ids)
    assert result.prompt_tokens == len(ids) and result.generated_tokens == len(steps)
    assert result.ttft_s > 0 and result.prefill_s == result.ttft_s
    assert result.decode_tokens_per_s > 0
    assert [s.index for s in steps] == list(range(len(steps)))


def test_top_k_probabilities_are_the_servers(engine: RemoteEngine) -> None:
    ids = engine.conversation_ids(QUESTION)
    steps = list(engine.reply(ids, GREEDY, max_new_tokens=8, report_top=5))
    wire = parse_choice(_non_streamed(engine, ids, 8, 5), "", chat=False).tokens
    assert len(wire) == len(steps)
    for step, token in zip(steps, wire, strict=True):
        assert 1 <= len(step.top) <= 5
        probs = [t.prob for t in step.top]
        assert all(0 < p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
        assert probs == sorted(probs, reverse=True)
        assert step.top[0].text == step.piece  # greedy: the pick is the favourite
        assert step.prob == pytest.approx(step.top[0].prob)
        assert step.prob == pytest.approx(math.exp(token.logprob), rel=1e-4)
        for mine, (text, logprob) in zip(step.top, token.top, strict=False):
            assert mine.text == text and mine.prob == pytest.approx(math.exp(logprob), rel=1e-4)
        assert engine.token_name(step.top[1].token_id) == step.top[1].text


def test_probabilities_agree_with_the_local_engine(engine: RemoteEngine, local) -> None:
    """Same weights (the GGUF holds the built-in model in F32), two implementations: the
    greedy tokens are the same and the probabilities agree to a few parts in a thousand."""
    ids = engine.conversation_ids(QUESTION)
    remote_steps = list(engine.reply(ids, GREEDY, max_new_tokens=12, report_top=3))
    local_steps = list(local.reply(ids, GREEDY, max_new_tokens=12, report_top=3))
    assert [s.text for s in remote_steps] == [s.text for s in local_steps]
    for mine, theirs in zip(remote_steps, local_steps, strict=True):
        assert mine.prob == pytest.approx(theirs.prob, rel=5e-3, abs=1e-4)


def test_sampling_settings_reach_the_server(engine: RemoteEngine) -> None:
    ids = engine.conversation_ids(QUESTION)
    params = SamplingParams(temperature=1.0, top_k=40, top_p=0.9, min_p=0.05, seed=7)
    first = engine.reply(ids, params, max_new_tokens=10)
    second = engine.reply(ids, params, max_new_tokens=10)
    texts = ["".join(s.text for s in r) for r in (first, second)]
    assert texts[0] == texts[1]  # the seed reached the server
    with pytest.raises(EngineError):
        engine.reply(ids, SamplingParams(temperature=-1.0))


def test_stop_string_ends_the_reply(engine: RemoteEngine) -> None:
    ids = engine.conversation_ids(QUESTION)
    full = "".join(s.text for s in engine.reply(ids, GREEDY, max_new_tokens=12))
    assert "noun" in full
    reply = engine.reply(ids, GREEDY, max_new_tokens=12, stop=["noun"])
    steps = list(reply)
    assert "noun" not in reply.result.text
    assert full.startswith(reply.result.text)
    assert reply.result.stop_reason in ("stop", "stop_string")
    assert len(steps) < 12


def test_stop_closes_the_connection_at_once(proxy: FaultProxy, llama_server_handle) -> None:  # noqa: F811
    remote = RemoteEngine.open(proxy.base_url, llama_server_handle.model)
    ids = remote.conversation_ids(QUESTION)
    cancel = threading.Event()
    reply = remote.reply(
        ids,
        SamplingParams(temperature=1.0, seed=3, min_p=0.0, top_k=0),
        max_new_tokens=900,
        cancel=cancel,
    )
    assert reply.next_step() is not None and reply.next_step() is not None
    in_flight = proxy.requests()[-1]
    assert in_flight.body["stream"] is True and in_flight.closed_by_client is None
    stopped = time.monotonic()
    cancel.set()
    assert reply.next_step() is None
    assert time.monotonic() - stopped < 0.5
    assert reply.result.stop_reason == "cancelled"
    assert reply.result.generated_tokens == 2
    deadline = time.monotonic() + 1
    while in_flight.closed_by_client is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert in_flight.closed_by_client is not None  # the connection itself was closed
    assert in_flight.closed_by_client - stopped < 0.5
    # The server saw the client go: its next answer comes at once, not after 900 tokens.
    started = time.monotonic()
    again = remote.reply(ids, GREEDY, max_new_tokens=2)
    assert len(list(again)) == 2
    assert time.monotonic() - started < 5


def test_stop_is_seen_by_the_proxy(proxy: FaultProxy, llama_server_handle) -> None:  # noqa: F811
    remote = RemoteEngine.open(proxy.base_url, llama_server_handle.model)
    ids = remote.conversation_ids(QUESTION)
    cancel = threading.Event()
    proxy.set("delay", delay_s=30.0)
    reply = remote.reply(ids, GREEDY, max_new_tokens=50, cancel=cancel)
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    started = time.monotonic()
    assert reply.next_step() is None  # stopped while waiting for the first byte
    assert time.monotonic() - started < 0.3 + 0.5
    assert reply.result.stop_reason == "cancelled"
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and proxy.requests()[0].closed_by_client is None:
        time.sleep(0.02)
    closed = proxy.requests()[0].closed_by_client
    assert closed is not None and closed - started < 0.3 + 0.5


def test_branch_with_a_forced_token(engine: RemoteEngine) -> None:
    ids = engine.conversation_ids(QUESTION)
    steps = list(engine.reply(ids, GREEDY, max_new_tokens=6, report_top=5))
    k = 2
    alternative = steps[k].top[1]
    branch = engine.reply(
        ids,
        GREEDY,
        max_new_tokens=5,
        report_top=5,
        reply_prefix=[s.token_id for s in steps[:k]],
        forced=[alternative.token_id],
    )
    new = list(branch)
    assert new[0].index == k
    assert new[0].token_id == alternative.token_id and new[0].text == alternative.text
    assert new[0].prob == pytest.approx(alternative.prob, rel=1e-3)
    assert [t.text for t in new[0].top] == [t.text for t in steps[k].top]
    result = branch.result
    prefix_text = "".join(s.text for s in steps[:k])
    assert result.text == prefix_text + "".join(s.text for s in new)
    assert result.token_ids[:k] == [s.token_id for s in steps[:k]]
    assert result.generated_tokens == len(new)
    # The continuation is the server's greedy continuation of exactly that text.
    text = engine.text_of(ids) + "".join(s.piece for s in steps[:k]) + alternative.text
    body = completion_body(engine.model, text[3:], GREEDY, max_tokens=4, top=1, stream=False)
    answer = engine.client.post_json(engine.completions_path, body)
    assert "".join(s.piece for s in new[1:]) == answer["choices"][0]["text"]


def test_step_mode_sends_one_token_requests(proxy: FaultProxy, llama_server_handle) -> None:  # noqa: F811
    remote = RemoteEngine.open(proxy.base_url, llama_server_handle.model)
    ids = remote.conversation_ids(QUESTION)
    streamed = list(remote.reply(ids, GREEDY, max_new_tokens=6))
    proxy.seen.clear()
    reply = remote.reply(ids, GREEDY, max_new_tokens=6)
    stepped = []
    while (step := reply.next_step(explain=True)) is not None:
        assert reply.stages is None  # a server does not show its sampler's stages
        stepped.append(step)
        if len(stepped) == 3:
            break
    requests = proxy.requests()
    assert len(requests) == 3 and all(r.body["max_tokens"] == 1 for r in requests)
    rest = list(reply)  # leaving step mode: the rest in one request
    assert len(proxy.requests()) == 4
    assert [s.text for s in stepped + rest] == [s.text for s in streamed]
    assert reply.result.text == "".join(s.text for s in streamed)
    assert reply.ends_after_this_step  # the last step was the 6th of 6


def test_inspect_gives_the_prompts_log_probabilities(engine: RemoteEngine, local) -> None:
    ids = engine.conversation_ids(CONVERSATION)
    found = engine.inspect(ids, top=5)
    expected = local.inspect(ids, attention=False, top=5)
    assert found.token_ids == ids and len(found.logprobs) == len(ids)
    assert found.logprobs[0] is None and found.logprobs[1] is None  # BOS; OpenAI's null
    bos = engine.bos_id
    for i, (mine, theirs) in enumerate(zip(found.logprobs, expected.logprobs, strict=True)):
        if i < 2 or ids[i] == bos:
            assert mine is None
            continue
        assert mine == pytest.approx(theirs, rel=1e-3, abs=2e-3)
    for i, (low, exact) in enumerate(zip(found.entropy, expected.entropy, strict=True)):
        assert low <= exact + 1e-3, i  # a lower bound from the top tokens
    ranked = [(r, e) for r, e in zip(found.ranks, expected.ranks, strict=True) if r is not None]
    assert ranked and all(r == e for r, e in ranked)
    assert found.pieces[:4] == ["<s>", " [", "INST", "]"]
    assert engine.token_texts(ids[:4]) == ["", " [", "INST", "]"]
    assert found.to_json()["attention"]["layers"] == 0


def test_capabilities_say_why_not(engine: RemoteEngine) -> None:
    caps = engine.capabilities
    assert caps.branches and caps.surprisal and caps.step_mode
    assert not caps.attention and not caps.exact_logits and not caps.speculative
    notes = engine.capability_notes
    for name in ("attention", "exact_logits", "speculative"):
        assert notes[name]
    assert "server" in notes["attention"]
    with pytest.raises(EngineError):
        engine.inspect(engine.tokenize("Hi"), attention=True)
    with pytest.raises(EngineError):
        engine.use_draft("lookup")
    engine.use_draft(None)
    assert engine.draft is None


def test_ids_of_another_connection_are_refused(engine: RemoteEngine) -> None:
    ids = engine.tokenize("Hi")
    with pytest.raises(EngineError):
        engine.reply(ids, GREEDY, reply_prefix=[INTERNED_BASE + 10**6])
    with pytest.raises(EngineError):
        engine.reply(ids * 1024, GREEDY)  # longer than the context
    # A real id the server never gave is never sent back (llama-cpp-python's detokenizer
    # aborts the whole server on an id outside its vocabulary).
    for unknown in ([ids[0], 15043], [ids[0], 3999]):
        assert engine.outside_vocabulary(unknown) == unknown[1]
        with pytest.raises(EngineError):
            engine.reply(unknown, GREEDY)
        with pytest.raises(EngineError):
            engine.inspect(unknown)
    assert engine.token_name(15043) == "<15043>"
    client = HttpClient(check_base_url("http://127.0.0.1:9/v1"))
    assert "127.0.0.1:9" in repr(client)


def test_chat_mode_without_a_tokenizer(llama_server_handle: RunningServer) -> None:  # noqa: F811
    """A server without a tokenizer endpoint (Ollama's OpenAI layer): /v1/chat/completions with
    the messages, the server's own template, approximate ids, fewer capabilities (each with its
    reason)."""
    remote = RemoteEngine.open(llama_server_handle.base_url, llama_server_handle.model, chat=True)
    caps = remote.capabilities
    assert not (caps.branches or caps.surprisal or caps.step_mode or caps.attention)
    notes = remote.capability_notes
    assert "tokenizer" in notes["branches"] and "tokenizer" in notes["surprisal"]
    assert remote.describe()["endpoint"] == "chat/completions"
    assert remote.context_note and "4096" in remote.context_note
    ids = remote.fit_prompt(QUESTION, 50).ids
    assert abs(len(ids) - 12) <= 8  # about a token per 4 characters
    reply = remote.reply(ids, GREEDY, max_new_tokens=6, report_top=3)
    steps = []
    while (step := reply.next_step(explain=True)) is not None:  # no step mode: one request
        steps.append(step)
    assert len(steps) == 6 and reply.result.stop_reason == "max_tokens"
    assert all(s.top and s.prob == pytest.approx(s.top[0].prob) for s in steps)
    body = {
        "model": remote.model,
        "messages": [{"role": "user", "content": "What is a dog?"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    answer = remote.client.post_json(remote.chat_path, body)
    assert reply.result.text == answer["choices"][0]["message"]["content"].strip()
    with pytest.raises(EngineError):
        remote.reply(ids, GREEDY, reply_prefix=[steps[0].token_id], forced=[steps[1].token_id])
    with pytest.raises(EngineError):
        remote.inspect(ids)
    assert remote.message_spans(ids, ["What is a dog?"]) == [None]


def test_the_other_logprob_layouts_are_read() -> None:
    """llama-server answers /v1/completions with the chat layout (`logprobs.content[]`, exact
    `bytes`); a server without logprobs gives text only (probability 0, no candidates)."""
    content = {
        "content": [
            {
                "token": " H?",
                "bytes": [32, 72, 105],
                "logprob": -0.5,
                "top_logprobs": [
                    {"token": " Yo", "logprob": -1.5},
                    {"token": " Hi", "logprob": -0.5},
                ],
            }
        ]
    }
    chunk = parse_choice({"choices": [{"text": " Hi", "logprobs": content}]}, "", chat=False)
    assert chunk.tokens[0].text == " Hi" and chunk.tokens[0].top == [(" Hi", -0.5), (" Yo", -1.5)]
    bare = parse_choice({"choices": [{"text": "abc", "finish_reason": "stop"}]}, "", chat=False)
    assert bare.tokens[0].text == "abc" and bare.tokens[0].logprob is None
    assert bare.finish_reason == "stop"
    usage = parse_choice({"choices": [], "usage": {"prompt_tokens": 9}}, "", chat=True)
    assert usage.prompt_tokens == 9 and not usage.tokens
    with pytest.raises(RemoteError):
        parse_choice({"nothing": 1}, "", chat=False)
