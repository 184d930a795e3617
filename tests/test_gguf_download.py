"""One-file downloads from GGUF repos, through the real huggingface_hub client and a fake Hub.

A GGUF repo holds one model quantized several ways; Loopchat fetches exactly one file (Q4_K_M
unless told otherwise) with the usual progress, resume, cancel and offline behaviour.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from desktop.catalogue import load_catalogue
from engine.errors import EngineError
from engine.hub.download import (
    DownloadCancelled,
    DownloadProgress,
    download_model,
    find_cached_gguf,
    list_gguf_files,
    pick_gguf_file,
)
from tests.hub_server import FakeHub

REPO = "TheBloke/Tiny-GGUF"
BIG = "TheBloke/Big-GGUF"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    """A real (tiny) GGUF file, so the downloaded copy can be opened."""
    from tests.test_gguf_discover import write_gguf

    path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return path.read_bytes()


@pytest.fixture
def repo_files(gguf_bytes: bytes) -> dict[str, bytes]:
    """A repo as TheBloke publishes them: a config.json, a README and one file per quant."""
    return {
        "config.json": json.dumps({"model_type": "llama"}).encode(),
        "README.md": b"# Tiny GGUF",
        ".gitattributes": b"*.gguf filter=lfs",
        "tiny.Q2_K.gguf": b"q2" * 300,
        "tiny.Q4_0.gguf": b"q4_0" * 500,
        "tiny.Q4_K_M.gguf": gguf_bytes,
        "tiny.Q8_0.gguf": b"q8" * 2000,
        "tiny.F16-00001-of-00002.gguf": b"part one",
        "tiny.F16-00002-of-00002.gguf": b"part two",
    }


@pytest.fixture
def hub(monkeypatch, hub_env: Path, repo_files: dict[str, bytes]):
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.add(REPO, files=repo_files)
        yield server


@pytest.fixture(scope="module")
def big_files() -> dict[str, bytes]:
    """One 25 MiB GGUF file: more than huggingface_hub's 10 MiB read size."""
    return {
        "README.md": b"# big",
        "big.Q4_K_M.gguf": random.Random(1).randbytes(25 * MiB),
        "big.Q8_0.gguf": b"not this one",
    }


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- choosing the file --------------------------------------------------------------------------


def test_default_pick_fetches_only_the_q4_k_m_file(
    hub: FakeHub, hub_env: Path, repo_files: dict[str, bytes], caplog
) -> None:
    events: list[DownloadProgress] = []
    with caplog.at_level(logging.INFO, logger="engine.hub.download"):
        path = download_model(REPO, progress=events.append)
    assert path.name == "tiny.Q4_K_M.gguf" and path.is_file()
    assert path.is_relative_to(hub_env) and path.parent.parent.name == "snapshots"
    assert path.read_bytes() == repo_files["tiny.Q4_K_M.gguf"]
    assert hub.fetched() == Counter({"tiny.Q4_K_M.gguf": 1})  # nothing else
    assert "tiny.Q4_K_M.gguf" in caplog.text and "Q4_K_M" in caplog.text  # the choice is named
    size = len(repo_files["tiny.Q4_K_M.gguf"])
    assert events and {e.filename for e in events} == {"tiny.Q4_K_M.gguf"}
    assert {e.total_bytes for e in events} == {size}
    assert events[-1].done_bytes == size and events[-1].files_done == events[-1].files_total == 1

    from engine.gguf.reader import GGUFFile

    with GGUFFile(path) as gguf:
        assert gguf.metadata["general.architecture"] == "llama"

    requests = len(hub.gets())
    assert download_model(REPO) == path  # a second download fetches nothing
    assert len(hub.gets()) == requests


def test_explicit_pick_and_bad_picks(hub: FakeHub, repo_files: dict[str, bytes]) -> None:
    path = download_model(REPO, filename="tiny.Q8_0.gguf")
    assert path.name == "tiny.Q8_0.gguf" and path.read_bytes() == repo_files["tiny.Q8_0.gguf"]
    assert hub.fetched() == Counter({"tiny.Q8_0.gguf": 1})

    with pytest.raises(EngineError, match=r"has no file tiny\.Q5_K_M\.gguf; its GGUF files: "):
        download_model(REPO, filename="tiny.Q5_K_M.gguf")
    with pytest.raises(EngineError, match="part 1 of a model split into 2 files"):
        download_model(REPO, filename="tiny.F16-00001-of-00002.gguf")
    for bad in ("../tiny.Q8_0.gguf", "/etc/passwd.gguf", "config.json", ""):
        with pytest.raises(EngineError, match="is not a GGUF file name"):
            download_model(REPO, filename=bad)
    assert hub.fetched() == Counter({"tiny.Q8_0.gguf": 1})


def test_pick_rules() -> None:
    files = [("m.Q4_0.gguf", 40), ("m.Q4_K_S.gguf", 38), ("m.Q4_K_M.gguf", 41), ("m.Q8_0.gguf", 80)]
    assert pick_gguf_file("r", files)[0] == "m.Q4_K_M.gguf"
    assert pick_gguf_file("r", files[:2] + files[3:])[0] == "m.Q4_K_S.gguf"  # smallest Q4
    assert pick_gguf_file("r", [("model.gguf", 5), ("README.md", 1)])[0] == "model.gguf"
    with pytest.raises(EngineError, match=r"has 2 GGUF files and none is Q4_K_M or Q4; choose"):
        pick_gguf_file("r", [("m.Q8_0.gguf", 8), ("m.Q6_K.gguf", 6)])
    with pytest.raises(EngineError, match="split into 3 files; Loopchat opens single-file"):
        pick_gguf_file("r", [(f"m-0000{i}-of-00003.gguf", 9) for i in (1, 2, 3)])
    with pytest.raises(EngineError, match="r has no .gguf files"):
        pick_gguf_file("r", [("config.json", 1)])


def test_list_gguf_files(hub: FakeHub, repo_files: dict[str, bytes]) -> None:
    expected = [
        (name, len(repo_files[name]))
        for name in ("tiny.Q2_K.gguf", "tiny.Q4_0.gguf", "tiny.Q4_K_M.gguf", "tiny.Q8_0.gguf")
    ]
    assert list_gguf_files(REPO) == expected  # the parts of the split model are left out
    assert hub.gets() == []  # a listing fetches no file


def test_repo_without_gguf_files(hub: FakeHub) -> None:
    config = json.dumps({"model_type": "llama"}).encode()
    hub.add("someone/no-gguf", files={"config.json": config, "README.md": b"hi"})
    assert list_gguf_files("someone/no-gguf") == []
    with pytest.raises(EngineError, match="has no file model.gguf; it has no GGUF files"):
        download_model("someone/no-gguf", filename="model.gguf")
    with pytest.raises(EngineError, match="has no tokenizer.model"):
        download_model("someone/no-gguf")  # judged as a folder model, as before


def test_repo_with_safetensors_and_gguf(hub: FakeHub, tiny_model_dir: Path) -> None:
    hub.add("someone/both", tiny_model_dir, extra_files={"model.Q4_K_M.gguf": b"gguf"})
    folder = download_model("someone/both")
    assert folder.is_dir() and (folder / "tokenizer.model").is_file()  # the folder model
    assert not (folder / "model.Q4_K_M.gguf").exists()
    path = download_model("someone/both", filename="model.Q4_K_M.gguf")
    assert path == folder / "model.Q4_K_M.gguf" and path.read_bytes() == b"gguf"


# -- transfers ----------------------------------------------------------------------------------


def test_cut_transfer_resumes_where_it_stopped(hub: FakeHub, big_files: dict[str, bytes]) -> None:
    hub.add(BIG, files=big_files)
    hub.cut_once["big.Q4_K_M.gguf"] = 15 * MiB  # then the server hangs up
    path = download_model(BIG)
    assert [r.range for r in hub.gets("big.Q4_K_M.gguf")] == [None, f"bytes={10 * MiB}-"]
    assert sha(path.read_bytes()) == sha(big_files["big.Q4_K_M.gguf"])
    assert set(hub.fetched()) == {"big.Q4_K_M.gguf"}


def test_cancel_then_a_new_download_continues(
    hub: FakeHub, hub_env: Path, big_files: dict[str, bytes]
) -> None:
    hub.add(BIG, files=big_files)
    cancel = threading.Event()

    def progress(p: DownloadProgress) -> None:
        if p.file_done_bytes > 0:
            cancel.set()

    with pytest.raises(DownloadCancelled, match="big.Q4_K_M.gguf of .* cancelled; a new download"):
        download_model(BIG, progress=progress, cancel=cancel)
    assert find_cached_gguf(BIG) is None  # a cancelled file is never offered

    path = download_model(BIG)
    assert sha(path.read_bytes()) == sha(big_files["big.Q4_K_M.gguf"])
    # huggingface_hub >= 2 deletes a cancelled call's partial file: the file comes again whole
    # (a transfer cut within one call resumes, see above).
    assert [r.range for r in hub.gets("big.Q4_K_M.gguf")] == [None, None]
    assert not list(hub_env.rglob("*.incomplete"))

    cancel.set()
    with pytest.raises(DownloadCancelled):
        download_model(BIG, filename="big.Q8_0.gguf", cancel=cancel)


# -- offline ------------------------------------------------------------------------------------


def test_offline_with_the_file_cached_and_not_cached(hub: FakeHub, monkeypatch) -> None:
    path = download_model(REPO)
    requests = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download_model(REPO) == path
    assert download_model(REPO, filename="tiny.Q4_K_M.gguf") == path
    assert find_cached_gguf(REPO) == path
    assert list_gguf_files(REPO) == [("tiny.Q4_K_M.gguf", path.stat().st_size)]
    with pytest.raises(EngineError, match=r"HF_HUB_OFFLINE is set and tiny\.Q8_0\.gguf of "):
        download_model(REPO, filename="tiny.Q8_0.gguf")
    with pytest.raises(EngineError, match="HF_HUB_OFFLINE is set and someone/else is not"):
        download_model("someone/else")
    assert len(hub.log) == requests  # not one request


def test_unreachable_hub_falls_back_to_the_cached_file(hub: FakeHub, monkeypatch, caplog) -> None:
    path = download_model(REPO, filename="tiny.Q8_0.gguf")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    with caplog.at_level(logging.WARNING, logger="engine.hub.download"):
        assert download_model(REPO) == path  # the only GGUF file there
        assert list_gguf_files(REPO) == [("tiny.Q8_0.gguf", path.stat().st_size)]
    assert "using the copy already in the cache" in caplog.text
    with pytest.raises(EngineError, match="cannot reach"):
        download_model(REPO, filename="tiny.Q4_0.gguf")


# -- catalogue ----------------------------------------------------------------------------------


def test_catalogue_offers_the_two_gguf_chat_models() -> None:
    by_id = {e["repo_id"]: e for e in load_catalogue()}
    expected = {
        "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF": (
            "tinyllama-1.1b-chat-v1.0",
            {"Q4_K_M": 668788096, "Q4_0": 637699456, "Q5_K_M": 782045568, "Q8_0": 1169807744},
        ),
        "TheBloke/Llama-2-7B-Chat-GGUF": (
            "llama-2-7b-chat",
            {"Q4_K_M": 4081004224, "Q4_0": 3825807040, "Q5_K_M": 4783156928, "Q8_0": 7161089728},
        ),
    }
    for repo_id, (stem, sizes) in expected.items():
        entry = by_id[repo_id]
        assert entry["layout"] == "gguf" and not entry["gated"] and not entry["default"]
        files = {f["quant"]: (f["filename"], f["size_bytes"]) for f in entry["files"]}
        assert files == {q: (f"{stem}.{q}.gguf", size) for q, size in sizes.items()}
        assert entry["default_file"] == f"{stem}.Q4_K_M.gguf"
        assert entry["size_bytes"] == sizes["Q4_K_M"]
        assert pick_gguf_file(repo_id, list(files.values()))[0] == entry["default_file"]
    assert by_id["TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"]["licence"] == "Apache-2.0"
    assert by_id["TheBloke/Llama-2-7B-Chat-GGUF"]["licence"] == "Llama 2 Community License"


def test_cli_download_file_then_open_by_repo_id(hub: FakeHub, monkeypatch) -> None:
    """`download REPO --file NAME` prints the file; `--model REPO` then opens the cached file."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    run = subprocess.run(
        [sys.executable, "-m", "engine", "download", REPO, "--file", "tiny.Q4_K_M.gguf"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    path = Path(run.stdout.strip().splitlines()[-1])
    assert path.name == "tiny.Q4_K_M.gguf" and path.is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "engine", "download", REPO, "--file", "tiny.Q9.gguf"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    from engine.loading.model_folder import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(REPO) == path  # `--model REPO` finds the downloaded file offline
