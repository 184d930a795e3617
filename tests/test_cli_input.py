"""`python -m engine generate` with bad input: exit 2 and one stderr line, quickly; Ctrl+C -> 130.

Run as real subprocesses (argv bytes, signals and exit codes are the contract).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.errors import EngineError
from engine.generation.generate import Generator
from engine.generation.sampling import SamplingParams
from engine.loading.loader import load_model

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--dtype", "float32", "--device", "cpu"]


def run_cli(*args: str | bytes, stdin: bytes | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        cwd=ROOT,
        timeout=timeout,
        input=stdin,
    )


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def json_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    def refuse(constant: str) -> float:
        raise AssertionError(f"{constant} in JSON output")

    return [json.loads(line, parse_constant=refuse) for line in proc.stdout.decode().splitlines()]


# -- text arguments, checked before the model loads ------------------------------------------------


@pytest.mark.parametrize(
    "args, flag",
    [
        ([b"--prompt", b"caf\xe9 \xff"], "--prompt"),
        ([b"--chat", b"--prompt", b"hi", b"--system", b"caf\xe9 \xff"], "--system"),
    ],
)
def test_invalid_utf8_argument_is_refused_before_loading(
    tmp_path: Path, args: list[bytes], flag: str
) -> None:
    nowhere = str(tmp_path / "no-model").encode()
    proc = run_cli(b"generate", b"--model", nowhere, *args)
    one_line_error(proc, flag, "UTF-8")  # not the missing folder: checked before loading


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seed", str(2**70)], "seed"),
        (["--temperature", "inf"], "temperature"),
        (["--temperature", "nan"], "temperature"),
        (["--repetition-penalty", "inf"], "repetition penalty"),
        (["--top-p", "nan"], "top-p"),
        (["--max-new-tokens", "0"], "max-new-tokens"),
    ],
)
def test_bad_numbers_are_refused_before_loading(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    proc = run_cli("generate", "--model", str(tmp_path / "no-model"), "--prompt", "hi", *args)
    one_line_error(proc, fragment)


def test_tiny_temperature_is_greedy(tiny_model_dir: Path) -> None:
    common = ["generate", "--model", str(tiny_model_dir), "--prompt-ids", "1,381,310", *FAST]
    common += ["--max-new-tokens", "6", "--json"]
    tiny = run_cli(*common, "--temperature", "1e-40", "--seed", "3")
    greedy = run_cli(*common, "--temperature", "0")
    assert tiny.returncode == 0, tiny.stderr.decode()
    assert json_lines(tiny)[-1]["token_ids"] == json_lines(greedy)[-1]["token_ids"]


# -- prompt files ---------------------------------------------------------------------------------


def test_prompt_file_and_stdin_equal_prompt(tiny_model_dir: Path, tmp_path: Path) -> None:
    text = "Hello world, café → 日本語"
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(text, encoding="utf-8")
    common = ["generate", "--model", str(tiny_model_dir), *FAST, "--max-new-tokens", "3"]
    common += ["--temperature", "0", "--json"]
    by_flag = run_cli(*common, "--prompt", text)
    by_file = run_cli(*common, "--prompt-file", str(prompt_file))
    by_stdin = run_cli(*common, "--prompt-file", "-", stdin=text.encode())
    for proc in (by_flag, by_file, by_stdin):
        assert proc.returncode == 0, proc.stderr.decode()
    done = [json_lines(p)[-1] for p in (by_flag, by_file, by_stdin)]
    assert done[0]["prompt_tokens"] == done[1]["prompt_tokens"] == done[2]["prompt_tokens"]
    assert done[0]["token_ids"] == done[1]["token_ids"] == done[2]["token_ids"]


def test_prompt_file_larger_than_a_command_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("the loop attention model " * 8000, encoding="utf-8")  # 200 kB
    assert big.stat().st_size > 128 * 1024
    proc = run_cli("generate", "--model", str(tiny_model_dir), *FAST, "--prompt-file", str(big))
    # Read and tokenised in full: the tiny model's 512 positions cannot hold it.
    one_line_error(proc, "the prompt is", "tokens but the model's context holds 512")


def test_prompt_file_problems(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9")
    nowhere = str(tmp_path / "no-model")
    one_line_error(run_cli("generate", "--model", nowhere, "--prompt-file", str(bad)), "not UTF-8")
    one_line_error(
        run_cli("generate", "--model", nowhere, "--prompt-file", str(tmp_path / "nope.txt")),
        "missing",
    )


# -- model-side problems through the CLI ----------------------------------------------------------


def test_ten_million_layers_exit_2_within_seconds(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 10_000_000
    (folder / "config.json").write_text(json.dumps(config))
    started = time.perf_counter()
    proc = run_cli("generate", "--model", str(folder), "--prompt", "hi", *FAST, timeout=60)
    one_line_error(proc, "layers")
    assert time.perf_counter() - started < 30


def test_fifo_weights_exit_2_without_hanging(tiny_hf_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_hf_dir, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    proc = run_cli("generate", "--model", str(folder), "--prompt", "hi", *FAST, timeout=60)
    one_line_error(proc, "not a regular file")


def test_nan_weights_never_print_nan(tiny_hf_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(tiny_hf_dir, tmp_path / "m")
    weights = load_file(folder / "model.safetensors")
    weights["model.norm.weight"][:] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    for temperature in ("0", "0.8"):
        proc = run_cli(
            "generate", "--model", str(folder), "--prompt", "hi", *FAST, "--json",
            "--temperature", temperature, "--seed", "1",
        )  # fmt: skip
        one_line_error(proc, "invalid numbers (NaN/Inf)")
        json_lines(proc)  # whatever was printed is strict JSON


def test_prompt_ids_past_the_tokenizer_with_repetition_penalty(
    tmp_path: Path, tokenizer_path: Path
) -> None:
    from tests.fixtures.models import VOCAB, random_llama, write_hf

    folder = write_hf(random_llama(kv_heads=2, seed=7, vocab=VOCAB + 64), tmp_path / "p",
                      tokenizer_path, sharded=False)  # fmt: skip
    loaded = load_model(folder, dtype="float32", device="cpu")
    params = SamplingParams(temperature=0, repetition_penalty=1.3)
    generation = Generator(loaded).generate([1, VOCAB + 10, 5], params, max_new_tokens=4)
    steps = list(generation)
    assert steps and generation.result is not None
    assert all(step.token_id < VOCAB for step in steps)
    with pytest.raises(EngineError, match="outside the vocabulary"):
        Generator(loaded).generate([1, VOCAB + 64], params)


# -- Ctrl+C ---------------------------------------------------------------------------------------


def test_ctrl_c_during_generation_exits_130_without_traceback(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "long")
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 100_000
    (folder / "config.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "generate", "--model", str(folder), "--prompt", "Hi",
         *FAST, "--json", "--max-new-tokens", "90000", "--temperature", "0.8", "--seed", "1",
         "--stop", "\u0001never"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()
        assert json.loads(first)["token_id"] >= 0
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    done = json.loads(out.decode().splitlines()[-1])
    assert done["done"] is True and done["stop_reason"] == "cancelled"


def test_kv_cache_allocation_failure_is_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    """An allocation the system refuses (here: an address-space limit) is an EngineError."""
    import resource

    import psutil

    from engine.loading.memory import MEMORY_SHARE, bytes_per_position
    from engine.model.config import ModelArgs
    from tests.fixtures.models import DIM, HEADS, LAYERS, VOCAB

    limit = 4 * 2**30  # room for Python and torch, not for the cache asked for below
    args = ModelArgs(dim=DIM, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=2, vocab_size=VOCAB,
                     hidden_dim=4 * DIM)  # fmt: skip
    per_position = bytes_per_position(args, torch.float32)
    context = int(0.8 * MEMORY_SHARE * psutil.virtual_memory().available) // per_position
    if context * per_position < 1.5 * limit:
        pytest.skip("too little free memory to ask for a cache beyond the address-space limit")
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = context
    (folder / "config.json").write_text(json.dumps(config))

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "engine", "generate", "--model", str(folder), "--prompt", "hi",
         *FAST, "--max-context", str(context)],
        cwd=ROOT, capture_output=True, timeout=120, preexec_fn=cap_memory,
    )  # fmt: skip
    one_line_error(proc, "not enough memory for the KV cache")
