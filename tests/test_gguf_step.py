"""A GGUF model's one-token step as one compiled call per block (engine/kernels/gguf_step.py):
the same numbers as the readable TransformerBlock on the same kernels, in every build this CPU
runs, and the readable code wherever the compiled block does not apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from engine.kernels import native  # noqa: E402
from engine.kernels.gguf_linear import GGUFLinear  # noqa: E402
from engine.kernels.gguf_step import CompiledGGUFBlock, use_compiled_blocks  # noqa: E402
from engine.loading.loader import load_model  # noqa: E402
from tests.fixtures.gguf_files import k_quant_llama, mostly, write_gguf  # noqa: E402
from tests.fixtures.models import LLAMA2_CHAT_TEMPLATE  # noqa: E402

KERNEL = native.load()
pytestmark = pytest.mark.skipif(KERNEL is None, reason="no compiled kernels on this machine")

MIXES = {
    "Q8_0": mostly("Q8_0", "Q8_0", "Q8_0"),
    "Q4_0": mostly("Q4_0", "Q4_0", "Q6_K"),
    "Q4_K_M": mostly("Q4_K", "Q6_K", "Q6_K"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tokenizer_path: Path) -> dict[tuple[str, int], Path]:
    """Each mix with grouped-query attention (4 heads on 2) and with plain multi-head (4 on 4)."""
    folder = tmp_path_factory.mktemp("gguf-step")
    out = {}
    for kv_heads in (2, 4):
        model = k_quant_llama(seed=11 + kv_heads, kv_heads=kv_heads)
        for mix, pick in MIXES.items():
            out[mix, kv_heads] = write_gguf(
                model, folder / f"{mix}-{kv_heads}.gguf", tokenizer_path, pick,
                LLAMA2_CHAT_TEMPLATE,
            )  # fmt: skip
    return out


def _loaded(path: Path, dtype: str):
    loaded = load_model(path, dtype=dtype, device="cpu", quant="file", max_context=160)
    assert loaded.runtime.native_blocks, loaded.runtime
    assert all(isinstance(layer, CompiledGGUFBlock) for layer in loaded.model.layers)
    return loaded


def _filled_cache(block: CompiledGGUFBlock, positions: int, dtype: torch.dtype, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    cache = block.attention.cache
    for tensor in (cache.keys, cache.values):
        tensor[:, :positions] = torch.randn(tensor[:, :positions].shape, generator=gen).to(dtype)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.mark.parametrize("kv_heads", [2, 4])
@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_block_computes_the_readable_block(files, mix, kv_heads, dtype) -> None:
    """Same input, same cache, several positions and loop block sizes (1: the article's loop, 5:
    a block boundary mid-context, 256: one block): the block's output and the key and value it
    caches equal the readable block's on the same kernels — float32 to its rounding, bfloat16
    to one bfloat16 step (the attention sums are added in another order)."""
    loaded = _loaded(files[mix, kv_heads], dtype)
    torch_dtype = getattr(torch, dtype)
    block = loaded.model.layers[1]
    readable = block.plain()
    cache = block.attention.cache
    tolerance = 1e-5 if dtype == "float32" else 8e-3
    gen = torch.Generator().manual_seed(5)
    for position in (0, 1, 37, 150):
        for block_size in (1, 5, 256):
            block.attention.block_size = block_size
            _filled_cache(block, position, torch_dtype, seed=position)
            x = torch.randn(1, block.attention.wq.in_features, generator=gen).to(torch_dtype)
            with torch.inference_mode():
                expected = readable(x, position)
                expected_kv = cache.keys[:, position].clone(), cache.values[:, position].clone()
                cache.keys[:, position] = 0
                cache.values[:, position] = 0
                got = block(x, position)
            assert got.dtype == torch_dtype and got.shape == x.shape
            assert _relative(got - x, expected - x) < tolerance, (position, block_size)
            assert torch.equal(cache.keys[:, position], expected_kv[0])
            assert torch.equal(cache.values[:, position], expected_kv[1])


def test_generation_runs_the_compiled_blocks_and_matches_the_readable_ones(files) -> None:
    """Greedy steps through the whole model with the compiled blocks, then with the readable ones
    on the same kernels: the same tokens, logits within float32 rounding of the products' input
    (an 8-bit rounding of x flips only where x lies on a rounding boundary)."""
    loaded = _loaded(files["Q4_K_M", 2], "float32")
    model = loaded.model
    calls = []
    original = KERNEL.gguf_decode_block

    def counted(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    prompt = torch.tensor([1, 44, 19, 300, 7, 81, 5, 222])

    def steps() -> tuple[list[int], torch.Tensor]:
        model.setup_cache(64)
        with torch.inference_mode():
            logits = model(prompt, 0)[-1:]
            tokens, rows = [], []
            for position in range(len(prompt), len(prompt) + 12):
                token = int(logits[-1].argmax())
                tokens.append(token)
                logits = model(torch.tensor([token]), position)
                rows.append(logits)
        return tokens, torch.cat(rows)

    KERNEL.gguf_decode_block = counted
    try:
        compiled_tokens, compiled = steps()
    finally:
        del KERNEL.gguf_decode_block
    assert len(calls) == 12 * len(model.layers)
    assert use_compiled_blocks(model, None) is False
    assert not any(isinstance(layer, CompiledGGUFBlock) for layer in model.layers)
    readable_tokens, readable = steps()
    assert compiled_tokens == readable_tokens
    p, q = compiled.softmax(-1), readable.softmax(-1)
    assert float((p - q).abs().max()) < 1e-3


def test_steps_the_compiled_block_cannot_take_run_the_readable_code(files) -> None:
    """Captured attention (the inspector), a prefill chunk, layers on torch's dequantizing product
    and float16 activations go to TransformerBlock.forward: attention weights are kept where asked,
    and the results equal the readable block's."""
    loaded = _loaded(files["Q4_0", 2], "float32")
    model = loaded.model
    model.setup_cache(64)
    calls = []
    original = KERNEL.gguf_decode_block
    KERNEL.gguf_decode_block = lambda *a, **k: (calls.append(a[2]), original(*a, **k))[1]
    try:
        with torch.inference_mode():
            model(torch.tensor([1, 5, 9]), 0)  # a prefill chunk
            assert calls == []
            model.capture_attention = True
            model(torch.tensor([12]), 3)
            assert calls == []
            assert all(w is not None and w.shape[-1] == 4 for w in model.last_attention)
            model.capture_attention = False
            model(torch.tensor([13]), 4)
            assert len(calls) == len(model.layers)
            calls.clear()
            for module in model.modules():  # torch's dequantize-and-multiply
                if isinstance(module, GGUFLinear):
                    module.use_native(None)
            block = model.layers[0]
            x = torch.randn(1, block.attention.wq.in_features)
            got = block(x, 5)
            assert calls == []
            assert torch.equal(got, block.plain()(x, 5))
    finally:
        del KERNEL.gguf_decode_block


def test_float16_activations_take_the_readable_block(files) -> None:
    loaded = load_model(files["Q8_0", 4], dtype="float16", device="cpu", quant="file")
    block = loaded.model.layers[0]
    loaded.model.setup_cache(32)
    x = torch.randn(1, block.attention.wq.in_features, dtype=torch.float16)
    with torch.inference_mode():
        got = block(x, 0)
        block.attention.cache.keys[:, 0] = 0
        assert torch.equal(got, block.plain()(x, 0))


def test_every_build_this_cpu_runs_computes_the_same_block(files) -> None:
    """The plain C build (no vector code: its own exp, dot products and products) and each vector
    build give the block within float32 rounding of the readable block on the same build."""
    loaded = _loaded(files["Q4_K_M", 2], "float32")
    block = loaded.model.layers[0]
    _filled_cache(block, 40, torch.float32, seed=3)
    x = torch.randn(1, block.attention.wq.in_features, generator=torch.Generator().manual_seed(8))
    for variant in native.runnable_variants():
        kernel = native.load_variant(variant)
        for module in loaded.model.modules():
            if isinstance(module, GGUFLinear):
                module.use_native(kernel)
        compiled = CompiledGGUFBlock(block.plain(), kernel)
        with torch.inference_mode():
            expected = compiled.plain()(x, 40)
            got = compiled(x, 40)
        assert _relative(got - x, expected - x) < 1e-5, variant


def test_arguments_the_c_code_cannot_take_are_refused(files) -> None:
    """A position outside the cache is refused by the C code itself (one error, nothing written),
    not read or written past the cache."""
    loaded = _loaded(files["Q8_0", 2], "float32")
    block = loaded.model.layers[0]
    x = torch.randn(1, block.attention.wq.in_features)
    spec = block._spec(x)
    assert spec is not None
    length = block.attention.cache.max_seq_len
    block.attention.cache.keys.zero_()  # allocated uninitialised: NaN bytes would never compare
    before = block.attention.cache.keys.clone()
    for position in (length, -1):
        with pytest.raises(RuntimeError, match="decode block failed"):
            KERNEL.gguf_decode_block(spec, x.clone(), position, 2)
    assert torch.equal(block.attention.cache.keys, before)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_token_lookup_equals_the_dequantized_row(files, dtype) -> None:
    """A decode step's embedding row comes from the C code: the same values as torch's
    dequantization of that row (gguf-py's arithmetic), for each block type of the mixes."""
    from engine.kernels.gguf_linear import GGUFEmbedding

    for mix in MIXES:
        embedding = _loaded(files[mix, 2], dtype).model.tok_embeddings
        assert isinstance(embedding, GGUFEmbedding) and embedding.native is not None
        kernel = embedding.native
        for token in (0, 7, embedding.num_embeddings - 1):
            ids = torch.tensor([token])
            fast = embedding(ids)
            embedding.native = None
            slow = embedding(ids)
            embedding.native = kernel
            assert fast.dtype == slow.dtype == getattr(torch, dtype)
            assert torch.equal(fast, slow), (mix, token)
        with pytest.raises(IndexError):  # an id past the vocabulary: torch's own error
            embedding(torch.tensor([embedding.num_embeddings]))


def test_a_new_cache_frees_the_old_one_and_gets_a_new_description(files) -> None:
    """setup_cache frees the old cache before allocating the new one (a 7B context's worth of
    memory); the compiled blocks must not keep it alive, and the next step must write into the new
    cache, not the freed one."""
    import gc
    import weakref

    loaded = _loaded(files["Q4_0", 2], "float32")
    model = loaded.model
    model.setup_cache(48)
    with torch.inference_mode():
        model(torch.tensor([1, 5, 9]), 0)
        model(torch.tensor([12]), 3)  # a compiled step: the description now points at the cache
    old = weakref.ref(model.layers[0].attention.cache)
    model.setup_cache(96)
    gc.collect()
    assert old() is None
    cache = model.layers[0].attention.cache
    cache.keys.zero_()
    with torch.inference_mode():
        model(torch.tensor([12]), 70)
    assert cache.max_seq_len == 96
    assert bool(cache.keys[:, 70].abs().sum() > 0)  # written where the new cache is
