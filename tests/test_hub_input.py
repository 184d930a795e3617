"""Hub input that must be refused before any request: path-like revisions and malformed tokens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.hub.download import download_model
from engine.loading.model_folder import find_cached_model
from tests.hub_server import FakeHub

ROOT = Path(__file__).resolve().parents[1]
REPO = "test-org/tiny-llama"


@pytest.fixture
def fake_hub(monkeypatch, hub_env: Path, tiny_model_dir: Path):
    """A FakeHub serving the tiny model, a fresh HF_HOME, online, no token anywhere."""
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.add(REPO, tiny_model_dir)
        yield server


BAD_REVISIONS = [
    "../../../../X",
    "main/../../X",
    "..",
    "/tmp/X",
    "\\X",
    "main\nX",
    "v1\x00",
    "v1\x1b[2J",
]


@pytest.mark.parametrize("revision", BAD_REVISIONS)
def test_path_like_revision_is_refused_before_any_request(
    fake_hub: FakeHub, tmp_path: Path, revision: str
) -> None:
    with pytest.raises(EngineError, match="revision") as info:
        download_model(REPO, revision=revision)
    assert "\n" not in str(info.value)
    assert fake_hub.log == []
    assert not (tmp_path / "X").exists()
    with pytest.raises(EngineError, match="revision"):
        find_cached_model(REPO, revision=revision)


def test_revision_refused_by_the_cli(fake_hub: FakeHub, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "download", REPO, "--revision", "../../../../X"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "revision" in proc.stderr
    assert fake_hub.log == []


def test_ordinary_revisions_still_work(fake_hub: FakeHub) -> None:
    folder = download_model(REPO, revision="main")
    assert (folder / "config.json").is_file()


@pytest.mark.parametrize(
    "token, fragment",
    [
        ("hf_abc\ndef", "line break"),
        ("hf_abc\r\ndef", "line break"),
        ("hf_abcdéf", "non-ASCII"),
        ("hf_abc def", "spaces or control characters"),
        ("hf_abc\x07def", "spaces or control characters"),
    ],
)
def test_malformed_token_is_named(fake_hub: FakeHub, token: str, fragment: str) -> None:
    with pytest.raises(EngineError) as info:
        download_model(REPO, token=token)
    message = str(info.value)
    assert fragment in message and "--token" in message and "\n" not in message
    assert token not in message
    assert fake_hub.log == []


def test_malformed_token_in_the_environment(fake_hub: FakeHub, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abc\ndef")
    with pytest.raises(EngineError, match="HF_TOKEN contains a line break"):
        download_model(REPO)
    assert fake_hub.log == []


def test_cached_model_found_at_a_revision_beside_another_tools_listing(
    fake_hub: FakeHub, tmp_path: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    """Needs huggingface_hub >= 1.23 (IncompleteSnapshotError.snapshot_path): the declared floor.

    Another tool cached the repo's full listing, which names a file the engine never fetches
    (params.json beside an HF layout); huggingface_hub then calls the snapshot incomplete, and
    only the path it reports lets a revision-pinned lookup find our complete copy offline.
    """
    import huggingface_hub
    from huggingface_hub import snapshot_download

    repo = "test-org/with-params"
    fake_hub.add(repo, tiny_model_dir, extra_files={"params.json": b'{"dim": 64}'})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    cache = tmp_path / "hf" / "hub"
    snapshot_download(repo, cache_dir=cache, endpoint=fake_hub.url, allow_patterns="*.md")
    folder = download_model(repo)
    assert not (folder / "params.json").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert find_cached_model(repo, revision="main") == folder
    assert find_cached_model(repo) == folder
