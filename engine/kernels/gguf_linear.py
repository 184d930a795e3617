"""Layers that compute with a GGUF file's own quantized blocks, read in place (issue #23).

Why: a GGUF file already holds its weights in llama.cpp's block formats (Q4_0, Q8_0, Q4_K, Q6_K
make up the Q4_0, Q8_0 and Q4_K_M files people download most). Requantizing them into the engine's
int4/int8 layouts would cost a pass at every load, a second copy in memory and a second rounding;
reading the blocks as they are keeps the file mapped, the numbers the file's, and the bytes per
weight llama.cpp's (4.5 for Q4_0/Q4_K, 8.5 for Q8_0, 6.6 for Q6_K).

* Fewer than GEMM_ROWS rows (a decode step, a verify pass, a prefill chunk), or any number of
  rows of Q4_0 and Q4_K weights (TILED_TYPES), on a CPU with the compiled kernels:
  `NativeKernel.gguf_matvec`, which rounds x to 8-bit integers per 32 inputs (llama.cpp's Q8_0
  rule: scale max|x| / 127; error at most half a step, max|x_b| / 254, per input), multiplies
  them by the blocks' integers exactly (maddubs, or vpdpbusd with AVX-512 VNNI) and applies each
  (sub-)block's scale in float32; each weight row is read once for 8 rows of x (Q4_0 and Q4_K:
  8 weight rows are unpacked once for every row of x).
  Several layers that read one x (q, k, v; gate, up) go as one job (`fused_projection`).
* A decode step of a whole block (engine/kernels/gguf_step.py) runs the same products from C,
  with no Python between them.
* More rows (a long prefill chunk): the weight is written out transposed in x's dtype a slice of
  rows at a time (`NativeKernel.gguf_weights`, exactly gguf-py's dequantized values, at most
  WRITE_OUT_BYTES at once), then one GEMM per slice.
* No compiled kernel (not built, turned off, CUDA) or a block type without one: the rows are
  dequantized with engine.gguf.dequant (gguf-py's arithmetic) slice by slice and `F.linear` runs.

Block layouts (little-endian, d/dmin float16): Q8_0 32 weights in 34 bytes (d, int8 q[32]);
Q4_0 32 in 18 (d, 16 bytes of nibbles: weight j < 16 low nibble of byte j, j + 16 its high nibble;
w = d (q - 8)); Q4_K 256 in 144 (d, dmin, 12 bytes of six-bit scales and mins, 128 bytes of
nibbles; w = d sc_j q - dmin m_j per 32); Q6_K 256 in 210 (ql[128], qh[64], int8 scales[16], d;
w = d sc_j (q - 32) per 16).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from engine.kernels.native import NativeKernel

KERNEL_BLOCKS: dict[int, tuple[int, int]] = {
    2: (32, 18),
    8: (32, 34),
    12: (256, 144),
    14: (256, 210),
}
"""(weights, bytes) per block of the ggml types with a compiled product: Q4_0, Q8_0, Q4_K, Q6_K."""
KERNEL_TYPES = frozenset(KERNEL_BLOCKS)
"""ggml type numbers (engine.gguf.quant_types.GGMLType compares equal) with a compiled product."""
GEMM_ROWS = 384
"""From this many rows on, a layer on the compiled kernel writes its weight out as floats and runs a
GEMM; below, the integer product takes all rows at once (x rounded once, each weight row read once
for 8 rows of x). Measured on an AMD EPYC (Zen 3, AVX2, 2 threads, TinyLlama's 5632x2048, float32
GEMM; ms integer / write-out + GEMM): 16 rows 2.7 / 42, 64 rows 12.6 / 52, 256 rows 51 / 76 (Q4_0;
Q6_K 67 / 78), 512 rows 109 / 109 (Q4_0; Q6_K 123 / 102), 1024 rows 205 / 170 (Q6_K 256 / 167)."""
TILED_TYPES = frozenset({2, 12})
"""Q4_0 and Q4_K: from 8 rows of x their integer product runs in tiles of 8 weight rows with the
rows in the lanes (decode_kernels.c, gg_tile_rows) and beat writing the weight out + a float32
GEMM at every size measured (AMD EPYC Zen 3, 2 threads, ms integer / written out + GEMM; Q4_0
5632x2048: 64 rows 7.9 / 52, 256 rows 30 / 69, 512 rows 58 / 105, 1024 rows 122 / 159; Q4_K
512 rows 54 / 81, 1024 rows 123 / 151), so they never write their weights out."""


def written_out(qtype: int, rows: int) -> bool:
    """Whether `rows` rows of x meet a weight of this type on the compiled kernel through the
    weight written out as floats and a GEMM (else the integer product)."""
    return rows >= GEMM_ROWS and qtype not in TILED_TYPES


WRITE_OUT_BYTES = 32 * 2**20
"""Most bytes of float weight written out (or dequantized) at once, as Int4Linear's prefill: the
7B MLP weight is 90 MB in bfloat16, more than the 7B Q4_K_M peak-memory target can spare."""
TILE_ROWS = 16
"""Rows the C code writes out per unit of work: slices are cut at multiples of it."""


@functools.cache
def fast_bf16_gemm() -> bool:
    """Whether torch's bfloat16 GEMM is fast on this CPU (AVX512-BF16 or AMX). Why ask: without
    them (an AMD EPYC with AVX2 only) a bfloat16 `x @ Wt` of a TinyLlama MLP weight for 64 rows
    took 9 s where float32 took 0.1 s, so a prefill there writes the weight out in float32.
    A flag check, not a timing, so the choice cannot depend on what else runs at that moment."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


_threads = torch.get_num_threads


def row_bytes(qtype: int, cols: int) -> int:
    """Bytes per row of `cols` weights of this type (ValueError unless whole blocks)."""
    if qtype in KERNEL_BLOCKS:
        weights, nbytes = KERNEL_BLOCKS[qtype]
        if cols % weights:
            raise ValueError(f"{cols} weights are not a whole number of type-{qtype} blocks")
        return cols // weights * nbytes
    from engine.gguf.quant_types import row_bytes as any_row_bytes

    return any_row_bytes(qtype, cols)


def _dequantized(raw: torch.Tensor, qtype: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows `raw` [n, row_bytes] as floats [n, cols] in dtype, as gguf-py computes them."""
    from engine.gguf.dequant import dequantize
    from engine.gguf.quant_types import GGMLType

    return dequantize(raw, GGMLType(qtype), (raw.shape[0], cols), dtype)


def _slice_rows(cols: int, element_size: int) -> int:
    """Rows per slice so that a slice's float weight stays within WRITE_OUT_BYTES."""
    step = WRITE_OUT_BYTES // (cols * element_size) // TILE_ROWS * TILE_ROWS
    return max(TILE_ROWS, step)


class GGUFLinear(nn.Module):
    """y = x Wᵀ with W held as a GGUF tensor's blocks (buffer `raw`, uint8 [out, row_bytes]),
    computed in x's dtype. `dtype` is the model's activation dtype (kept for the loader)."""

    def __init__(self, in_features: int, out_features: int, qtype: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.qtype = int(qtype)
        self.dtype = dtype
        self.register_buffer(
            "raw", torch.empty(out_features, row_bytes(self.qtype, in_features), dtype=torch.uint8)
        )
        self.native: NativeKernel | None = None
        # fused_projection's prepared arguments when this layer comes first: (key, GGUFWeights)
        self._fused: tuple[tuple, object] | None = None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}"
        )

    def use_native(self, kernel: NativeKernel | None) -> None:
        """Run on Loopchat's compiled kernel (None: dequantize and F.linear again)."""
        fits = (
            self.qtype in KERNEL_TYPES
            and self.raw.device.type == "cpu"
            and self.raw.is_contiguous()
            and tuple(self.raw.shape)
            == (self.out_features, row_bytes(self.qtype, self.in_features))
        )
        self.native = kernel if fits else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # [T, in]
        native = self.native
        if native is not None and not written_out(self.qtype, flat.shape[0]) and not flat.is_cuda:
            out = native.gguf_matvec(flat, self.raw, self.qtype, native.threads or _threads())
        elif native is not None and not flat.is_cuda:
            out = self._written_out_product(native, flat)
        else:
            out = self._dequantized_product(flat)
        return out.view(*x.shape[:-1], self.out_features)

    def _written_out_product(self, native: NativeKernel, flat: torch.Tensor) -> torch.Tensor:
        """A prefill chunk: the weight written out transposed, a slice of rows at a time, then
        GEMMs. In x's dtype where torch's GEMM for it is fast; float16, and bfloat16 on a CPU
        without AVX512-BF16/AMX (fast_bf16_gemm), run in float32 and round the result to x's dtype
        (the C code writes float32 or bfloat16)."""
        threads = torch.get_num_threads()
        if flat.dtype == torch.float32 or (flat.dtype == torch.bfloat16 and fast_bf16_gemm()):
            wdtype = flat.dtype
        else:
            wdtype = torch.float32
        xw = flat.to(wdtype)
        step = _slice_rows(self.in_features, 4 if wdtype == torch.float32 else 2)
        out = flat.new_empty(flat.shape[0], self.out_features)
        for first in range(0, self.out_features, step):
            rows = slice(first, min(first + step, self.out_features))
            weight_t = native.gguf_weights(
                self.raw, self.qtype, self.in_features, wdtype, threads, rows
            )
            out[:, rows] = xw @ weight_t
        return out

    def _dequantized_product(self, flat: torch.Tensor) -> torch.Tensor:
        """No compiled product: dequantize a slice of rows at a time, then F.linear."""
        step = _slice_rows(self.in_features, flat.element_size())
        if step >= self.out_features:
            weight = _dequantized(self.raw, self.qtype, self.in_features, flat.dtype)
            return F.linear(flat, weight.to(flat.device))
        out = flat.new_empty(flat.shape[0], self.out_features)
        for first in range(0, self.out_features, step):
            rows = slice(first, min(first + step, self.out_features))
            weight = _dequantized(self.raw[rows], self.qtype, self.in_features, flat.dtype)
            out[:, rows] = F.linear(flat, weight.to(flat.device))
        return out


def fused_projection(layers: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor] | None:
    """x through several GGUFLinear layers that read it (q, k, v; gate, up) as one compiled job,
    where all of them take x's rows on the integer product (`written_out`) on one kernel, on the
    CPU; None otherwise (the caller then runs them one by one). Why: the short k and v products
    then pay no wake-up and no tail of their own, and x is rounded once."""
    first = layers[0]
    if not isinstance(first, GGUFLinear) or first.native is None:
        return None
    if x.shape[-1] != first.in_features or x.is_cuda:
        return None
    rows = x.numel() // first.in_features
    if any(written_out(layer.qtype, rows) for layer in layers if isinstance(layer, GGUFLinear)):
        return None
    for layer in layers[1:]:
        if not (
            isinstance(layer, GGUFLinear)
            and layer.native is first.native
            and layer.in_features == first.in_features
        ):
            return None
    kernel = first.native
    key = tuple((layer.raw.data_ptr(), layer.qtype, kernel) for layer in layers)  # type: ignore
    cached = first._fused
    if cached is None or cached[0] != key:
        from engine.kernels.native import GGUFWeights

        weights = [(layer.raw, layer.qtype) for layer in layers]  # type: ignore[union-attr]
        cached = first._fused = (key, GGUFWeights(weights))
    outs = kernel.gguf_matvec_many(
        x.reshape(-1, first.in_features), cached[1], kernel.threads or _threads()
    )
    return [out.view(*x.shape[:-1], -1) for out in outs]


class GGUFEmbedding(nn.Module):
    """Token embedding held as a GGUF tensor's blocks (buffer `raw`, uint8 [num, row_bytes]); a
    lookup dequantizes only the looked-up rows (gguf-py's values, in `dtype`)."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, qtype: int, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.qtype = int(qtype)
        self.dtype = dtype
        self.register_buffer(
            "raw",
            torch.empty(num_embeddings, row_bytes(self.qtype, embedding_dim), dtype=torch.uint8),
        )
        self.native: NativeKernel | None = None

    def use_native(self, kernel: NativeKernel | None) -> None:
        """Look up a decode step's one token with Loopchat's compiled kernel (None: torch's)."""
        fits = self.qtype in KERNEL_TYPES and self.raw.device.type == "cpu"
        self.native = kernel if fits and self.raw.is_contiguous() else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        native = self.native
        if (
            native is not None
            and tokens.numel() == 1
            and self.dtype in (torch.float32, torch.bfloat16)
        ):
            # A decode step: the row written out by the C code (the same values) costs ~10 us
            # where torch's dequantization of one row took ~0.3 ms, 1 % of a TinyLlama step.
            token = int(tokens.reshape(-1)[0])
            if 0 <= token < self.num_embeddings:
                row = native.gguf_weights(
                    self.raw, self.qtype, self.embedding_dim, self.dtype, 1, slice(token, token + 1)
                )
                return row.view(*tokens.shape, self.embedding_dim).to(tokens.device)
        flat = tokens.reshape(-1)
        rows = self.raw.index_select(0, flat.to(self.raw.device))
        values = _dequantized(rows, self.qtype, self.embedding_dim, self.dtype)
        return values.to(tokens.device).view(*tokens.shape, self.embedding_dim)
