"""Errors carry what to do as data (engine/errors.py): the CLI's text stays as it was, and the
window words the same remedy itself (desktop/app_text.py), for every kind of remedy."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch

from desktop.app_text import CHOOSER, TOKEN_FIELD, WINDOW_ADVICE, for_the_app, worded
from engine.errors import CLI_ADVICE, EngineError, Remedy
from engine.hub.download import download_model
from engine.loading.memory import choose_context
from engine.loading.model_folder import check_revision, resolve_model
from engine.model.config import ModelArgs
from tests.hub_server import FakeHub

REPO = "test-org/tiny-llama"
GATED = "meta-llama/gated-tiny"
LLAMA_7B = ModelArgs(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, hidden_dim=11008)
CPU = torch.device("cpu")


@pytest.fixture
def hub(monkeypatch, hub_env: Path, tiny_model_dir: Path):
    """A FakeHub serving the tiny model (and a gated copy), a fresh HF_HOME, no token anywhere."""
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.add(REPO, tiny_model_dir)
        server.add(GATED, tiny_model_dir, gated=True, token="hf_granted")
        yield server


def raised(call, *args, **kwargs) -> EngineError:
    with pytest.raises(EngineError) as info:
        call(*args, **kwargs)
    return info.value


def test_every_remedy_has_cli_and_window_words() -> None:
    assert set(CLI_ADVICE) == set(Remedy) == set(WINDOW_ADVICE)


def test_missing_and_incomplete_models_point_at_the_chooser(hub: FakeHub, tmp_path: Path) -> None:
    error = raised(resolve_model, "someone/some-model")
    assert error.hint is not None and error.hint.remedy is Remedy.DOWNLOAD
    assert error.problem == "no folder or cached Hub model named someone/some-model"
    assert str(error) == (
        "no folder or cached Hub model named someone/some-model; download it with "
        "`python -m engine download someone/some-model` or pick a folder"
    )
    assert for_the_app(error) == (
        f"No folder or cached Hub model named someone/some-model; download it with {CHOOSER} "
        "or pick a folder"
    )
    snapshot = tmp_path / "hf" / "hub" / "models--test-org--partial" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    error = raised(resolve_model, "test-org/partial")
    assert error.hint is not None and error.hint.remedy is Remedy.FINISH_DOWNLOAD
    assert str(error).endswith("finish it with `python -m engine download test-org/partial`")
    assert for_the_app(error) == (
        "The download of test-org/partial in the Hugging Face cache is incomplete; finish it "
        f"with {CHOOSER} (files already fetched are kept)"
    )


def test_token_remedies_point_at_the_token_field(hub: FakeHub) -> None:
    gated = raised(download_model, GATED)
    assert gated.hint is not None and gated.hint.remedy is Remedy.LOG_IN
    page = f"{hub.url}/{GATED}"
    assert str(gated) == (
        f"{GATED} is gated: accept its licence at {page} while logged in, then give an access "
        "token with --token or log in with `hf auth login` (`huggingface-cli login`)"
    )
    assert worded(gated) == (
        f"{GATED} is gated: accept its licence at {page} while logged in, then {TOKEN_FIELD}"
    )

    missing = raised(download_model, "nobody/nothing")
    assert missing.hint is not None and missing.hint.remedy is Remedy.TOKEN_IF_PRIVATE
    assert str(missing).endswith("; if it is private, give an access token with --token")
    assert for_the_app(missing) == (
        f"No model 'nobody/nothing' on {hub.url}: check the repo id (owner/name); if it is "
        f"private, {TOKEN_FIELD}"
    )
    assert raised(download_model, "nobody/nothing", token="hf_granted").hint is None

    rejected = raised(download_model, GATED, token="hf_typo")
    assert rejected.hint is not None and rejected.hint.remedy is Remedy.NEW_TOKEN
    assert str(rejected) == (
        "the Hub rejected the access token (invalid or expired): create a read token at "
        f"{hub.url}/settings/tokens and give it with --token or `hf auth login`"
    )
    assert for_the_app(rejected) == (
        "The Hub rejected the access token (invalid or expired): create a read token at "
        f"{hub.url}/settings/tokens and paste it in the model chooser's Token field"
    )

    malformed = raised(download_model, REPO, token="hf_abc\ndef")
    assert malformed.hint is not None and malformed.hint.remedy is Remedy.RETYPE_TOKEN
    assert str(malformed) == (
        "the token given with --token contains a line break, so it is not a Hugging Face "
        "access token; copy it again from https://huggingface.co/settings/tokens"
    )
    assert for_the_app(malformed) == (
        "The access token contains a line break, so it is not a Hugging Face access token; "
        "copy it again from https://huggingface.co/settings/tokens"
    )


def test_revision_remedies_name_the_revision_not_the_flag(hub: FakeHub) -> None:
    unknown = raised(download_model, REPO, revision="v9")
    assert unknown.hint is not None and unknown.hint.remedy is Remedy.CHECK_REVISION
    assert str(unknown) == (
        f"{REPO} has no revision 'v9'; check --revision (a branch, tag or commit of the repo)"
    )
    assert worded(unknown) == (
        f"{REPO} has no revision 'v9'; check the revision (a branch, tag or commit of the repo)"
    )
    bad_name = raised(check_revision, "../x")
    assert bad_name.hint is not None and bad_name.hint.remedy is Remedy.FIX_REVISION_NAME
    assert str(bad_name).endswith("control characters); check --revision")
    assert for_the_app(bad_name).endswith("control characters); check the revision")
    empty = raised(check_revision, " ")
    assert empty.hint is not None and empty.hint.remedy is Remedy.GIVE_REVISION
    assert str(empty) == "--revision is empty; give a branch, tag or commit of the repo"
    assert for_the_app(empty) == "The revision is empty; give a branch, tag or commit of the repo"


def test_memory_remedies_suggest_a_smaller_model(tiny_model_dir: Path, monkeypatch) -> None:
    too_big = raised(choose_context, LLAMA_7B, torch.float16, CPU, 4096, available=2**30)
    assert too_big.hint is not None and too_big.hint.remedy is Remedy.SMALLER_CONTEXT
    assert str(too_big).endswith(
        f"; use a smaller --max-context (about {too_big.hint.facts['fits']} fits) or close "
        "other programs"
    )
    assert for_the_app(too_big) == (
        too_big.problem[0].upper()
        + too_big.problem[1:]
        + "; close other programs or choose a smaller model"
    )

    from engine.loading.loader import load_model
    from engine.model.transformer import Transformer

    def no_memory(self, length: int) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Transformer, "setup_cache", no_memory)
    failed = raised(load_model, tiny_model_dir, dtype="float32", device="cpu")
    assert failed.hint is not None and failed.hint.remedy is Remedy.LESS_MEMORY
    assert str(failed).endswith("Tried to allocate 2.00 GiB); use a smaller --max-context or dtype")
    assert for_the_app(failed).endswith("Tried to allocate 2.00 GiB); choose a smaller model")
    assert for_the_app(failed).startswith("Not enough memory for the KV cache of")


def test_a_capped_context_note_has_the_cli_advice_only_on_the_cli() -> None:
    from engine.errors import cli_text

    roomy = dataclasses.replace(LLAMA_7B, max_seq_len=10**6)
    choice = choose_context(roomy, torch.float16, CPU, None, available=2**40)
    assert choice.hint is not None and choice.hint.remedy is Remedy.MORE_CONTEXT
    assert choice.note == (
        f"context capped to {choice.length} tokens (the model's config claims {10**6})"
    )
    assert cli_text(choice.note, choice.hint) == f"{choice.note}; use --max-context for more"


def test_errors_without_a_remedy_are_only_capitalised() -> None:
    plain = EngineError("no folder named x; pick a model folder (HF or Meta layout)")
    assert plain.hint is None and str(plain) == plain.problem
    assert for_the_app(plain) == "No folder named x; pick a model folder (HF or Meta layout)"
    assert for_the_app("Could not open the model. the file is bad") == (
        "Could not open the model. The file is bad"
    )
    hinted = EngineError("no folder or cached Hub model named a/b", Remedy.DOWNLOAD, repo_id="a/b")
    copy = pickle.loads(pickle.dumps(hinted))
    assert str(copy) == str(hinted) and copy.hint == hinted.hint
    assert for_the_app(for_the_app(hinted)) == for_the_app(hinted)  # window text stays as it is


def test_the_status_bar_reads_the_typed_runtime(tiny_model_dir: Path) -> None:
    from desktop.views.window_layout import device_text, runtime_tooltip
    from engine.events import ModelInfo, RuntimeInfo
    from engine.front_door import Engine

    engine = Engine.open(tiny_model_dir, dtype="float32", device="cpu")
    info = engine.info
    assert isinstance(info.runtime, RuntimeInfo) and info.runtime == engine.runtime
    assert info.runtime.kernel == info.extra["kernel"] and info.runtime.quant == "none"
    assert "threads" in info.runtime and "quant_cache" not in info.runtime  # None: absent
    assert runtime_tooltip(info).startswith(f"Kernel: {info.runtime.kernel} (")
    assert device_text(info) == "cpu · float32"

    described = {
        "name": "m", "path": "/m", "device": "cpu", "dtype": "bfloat16", "max_context": 64,
        "kernel": "int8native", "kernel_source": "cached", "threads": 4, "thread_governor": True,
        "cpu": "Some CPU", "native_isa": "avx2", "native": "avx2", "quant": "int8",
        "quant_cache_hit": True,
    }  # fmt: skip
    typed = ModelInfo.from_dict(described)
    assert typed.runtime.threads == 4 and typed.extra["kernel"] == "int8native"
    assert device_text(typed) == "cpu · bfloat16 · 8-bit weights"
    assert runtime_tooltip(typed).splitlines() == [
        "Kernel: int8native (measured earlier, cached)",
        "Loopchat's compiled kernel, its avx2 build",
        "Threads: 4, adjusted while decoding",
        "CPU: Some CPU",
        "Weights: int8 (from the cache)",
    ]
