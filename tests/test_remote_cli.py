"""`python -m engine generate --server URL --model NAME`: the same JSON lines as a local model,
exit 2 with one line on bad input and faults, 130 on Ctrl+C; `inspect --server` too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.llama_server import (  # noqa: F401
    RunningServer,
    free_port,
    llama_server,
    llama_server_handle,
)

pytestmark = pytest.mark.timeout(120)

KEY = "sk-cli-secret-0123456789"


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def server_args(handle: RunningServer, url: str | None = None) -> list[str]:
    return ["generate", "--server", url or handle.base_url, "--model", handle.model]


def test_json_lines_match_the_local_contract(llama_server_handle: RunningServer) -> None:  # noqa: F811
    done = run_cli(
        *server_args(llama_server_handle),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "3",
        "--temperature",
        "0",
        "--report-top",
        "3",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    tokens, last = lines[:-1], lines[-1]
    assert len(tokens) == 3
    for line in tokens:
        assert set(line) == {"token_id", "text", "prob", "top"}
        assert 0 < line["prob"] <= 1 and len(line["top"]) == 3
        assert set(line["top"][0]) == {"token_id", "text", "prob"}
        assert line["top"][0]["prob"] == pytest.approx(line["prob"])  # greedy
    assert last["done"] is True and last["kernel"] == "remote" and last["native"] is None
    assert last["generated_tokens"] == 3 and last["prompt_tokens"] == 4  # BOS + "Hello"
    assert last["text"] == "".join(line["text"] for line in tokens)
    assert last["token_ids"] == [line["token_id"] for line in tokens]
    assert last["stop_reason"] == "max_tokens"
    assert list(last)[:8] == [
        "done",
        "text",
        "token_ids",
        "prompt_tokens",
        "generated_tokens",
        "prefill_s",
        "decode_tokens_per_s",
        "stop_reason",
    ]


def test_greedy_text_agrees_with_the_local_engine_on_the_same_file(
    llama_server_handle: RunningServer,  # noqa: F811
) -> None:
    """The server's greedy text for the built-in GGUF is Loopchat's own for that file."""
    args = ["--prompt", "The meaning of", "--max-new-tokens", "12", "--temperature", "0", "--json"]
    remote = run_cli(*server_args(llama_server_handle), *args)
    local = run_cli("generate", "--model", str(llama_server_handle.gguf), *args)
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    remote_done = json.loads(remote.stdout.splitlines()[-1])
    local_done = json.loads(local.stdout.splitlines()[-1])
    assert remote_done["text"] == local_done["text"]


def test_chat_and_plain_output(llama_server_handle: RunningServer) -> None:  # noqa: F811
    done = run_cli(
        *server_args(llama_server_handle),
        "--prompt",
        "What is a dog?",
        "--chat",
        "--system",
        "Define words.",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "5 generated" in done.stderr and "prompt tokens" in done.stderr


def test_bad_input_and_faults_exit_2_with_one_line(llama_server_handle) -> None:  # noqa: F811
    cases = [
        (["--server", "ftp://x/v1"], "http:// or https://"),
        (["--server", f"http://127.0.0.1:{free_port()}/v1"], "refused the connection"),
        (["--server", "https://u:pw@example.org/v1"], "user name or password"),
        (["--server", llama_server_handle.base_url, "--draft", "lookup"], "--draft"),
        (["--server", llama_server_handle.base_url, "--max-context", "64"], "--max-context"),
        (["--server", llama_server_handle.base_url, "--api-key-env", "NO_SUCH_VAR_X"], "not set"),
        (["--server", llama_server_handle.base_url, "--api-key-env", "1bad"], "--api-key-env"),
    ]
    ids = ["--prompt-ids", "1,99999999", "--server", llama_server_handle.base_url]
    done = run_cli("generate", "--model", llama_server_handle.model, *ids)
    assert done.returncode == 2 and "--prompt-ids" in done.stderr
    for extra, words in cases:
        args = ["generate", "--model", llama_server_handle.model, "--prompt", "Hi", *extra]
        done = run_cli(*args, env={"NO_SUCH_VAR_X": ""})
        assert done.returncode == 2, (extra, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (extra, lines)
        assert "pw" not in lines[0] and "Traceback" not in done.stderr


def test_the_key_comes_from_the_environment_and_is_never_printed(
    llama_server_handle: RunningServer,  # noqa: F811
) -> None:
    proxy = FaultProxy(llama_server_handle.base_url)
    try:
        proxy.set("status", status=401, paths=("/v1/completions",))
        done = run_cli(
            *server_args(llama_server_handle, proxy.base_url),
            "--prompt",
            "Hi",
            "--json",
            "--api-key-env",
            "MY_SERVER_KEY",
            env={"MY_SERVER_KEY": KEY},
        )
        assert done.returncode == 2
        assert "API key" in done.stderr and KEY not in done.stderr + done.stdout
        models = [s for s in proxy.seen if s.path == "/v1/models"]
        assert models  # the request went out (with the key in its header only)
    finally:
        proxy.close()


def test_ctrl_c_exits_130(llama_server_handle: RunningServer) -> None:  # noqa: F811
    proxy = FaultProxy(llama_server_handle.base_url)
    try:
        proxy.set("forever", only_streams=True)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine",
                *server_args(llama_server_handle, proxy.base_url),
                "--prompt",
                "Hi",
                "--json",
                "--max-new-tokens",
                "1000000",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        first = process.stdout.readline()
        assert json.loads(first)["text"] == "la"  # a reply's first space is not shown
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = process.communicate(timeout=20)
        assert process.returncode == 130, err
        assert time.monotonic() - started < 5
        assert "Traceback" not in err
        assert json.loads(out.splitlines()[-1])["stop_reason"] == "cancelled"
    finally:
        proxy.close()


def test_inspect_through_a_server(llama_server_handle: RunningServer) -> None:  # noqa: F811
    done = run_cli(
        "inspect",
        "--server",
        llama_server_handle.base_url,
        "--model",
        llama_server_handle.model,
        "--prompt",
        "Hello there",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["token_ids"][0] == 1 and len(found["logprobs"]) == len(found["token_ids"])
    assert found["logprobs"][0] is None and all(isinstance(v, float) for v in found["logprobs"][2:])
    assert found["attention"]["layers"] == 0
