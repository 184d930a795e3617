"""Broken or hostile model folders end in one EngineError line, quickly, never a traceback or hang.

Each case was a traceback, a silent garbage load, a hang or a huge allocation before issue 12.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.errors import EngineError
from engine.generation.generate import Generator
from engine.generation.sampling import SamplingParams
from engine.loading.loader import load_model
from engine.model.config import ModelArgs
from engine.text.chat import Message, chat_prompt_ids, load_chat_template
from engine.text.tokenizer import Tokenizer


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def expect_error(folder: Path, *fragments: str, **kwargs) -> str:
    started = time.perf_counter()
    with pytest.raises(EngineError) as info:
        load_model(folder, dtype="float32", device="cpu", **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    assert time.perf_counter() - started < 30
    return message


# -- safetensors headers --------------------------------------------------------------------------


def rewrite_header(path: Path, change: Callable[[dict], None], extra: bytes = b"") -> None:
    """Edit a safetensors file's JSON header in place; the data section stays byte for byte."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :] + extra)


NORM_A = "model.layers.0.input_layernorm.weight"
NORM_B = "model.layers.0.post_attention_layernorm.weight"


def _overlap(h: dict) -> None:
    h[NORM_B]["data_offsets"] = list(h[NORM_A]["data_offsets"])


def _negative_begin(h: dict) -> None:
    first = next(
        e for e in h.values() if isinstance(e, dict) and e.get("data_offsets", [1])[0] == 0
    )
    first["data_offsets"] = [-4, first["data_offsets"][1] - 4]


def _shifted(h: dict) -> None:
    begin, end = h[NORM_A]["data_offsets"]
    h[NORM_A]["data_offsets"] = [begin + 4, end + 4]


def _number_offsets(h: dict) -> None:
    h[NORM_A]["data_offsets"] = 5


def _string_offsets(h: dict) -> None:
    begin, end = h[NORM_A]["data_offsets"]
    h[NORM_A]["data_offsets"] = [str(begin), str(end)]


def _string_shape(h: dict) -> None:
    h[NORM_A]["shape"] = ["a", 64]


def _entry_not_object(h: dict) -> None:
    h[NORM_A] = [1, 2]


@pytest.mark.parametrize(
    "change, fragment",
    [
        (_overlap, "overlaps"),
        (_negative_begin, "data_offsets"),
        (_shifted, "model.safetensors"),
        (_number_offsets, "data_offsets"),
        (_string_offsets, "data_offsets"),
        (_string_shape, "shape"),
        (_entry_not_object, "header"),
    ],
)
def test_safetensors_header_is_validated(
    tiny_hf_dir: Path, tmp_path: Path, change: Callable[[dict], None], fragment: str
) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    rewrite_header(folder / "model.safetensors", change)
    expect_error(folder, "model.safetensors", fragment)


def test_safetensors_bytes_after_the_last_tensor_are_refused(
    tiny_hf_dir: Path, tmp_path: Path
) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    rewrite_header(folder / "model.safetensors", lambda h: None, extra=b"\0" * 64)
    expect_error(folder, "model.safetensors", "belong to no tensor")


# -- model shape and memory ------------------------------------------------------------------------


def edit_config(folder: Path, **values) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))


@pytest.mark.timeout(60)
def test_ten_million_layers_fail_fast(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    edit_config(folder, num_hidden_layers=10_000_000)
    started = time.perf_counter()
    expect_error(folder, "10000000 layers", "holds 2")
    assert time.perf_counter() - started < 5


def test_huge_context_is_capped_not_allocated(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    edit_config(folder, max_position_embeddings=10**12)
    loaded = load_model(folder, dtype="float32", device="cpu")
    assert 2 <= loaded.max_context <= 131_072
    assert loaded.context_note and "capped" in loaded.context_note
    assert loaded.describe()["context_note"] == loaded.context_note
    cache = loaded.model.layers[0].attention.cache
    assert cache is not None and cache.max_seq_len == loaded.max_context


def test_context_is_capped_to_available_memory() -> None:
    from engine.loading.memory import bytes_per_position, choose_context

    llama7b = ModelArgs(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, hidden_dim=11008)
    per_position = bytes_per_position(llama7b, torch.float16)
    assert per_position >= 2 * 32 * 4096 * 2  # keys + values, 32 layers, fp16
    cpu = torch.device("cpu")
    roomy = choose_context(llama7b, torch.float16, cpu, None, available=2**40)
    assert roomy.length == 4096 and roomy.note is None
    tight = choose_context(llama7b, torch.float16, cpu, None, available=2**30)
    assert 2 <= tight.length < 4096 and tight.length * per_position <= 2**30
    assert "capped" in tight.note and "4096" in tight.note
    with pytest.raises(EngineError, match="max-context"):
        choose_context(llama7b, torch.float16, cpu, 4096, available=2**30)
    with pytest.raises(EngineError, match="KV cache"):
        choose_context(llama7b, torch.float16, cpu, None, available=1000)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"rms_norm_eps": 0}, "rms_norm_eps"),
        ({"rms_norm_eps": -1e-5}, "rms_norm_eps"),
        ({"rms_norm_eps": math.nan}, "rms_norm_eps"),
        ({"rope_theta": 0}, "rope_theta"),
        ({"rope_theta": -10000.0}, "rope_theta"),
        ({"head_dim": "abc"}, "head_dim"),
        ({"hidden_size": "64.5"}, "malformed"),
    ],
)
def test_bad_config_values(tiny_hf_dir: Path, tmp_path: Path, values: dict, fragment: str) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    edit_config(folder, **values)
    expect_error(folder, "config.json", fragment)


def test_deeply_nested_json(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    body = json.dumps(config)[:-1]
    depth = 200_000
    (folder / "config.json").write_text(body + ', "x": ' + "[" * depth + "]" * depth + "}")
    expect_error(folder, "config.json", "too deeply")


# -- NaN / Inf ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_model(tiny_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from safetensors.torch import load_file, save_file

    folder = copy_model(tiny_hf_dir, tmp_path_factory.mktemp("nan") / "m")
    weights = load_file(folder / "model.safetensors")
    weights["model.norm.weight"][:] = math.nan
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return load_model(folder, dtype="float32", device="cpu")


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1),
        SamplingParams(temperature=0.7, seed=2),
    ],
)
def test_nan_logits_stop_generation(nan_model, params: SamplingParams) -> None:
    generation = Generator(nan_model).generate([1, 5, 6], params, max_new_tokens=4)
    with pytest.raises(EngineError, match=r"invalid numbers \(NaN/Inf\)"):
        list(generation)


# -- files ----------------------------------------------------------------------------------------


def test_symlink_loop_as_weights(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    os.symlink("model.safetensors", folder / "model.safetensors")  # points at itself
    expect_error(folder, "model.safetensors", "cannot be read")


@pytest.mark.timeout(60)
def test_fifo_as_weights_does_not_hang(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    expect_error(folder, "model.safetensors", "not a regular file")


@pytest.mark.timeout(60)
def test_fifo_as_config_does_not_hang(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_hf_dir, tmp_path / "m")
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    expect_error(folder, "config.json")


def _index(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


def test_index_entry_outside_the_folder_is_refused(tiny_gqa_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_gqa_hf_dir, tmp_path / "m")
    index = _index(folder)
    shard = sorted(set(index["weight_map"].values()))[-1]
    # A complete, valid shard that lives outside the model folder must still not be read.
    (tmp_path / "elsewhere").mkdir()
    shutil.move(folder / shard, tmp_path / "elsewhere" / shard)
    index["weight_map"] = {
        name: (f"../elsewhere/{shard}" if file == shard else file)
        for name, file in index["weight_map"].items()
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    expect_error(folder, "../elsewhere", "inside the model folder")


def test_index_entry_like_etc_passwd_is_refused(tiny_gqa_hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_gqa_hf_dir, tmp_path / "m")
    index = _index(folder)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../../../etc/passwd"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    expect_error(folder, "etc/passwd", "inside the model folder")


@pytest.mark.parametrize("entry", [5, None, ["a"], {"b": 1}])
def test_index_entry_that_is_not_a_string(tiny_gqa_hf_dir: Path, tmp_path: Path, entry) -> None:
    folder = copy_model(tiny_gqa_hf_dir, tmp_path / "m")
    index = _index(folder)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = entry
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    expect_error(folder, "model.safetensors.index.json", "expected a file name")


# -- chat templates -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path: Path) -> Tokenizer:
    return Tokenizer(tokenizer_path)


HELLO = [Message("user", "Hello")]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "template, fragment",
    [
        ("{{ 1/0 }}", "ZeroDivisionError"),
        ("{{ 'x' * 10**10 }}", "longer than"),
        ("{{ 'x' * 10**8 }}", "longer than"),
        ("{{ 7 ** (10 ** 8) }}", "too large"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "loops more than",
        ),
        ("{% for i in range(1000) %}{{ 'abcdefghij' * 1000 }}{% endfor %}", "renders more"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "chat template failed"),
        ("{{ messages.__class__ }}{{ ''.__class__.__mro__[1].__subclasses__() }}", "failed"),
        ("{{ unknown_function() }}", "failed"),
    ],
)
def test_hostile_templates_end_in_one_error(
    tokenizer: Tokenizer, template: str, fragment: str
) -> None:
    started = time.perf_counter()
    with pytest.raises(EngineError) as info:
        chat_prompt_ids(tokenizer, HELLO, template)
    assert fragment in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
    assert time.perf_counter() - started < 10


def test_template_still_renders_normal_loops(tokenizer: Tokenizer) -> None:
    template = "{% for i in range(3) %}{{ i }}{% endfor %}{{ messages[0]['content'] * 2 }}"
    ids = chat_prompt_ids(tokenizer, HELLO, template)
    assert tokenizer.decode(ids) == "012HelloHello"


def test_non_utf8_chat_template_file(tmp_path: Path) -> None:
    (tmp_path / "chat_template.jinja").write_bytes(b"\xff\xfe{{ messages }}")
    with pytest.raises(EngineError, match="not UTF-8"):
        load_chat_template(tmp_path)
