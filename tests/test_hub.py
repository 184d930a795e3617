"""Downloads through the real huggingface_hub client against a local server acting as the Hub.

Each test points HF_ENDPOINT at its own FakeHub and HF_HOME at its own folder, which the engine
reads at call time (huggingface_hub itself read them once, at import).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, namedtuple
from pathlib import Path

import pytest

from desktop.catalogue import load_catalogue
from engine.cli import add_download_arguments, run_download
from engine.errors import EngineError
from engine.hub.download import (
    DownloadCancelled,
    DownloadProgress,
    download_model,
    format_duration,
    format_progress,
)
from engine.loading.loader import load_model
from engine.loading.model_folder import is_model_complete, list_cached_models, resolve_model
from tests.hub_server import FakeHub

ROOT = Path(__file__).resolve().parents[1]
REPO = "test-org/tiny-llama"
BIG = "test-org/big-file"
GATED = "meta-llama/gated-tiny"
MiB = 1024 * 1024
LLAMA_CONFIG = json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}).encode()
EXTRAS = {
    "pytorch_model.bin": b"pickled weights we must not fetch" * 100,
    "README.md": b"# tiny",
    "onnx/model.onnx": b"onnx",
    "original/consolidated.00.pth": b"meta copy in a subfolder",
    ".gitattributes": b"*.safetensors filter=lfs",
}
"""Files real repos carry that Loopchat must not fetch."""


@pytest.fixture
def hub(monkeypatch, hub_env: Path, tiny_model_dir: Path):
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.add(REPO, tiny_model_dir, extra_files=EXTRAS)
        yield server


@pytest.fixture(scope="session")
def big_files() -> dict[str, bytes]:
    """A repo with one 25 MiB weight file: more than huggingface_hub's 10 MiB read size."""
    return {
        "config.json": LLAMA_CONFIG,
        "tokenizer.model": b"t" * 1000,
        "model.safetensors": random.Random(0).randbytes(25 * MiB),
    }


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# -- downloads ----------------------------------------------------------------------------------


def test_download_fetches_only_needed_files_once_and_loads(
    hub: FakeHub, hub_env: Path, tiny_model_dir: Path
) -> None:
    import huggingface_hub

    offline_before = huggingface_hub.constants.HF_HUB_OFFLINE
    folder = download_model(REPO)
    assert huggingface_hub.constants.HF_HUB_OFFLINE == offline_before  # only changed meanwhile
    needed = {p.name for p in tiny_model_dir.iterdir()}
    assert "model.safetensors.index.json" in needed and "tokenizer.model" in needed
    assert folder.is_relative_to(hub_env) and folder.parent.name == "snapshots"
    assert {p.name for p in folder.iterdir()} == needed
    assert hub.fetched() == Counter(dict.fromkeys(needed, 1))  # nothing else, nothing twice
    assert is_model_complete(folder)

    loaded = load_model(REPO, dtype="float32", device="cpu")  # found in the cache by repo id
    assert loaded.path == folder and loaded.name == REPO
    assert loaded.args.vocab_size == 512


def test_separate_chat_template_file_is_fetched(hub: FakeHub, tiny_model_dir: Path) -> None:
    """Newer repos keep the chat template in chat_template.jinja instead of tokenizer_config."""
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    extra = {"chat_template.jinja": template.encode()}
    hub.add("someone/with-template", tiny_model_dir, extra_files=extra)
    folder = download_model("someone/with-template")
    assert (folder / "chat_template.jinja").read_text() == template


def test_progress_reports_increasing_bytes_within_and_across_files(
    hub: FakeHub, big_files: dict[str, bytes]
) -> None:
    hub.add(BIG, files=big_files)
    events: list[DownloadProgress] = []
    download_model(BIG, progress=events.append)
    total = sum(len(data) for data in big_files.values())
    done = [e.done_bytes for e in events]
    assert done == sorted(done) and done[-1] == total
    assert {e.total_bytes for e in events} == {total}
    inside = [
        e for e in events if e.filename == "model.safetensors" and 0 < e.file_done_bytes < 25 * MiB
    ]
    assert [e.file_done_bytes for e in inside] == [10 * MiB, 20 * MiB]  # one per 10 MiB read
    last = events[-1]
    assert last.files_done == last.files_total == 3
    assert last.speed_bps > 0 and last.eta_s == 0
    assert "(100%)" in format_progress(last)


def test_cut_transfer_resumes_where_it_stopped(hub: FakeHub, big_files: dict[str, bytes]) -> None:
    hub.add(BIG, files=big_files)
    hub.cut_once["model.safetensors"] = 15 * MiB  # then the server hangs up
    folder = download_model(BIG)
    # The second request asks only for what is missing after the last whole 10 MiB read.
    assert [r.range for r in hub.gets("model.safetensors")] == [None, f"bytes={10 * MiB}-"]
    served = hashlib.sha256(big_files["model.safetensors"]).hexdigest()
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == served


def test_reset_connection_is_tried_again(hub: FakeHub, caplog) -> None:
    hub.reset_once.add("tokenizer.model")  # RST mid-file: huggingface_hub gives up this call
    with caplog.at_level(logging.WARNING, logger="engine.hub.download"):
        folder = download_model(REPO)
    assert is_model_complete(folder)
    assert len(hub.gets("tokenizer.model")) == 2
    assert "trying again" in caplog.text


def test_a_second_download_fetches_nothing(hub: FakeHub) -> None:
    first = download_model(REPO)
    fetched = len(hub.gets())
    assert download_model(REPO) == first
    assert len(hub.gets()) == fetched


def test_meta_layout_fetches_params_shards_and_tokenizer(
    hub: FakeHub, tiny_gqa_meta_dir: Path
) -> None:
    hub.add("meta-llama/tiny-meta", tiny_gqa_meta_dir, extra_files={"checklist.chk": b"md5s"})
    folder = download_model("meta-llama/tiny-meta")
    expected = {"params.json", "consolidated.00.pth", "consolidated.01.pth", "tokenizer.model"}
    assert {p.name for p in folder.iterdir()} == expected
    assert set(hub.fetched()) == expected
    assert load_model(folder, dtype="float32", device="cpu").args.n_kv_heads == 2


# -- the cache, offline -------------------------------------------------------------------------


def test_cached_model_is_found_offline(hub: FakeHub, monkeypatch, tiny_model_dir: Path) -> None:
    folder = download_model(REPO)
    requests = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(REPO) == folder
    assert download_model(REPO) == folder  # offline: the cached copy, no request
    (model,) = list_cached_models()
    assert model["repo_id"] == REPO and model["path"] == str(folder) and model["layout"] == "hf"
    assert model["size_bytes"] == sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    assert len(hub.log) == requests


def test_unreachable_hub_falls_back_to_a_cached_copy(hub: FakeHub, monkeypatch, caplog) -> None:
    folder = download_model(REPO)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    with caplog.at_level(logging.WARNING, logger="engine.hub.download"):
        assert download_model(REPO) == folder
    assert "using the copy already in the cache" in caplog.text


def test_model_cached_by_another_tool_is_used(hub: FakeHub, hub_env: Path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub import snapshot_download

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # Another tool fetched the whole repo (also files we skip) and cached its listing.
    other = Path(snapshot_download(REPO, cache_dir=hub_env, endpoint=hub.url))
    assert (other / "pytorch_model.bin").is_file() and (
        hub_env / "models--test-org--tiny-llama" / "trees"
    ).is_dir()
    hub.log.clear()
    assert download_model(REPO) == other
    assert hub.gets() == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(REPO) == other
    # A tool that fetched only part of a repo (and cached its full listing) does not make it a
    # model; once our download completes our files, the listing's other files (pytorch_model.bin,
    # onnx/...) do not make huggingface_hub call the snapshot incomplete.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.add("test-org/partial", other)
    snapshot_download(
        "test-org/partial", cache_dir=hub_env, endpoint=hub.url, allow_patterns="*.json"
    )
    with pytest.raises(
        EngineError, match="test-org/partial in the Hugging Face cache is incomplete"
    ):
        resolve_model("test-org/partial")
    folder = download_model("test-org/partial")
    assert "pytorch_model.bin" not in hub.fetched()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("test-org/partial") == folder
    assert [m["repo_id"] for m in list_cached_models()] == ["test-org/partial", REPO]


def test_offline_setting_without_a_cached_copy(hub: FakeHub, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EngineError, match="HF_HUB_OFFLINE is set and test-org/tiny-llama is not"):
        download_model(REPO)
    assert hub.log == []


def test_no_server_at_all_is_reported_quickly(hub_env: Path, monkeypatch) -> None:
    url = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", url)
    started = time.perf_counter()
    with pytest.raises(EngineError) as error:
        download_model(REPO)
    assert time.perf_counter() - started < 5
    assert str(error.value).startswith(f"cannot reach {url} to download {REPO}: check your")


# -- refusals -----------------------------------------------------------------------------------


def test_gated_repo_without_token_explains_licence_and_token(
    hub: FakeHub, hub_env: Path, tiny_model_dir: Path
) -> None:
    hub.add(GATED, tiny_model_dir, gated=True, token="hf_granted")
    with pytest.raises(EngineError) as error:
        download_model(GATED)
    message = str(error.value)
    assert message.startswith(f"{GATED} is gated: accept its licence at {hub.url}/{GATED}")
    assert "--token" in message and "hf auth login" in message
    assert hub.gets() == []  # refused at the first file's HEAD
    with pytest.raises(EngineError, match="^no folder or cached Hub model named meta-llama/"):
        resolve_model(GATED)


def test_gated_repo_access_and_tokens_never_shown(
    hub: FakeHub, hub_env: Path, tiny_model_dir: Path, monkeypatch, caplog
) -> None:
    hub.add(GATED, tiny_model_dir, gated=True, token="hf_granted")
    hub.known_tokens.add("hf_someone_else")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EngineError) as error:
        download_model(GATED, token="hf_someone_else")
    message = str(error.value)
    assert message.startswith(f"your Hugging Face account has no access to {GATED} yet")
    assert f"accept the licence at {hub.url}/{GATED}" in message
    with pytest.raises(EngineError, match="the Hub rejected the access token"):
        download_model(GATED, token="hf_typo")

    assert is_model_complete(download_model(GATED, token="hf_granted"))
    shutil.rmtree(hub_env)
    monkeypatch.setenv("HF_TOKEN", "hf_granted")  # the environment, read now
    assert is_model_complete(download_model(GATED))
    shutil.rmtree(hub_env)
    monkeypatch.delenv("HF_TOKEN")
    (hub_env.parent / "token").write_text("hf_granted\n")  # `hf auth login`'s store in HF_HOME
    assert is_model_complete(download_model(GATED))

    for token in ("hf_granted", "hf_someone_else", "hf_typo"):
        assert token not in caplog.text and token not in message


def test_missing_repo_revision_and_bad_id(hub: FakeHub) -> None:
    with pytest.raises(EngineError) as error:
        download_model("nobody/nothing")
    assert str(error.value).startswith(f"no model 'nobody/nothing' on {hub.url}: check the repo id")
    with pytest.raises(EngineError, match=f"^{REPO} has no revision 'v9'; check --revision"):
        download_model(REPO, revision="v9")
    with pytest.raises(EngineError, match="is not a Hub repo id"):
        download_model("not a repo id")
    assert hub.gets() == []


def test_not_a_llama_is_refused_before_any_weight(
    hub: FakeHub, tmp_path: Path, tiny_model_dir: Path
) -> None:
    gpt = tmp_path / "gpt"
    shutil.copytree(tiny_model_dir, gpt)
    config = json.loads((gpt / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (gpt / "config.json").write_text(json.dumps(config))
    hub.add("openai/gpt2ish", gpt)
    with pytest.raises(EngineError) as error:
        download_model("openai/gpt2ish")
    assert str(error.value) == (
        "openai/gpt2ish is not a Llama model (model_type 'gpt2'); "
        "Loopchat runs Llama 2 architecture models"
    )
    assert hub.fetched() == Counter({"config.json": 1})


def test_repos_without_safetensors_or_tokenizer_are_refused(hub: FakeHub) -> None:
    hub.add(
        "test-org/bin-only",
        files={"config.json": LLAMA_CONFIG, "tokenizer.model": b"t", "pytorch_model.bin": b"w"},
    )
    with pytest.raises(EngineError, match="has no safetensors weights .*pytorch_model.bin"):
        download_model("test-org/bin-only")
    hub.add("test-org/no-tok", files={"config.json": LLAMA_CONFIG, "model.safetensors": b"w"})
    with pytest.raises(EngineError, match="has no tokenizer.model"):
        download_model("test-org/no-tok")
    hub.add("test-org/readme", files={"README.md": b"hi"})
    with pytest.raises(EngineError, match="has no config.json or params.json"):
        download_model("test-org/readme")
    assert set(hub.fetched()) == {"config.json"}


@pytest.mark.filterwarnings("ignore:Not enough free disk space")
def test_not_enough_disk_space_is_found_before_the_weights(hub: FakeHub, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(EngineError, match=r"not enough disk space for .* \d+\.\d kB more in .*"):
        download_model(REPO)
    assert not any(name.endswith(".safetensors") for name in hub.fetched())


def test_disk_full_during_a_transfer(hub: FakeHub, monkeypatch) -> None:
    from huggingface_hub import file_download

    real_get = file_download.http_get

    def full_disk(url, temp_file, **kwargs):
        if url.endswith(".safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_get(url, temp_file, **kwargs)

    monkeypatch.setattr(file_download, "http_get", full_disk)
    with pytest.raises(EngineError, match="is full: test-org/tiny-llama needs .* more and"):
        download_model(REPO)


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_leaves_no_usable_model_and_a_new_download_continues(hub: FakeHub) -> None:
    cancel = threading.Event()

    def progress(p: DownloadProgress) -> None:
        if p.filename.endswith(".safetensors") and p.file_done_bytes > 0:
            cancel.set()

    with pytest.raises(DownloadCancelled, match="cancelled"):
        download_model(REPO, progress=progress, cancel=cancel)
    with pytest.raises(EngineError, match="is incomplete; finish it with `python -m engine"):
        resolve_model(REPO)
    assert list_cached_models() == []

    folder = download_model(REPO)
    assert is_model_complete(folder)
    counts = hub.fetched()
    assert counts["config.json"] == 1 and counts["model.safetensors.index.json"] == 1
    assert sorted(counts.values())[-2:] == [1, 2]  # only the cancelled shard came twice

    cancel.set()
    with pytest.raises(DownloadCancelled):
        download_model(REPO, cancel=cancel)


# -- local folders ------------------------------------------------------------------------------


def test_is_model_complete(tmp_path: Path, tiny_model_dir: Path, tiny_gqa_meta_dir: Path) -> None:
    hf = shutil.copytree(tiny_model_dir, tmp_path / "hf")
    meta = shutil.copytree(tiny_gqa_meta_dir, tmp_path / "meta")
    assert is_model_complete(hf) and is_model_complete(meta)
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    (hf / sorted(set(index["weight_map"].values()))[-1]).unlink()
    assert not is_model_complete(hf)  # a shard the index names is missing
    (meta / "consolidated.00.pth").unlink()
    assert not is_model_complete(meta)  # shards must run 00, 01, ...
    shutil.copy(meta / "consolidated.01.pth", meta / "consolidated.00.pth")
    (meta / "tokenizer.model").unlink()
    assert not is_model_complete(meta)


def test_resolve_model_messages(hub_env: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir
    with pytest.raises(EngineError) as error:
        resolve_model("someone/some-model")
    assert str(error.value) == (
        "no folder or cached Hub model named someone/some-model; download it with "
        "`python -m engine download someone/some-model` or pick a folder"
    )
    with pytest.raises(
        EngineError, match="^no folder or file named ./nowhere/model; pick a model folder"
    ):
        resolve_model("./nowhere/model")
    with pytest.raises(EngineError, match="is a file but not a GGUF model; pick a .gguf file"):
        resolve_model(str(tiny_model_dir / "config.json"))


# -- catalogue ----------------------------------------------------------------------------------


def test_catalogue_offers_tinyllama_by_default_and_the_gated_llama_2_models() -> None:
    catalogue = load_catalogue()
    by_id = {entry["repo_id"]: entry for entry in catalogue}
    assert [e["repo_id"] for e in catalogue if e["default"]] == [
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    ]
    tiny = by_id["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
    assert not tiny["gated"] and tiny["layout"] == "hf" and 2.1e9 < tiny["size_bytes"] < 2.3e9
    gated = {r for r, e in by_id.items() if e["gated"]}
    assert gated == {
        "meta-llama/Llama-2-7b-chat-hf",
        "meta-llama/Llama-2-13b-chat-hf",
        "meta-llama/Llama-2-7b-chat",
    }
    assert by_id["meta-llama/Llama-2-7b-chat"]["layout"] == "meta"
    for entry in catalogue:
        assert entry["name"] and entry["licence"] and entry["description"]


def test_catalogue_is_found_in_a_frozen_build(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "resources").mkdir()
    shutil.copy(ROOT / "resources" / "catalogue.json", tmp_path / "resources")
    data = json.loads((tmp_path / "resources" / "catalogue.json").read_text())
    data["models"][0]["name"] = "From the bundle"
    (tmp_path / "resources" / "catalogue.json").write_text(json.dumps(data))
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert load_catalogue()[0]["name"] == "From the bundle"


# -- CLI ----------------------------------------------------------------------------------------


def test_format_progress() -> None:
    p = DownloadProgress("a/b", "model.safetensors", 10**9, 2 * 10**9, 10**7, 100.0)
    assert format_progress(p) == "1.0 GB / 2.0 GB (50%), 10.0 MB/s, 2 min left - model.safetensors"
    assert [format_duration(s) for s in (4.4, 59, 3900)] == ["4 s", "59 s", "1 h 05 min"]


def test_run_download_prints_progress_then_the_folder(hub: FakeHub, capsys) -> None:
    parser = argparse.ArgumentParser()
    add_download_arguments(parser)
    assert run_download(parser.parse_args([REPO])) == 0
    out, err = capsys.readouterr()
    folder = Path(out.splitlines()[-1])
    assert is_model_complete(folder) and "(100%)" in err
    assert run_download(parser.parse_args(["nobody/nothing", "--token", "hf_secret"])) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: no model 'nobody/nothing'")
    assert len(err.splitlines()) == 1 and "hf_secret" not in err


def test_download_command_contract(hub: FakeHub) -> None:
    env = dict(os.environ)
    command = [sys.executable, "-m", "engine", "download"]
    ok = subprocess.run(
        [*command, REPO], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert is_model_complete(Path(ok.stdout.splitlines()[-1]))
    assert "%" in ok.stderr
    bad = subprocess.run(
        [*command, REPO, "--revision", "nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"error: {REPO} has no revision 'nope'; check --revision (a branch, tag or commit of "
        "the repo)"
    ]
