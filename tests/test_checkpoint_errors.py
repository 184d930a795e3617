"""Every broken model folder gives one EngineError naming the file and the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.errors import EngineError
from engine.loading.loader import load_model


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def expect_error(folder: Path, *fragments: str) -> str:
    with pytest.raises(EngineError) as info:
        load_model(folder, dtype="float32", device="cpu")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    return message


def test_empty_folder(tmp_path: Path) -> None:
    expect_error(tmp_path, str(tmp_path), "holds no model", "config.json", "params.json")


def test_missing_folder(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope", "nope")


def test_missing_tokenizer(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    (folder / "tokenizer.model").unlink()
    expect_error(folder, "tokenizer.model", "missing")


def test_not_llama(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    expect_error(folder, "config.json", "gpt2", "not 'llama'")


def test_shape_mismatch(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] += 32
    (folder / "config.json").write_text(json.dumps(config))
    expect_error(folder, "model.safetensors", "mlp.", "shape")


def test_missing_key(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (folder / "config.json").write_text(json.dumps(config))
    expect_error(folder, "layers.2.", "lack")


def test_truncated_safetensors(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    expect_error(folder, "model.safetensors", "truncated")


def test_corrupt_safetensors_header(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:20] = b"\xff" * 12
    weights.write_bytes(bytes(data))
    expect_error(folder, "model.safetensors", "corrupt")


def test_missing_shard(tiny_gqa_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_gqa_hf_dir, tmp_path / "m")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    expect_error(folder, shard.name, "missing")


class Sneaky:
    """Unpickling this would run code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_pth_needing_code_is_refused(tiny_meta_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_meta_dir, tmp_path / "m")
    state = torch.load(folder / "consolidated.00.pth", weights_only=True)
    state["evil"] = Sneaky()
    torch.save(state, folder / "consolidated.00.pth")
    expect_error(folder, "consolidated.00.pth", "unpickle")


def test_corrupt_pth(tiny_meta_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_meta_dir, tmp_path / "m")
    (folder / "consolidated.00.pth").write_bytes(b"not a zip file at all")
    expect_error(folder, "consolidated.00.pth", "not a readable PyTorch checkpoint")


def test_tokenizer_that_is_not_sentencepiece(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    (folder / "tokenizer.model").write_bytes(b"garbage")
    expect_error(folder, "tokenizer.model", "not a SentencePiece model")


def test_pickle_only_hf_folder(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    expect_error(folder, "pytorch_model", "safetensors")
