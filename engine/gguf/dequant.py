"""Dequantize GGUF tensor blocks into float tensors, in pure torch, vectorised over blocks.

Each type's weights are computed in float32 with the same operations in the same order as
gguf-py's `gguf.quants.dequantize` (llama.cpp's Python reference), so the results are bit for bit
the same; the tests compare them with `torch.equal`. The block layouts are facts of the format
(llama.cpp's ggml-common.h). Work is done a bounded number of blocks at a time, so dequantizing a
32000 x 4096 embedding does not need several float copies of it at once.

`raw` is a tensor's bytes as `GGUFFile.raw` gives them, [rows, row_bytes], or any slice of its rows.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from engine.errors import EngineError
from engine.gguf.quant_types import GGMLType, block_shape, row_bytes

_CHUNK_BLOCKS = 1 << 12
"""Blocks dequantized per step: 1M weights of a K-quant, a few MB of temporaries that stay in
cache (measured: faster than both much smaller and much larger steps)."""

_KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
"""IQ4_NL / IQ4_XS: the 16 non-linear levels a 4-bit index selects (a fact of the format)."""


def _shifts(*values: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8).view(shape)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 field at byte `start` of each block, as float32 of shape [n, 1]."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).to(torch.float32)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, k] bytes -> [n, 2k]: the k low nibbles, then the k high nibbles."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _bits(data: torch.Tensor, count: int) -> torch.Tensor:
    """[n, k] bytes -> [n, count, k]: bit i of every byte along dim 1 (0 or 1)."""
    n, k = data.shape
    return (data.view(n, 1, k) >> _shifts(*range(count), shape=(1, count, 1))) & 1


class _Parts(NamedTuple):
    """A chunk of blocks taken apart: weights = q * scale (+ add) (- sub), in that order.

    `q` is [n, groups, per_group] small integers (or table values), `scale`, `add` and `sub`
    are float32 [n, groups, 1]; the driver does the float32 arithmetic in place, in gguf-py's
    order, so every rounding is the reference's.
    """

    q: torch.Tensor
    scale: torch.Tensor
    add: torch.Tensor | None = None
    sub: torch.Tensor | None = None


def _q4_0(b: torch.Tensor) -> _Parts:
    n = b.shape[0]
    q = _nibbles(b[:, 2:18]).to(torch.int8) - 8
    return _Parts(q.view(n, 1, 32), _f16(b, 0).view(n, 1, 1))


def _q4_1(b: torch.Tensor) -> _Parts:
    n = b.shape[0]
    q = _nibbles(b[:, 4:20])
    return _Parts(q.view(n, 1, 32), _f16(b, 0).view(n, 1, 1), add=_f16(b, 2).view(n, 1, 1))


def _q5_high(qh: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1: 4 bytes (a little-endian u32) -> the fifth bit of each of the 32 weights."""
    n = qh.shape[0]
    return _bits(qh, 8).transpose(1, 2).reshape(n, 32)


def _q5_0(b: torch.Tensor) -> _Parts:
    n = b.shape[0]
    q = (_nibbles(b[:, 6:22]) | (_q5_high(b[:, 2:6]) << 4)).to(torch.int8) - 16
    return _Parts(q.view(n, 1, 32), _f16(b, 0).view(n, 1, 1))


def _q5_1(b: torch.Tensor) -> _Parts:
    n = b.shape[0]
    q = _nibbles(b[:, 8:24]) | (_q5_high(b[:, 4:8]) << 4)
    return _Parts(q.view(n, 1, 32), _f16(b, 0).view(n, 1, 1), add=_f16(b, 2).view(n, 1, 1))


def _q8_0(b: torch.Tensor) -> _Parts:
    n = b.shape[0]
    q = b[:, 2:34].contiguous().view(torch.int8)
    return _Parts(q.view(n, 1, 32), _f16(b, 0).view(n, 1, 1))


def _q2_k(b: torch.Tensor) -> _Parts:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (scales & 0x0F).to(torch.float32)).view(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).view(n, 16, 1)
    # 2 chunks of 32 bytes, each byte holding 4 weights at shifts 0, 2, 4, 6
    q = (qs.reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6, shape=(1, 1, 4, 1))) & 3
    return _Parts(q.view(n, 16, 16), dl, sub=ml)


def _q3_k(b: torch.Tensor) -> _Parts:
    n = b.shape[0]
    hmask, qs, scales = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = _f16(b, 108)
    low = (scales[:, :8].reshape(n, 1, 8) >> _shifts(0, 4, shape=(1, 2, 1))).reshape(n, 16)
    high = (scales[:, 8:].reshape(n, 1, 4) >> _shifts(0, 2, 4, 6, shape=(1, 4, 1))).reshape(n, 16)
    sc = ((low & 0x0F) | ((high & 0x03) << 4)).to(torch.int8) - 32
    dl = (d * sc.to(torch.float32)).view(n, 16, 1)
    ql = (qs.reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6, shape=(1, 1, 4, 1))).reshape(n, 16, 16) & 3
    qh = _bits(hmask, 8).reshape(n, 16, 16) ^ 1  # a set bit means no offset of -4
    q = ql.to(torch.int8) - (qh << 2).to(torch.int8)
    return _Parts(q, dl)


def _scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins (llama.cpp's get_scale_min_k4)."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _k4_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _scale_min_k4(b[:, 4:16])
    return (d * sc.to(torch.float32)).view(n, 8, 1), (dmin * mn.to(torch.float32)).view(n, 8, 1)


def _nibbles_k(qs: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: 128 bytes -> [n, 8, 32]: per 32 bytes, the low nibbles then the high ones."""
    n = qs.shape[0]
    qs = qs.reshape(n, 4, 32)
    out = torch.empty(n, 4, 2, 32, dtype=torch.uint8)
    torch.bitwise_and(qs, 0x0F, out=out[:, :, 0])
    torch.bitwise_right_shift(qs, 4, out=out[:, :, 1])
    return out.view(n, 8, 32)


def _q4_k(b: torch.Tensor) -> _Parts:
    d, dm = _k4_scales(b)
    return _Parts(_nibbles_k(b[:, 16:144]), d, sub=dm)


def _q5_k(b: torch.Tensor) -> _Parts:
    d, dm = _k4_scales(b)
    qh = _bits(b[:, 16:48], 8)  # [n, 8, 32]
    return _Parts(_nibbles_k(b[:, 48:176]) | (qh << 4), d, sub=dm)


def _q6_k(b: torch.Tensor) -> _Parts:
    n = b.shape[0]
    ql, qh, scales = b[:, :128], b[:, 128:192], b[:, 192:208]
    d = _f16(b, 208)
    d = (d * scales.contiguous().view(torch.int8).to(torch.float32)).view(n, 16, 1)
    low = (ql.reshape(n, 2, 1, 64) >> _shifts(0, 4, shape=(1, 1, 2, 1))) & 0x0F
    high = (qh.reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6, shape=(1, 1, 4, 1))) & 0x03
    q = (low.reshape(n, 8, 32) | (high.reshape(n, 8, 32) << 4)).to(torch.int8) - 32
    return _Parts(q.view(n, 16, 16), d)


def _kvalues(index: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(_KVALUES, dtype=torch.int8)
    return table[index.long()]


def _iq4_nl(b: torch.Tensor) -> _Parts:
    n = b.shape[0]
    return _Parts(_kvalues(_nibbles(b[:, 2:18])).view(n, 1, 32), _f16(b, 0).view(n, 1, 1))


def _iq4_xs(b: torch.Tensor) -> _Parts:
    n = b.shape[0]
    d = _f16(b, 0)
    scales_h = b[:, 2].to(torch.int32) | (b[:, 3].to(torch.int32) << 8)
    high = (scales_h.view(n, 1) >> torch.arange(0, 16, 2, dtype=torch.int32).view(1, 8)) & 0x03
    low = (b[:, 4:8].reshape(n, 4, 1) >> _shifts(0, 4, shape=(1, 1, 2))).reshape(n, 8) & 0x0F
    sc = (low.to(torch.int32) | (high << 4)) - 32
    dl = (d * sc.to(torch.float32)).view(n, 8, 1)
    qs = (b[:, 8:136].reshape(n, 8, 1, 16) >> _shifts(0, 4, shape=(1, 1, 2, 1))) & 0x0F
    return _Parts(_kvalues(qs.reshape(n, 8, 32)), dl)


_BLOCK_DECODERS = {
    GGMLType.Q4_0: _q4_0,
    GGMLType.Q4_1: _q4_1,
    GGMLType.Q5_0: _q5_0,
    GGMLType.Q5_1: _q5_1,
    GGMLType.Q8_0: _q8_0,
    GGMLType.Q2_K: _q2_k,
    GGMLType.Q3_K: _q3_k,
    GGMLType.Q4_K: _q4_k,
    GGMLType.Q5_K: _q5_k,
    GGMLType.Q6_K: _q6_k,
    GGMLType.IQ4_NL: _iq4_nl,
    GGMLType.IQ4_XS: _iq4_xs,
}
_FLOATS = {GGMLType.F32: torch.float32, GGMLType.F16: torch.float16, GGMLType.BF16: torch.bfloat16}

SUPPORTED: frozenset[GGMLType] = frozenset(_BLOCK_DECODERS) | frozenset(_FLOATS)
"""The types `dequantize` reads; any other raises EngineError naming the type."""


def check_supported(qtype: GGMLType, origin: str = "this model file") -> None:
    """EngineError unless `dequantize` can read `qtype`; `origin` names the file or tensor."""
    if qtype not in SUPPORTED:
        name = qtype.name if isinstance(qtype, GGMLType) else f"type {int(qtype)}"
        raise EngineError(
            f"{origin} uses {name} blocks, which Loopchat cannot read yet; use a Q4_K_M, Q4_0, "
            "Q5_K_M or Q8_0 file"
        )


def dequantize(
    raw: torch.Tensor,
    qtype: GGMLType,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    *,
    origin: str = "this model file",
) -> torch.Tensor:
    """The weights of `shape` held in `raw` (uint8 blocks), computed in float32, cast to `dtype`.

    `shape` is in torch order (innermost last); `raw` may be any slice of a tensor's rows, with
    `shape` the slice's shape. A type this module does not read raises EngineError naming it.
    The result is always a new tensor, never a view of `raw`: a caller may close the file's
    mapping once it has the weights.
    """
    check_supported(qtype, origin)
    qtype = GGMLType(qtype)
    shape = tuple(int(d) for d in shape)
    expected = math.prod(shape[:-1]) * row_bytes(qtype, shape[-1]) if shape else 0
    if raw.dtype != torch.uint8 or raw.numel() != expected:
        raise ValueError(
            f"{raw.numel()} bytes of {raw.dtype} do not hold a {qtype.name} tensor of shape {shape}"
        )
    if qtype in _FLOATS:
        flat = raw.reshape(-1).contiguous().view(_FLOATS[qtype])
        copy = qtype == GGMLType.F32 and dtype == torch.float32  # else .to() makes a new tensor
        return flat.to(torch.float32).to(dtype, copy=copy).reshape(shape)
    weights, nbytes = block_shape(qtype)
    blocks = raw.reshape(-1, nbytes)
    out = torch.empty(blocks.shape[0], weights, dtype=dtype)
    decode = _BLOCK_DECODERS[qtype]
    work = None if dtype == torch.float32 else torch.empty(_CHUNK_BLOCKS, weights)
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        chunk = blocks[start : start + _CHUNK_BLOCKS]
        n = chunk.shape[0]
        target = out[start : start + n] if work is None else work[:n]
        parts = decode(chunk)
        # the reference's float32 operations, in its order, done in place
        result = target.view(parts.q.shape)
        result.copy_(parts.q)
        result.mul_(parts.scale)
        if parts.add is not None:
            result.add_(parts.add)
        if parts.sub is not None:
            result.sub_(parts.sub)
        if work is not None:
            out[start : start + n] = target
    return out.reshape(shape)
