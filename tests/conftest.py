"""Session fixtures shared by every test: a trained tokenizer and tiny random Llama models.

Everything is built here, in the test session; nothing is downloaded.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Nothing a test writes may land in the developer's real folders (kernel choices, quantized
# weights, settings): tests that need their own home set LOOPCHAT_HOME themselves; the rest share
# this session's scratch home.
if "LOOPCHAT_HOME" not in os.environ:
    _scratch_home = tempfile.mkdtemp(prefix="loopchat-tests-")
    os.environ["LOOPCHAT_HOME"] = _scratch_home
    atexit.register(shutil.rmtree, _scratch_home, True)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh app home for one window test: LOOPCHAT_HOME is `tmp_path / "home"` (settings, the
    conversations database under `home/data`, caches); `tmp_path` is returned for other files."""
    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-like SentencePiece `tokenizer.model` trained for this session."""
    from tests.fixtures.tokenizer import train_tokenizer

    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _build(tmp_path_factory, tokenizer_path: Path, name: str, kv_heads: int, seed: int) -> dict:
    from tests.fixtures.models import random_llama, write_hf, write_meta

    model = random_llama(kv_heads=kv_heads, seed=seed)
    base = tmp_path_factory.mktemp(name)
    return {
        "hf": write_hf(model, base / "hf", tokenizer_path, sharded=kv_heads != 4),
        "meta": write_meta(model, base / "meta", tokenizer_path, shards=1 if kv_heads == 4 else 2),
    }


@pytest.fixture(scope="session")
def _tiny_mha(tmp_path_factory, tokenizer_path: Path) -> dict:
    return _build(tmp_path_factory, tokenizer_path, "tiny_mha", kv_heads=4, seed=1)


@pytest.fixture(scope="session")
def _tiny_gqa(tmp_path_factory, tokenizer_path: Path) -> dict:
    return _build(tmp_path_factory, tokenizer_path, "tiny_gqa", kv_heads=2, seed=2)


@pytest.fixture(scope="session")
def tiny_hf_dir(_tiny_mha: dict) -> Path:
    """HF layout, multi-head attention, one model.safetensors, with a chat template."""
    return _tiny_mha["hf"]


@pytest.fixture(scope="session")
def tiny_meta_dir(_tiny_mha: dict) -> Path:
    """The same weights as tiny_hf_dir in Meta's layout (one consolidated.00.pth)."""
    return _tiny_mha["meta"]


@pytest.fixture(scope="session")
def tiny_gqa_hf_dir(_tiny_gqa: dict) -> Path:
    """HF layout, grouped-query attention (2 kv heads for 4), sharded safetensors + index."""
    return _tiny_gqa["hf"]


@pytest.fixture(scope="session")
def tiny_gqa_meta_dir(_tiny_gqa: dict) -> Path:
    """The same weights as tiny_gqa_hf_dir in Meta's layout, two model-parallel shards."""
    return _tiny_gqa["meta"]


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_gqa_hf_dir: Path) -> Path:
    """The model other parts (desktop, hub, CLI) use."""
    return tiny_gqa_hf_dir


@pytest.fixture
def kernel():
    """Loopchat's compiled kernels (engine/kernels/native.py); the test is skipped where they
    cannot be
    built (tests/test_native_kernels.py fails instead where a compiler should have built them)."""
    from engine.kernels import native

    built = native.load()
    if built is None:
        pytest.skip(f"no native kernel here: {native.unavailable_reason()}")
    return built


@pytest.fixture
def hub_env(monkeypatch, tmp_path: Path) -> Path:
    """A fresh HF_HOME, online, with no token anywhere; returns the hub cache folder."""
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf" / "hub"
