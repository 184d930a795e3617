"""The Generator end to end on tiny real models: greedy equals the reference, stops, reuse, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from engine.errors import EngineError
from engine.generation.generate import Generator, common_prefix_len
from engine.generation.sampling import SamplingParams
from engine.loading.loader import load_model
from engine.text.chat import Message, chat_prompt_ids

GREEDY = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(tiny_model_dir, dtype="float32", device="cpu")


def hf_greedy(folder: Path, prompt: list[int], n: int) -> list[int]:
    """transformers' own greedy continuation on the same weights (the independent reference)."""
    from transformers import LlamaForCausalLM

    ref = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([prompt]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            min_new_tokens=n,
        )
    return out[0, len(prompt) :].tolist()


def run_all(generation) -> tuple[list, object]:
    steps = list(generation)
    return steps, generation.result


def test_greedy_equals_transformers(loaded, tiny_model_dir: Path) -> None:
    prompt = loaded.tokenizer.encode("Hello world, the attention loop", bos=True)
    # EOS never stops this comparison: transformers is told to ignore it too.
    steps, result = run_all(
        Generator(loaded).generate(prompt, GREEDY, max_new_tokens=40, report_top=5)
    )
    ids = [s.token_id for s in steps]
    reference = hf_greedy(tiny_model_dir, prompt, 40)
    if result.stop_reason == "eos":
        reference = reference[: len(ids)]
    assert ids == reference
    assert result.token_ids == ids
    assert len(set(ids)) > 3, "random fixture weights should not produce one token forever"


def test_steps_report_probabilities_and_text(loaded) -> None:
    prompt = loaded.tokenizer.encode("The cache", bos=True)
    steps, result = run_all(Generator(loaded).generate(prompt, GREEDY, max_new_tokens=20))
    for step in steps:
        assert len(step.top) == 10
        probs = [t.prob for t in step.top]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) <= 1.0 + 1e-5
        # Greedy: the chosen token is the most likely one, reported with the same probability.
        assert step.token_id == step.top[0].token_id
        assert step.prob == pytest.approx(step.top[0].prob)
    assert "".join(s.text for s in steps) == result.text[: len("".join(s.text for s in steps))]
    assert result.text == loaded.tokenizer.decode(result.token_ids)
    assert result.prompt_tokens == len(prompt)
    assert result.generated_tokens == len(steps)


def test_max_tokens_and_context_full(tiny_model_dir: Path) -> None:
    small = load_model(tiny_model_dir, dtype="float32", device="cpu", max_context=24)
    prompt = small.tokenizer.encode("Hello", bos=True)
    steps, result = run_all(Generator(small).generate(prompt, GREEDY, max_new_tokens=5))
    assert result.stop_reason in ("max_tokens", "eos")
    steps, result = run_all(Generator(small).generate(prompt, GREEDY, max_new_tokens=100))
    if result.stop_reason != "eos":
        assert result.stop_reason == "context_full"
        # Every position of the cache is used; the last sampled token never needs one.
        assert len(prompt) + len(steps) == 25
    with pytest.raises(EngineError, match="context holds 24"):
        Generator(small).generate(list(range(3, 30)), GREEDY)


def test_cancel_stops_within_one_step(loaded) -> None:
    cancel = threading.Event()
    generation = Generator(loaded).generate(
        loaded.tokenizer.encode("Hello", bos=True), GREEDY, max_new_tokens=50, cancel=cancel
    )
    seen = []
    for step in generation:
        seen.append(step)
        if len(seen) == 3:
            cancel.set()
    assert len(seen) == 3
    assert generation.result.stop_reason == "cancelled"
    assert generation.result.token_ids == [s.token_id for s in seen]


def test_cancel_inside_a_prefill_chunk_stops_between_layers(loaded) -> None:
    # One chunk holds the whole prompt; the cancel arrives while its layers run. The stream ends
    # at once, and the half-written positions are not taken for a cached prefix afterwards.
    prompt = [1] + [3 + i % 40 for i in range(60)]
    _, want = run_all(Generator(loaded).generate(prompt, GREEDY, max_new_tokens=6))
    generator = Generator(loaded, prefill_chunk=64)
    cancel = threading.Event()
    layers_run = []

    def cancel_in_first_layer(module, args) -> None:
        layers_run.append(module)
        cancel.set()

    hooks = [
        layer.register_forward_pre_hook(cancel_in_first_layer) for layer in loaded.model.layers
    ]
    try:
        steps, result = run_all(generator.generate(prompt, GREEDY, max_new_tokens=6, cancel=cancel))
    finally:
        for hook in hooks:
            hook.remove()
    assert steps == [] and result.stop_reason == "cancelled"
    assert len(loaded.model.layers) >= 2 and len(layers_run) == 1  # not the whole chunk
    assert generator.cached_tokens == 0
    _, again = run_all(generator.generate(prompt, GREEDY, max_new_tokens=6))
    assert again.token_ids == want.token_ids


def test_prefill_progress_moves_within_a_chunk_layer_by_layer(loaded) -> None:
    # One 61-token chunk through 2 layers: progress is reported after the first layer (about
    # half the chunk), then at the end; never backwards, never past what was read.
    prompt = [1] + [3 + i % 40 for i in range(60)]
    progress: list[tuple[int, int]] = []
    _, result = run_all(
        Generator(loaded, prefill_chunk=512).generate(
            prompt, GREEDY, max_new_tokens=2, on_prefill=lambda d, t: progress.append((d, t))
        )
    )
    layers = len(loaded.model.layers)
    assert progress[-1] == (len(prompt), len(prompt)) and result.prompt_tokens == len(prompt)
    dones = [d for d, _ in progress]
    assert dones == sorted(set(dones))  # strictly growing
    assert len(progress) == layers  # one report per layer boundary, and the end
    assert dones[0] == len(prompt) // layers


def test_stop_string_cuts_text(loaded) -> None:
    prompt = loaded.tokenizer.encode("Hello", bos=True)
    _, full = run_all(Generator(loaded).generate(prompt, GREEDY, max_new_tokens=30))
    text = full.text
    if len(text) < 6:
        pytest.skip("fixture produced too little text to pick a stop string")
    stop = text[3:6]
    steps, result = run_all(
        Generator(loaded).generate(prompt, GREEDY, max_new_tokens=30, stop=[stop])
    )
    assert result.stop_reason == "stop_string"
    assert result.text == text[: text.find(stop)]
    assert stop not in "".join(s.text for s in steps)


def test_streamed_text_adds_up_when_max_tokens_ends_it(loaded) -> None:
    """Text held back at the end (a possible stop string, a partial character) is streamed."""
    prompt = loaded.tokenizer.encode("Hello", bos=True)
    _, full = run_all(Generator(loaded).generate(prompt, GREEDY, max_new_tokens=12))
    if full.stop_reason != "max_tokens" or len(full.text) < 3:
        pytest.skip("fixture ended early")
    # A stop string that starts with the text's last two characters but never completes makes
    # the filter hold those characters back until the stream ends.
    never = full.text[-2:] + "\x00never"
    steps, result = run_all(
        Generator(loaded).generate(prompt, GREEDY, max_new_tokens=12, stop=[never])
    )
    assert result.stop_reason == "max_tokens"
    assert "".join(s.text for s in steps) == result.text == full.text
    # Hot sampling picks odd ids (byte pieces too); the pieces still add up to the text.
    for seed in range(5):
        params = SamplingParams(temperature=5.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
        steps, result = run_all(Generator(loaded).generate(prompt, params, max_new_tokens=15))
        if result.stop_reason == "max_tokens":
            assert "".join(s.text for s in steps) == result.text


def test_padded_vocabulary_rows_are_never_chosen(tmp_path: Path, tokenizer_path: Path) -> None:
    """A checkpoint whose vocabulary is padded past the tokenizer's speaks only real tokens."""
    from tests.fixtures.models import VOCAB, random_llama, write_hf

    model = random_llama(kv_heads=2, seed=5, vocab=VOCAB + 64)
    with torch.no_grad():  # make the padding rows the model's favourites
        model.lm_head.weight[VOCAB:] = model.lm_head.weight[3 : 3 + 64] * 40
    folder = write_hf(model, tmp_path / "padded", tokenizer_path, sharded=False)
    padded = load_model(folder, dtype="float32", device="cpu")
    prompt = padded.tokenizer.encode("Hello", bos=True)
    with torch.inference_mode():
        padded.model.setup_cache(padded.max_context)
        assert int(padded.model(torch.tensor(prompt), 0)[-1].argmax()) >= VOCAB
    for params in (GREEDY, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)):
        steps, result = run_all(Generator(padded).generate(prompt, params, max_new_tokens=8))
        assert steps and all(s.token_id < VOCAB for s in steps)
        assert all(t.token_id < VOCAB for s in steps for t in s.top)
        assert result.text == padded.tokenizer.decode(result.token_ids)


def test_seed_reproducible(loaded) -> None:
    prompt = loaded.tokenizer.encode("Hello", bos=True)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=123)
    a = run_all(Generator(loaded).generate(prompt, params, max_new_tokens=30))[1].token_ids
    b = run_all(Generator(loaded).generate(prompt, params, max_new_tokens=30))[1].token_ids
    assert a == b


def test_prefix_reuse_equals_full_prefill(loaded) -> None:
    """A 3-turn chat with cache reuse gives the same greedy tokens as prefilling every turn anew."""
    tok = loaded.tokenizer

    def chat(reuse: bool) -> tuple[list[list[int]], list[int]]:
        gen = Generator(loaded, prefill_chunk=7)
        messages = [Message("system", "Be brief.")]
        replies, reused = [], []
        for question in ["Hello there", "What is a loop", "And the cache"]:
            messages.append(Message("user", question))
            ids = chat_prompt_ids(tok, messages, loaded.chat_template)
            _, result = run_all(gen.generate(ids, GREEDY, max_new_tokens=12, reuse_cache=reuse))
            replies.append(result.token_ids)
            reused.append(result.reused_tokens)
            messages.append(Message("assistant", result.text))
        return replies, reused

    with_reuse, reused = chat(True)
    without, not_reused = chat(False)
    assert with_reuse == without
    assert not_reused == [0, 0, 0]
    assert reused[1] > 0 and reused[2] > reused[1]


def test_common_prefix_len() -> None:
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_cli_json_contract(loaded, tiny_model_dir: Path) -> None:
    proc = run_cli(
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompt-ids",
        "1,381,310",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
        "--report-top",
        "4",
        "--json",
        "--dtype",
        "float32",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    done = lines[-1]
    tokens = lines[:-1]
    assert done["done"] is True
    assert set(done) >= {
        "text",
        "token_ids",
        "prompt_tokens",
        "generated_tokens",
        "prefill_s",
        "decode_tokens_per_s",
        "stop_reason",
        "kernel",
        "native",
    }
    assert done["kernel"] in ("packed", "plain")  # float32 weights: a 16/32-bit GEMV path
    assert done["prompt_tokens"] == 3
    assert [t["token_id"] for t in tokens] == done["token_ids"]
    for t in tokens:
        assert set(t) == {"token_id", "text", "prob", "top"}
        assert len(t["top"]) == 4
        assert t["top"][0]["token_id"] == t["token_id"]
    # The same ids through the library: the CLI adds nothing (no BOS) to --prompt-ids.
    _, result = run_all(Generator(loaded).generate([1, 381, 310], GREEDY, max_new_tokens=8))
    assert done["token_ids"] == result.token_ids
    assert done["text"] == result.text


def test_cli_bad_input_exit_2(tmp_path: Path) -> None:
    proc = run_cli("generate", "--model", str(tmp_path / "nowhere"), "--prompt", "hi")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("generate", "--model", str(tmp_path), "--prompt-ids", "1,x")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
