"""GGUF files as models: the same logits as transformers' own GGUF loader (an independent
reference that dequantizes with gguf-py), the file's blocks run in place, the CLI's contracts, and
what a file Loopchat cannot run gets."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from engine.errors import EngineError  # noqa: E402
from engine.loading.loader import load_model  # noqa: E402
from tests.fixtures.gguf_files import k_quant_llama, mostly, write_gguf  # noqa: E402
from tests.fixtures.models import LLAMA2_CHAT_TEMPLATE  # noqa: E402

PROMPT = [1, 23, 87, 5, 301, 44, 9, 120, 77, 3, 250, 18]

FILE_TYPES = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15, "Q5_mix": 8}
"""llama.cpp's general.file_type for each mix (Q5_mix: "Q5_0", its most common type)."""
MIXES = {
    "F32": lambda name: "F32",
    "F16": mostly("F16", "F16", "F16"),
    "Q8_0": mostly("Q8_0", "Q8_0", "Q8_0"),
    "Q4_0": mostly("Q4_0", "Q4_0", "Q8_0"),
    "Q4_K_M": mostly("Q4_K", "Q6_K", "Q6_K"),
    "Q5_mix": mostly("Q5_0", "Q5_1", "Q4_1"),
}


@pytest.fixture(scope="module")
def k_model():
    return k_quant_llama()


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory, k_model, tokenizer_path: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    return {
        mix: write_gguf(
            k_model,
            folder / f"model-{mix}.gguf",
            tokenizer_path,
            pick,
            LLAMA2_CHAT_TEMPLATE,
            file_type=FILE_TYPES[mix],
        )
        for mix, pick in MIXES.items()
    }


def _engine_logits(path: Path, quant: str, dtype: str = "float32") -> torch.Tensor:
    loaded = load_model(path, dtype=dtype, device="cpu", quant=quant)
    with torch.inference_mode():
        return loaded.model(torch.tensor(PROMPT), 0).float()


def _reference_logits(path: Path) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
    ).eval()
    with torch.inference_mode():
        return model(torch.tensor([PROMPT])).logits[0].float()


def _top10_gap(ours: torch.Tensor, ref: torch.Tensor) -> float:
    p, q = ours.softmax(-1), ref.softmax(-1)
    top = q.topk(10, dim=-1).indices
    return float((p.gather(-1, top) - q.gather(-1, top)).abs().max())


@pytest.mark.parametrize("mix", list(MIXES))
def test_dequantized_logits_equal_transformers_gguf_loader(gguf_files, mix: str) -> None:
    path = gguf_files[mix]
    ours = _engine_logits(path, "none")
    ref = _reference_logits(path)
    assert _top10_gap(ours, ref) < 1e-4
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("mix", ["Q8_0", "Q4_0", "Q4_K_M", "Q5_mix"])
def test_file_blocks_run_in_place_close_to_dequantized(gguf_files, mix: str) -> None:
    path = gguf_files[mix]
    dequantized = _engine_logits(path, "none")
    loaded = load_model(path, dtype="float32", device="cpu", quant="file")
    with torch.inference_mode():
        in_place = loaded.model(torch.tensor(PROMPT), 0).float()
    # One row at a time is the decode path (the compiled kernel); the prompt above is a prefill.
    loaded.model.setup_cache(64)
    with torch.inference_mode():
        rows = [loaded.model(torch.tensor([t]), i).float() for i, t in enumerate(PROMPT)]
    stepped = torch.cat(rows)
    converted = mix == "Q5_mix"  # no compiled Q5/Q4_1 product: converted to Q8_0, and said so
    # Prefill and decode both run the compiled product, which rounds activations to 8 bits per 32
    # inputs (llama.cpp's rule); converted blocks are also 8-bit roundings of the file's.
    assert _top10_gap(in_place, dequantized) < 2e-2
    assert _top10_gap(stepped, dequantized) < 2e-2
    assert (stepped.argmax(-1) == dequantized.argmax(-1)).float().mean() >= 0.9
    assert loaded.quant == "file" and loaded.file_format == f"GGUF {mix.replace('_mix', '_0')}"
    if converted:
        assert any("run as Q8_0" in note for note in loaded.load_notes), loaded.load_notes
    else:
        assert loaded.load_notes == []


def test_blocks_are_mapped_not_copied(gguf_files) -> None:
    path = gguf_files["Q4_K_M"]
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_model(path, dtype="bfloat16", device="cpu", quant="file")
    from engine.kernels.gguf_linear import GGUFLinear

    layer = loaded.model.layers[0].attention.wq
    assert isinstance(layer, GGUFLinear)
    size = path.stat().st_size
    # The layer's bytes are the file's own: the same bytes as at the tensor's offset.
    from engine.gguf.reader import GGUFFile

    with GGUFFile(path) as gguf:
        info = gguf.tensors["blk.0.attn_q.weight"]
        raw = path.read_bytes()[info.offset : info.offset + info.nbytes]
    assert bytes(layer.raw.flatten().tolist()) == raw
    assert loaded.weights_bytes < size  # the weights are the file's blocks, not a float copy
    with torch.inference_mode():
        loaded.model(torch.tensor(PROMPT[:3]), 0)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_tied_head_uses_the_embedding(tmp_path: Path, k_model, tokenizer_path: Path) -> None:
    tied = k_quant_llama(seed=5)
    tied.lm_head.weight = tied.model.embed_tokens.weight
    tied.config.tie_word_embeddings = True
    path = write_gguf(tied, tmp_path / "tied.gguf", tokenizer_path, mostly("Q8_0"), tie=True)
    ours = _engine_logits(path, "none")
    ref = _reference_logits(path)
    assert _top10_gap(ours, ref) < 1e-4
    in_place = _engine_logits(path, "file")
    assert _top10_gap(in_place, ours) < 2e-2  # the compiled product rounds activations to 8 bits


def test_tokenizer_template_and_prefix_rule_come_from_the_file(
    gguf_files, tokenizer_path: Path
) -> None:
    import sentencepiece as spm

    loaded = load_model(gguf_files["Q8_0"], dtype="float32", device="cpu")
    assert loaded.quant == "file"  # the default for a GGUF file
    original = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    for text in ["Hello world", "  two  spaces\tand a tab\n", "über 東京 🙂", ""]:
        assert loaded.tokenizer.encode(text, bos=False) == original.encode(text)
    assert loaded.chat_template == LLAMA2_CHAT_TEMPLATE
    assert loaded.tokenizer.prefix_rule == "always"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_generate_and_inspect_take_a_gguf_file(gguf_files) -> None:
    path = str(gguf_files["Q4_K_M"])
    greedy = ("--prompt", "Hello", "--max-new-tokens", "5", "--temperature", "0", "--json")
    run = _cli("generate", "--model", path, *greedy)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    done = lines[-1]
    assert done["done"] and done["generated_tokens"] == len(lines) - 1
    assert done["kernel"] in ("ggufnative", "gguftorch")
    assert all(0.0 <= line["prob"] <= 1.0 and line["top"] for line in lines[:-1])
    none = _cli("generate", "--model", path, *greedy, "--quant", "none", "--dtype", "float32")
    assert none.returncode == 0, none.stderr
    inspect = _cli("inspect", "--model", path, "--prompt", "Hello there", "--json")
    assert inspect.returncode == 0, inspect.stderr
    data = json.loads(inspect.stdout)
    assert data["logprobs"][0] is None and len(data["pieces"]) == len(data["token_ids"])
    weights = data["attention"]["weights"]
    assert len(weights) == 2 and abs(sum(weights[0][0]) - 1) < 1e-3


@pytest.mark.parametrize(
    ("quant", "message"),
    [("int4", "is a GGUF file: its weights run as in the file"), ("int8", "not as int8")],
)
def test_folder_formats_are_refused_for_a_gguf_file(gguf_files, quant: str, message: str) -> None:
    run = _cli("generate", "--model", str(gguf_files["Q8_0"]), "--prompt", "Hi", "--quant", quant)
    assert run.returncode == 2
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_file_format_is_refused_for_a_folder(tiny_model_dir: Path) -> None:
    with pytest.raises(EngineError, match="--quant file keeps a GGUF file's own blocks"):
        load_model(tiny_model_dir, quant="file")


def _edit_metadata(tmp_path: Path, k_model, tokenizer_path: Path, **changes) -> Path:
    """A GGUF file with some metadata replaced (written by gguf-py's writer, not patched)."""
    import gguf

    base = write_gguf(k_model, tmp_path / "base.gguf", tokenizer_path, mostly("Q8_0"))
    reader = gguf.GGUFReader(str(base))
    out = tmp_path / "edited.gguf"
    arch = changes.pop("arch", "llama")
    writer = gguf.GGUFWriter(str(out), arch)
    for field in reader.fields.values():
        name = field.name
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name in changes:
            continue
        kind = field.types[0]
        value = field.contents()
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(name.replace("llama.", f"{arch}.", 1), value)
        else:
            writer.add_key_value(name.replace("llama.", f"{arch}.", 1), value, kind)
    for name, (value, kind) in changes.items():
        writer.add_key_value(name, value, kind)
    for tensor in reader.tensors:
        writer.add_tensor(
            tensor.name,
            tensor.data,
            raw_shape=None,
            raw_dtype=tensor.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "qwen2"}, "architecture 'qwen2' is not a Llama model"),
        (
            {"tokenizer.ggml.model": ("gpt2", "string")},
            "Llama 3 files use a different tokenizer; Loopchat runs Llama 2-family models",
        ),
        ({"llama.block_count": (5, "uint32")}, "says 5 layers but the checkpoint holds 2"),
        ({"llama.feed_forward_length": (1024, "uint32")}, "has shape [512, 256]"),
        ({"llama.rope.dimension_count": (32, "uint32")}, "rotary embeddings over 32 of 64"),
    ],
)
def test_files_it_cannot_run_get_one_line(
    tmp_path: Path, k_model, tokenizer_path: Path, changes: dict, message: str
) -> None:
    import gguf

    kinds = {"string": gguf.GGUFValueType.STRING, "uint32": gguf.GGUFValueType.UINT32}
    changes = {
        name: (value[0], kinds[value[1]]) if isinstance(value, tuple) else value
        for name, value in changes.items()
    }
    path = _edit_metadata(tmp_path, k_model, tokenizer_path, **changes)
    run = _cli("generate", "--model", str(path), "--prompt", "Hi", "--max-new-tokens", "2")
    assert run.returncode == 2, run.stderr
    assert message in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "the file is incomplete or corrupt"),
        (lambda data: b"GGUG" + data[4:], "not a GGUF file"),
        (lambda data: data[:4] + (99).to_bytes(4, "little") + data[8:], "version 99"),
    ],
)
def test_damaged_files_get_one_line_from_the_cli(
    tmp_path: Path, gguf_files, damage, message: str
) -> None:
    path = tmp_path / "damaged.gguf"
    path.write_bytes(damage(gguf_files["Q8_0"].read_bytes()))
    run = _cli("generate", "--model", str(path), "--prompt", "Hi", "--max-new-tokens", "2")
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.parametrize("quant", [None, "none"])
def test_self_test_takes_a_gguf_file(gguf_files, tmp_path: Path, quant: str | None) -> None:
    """`loopchat --self-test FILE.gguf` loads through the window's worker (its own blocks by
    default) and writes what the engine writes for the same file."""
    import os

    from engine.events import GREEDY
    from engine.generation.generate import Generator

    path = gguf_files["Q4_K_M"]
    env = dict(os.environ, LOOPCHAT_HOME=str(tmp_path), QT_QPA_PLATFORM="offscreen")
    command = [sys.executable, "-m", "desktop", "--self-test", str(path), "--dtype", "float32"]
    run = subprocess.run(
        command + (["--quant", quant] if quant else []),
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    done = json.loads(run.stdout.strip().splitlines()[-1])
    if quant is None:  # the file's own blocks, on the compiled kernel
        assert done["kernel"] == "ggufnative"
    loaded = load_model(path, dtype="float32", device="cpu", quant=quant)
    prompt = loaded.tokenizer.encode("Hello", bos=True)
    generation = Generator(loaded).generate(prompt, GREEDY, max_new_tokens=16)
    list(generation)
    assert done["token_ids"] == generation.result.token_ids
