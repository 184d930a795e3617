"""engine.gguf.dequant against gguf-py's `gguf.quants.dequantize`, bit for bit.

For each supported type: random blocks (gguf-py's own quantizer where it has one, and always
random bytes with finite float16 scale fields, which reach every bit pattern of the quants) are
dequantized both ways and compared as float32 bit patterns — exact equality, no tolerance, since
the engine does the same float32 operations in the same order. A slice of rows must equal the
same rows of the whole tensor.
"""

from __future__ import annotations

import pytest
import torch

from engine.errors import EngineError
from engine.gguf import dequant
from engine.gguf.dequant import SUPPORTED, dequantize
from engine.gguf.quant_types import GGMLType, block_shape

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

FP16_FIELDS: dict[GGMLType, tuple[int, ...]] = {
    GGMLType.Q4_0: (0,),
    GGMLType.Q4_1: (0, 2),
    GGMLType.Q5_0: (0,),
    GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,),
    GGMLType.Q2_K: (80, 82),
    GGMLType.Q3_K: (108,),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,),
    GGMLType.IQ4_NL: (0,),
    GGMLType.IQ4_XS: (0,),
}
FLOATS = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
QUANTIZED = sorted(SUPPORTED - set(FLOATS))


def test_supported_is_what_the_issue_asks() -> None:
    names = {t.name for t in SUPPORTED}
    assert names == {
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
    }  # fmt: skip
    assert set(FP16_FIELDS) == set(QUANTIZED)


def _random_blocks(rng, qtype: GGMLType, rows: int, cols: int) -> np.ndarray:
    """Random bytes for every field, then finite float16 values in the scale fields."""
    weights, nbytes = block_shape(qtype)
    blocks = rng.integers(0, 256, (rows * cols // weights, nbytes), dtype=np.uint8)
    for at in FP16_FIELDS[qtype]:
        scale = (rng.standard_normal(blocks.shape[0]) * 0.05).astype(np.float16)
        blocks[:, at : at + 2] = scale.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def _reference(data: np.ndarray, qtype: GGMLType) -> torch.Tensor:
    ref = gguf.quants.dequantize(data, gguf.GGMLQuantizationType(int(qtype)))
    return torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))


def _same_bits(ours: torch.Tensor, ref: torch.Tensor) -> bool:
    """Identical float32 bit patterns (stricter than torch.equal: -0.0 != 0.0), NaN where NaN.

    The one allowed difference: a float16 signalling NaN comes back quiet from torch's
    conversion (quiet bit set) where numpy keeps it signalling; NaN is NaN either way.
    """
    if ours.dtype != torch.float32 or ours.shape != ref.shape:
        return False
    nan = torch.isnan(ref)
    if not torch.equal(torch.isnan(ours), nan):
        return False
    return torch.equal(
        ours.contiguous().view(torch.int32)[~nan], ref.contiguous().view(torch.int32)[~nan]
    )


def _check(data: np.ndarray, qtype: GGMLType, shape: tuple[int, ...]) -> None:
    raw = torch.from_numpy(np.ascontiguousarray(data).view(np.uint8).reshape(shape[0], -1).copy())
    ref = _reference(np.ascontiguousarray(data).view(np.uint8).reshape(shape[0], -1), qtype)
    whole = dequantize(raw, qtype, shape)
    assert whole.shape == shape
    assert _same_bits(whole, ref.reshape(shape)), qtype.name
    # a slice of rows: the same numbers as those rows of the whole tensor
    part = dequantize(raw[2:5], qtype, (3, *shape[1:]))
    assert _same_bits(part, whole[2:5])


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda t: t.name)
def test_random_blocks_equal_gguf_py(qtype: GGMLType) -> None:
    rng = np.random.default_rng(int(qtype))
    rows, cols = 7, 2 * block_shape(qtype)[0] * (4 if block_shape(qtype)[0] == 32 else 1)
    _check(_random_blocks(rng, qtype, rows, cols), qtype, (rows, cols))


@pytest.mark.parametrize(
    "qtype",
    [t for t in QUANTIZED if t.name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")] + list(FLOATS),
    ids=lambda t: t.name,
)
def test_quantized_weights_equal_gguf_py(qtype: GGMLType) -> None:
    """Blocks from gguf-py's own quantizer (the types it can quantize), as real files hold."""
    rng = np.random.default_rng(100 + int(qtype))
    rows, cols = 6, 256
    weights = rng.standard_normal((rows, cols)).astype(np.float32)
    data = gguf.quants.quantize(weights, gguf.GGMLQuantizationType(int(qtype)))
    _check(data, qtype, (rows, cols))


@pytest.mark.parametrize("qtype", FLOATS, ids=lambda t: t.name)
def test_float_types_every_bit_pattern(qtype: GGMLType) -> None:
    """F16/BF16 over all 65536 bit patterns (NaNs, infinities, subnormals), F32 at random."""
    if qtype == GGMLType.F32:
        data = np.random.default_rng(1).integers(0, 256, (6, 4096), dtype=np.uint8)
        shape = (6, 1024)
    else:
        data = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(64, 2048)
        shape = (64, 1024)
    if qtype == GGMLType.BF16:  # gguf-py's dequantize has no view for BF16 rows of bytes
        ref = torch.from_numpy(
            (data.view(np.int16).astype(np.int32) << 16).view(np.float32).reshape(shape)
        )
        assert _same_bits(dequantize(torch.from_numpy(data.copy()), qtype, shape), ref)
        ref2 = _reference(data, qtype)
        assert _same_bits(dequantize(torch.from_numpy(data.copy()), qtype, shape), ref2)
    else:
        _check(data, qtype, shape)


def test_three_dimensional_shape_and_other_dtypes() -> None:
    rng = np.random.default_rng(7)
    data = _random_blocks(rng, GGMLType.Q6_K, 6, 512)
    raw = torch.from_numpy(data.copy())
    ref = _reference(data, GGMLType.Q6_K).reshape(2, 3, 512)
    assert _same_bits(dequantize(raw, GGMLType.Q6_K, (2, 3, 512)), ref)
    for dtype in (torch.bfloat16, torch.float16):
        out = dequantize(raw, GGMLType.Q6_K, (2, 3, 512), dtype)
        assert out.dtype == dtype
        assert torch.equal(out, ref.to(dtype))


def test_chunked_work_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor bigger than one work chunk (here: chunks of 3 blocks) gives the same numbers."""
    rng = np.random.default_rng(8)
    data = _random_blocks(rng, GGMLType.Q4_K, 5, 512)
    whole = dequantize(torch.from_numpy(data.copy()), GGMLType.Q4_K, (5, 512))
    monkeypatch.setattr(dequant, "_CHUNK_BLOCKS", 3)
    chunked = dequantize(torch.from_numpy(data.copy()), GGMLType.Q4_K, (5, 512))
    assert _same_bits(chunked, whole)
    assert _same_bits(whole, _reference(data, GGMLType.Q4_K))


@pytest.mark.parametrize("qtype", sorted(set(GGMLType) - SUPPORTED), ids=lambda t: t.name)
def test_unsupported_types_name_themselves(qtype: GGMLType) -> None:
    weights, nbytes = block_shape(qtype)
    raw = torch.zeros(1, nbytes, dtype=torch.uint8)
    with pytest.raises(EngineError) as info:
        dequantize(raw, qtype, (1, weights), origin="model.gguf")
    message = str(info.value)
    assert message == (
        f"model.gguf uses {qtype.name} blocks, which Loopchat cannot read yet; use a Q4_K_M, "
        "Q4_0, Q5_K_M or Q8_0 file"
    )


def test_wrong_byte_count_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="do not hold a Q8_0 tensor"):
        dequantize(torch.zeros(2, 33, dtype=torch.uint8), GGMLType.Q8_0, (2, 32))
    with pytest.raises(ValueError):
        dequantize(torch.zeros(2, 34, dtype=torch.uint8), GGMLType.Q8_0, (2, 48))


@pytest.mark.parametrize("qtype", [GGMLType.F32, GGMLType.F16, GGMLType.Q8_0], ids=lambda t: t.name)
def test_result_never_shares_memory_with_raw(qtype: GGMLType) -> None:
    """The loader closes the file's mapping once it has the weights: no view may outlive it."""
    weights, nbytes = block_shape(qtype)
    raw = torch.zeros(2, 4 * nbytes, dtype=torch.uint8)
    for dtype in (torch.float32, torch.bfloat16):
        out = dequantize(raw, qtype, (2, 4 * weights), dtype)
        assert out.untyped_storage().data_ptr() != raw.untyped_storage().data_ptr()
