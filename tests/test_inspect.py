"""`inspect_tokens` and `python -m engine inspect` against transformers' eager attention, fp32."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.errors import EngineError
from engine.generation.inspect import inspect_tokens
from engine.loading.loader import load_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ["tiny_hf_dir", "tiny_meta_dir", "tiny_gqa_hf_dir", "tiny_gqa_meta_dir"]
HF_OF = {
    "tiny_hf_dir": "tiny_hf_dir",
    "tiny_meta_dir": "tiny_hf_dir",
    "tiny_gqa_hf_dir": "tiny_gqa_hf_dir",
    "tiny_gqa_meta_dir": "tiny_gqa_hf_dir",
}


def prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 512, (n,), generator=g)
    ids[0] = 1
    return ids.tolist()


def transformers_view(folder: Path, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Logprobs of each next token, entropies, and the last query's attention per layer."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    logp = torch.log_softmax(out.logits[0].double(), dim=-1)  # [T, vocab]
    chosen = logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    entropy = -(logp.exp() * logp).sum(dim=-1)
    last = [layer[0, :, -1, :] for layer in out.attentions]  # [H, T] per layer
    return chosen, entropy, last


@pytest.mark.parametrize("fixture", FIXTURES)
@pytest.mark.parametrize("chunk", [7, 64])
def test_inspection_equals_transformers(fixture: str, chunk: int, request) -> None:
    ids = prompt(150, seed=5)
    want_lp, want_entropy, want_attention = transformers_view(
        request.getfixturevalue(HF_OF[fixture]), ids
    )
    loaded = load_model(request.getfixturevalue(fixture), dtype="float32", device="cpu")
    got = inspect_tokens(loaded, ids, chunk=chunk)

    assert got.token_ids == ids
    assert got.logprobs[0] is None
    assert len(got.logprobs) == len(got.entropy) == len(ids)
    assert (torch.tensor(got.logprobs[1:]) - want_lp).abs().max().item() < 1e-4
    assert (torch.tensor(got.entropy) - want_entropy).abs().max().item() < 1e-4
    assert len(got.attention) == len(want_attention)
    for layer, want in zip(got.attention, want_attention, strict=True):
        weights = torch.tensor(layer)  # [H, T]
        assert weights.shape == want.shape
        assert (weights - want).abs().max().item() < 1e-5
        assert (weights.sum(dim=-1) - 1).abs().max().item() < 1e-5


def test_ranks_and_alternatives_describe_the_distribution(tiny_gqa_hf_dir: Path) -> None:
    ids = prompt(40, seed=6)
    loaded = load_model(tiny_gqa_hf_dir, dtype="float32", device="cpu")
    got = inspect_tokens(loaded, ids, attention=False, top=5, chunk=16)
    assert got.attention == [] and got.ranks[0] is None and got.top_ids[0] == []
    for i in range(1, len(ids)):
        probs = got.top_probs[i]
        assert probs == sorted(probs, reverse=True)
        assert got.ranks[i] >= 1
        if got.ranks[i] <= 5:
            assert got.top_ids[i][got.ranks[i] - 1] == ids[i]
            assert abs(probs[got.ranks[i] - 1] - torch.tensor(got.logprobs[i]).exp()) < 1e-5
        else:
            assert ids[i] not in got.top_ids[i]


def test_capture_is_off_after_inspection(tiny_hf_dir: Path) -> None:
    loaded = load_model(tiny_hf_dir, dtype="float32", device="cpu")
    inspect_tokens(loaded, prompt(10, seed=1))
    assert not loaded.model.capture_attention
    assert all(not layer.attention.capture for layer in loaded.model.layers)


def test_bad_ids_are_refused(tiny_hf_dir: Path) -> None:
    loaded = load_model(tiny_hf_dir, dtype="float32", device="cpu")
    with pytest.raises(EngineError, match="empty"):
        inspect_tokens(loaded, [])
    with pytest.raises(EngineError, match="outside the vocabulary"):
        inspect_tokens(loaded, [1, 99999])


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", "inspect", *args],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        input=stdin,
    )


def test_cli_prints_one_json_object(tiny_gqa_hf_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("Hello world", encoding="utf-8")
    folder = str(tiny_gqa_hf_dir)
    fast = ["--dtype", "float32", "--device", "cpu", "--json"]
    by_text = run_cli("--model", folder, "--prompt", "Hello world", *fast)
    by_file = run_cli("--model", folder, "--prompt-file", str(tmp_path / "p.txt"), *fast)
    assert by_text.returncode == 0, by_text.stderr.decode()
    lines = by_text.stdout.decode().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert by_file.stdout == by_text.stdout
    assert set(data) == {"token_ids", "pieces", "logprobs", "entropy", "attention"}
    n = len(data["token_ids"])
    assert data["token_ids"][0] == 1  # --prompt adds BOS like generate
    assert len(data["pieces"]) == len(data["logprobs"]) == len(data["entropy"]) == n
    assert data["logprobs"][0] is None and all(isinstance(x, float) for x in data["logprobs"][1:])
    attention = data["attention"]
    assert (attention["layers"], attention["heads"]) == (2, 4)
    assert len(attention["weights"]) == 2
    for layer in attention["weights"]:
        assert len(layer) == 4
        for row in layer:
            assert len(row) == n and abs(sum(row) - 1) < 1e-5

    by_ids = run_cli(
        "--model", folder, "--prompt-ids", ",".join(map(str, data["token_ids"])), *fast
    )
    assert json.loads(by_ids.stdout) == data  # --prompt-ids adds no BOS


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--prompt-ids", "1,x"], "--prompt-ids"),
        (["--prompt-ids", "1,99999"], "outside the vocabulary"),
        (["--prompt", "hi", "--quant", "int3"], "--quant"),
        (["--prompt", "hi", "--prompt-ids", "1"], "not allowed"),
        (["--prompt-file", "/nonexistent/p.txt"], "p.txt"),
        ([], "one of the arguments"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    tiny_hf_dir: Path, args: list[str], fragment: str
) -> None:
    proc = run_cli("--model", str(tiny_hf_dir), "--dtype", "float32", "--json", *args)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr
    assert fragment in lines[0], lines[0]


def test_cli_missing_model_exits_2(tmp_path: Path) -> None:
    proc = run_cli("--model", str(tmp_path / "none"), "--prompt", "hi", "--json")
    assert proc.returncode == 2
    assert len(proc.stderr.decode().strip().splitlines()) == 1


def test_prompt_runs_in_chunks(tiny_hf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long prompt never makes logits for more than one chunk of positions at once."""
    loaded = load_model(tiny_hf_dir, dtype="float32", device="cpu")
    widths: list[int] = []
    forward = loaded.model.forward

    def counting(tokens: torch.Tensor, start_pos: int, last_only: bool = False) -> torch.Tensor:
        widths.append(tokens.shape[0])
        return forward(tokens, start_pos, last_only)

    monkeypatch.setattr(loaded.model, "forward", counting)
    inspect_tokens(loaded, prompt(300, seed=2), chunk=32)
    assert max(widths) == 32 and sum(widths) == 300


def test_cancel_stops_between_chunks(tiny_hf_dir: Path) -> None:
    import threading

    loaded = load_model(tiny_hf_dir, dtype="float32", device="cpu")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EngineError, match="cancelled"):
        inspect_tokens(loaded, prompt(100, seed=3), chunk=16, cancel=cancel)
    assert not loaded.model.capture_attention


def test_llama_sized_padded_vocabulary_matches_transformers(
    tmp_path: Path, tokenizer_path: Path
) -> None:
    """32000 output rows (Llama 2's vocabulary) over a 512-piece tokenizer: the distribution is
    the model's whole one, as transformers reports it, and its sums stay within tolerance."""
    from tests.fixtures.models import random_llama, write_hf

    folder = write_hf(
        random_llama(kv_heads=2, seed=7, vocab=32000), tmp_path / "hf", tokenizer_path, False
    )
    ids = prompt(90, seed=8)
    want_lp, want_entropy, want_attention = transformers_view(folder, ids)
    got = inspect_tokens(load_model(folder, dtype="float32", device="cpu"), ids, top=3, chunk=32)
    assert (torch.tensor(got.logprobs[1:]) - want_lp).abs().max().item() < 1e-4
    assert (torch.tensor(got.entropy) - want_entropy).abs().max().item() < 1e-4
    for layer, want in zip(got.attention, want_attention, strict=True):
        assert (torch.tensor(layer) - want).abs().max().item() < 1e-5
    assert all(t < 512 for row in got.top_ids for t in row)  # only nameable alternatives
