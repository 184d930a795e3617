"""Every fault a server connection can meet, made by a small proxy in front of the real test
server (tests/fixtures/fault_proxy.py): one RemoteError each, one line, saying what to do,
`retry_after` where the server sent it, the partial reply kept, and never a hang."""

from __future__ import annotations

import time

import pytest

from engine.events import GREEDY
from engine.remote import Limits, RemoteEngine, RemoteError, list_models
from engine.text.chat import Message
from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.llama_server import (  # noqa: F401
    RunningServer,
    free_port,
    llama_server,
    llama_server_handle,
)

pytestmark = pytest.mark.timeout(60)

QUESTION = [Message("user", "What is a dog?")]
KEY = "sk-loopchat-test-key-0123456789"


@pytest.fixture
def proxy(llama_server: str):  # noqa: F811
    found = FaultProxy(llama_server)
    yield found
    found.close()


@pytest.fixture
def remote(proxy: FaultProxy, llama_server_handle: RunningServer) -> RemoteEngine:  # noqa: F811
    found = RemoteEngine.open(proxy.base_url, llama_server_handle.model, api_key=KEY)
    found.client.limits = Limits(connect_s=5.0, first_byte_s=10.0, idle_s=10.0)
    return found


def one_line(error: RemoteError) -> str:
    text = str(error)
    assert "\n" not in text and KEY not in text and len(text) < 400
    return text


def fail_after_steps(remote: RemoteEngine, steps_wanted: int = 40) -> tuple[list, RemoteError]:
    """Run a reply until it raises; the steps it gave first and the error."""
    ids = remote.conversation_ids(QUESTION)
    reply = remote.reply(ids, GREEDY, max_new_tokens=steps_wanted, report_top=3)
    steps = []
    with pytest.raises(RemoteError) as caught:
        while (step := reply.next_step()) is not None:
            steps.append(step)
    error = caught.value
    assert reply.result is error.partial
    assert reply.next_step() is None  # ended; the partial result stays
    return steps, error


def test_connection_refused() -> None:
    started = time.monotonic()
    with pytest.raises(RemoteError) as caught:
        list_models(f"http://127.0.0.1:{free_port()}/v1")
    assert caught.value.kind == "refused" and "refused" in one_line(caught.value)
    assert time.monotonic() - started < 2


def test_name_lookup_failure() -> None:
    with pytest.raises(RemoteError) as caught:
        list_models("http://no-such-host.invalid/v1", limits=Limits(connect_s=2))
    assert caught.value.kind in ("dns", "connect_timeout")
    assert "no-such-host.invalid" in one_line(caught.value)


def test_tls_failure(llama_server: str) -> None:  # noqa: F811
    """https to a server that speaks plain HTTP: the handshake fails, certificates are never
    skipped."""
    with pytest.raises(RemoteError) as caught:
        list_models(llama_server.replace("http://", "https://"), limits=Limits(connect_s=3))
    assert caught.value.kind == "tls" and "secure connection" in one_line(caught.value)


def test_timeout_before_the_first_byte(proxy: FaultProxy, remote: RemoteEngine) -> None:
    proxy.set("delay", delay_s=10.0)
    remote.client.limits = Limits(first_byte_s=1.0)
    started = time.monotonic()
    steps, error = fail_after_steps(remote)
    assert time.monotonic() - started < 3
    assert error.kind == "first_byte_timeout" and steps == []
    assert "sent nothing for 1 s" in one_line(error)
    assert error.partial.stop_reason == "error" and error.partial.text == ""


def test_stream_cut_mid_reply_keeps_the_partial_reply(proxy: FaultProxy, remote) -> None:
    proxy.set("cut", cut_after=2500)
    steps, error = fail_after_steps(remote)
    assert error.kind == "cut" and "cut" in one_line(error)
    assert len(steps) >= 1
    partial = error.partial
    assert partial.stop_reason == "error" and partial.error == str(error)
    assert partial.text == "".join(s.text for s in steps)
    assert partial.token_ids == [s.token_id for s in steps]


def test_a_stream_that_stalls_mid_reply(proxy: FaultProxy, remote: RemoteEngine) -> None:
    proxy.set("stall", cut_after=2500)
    remote.client.limits = Limits(idle_s=1.0)
    started = time.monotonic()
    steps, error = fail_after_steps(remote)
    assert time.monotonic() - started < 4
    assert error.kind == "idle_timeout" and "stopped sending for 1 s" in one_line(error)
    assert len(steps) >= 1 and error.partial.text == "".join(s.text for s in steps)


@pytest.mark.parametrize("status", [401, 403])
def test_key_refused(proxy: FaultProxy, remote: RemoteEngine, status: int) -> None:
    proxy.set("status", status=status, error_body=b'{"error": {"message": "Invalid API key"}}')
    _, error = fail_after_steps(remote)
    assert error.kind == "key" and error.status == status
    assert "API key" in one_line(error) and error.retry_after is None
    sent = proxy.requests()[0]
    assert sent.body["model"] == remote.model  # the key went in the header, not the body
    assert KEY not in str(sent.body)


def test_model_gone(proxy: FaultProxy, remote: RemoteEngine) -> None:
    proxy.set("status", status=404, error_body=b'{"detail": "Not Found"}')
    _, error = fail_after_steps(remote)
    assert error.kind == "not_found" and "model" in one_line(error)


def test_rate_limited_with_retry_after(proxy: FaultProxy, remote: RemoteEngine) -> None:
    proxy.set("status", status=429, retry_after="7")
    _, error = fail_after_steps(remote)
    assert error.kind == "rate_limited" and error.retry_after == 7.0
    assert "try again in 7 s" in one_line(error)


def test_server_error_with_a_date_retry_after(proxy: FaultProxy, remote: RemoteEngine) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    proxy.set("status", status=503, retry_after=when)
    _, error = fail_after_steps(remote)
    assert error.kind == "server_error" and error.status == 503
    assert 25 <= error.retry_after <= 31
    assert "injected fault" in one_line(error)


def test_server_error_without_retry_after(proxy: FaultProxy, remote: RemoteEngine) -> None:
    proxy.set("status", status=500, error_body=b"<html><script>alert(1)</script></html>")
    _, error = fail_after_steps(remote)
    assert error.kind == "server_error" and error.retry_after is None
    assert "<" not in one_line(error)  # an HTML page is never shown
    assert "try again later" in str(error)


def test_malformed_sse_keeps_the_partial_reply(proxy: FaultProxy, remote: RemoteEngine) -> None:
    proxy.set("corrupt", corrupt_event=3)
    steps, error = fail_after_steps(remote)
    assert error.kind == "malformed" and "not JSON" in one_line(error)
    assert len(steps) == 3
    assert error.partial.text == "".join(s.text for s in steps)


def test_malformed_json_answer(proxy: FaultProxy, llama_server_handle) -> None:  # noqa: F811
    proxy.set("garbage", paths=("/v1/models",))
    with pytest.raises(RemoteError) as caught:
        RemoteEngine.open(proxy.base_url, llama_server_handle.model)
    assert caught.value.kind == "malformed" and "not JSON" in one_line(caught.value)


def test_a_server_that_streams_forever_is_cut(proxy: FaultProxy, remote: RemoteEngine) -> None:
    proxy.set("forever")
    remote.client.limits = Limits(max_reply_s=2.0)
    started = time.monotonic()
    steps, error = fail_after_steps(remote, steps_wanted=10**7)
    assert time.monotonic() - started < 5
    assert error.kind == "too_long" and "still sending after 2 s" in one_line(error)
    assert len(steps) > 10
    assert error.partial.generated_tokens == len(steps)
    deadline = time.monotonic() + 2
    while proxy.requests()[0].closed_by_client is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.requests()[0].closed_by_client is not None


def test_more_tokens_than_asked_ends_the_reply(proxy: FaultProxy, remote: RemoteEngine) -> None:
    """A server that ignores max_tokens: the reply ends at the limit and the connection closes."""
    proxy.set("forever")
    reply = remote.reply(remote.conversation_ids(QUESTION), GREEDY, max_new_tokens=5)
    steps = list(reply)
    assert len(steps) == 5 and reply.result.stop_reason == "max_tokens"
    deadline = time.monotonic() + 2
    while proxy.requests()[0].closed_by_client is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.requests()[0].closed_by_client is not None


def test_the_server_works_again_after_faults(proxy: FaultProxy, remote: RemoteEngine) -> None:
    proxy.set("cut", cut_after=2000)
    fail_after_steps(remote)
    proxy.set("pass")
    reply = remote.reply(remote.conversation_ids(QUESTION), GREEDY, max_new_tokens=4)
    assert len(list(reply)) == 4 and reply.result.stop_reason == "max_tokens"


def test_errors_pickle_with_their_facts(proxy: FaultProxy, remote: RemoteEngine) -> None:
    import pickle

    proxy.set("status", status=429, retry_after="3")
    _, error = fail_after_steps(remote)
    again = pickle.loads(pickle.dumps(error))
    assert (again.kind, again.retry_after, again.status, str(again)) == (
        error.kind,
        error.retry_after,
        error.status,
        str(error),
    )
    assert again.partial == error.partial


def test_an_untrusted_certificate_is_refused(tmp_path) -> None:
    """A self-signed certificate fails verification (never switched off); the message says so."""
    import shutil
    import socket
    import ssl
    import subprocess
    import threading

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(RemoteError) as caught:
            list_models(f"https://localhost:{port}/v1", limits=Limits(connect_s=5))
        assert caught.value.kind == "tls"
        assert "certificate" in one_line(caught.value)
    finally:
        listener.close()
        thread.join(5)
