"""Downloads through the real huggingface_hub client against a local server acting as the Hub."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.hub import (
    DownloadCancelled,
    download_model,
    is_model_complete,
    list_cached_models,
    load_catalogue,
    resolve_model,
)
from engine.loader import load_model
from tests.hub_server import FakeHub

ROOT = Path(__file__).resolve().parents[1]
REPO = "test-org/tiny-llama"


@pytest.fixture
def hub(monkeypatch, tmp_path: Path, tiny_model_dir: Path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        # Extra files a real repo often has and that must NOT be fetched.
        server.add(
            REPO,
            tiny_model_dir,
            extra_files={
                "pytorch_model.bin": b"x" * 1000,
                "README.md": b"# tiny",
                "onnx/model.onnx": b"o",
            },
        )
        yield server


def test_download_fetches_only_needed_files_and_loads(hub: FakeHub, tiny_model_dir: Path) -> None:
    progress = []
    folder = download_model(REPO, progress=progress.append)
    assert is_model_complete(folder)
    assert {p.name for p in folder.iterdir()} == {p.name for p in tiny_model_dir.iterdir()}
    assert "pytorch_model.bin" not in hub.fetched() and "README.md" not in hub.fetched()
    # Progress: increasing bytes, ending at the total.
    done = [p.done_bytes for p in progress]
    assert done == sorted(done)
    assert progress[-1].done_bytes == progress[-1].total_bytes > 0
    assert len({p.filename for p in progress}) > 3
    loaded = load_model(folder, dtype="float32", device="cpu")
    assert loaded.args.vocab_size == 512
    assert loaded.name == REPO


def test_cached_model_is_found_offline_and_not_downloaded_again(hub: FakeHub, monkeypatch) -> None:
    folder = download_model(REPO)
    before = sum(hub.requests.values())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(REPO) == folder
    assert sum(hub.requests.values()) == before
    assert [m["repo_id"] for m in list_cached_models()] == [REPO]
    # The CLI resolves the same repo id offline.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "generate",
            "--model",
            REPO,
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "3",
            "--temperature",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["generated_tokens"] <= 3


def test_interrupted_transfer_resumes(hub: FakeHub) -> None:
    hub.cut_once = {"model-00001-of-00010.safetensors", "tokenizer.model"}
    folder = download_model(REPO)
    assert is_model_complete(folder)
    assert hub.cut_once == set()  # the cuts happened
    assert (
        hub.requests[
            f"GET /{REPO}/resolve/{'0123456789abcdef0123456789abcdef01234567'}/tokenizer.model"
        ]
        >= 2
    )


def test_gated_repo_messages(hub: FakeHub, tiny_model_dir: Path) -> None:
    hub.add("meta-llama/gated", tiny_model_dir, gated=True, token="hf_right")
    with pytest.raises(EngineError) as no_token:
        download_model("meta-llama/gated")
    assert "gated" in str(no_token.value) and "token" in str(no_token.value)
    assert "licence" in str(no_token.value)
    with pytest.raises(EngineError) as wrong:
        download_model("meta-llama/gated", token="hf_wrong")
    assert "no access" in str(wrong.value)
    assert "hf_wrong" not in str(wrong.value)  # the token is never echoed
    folder = download_model("meta-llama/gated", token="hf_right")
    assert is_model_complete(folder)


def test_missing_repo(hub: FakeHub) -> None:
    with pytest.raises(EngineError, match="no model 'nobody/nothing' on the Hub"):
        download_model("nobody/nothing")


def test_not_a_llama_is_refused_before_weights(hub: FakeHub, tmp_path: Path, tiny_model_dir: Path):
    gpt = tmp_path / "gpt"
    shutil.copytree(tiny_model_dir, gpt)
    config = json.loads((gpt / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (gpt / "config.json").write_text(json.dumps(config))
    hub.add("openai/gpt2ish", gpt)
    with pytest.raises(EngineError, match="not a Llama model"):
        download_model("openai/gpt2ish")
    assert not any(name.endswith(".safetensors") for name in hub.fetched())


def test_no_server_gives_offline_message_quickly(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with pytest.raises(EngineError, match="cannot reach"):
        download_model(REPO)
    assert time.perf_counter() - started < 10


def test_cancel_leaves_no_usable_model(hub: FakeHub) -> None:
    cancel = threading.Event()

    def progress(p) -> None:
        if p.filename.endswith(".safetensors") and p.done_bytes > 0:
            cancel.set()

    with pytest.raises(DownloadCancelled):
        download_model(REPO, progress=progress, cancel=cancel)
    with pytest.raises(EngineError, match="incomplete"):
        resolve_model(REPO)
    assert list_cached_models() == []


def test_download_cli_contract(hub: FakeHub, tmp_path: Path) -> None:
    import os

    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "download", REPO],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip().splitlines()[-1])
    assert is_model_complete(folder)
    assert "%" in proc.stderr  # progress on stderr
    bad = subprocess.run(
        [sys.executable, "-m", "engine", "download", "nobody/nothing"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1


def test_catalogue_has_the_default_model() -> None:
    catalogue = load_catalogue()
    default = [m for m in catalogue if m["default"]]
    assert [m["repo_id"] for m in default] == ["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
    assert {m["repo_id"] for m in catalogue if m["gated"]} >= {"meta-llama/Llama-2-7b-chat-hf"}
    for entry in catalogue:
        assert set(entry) >= {"repo_id", "name", "size_bytes", "licence", "gated", "layout"}
