"""The engine against an independent reference: transformers' LlamaForCausalLM, same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.generation.generate import Generator
from engine.generation.sampling import SamplingParams
from engine.kernels.linear import can_pack
from engine.loading.checkpoint import load_transformer
from engine.loading.loader import load_model

CPU = torch.device("cpu")
GREEDY = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


def reference(folder: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def prompt_ids(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 512, (n,), generator=g)
    ids[0] = 1
    return ids


def set_packing(monkeypatch: pytest.MonkeyPatch, packed: bool) -> None:
    """Weights packed for oneDNN (the CPU default where supported) or plain F.linear weights."""
    monkeypatch.setenv("LOOPCHAT_PACKED_WEIGHTS", "1" if packed else "0")
    can_pack.cache_clear()
    if packed and not can_pack(torch.float32):
        pytest.skip("oneDNN cannot pack float32 weights on this machine")


@pytest.fixture(autouse=True)
def _fresh_packing_probe():
    yield
    can_pack.cache_clear()  # the next test sees its own environment


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "plain"])
@pytest.mark.parametrize("fixture", ["tiny_hf_dir", "tiny_gqa_hf_dir"])
def test_prefill_logits_equal_transformers(
    fixture: str, packed: bool, request, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_packing(monkeypatch, packed)
    folder = request.getfixturevalue(fixture)
    ids = prompt_ids(100)
    with torch.no_grad():
        expected = reference(folder)(ids[None]).logits[0]
    _, model = load_transformer(folder, torch.float32, CPU)
    linears = [model.output] + [
        getattr(block.attention, w) for block in model.layers for w in ("wq", "wk", "wv", "wo")
    ]
    assert all(layer.weight.is_mkldnn == packed for layer in linears)
    model.setup_cache(256)
    with torch.inference_mode():
        got = model(ids, 0)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    ("hf", "meta"), [("tiny_hf_dir", "tiny_meta_dir"), ("tiny_gqa_hf_dir", "tiny_gqa_meta_dir")]
)
def test_meta_layout_gives_same_logits(hf: str, meta: str, request) -> None:
    ids = prompt_ids(64, seed=1)
    outs = []
    for fixture in (hf, meta):
        _, model = load_transformer(request.getfixturevalue(fixture), torch.float32, CPU)
        model.setup_cache(128)
        with torch.inference_mode():
            outs.append(model(ids, 0))
    assert (outs[0] - outs[1]).abs().max().item() < 1e-5


@pytest.mark.parametrize("fixture", ["tiny_hf_dir", "tiny_gqa_meta_dir"])
def test_cached_decode_equals_full_recompute(fixture: str, request) -> None:
    ids = prompt_ids(80, seed=2)
    _, model = load_transformer(request.getfixturevalue(fixture), torch.float32, CPU)
    model.setup_cache(128)
    with torch.inference_mode():
        full = model(ids, 0)
        model.setup_cache(128)
        pieces = [model(ids[:31], 0)]
        for pos in range(31, 80):
            pieces.append(model(ids[pos : pos + 1], pos))
    assert (torch.cat(pieces) - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("fixture", ["tiny_hf_dir", "tiny_gqa_hf_dir"])
def test_fifty_greedy_steps_match_transformers(fixture: str, request) -> None:
    folder = request.getfixturevalue(fixture)
    prompt = prompt_ids(20, seed=3).tolist()
    with torch.no_grad():
        out = reference(folder).generate(
            torch.tensor([prompt]),
            max_new_tokens=50,
            min_new_tokens=50,
            do_sample=False,
            pad_token_id=0,
        )
    expected = out[0, len(prompt) :].tolist()
    loaded = load_model(folder, dtype="float32", device="cpu")
    # EOS is suppressed on both sides: transformers' min_new_tokens masks it, and we stop at it,
    # so compare up to our first EOS if the reference would have chosen it.
    generation = Generator(loaded).generate(prompt, GREEDY, max_new_tokens=50)
    got = [step.token_id for step in generation]
    assert got == expected[: len(got)]
    assert len(got) == 50 or generation.result.stop_reason == "eos"


def test_sixteen_bit_dtypes_stay_close(tiny_hf_dir: Path) -> None:
    ids = prompt_ids(40, seed=4)
    _, ref = load_transformer(tiny_hf_dir, torch.float32, CPU)
    ref.setup_cache(64)
    with torch.inference_mode():
        want = ref(ids, 0).softmax(-1)
    for dtype in (torch.bfloat16, torch.float16):
        _, model = load_transformer(tiny_hf_dir, dtype, CPU)
        assert model.output.weight.dtype == dtype
        model.setup_cache(64)
        with torch.inference_mode():
            got = model(ids, 0).softmax(-1)
        assert (got - want).abs().max().item() < 0.05
