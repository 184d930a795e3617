"""The compiled RMSNorm and rotary embedding (engine/kernels/csrc/decode_kernels.c) compute what
engine/model/transformer.py's torch code computes, and the loader puts them exactly where they
apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.kernels import native
from engine.kernels.compiled_ops import CompiledRMSNorm, CompiledRotary, use_compiled_ops
from engine.model.transformer import RMSNorm, Rotary


def _norm(dim: int, dtype: torch.dtype, seed: int) -> RMSNorm:
    g = torch.Generator().manual_seed(seed)
    norm = RMSNorm(dim, 1e-5)
    norm.weight.data = torch.rand(dim, generator=g) * 2 - 0.5  # gains of both signs
    return norm.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 2048), (3, 80), (2, 5, 48), (4, 7)])
def test_rms_norm_equals_torchs(kernel, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    # 7 and 80 values: a tail past the 16-wide partial sums; 3-D: rows of a batch of heads.
    norm = _norm(shape[-1], dtype, seed=len(shape) + shape[-1])
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    want = norm(x)  # torch's ops
    got = CompiledRMSNorm(norm, kernel)(x)
    assert got.dtype == dtype and got.shape == x.shape
    # Only the sum of squares is added in another order: float32 ulps, which bfloat16's rounding
    # hides almost always.
    if dtype != torch.float32:
        assert (got != want).float().mean() <= 0.01
        assert torch.allclose(got.float(), want.float(), rtol=2**-7, atol=0)
    else:
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)


def test_rms_norm_reads_a_strided_view(kernel) -> None:
    norm = _norm(64, torch.bfloat16, seed=3)
    x = torch.randn(64, 4).to(torch.bfloat16).T  # not contiguous
    want = norm(x)
    assert torch.equal(CompiledRMSNorm(norm, kernel)(x), want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("tokens,start", [(1, 0), (1, 37), (5, 11)])
def test_rotary_is_bitwise_torchs(
    kernel, dtype, interleaved: bool, tokens: int, start: int
) -> None:
    rotary = Rotary(64, 64, 10000.0, torch.device("cpu"), interleaved)
    compiled = CompiledRotary(kernel, 64, 64, 10000.0, torch.device("cpu"), interleaved)
    x = torch.randn(tokens, 6, 64, generator=torch.Generator().manual_seed(tokens)).to(dtype)
    want = rotary.apply(x, start)
    got = compiled.apply(x, start)
    # The same float32 operations in the same order (the C is built without contraction to FMA).
    assert got.dtype == dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_16_bit_value_converts_as_torchs(kernel, dtype: torch.dtype) -> None:
    # All 65536 bit patterns but NaN and inf, through rotations whose tables range from 2^-20 to
    # 2^12 (subnormal results, overflow to inf), the exact round trip (cos 1) and exact ties.
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype)
    values = values[torch.isfinite(values.float())]
    values = values[: values.numel() // 128 * 128].view(1, -1, 128)
    rotary = Rotary(128, 4, 10000.0, torch.device("cpu"), interleaved=False)
    compiled = CompiledRotary(kernel, 128, 4, 10000.0, torch.device("cpu"), interleaved=False)
    g = torch.Generator().manual_seed(5)
    rotary.cos = torch.exp2(torch.empty(4, 64).uniform_(-20, 12, generator=g))
    rotary.sin = torch.exp2(torch.empty(4, 64).uniform_(-20, 12, generator=g)) * -1
    rotary.cos[0] = 1.0
    rotary.sin[0] = 0.0
    rotary.cos[1] = 1.0 + torch.finfo(dtype).eps / 2  # x (1 + half an ulp): exact ties
    rotary.sin[1] = 0.0
    for start in range(4):
        want = rotary.apply(values, start)
        compiled.cos, compiled.sin = rotary.cos, rotary.sin
        got = compiled.apply(values, start)
        # Bit for bit, except NaN's payload (inf - inf in float32 where bfloat16 overflows it).
        nan = want.isnan()
        assert torch.equal(got.isnan(), nan), start
        assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16)), start
    assert torch.equal(rotary.apply(values, 0), values)  # cos 1, sin 0: the round trip


def _teacher_forced(loaded, ids: list[int]) -> torch.Tensor:
    model = loaded.model
    model.setup_cache(64)
    with torch.inference_mode():
        prefill = model(torch.tensor(ids[:4]), 0)
        steps = [model(torch.tensor([t]), 4 + i)[-1] for i, t in enumerate(ids[4:])]
    return torch.cat([prefill, torch.stack(steps)]).float()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_loaded_model_uses_them_and_computes_the_same(
    kernel, tiny_model_dir: Path, monkeypatch, tmp_path: Path, dtype: str
) -> None:
    from engine.loading.loader import load_model

    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path))
    loaded = load_model(tiny_model_dir, dtype=dtype, device="cpu", max_context=64)
    assert loaded.describe()["native_ops"] is True
    norms = [m for m in loaded.model.modules() if isinstance(m, RMSNorm)]
    assert norms and all(isinstance(m, CompiledRMSNorm) and m.kernel is kernel for m in norms)
    ids = [1] + [3 + (i * 53) % 500 for i in range(19)]
    mine = _teacher_forced(loaded, ids)
    rotary = loaded.model.layers[0].attention.rotary
    assert isinstance(rotary, CompiledRotary) and rotary.kernel is kernel  # survives a new cache
    assert use_compiled_ops(loaded.model, None) is False
    norms = [m for m in loaded.model.modules() if isinstance(m, RMSNorm)]
    assert norms and not any(isinstance(m, CompiledRMSNorm) for m in norms)
    assert not isinstance(loaded.model.layers[0].attention.rotary, CompiledRotary)
    theirs = _teacher_forced(loaded, ids)
    if dtype == "float32":
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-4)
    else:
        assert (mine - theirs).abs().max() <= 0.02 * theirs.abs().max()
        assert (mine.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.9


def test_the_off_switch_keeps_torchs_ops(
    kernel, tiny_model_dir: Path, monkeypatch, tmp_path: Path
) -> None:
    from engine.loading.loader import load_model

    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path))
    monkeypatch.setenv("LOOPCHAT_NATIVE", "0")
    native.load.cache_clear()
    try:
        off = load_model(tiny_model_dir, dtype="bfloat16", device="cpu", max_context=32)
    finally:
        native.load.cache_clear()
    assert "native_ops" not in off.describe()
    assert not isinstance(off.model.layers[0].attention.rotary, CompiledRotary)
