"""Loopchat's own decode-step kernels (engine/kernels/csrc/decode_kernels.c), built with the
package: batch-1 int8 and int4 products, products with a GGUF file's own quantized blocks (Q8_0,
Q4_0, Q4_K, Q6_K; engine/kernels/gguf_linear.py), and the step's RMSNorm and rotary embedding.

Why a compiled kernel: int8 decoding is worth having only if it streams the weights faster than
16-bit does, and torch's `_weight_int8pack_mm` does not on every CPU: on the development machine
(AMD EPYC, 2 cores) it reads ~19 GB/s of weights on 2 threads, i.e. fewer weights per second than
float16 `F.linear` (~21 G weights/s). The C kernel multiplies int8 weights by 16-bit integer
activations with the CPU's integer multiply-add (pmaddwd / VNNI) and reaches ~30 G weights/s there
(benchmarks/kernels.py prints both). The int4 product does the same on torch's packed int4 layout
(~53 G weights/s against torch's ~33 on 2 threads), and both hand out rows from one counter, so a
thread that a busy neighbour deschedules does not stall the others at a barrier.

Why built with the package, not on the user's machine: see native_build.py. The builds
(engine/kernels/native_variants.py: baseline, AVX2+FMA, AVX-512 with VNNI/VBMI; plain C elsewhere)
lie in the package; `load()` asks the baseline build which ones this CPU can execute, verifies the
best one's SHA-256 (written by the build) before the dynamic loader maps it, and checks it against
float arithmetic before it is trusted. Nothing is compiled at run time and no code is loaded from
outside the package. Where no build is there (installed without a C compiler, Windows) `load()`
returns None, the reason is kept for the status bar, and quantized layers run on torch's kernels;
the measured kernel choice (engine/kernels/tuning.py) never offers a kernel that is not there.
LOOPCHAT_NATIVE=0 turns them off; LOOPCHAT_NATIVE=<build> (e.g. avx2) picks a lower build.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from engine.kernels import native_variants

log = logging.getLogger(__name__)

ABI = 8
"""lc_abi() of the source this module speaks to; a library reporting another is refused."""
SOURCE = "decode_kernels.c"
LIBRARY_DIR = Path(__file__).resolve().parent / native_variants.LIBRARY_FOLDER
"""Where the builds are: inside the installed (or frozen) package, written only by its installer."""
X_DTYPES = {torch.bfloat16: 0, torch.float32: 1}
"""Activation dtypes the products read and write directly; float16 goes through float32."""
OPS_DTYPES = {**X_DTYPES, torch.float16: 2}
"""Activation dtypes of the RMSNorm and rotary."""
CHECK_TOLERANCE = 1e-2
"""Largest error, relative to the largest output, the self-check accepts (the kernel's own error
is ~3e-3 in bfloat16, which is the output's rounding)."""

GGUF_CHECK_TOLERANCE = 2e-2
"""The same for the GGUF products, which round x to 8 bits per 32 inputs as llama.cpp does (their
error measures ~5e-3 of the largest output on random data; bfloat16 output adds ~4e-3)."""

_unavailable: str | None = None


class NativeKernel:
    """The loaded library: one-row products with int8 or int4 weights."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        # Both end in: x, x dtype, y, y dtype, rows, columns, threads.
        row_args = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        row_args += [ctypes.c_long, ctypes.c_long, ctypes.c_int]
        self._int8 = lib.lc_int8_matvec
        self._int8.restype = ctypes.c_int
        self._int8.argtypes = [ctypes.c_void_p, ctypes.c_void_p, *row_args]  # w, scales (f32)
        self._int4 = lib.lc_int4_matvec
        self._int4.restype = ctypes.c_int
        # w (torch's CPU int4 layout), scales_zeros, its dtype, group size
        int4_args = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_long]
        self._int4.argtypes = [*int4_args, *row_args]
        self._int4_many = lib.lc_int4_matvec_many
        self._int4_many.restype = ctypes.c_int
        # count, weights, scales_zeros, outputs, rows (arrays), sz dtype, group, x, x dtype,
        # y dtype, columns, threads
        self._int4_many.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 4
        self._int4_many.argtypes += [ctypes.c_int, ctypes.c_long, ctypes.c_void_p, ctypes.c_int]
        self._int4_many.argtypes += [ctypes.c_int, ctypes.c_long, ctypes.c_int]
        self._int4_weights = lib.lc_int4_weights
        self._int4_weights.restype = ctypes.c_int
        # w, scales_zeros, its dtype, group, y, y dtype, rows, columns, first row, rows, threads
        self._int4_weights.argtypes = [*int4_args, ctypes.c_void_p, ctypes.c_int]
        self._int4_weights.argtypes += [ctypes.c_long] * 4 + [ctypes.c_int]
        self._gguf = lib.lc_gguf_matvec
        self._gguf.restype = ctypes.c_int
        # qtype, w, row bytes, x, x dtype, y, y dtype, rows of x, rows of w, columns, threads
        self._gguf.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_long, *row_args[:4]]
        self._gguf.argtypes += [ctypes.c_long, *row_args[4:]]
        self._gguf_many = lib.lc_gguf_matvec_many
        self._gguf_many.restype = ctypes.c_int
        # count, qtypes, weights, row bytes, outputs, rows (arrays), x, x dtype, y dtype, rows of
        # x, columns, threads
        self._gguf_many.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 6
        self._gguf_many.argtypes += [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        self._gguf_many.argtypes += [ctypes.c_int]
        self._gguf_weights = lib.lc_gguf_weights
        self._gguf_weights.restype = ctypes.c_int
        # qtype, w, row bytes, y, y dtype, rows, columns, first row, rows written, threads
        self._gguf_weights.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_long]
        self._gguf_weights.argtypes += [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_long] * 4
        self._gguf_weights.argtypes += [ctypes.c_int]
        self._rms_norm = lib.lc_rms_norm
        self._rms_norm.restype = ctypes.c_int
        # x, weight, y, dtype, rows, dim, eps
        self._rms_norm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_long]
        self._rms_norm.argtypes += [ctypes.c_long, ctypes.c_float]
        self._rotary = lib.lc_rotary
        self._rotary.restype = ctypes.c_int
        # x, y, dtype, cos, sin, start, tokens, heads, dim, interleaved
        self._rotary.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self._rotary.argtypes += [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_long] * 4
        self._rotary.argtypes += [ctypes.c_int]
        self._block = lib.lc_gguf_decode_block
        self._block.restype = ctypes.c_int
        # LcBlock*, h, position, threads
        self._block.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
        lib.lc_isa.restype = ctypes.c_char_p
        self.isa: str = lib.lc_isa().decode()
        self.path = path
        self.threads = 0
        """Threads per product while `decoding` runs (0: follow torch's thread count)."""

    def set_threads(self, n: int) -> None:
        self.threads = n

    def int8_matvec(
        self, x: torch.Tensor, weight: torch.Tensor, scales32: torch.Tensor, threads: int
    ) -> torch.Tensor:
        """One row x [1, in] (bfloat16, float16 or float32) times int8 weight [out, in] → [1, out].

        `weight` and `scales32` (float32) must be contiguous CPU tensors; the result has x's dtype.
        """
        row, (out,), code = _row(x, weight.shape[0])
        rc = self._int8(
            weight.data_ptr(),
            scales32.data_ptr(),
            row.data_ptr(),
            code,
            out.data_ptr(),
            code,
            weight.shape[0],
            weight.shape[1],
            max(1, threads),
        )
        return _result(rc, out, x.dtype, "int8")

    def int4_matvec(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        scales_zeros: torch.Tensor,
        group_size: int,
        threads: int,
    ) -> torch.Tensor:
        """One row x [1, in] times an int4 weight in torch's CPU layout → [1, out].

        `weight` is `_convert_weight_to_int4pack_for_cpu`'s [out, in / 2] uint8 tensor and
        `scales_zeros` its [in / group, out, 2] companion (bfloat16 or float32), as `Int4Linear`
        keeps them; `int4_fits_native` says which shapes the kernel takes.
        """
        out_f, in_f = weight.shape[0], weight.shape[1] * 2
        row, (out,), code = _row(x, out_f)
        rc = self._int4(
            weight.data_ptr(),
            scales_zeros.data_ptr(),
            X_DTYPES[scales_zeros.dtype],
            group_size,
            row.data_ptr(),
            code,
            out.data_ptr(),
            code,
            out_f,
            in_f,
            max(1, threads),
        )
        return _result(rc, out, x.dtype, "int4")

    def int4_matvec_many(
        self,
        x: torch.Tensor,
        weights: Sequence[tuple[torch.Tensor, torch.Tensor]],
        group_size: int,
        threads: int,
    ) -> list[torch.Tensor]:
        """One row x [1, in] times several int4 weights (weight, scales_zeros) of one group size
        and scale dtype, as `int4_matvec` takes each, in one job (x rounded once); [1, out_i]."""
        count = len(weights)
        row, outs, code = _row(x, *(w.shape[0] for w, _ in weights))
        pointers = ctypes.c_void_p * count
        rc = self._int4_many(
            count,
            pointers(*(w.data_ptr() for w, _ in weights)),
            pointers(*(sz.data_ptr() for _, sz in weights)),
            pointers(*(out.data_ptr() for out in outs)),
            (ctypes.c_long * count)(*(w.shape[0] for w, _ in weights)),
            X_DTYPES[weights[0][1].dtype], group_size, row.data_ptr(), code, code,
            row.shape[-1], max(1, threads),
        )  # fmt: skip
        return [_result(rc, out, x.dtype, "int4") for out in outs]

    def int4_weights(
        self,
        weight: torch.Tensor,
        scales_zeros: torch.Tensor,
        group_size: int,
        dtype: torch.dtype,
        threads: int,
        rows: slice = slice(None),
    ) -> torch.Tensor:
        """Rows `rows` (64-row aligned) of an int4 layer's float weight W, kept as `int4_matvec`
        takes it, written out transposed: [in, rows] in `dtype` (bfloat16 or float32), each
        weight (q - 8) * scale + zero rounded once to dtype."""
        out_f, in_f = weight.shape[0], weight.shape[1] * 2
        first, stop, _ = rows.indices(out_f)
        out = torch.empty(in_f, max(0, stop - first), dtype=dtype)
        rc = self._int4_weights(
            weight.data_ptr(), scales_zeros.data_ptr(), X_DTYPES[scales_zeros.dtype], group_size,
            out.data_ptr(), X_DTYPES[dtype], out_f, in_f, first, stop - first, max(1, threads),
        )  # fmt: skip
        return _result(rc, out, dtype, "int4 weights")

    def gguf_matvec(
        self, x: torch.Tensor, raw: torch.Tensor, qtype: int, threads: int
    ) -> torch.Tensor:
        """Rows x [m, in] (bfloat16, float16 or float32) times a GGUF weight → [m, out].

        `raw` is the weight's blocks as a contiguous uint8 CPU tensor [out, row_bytes] (one row of
        blocks per output), `qtype` its ggml type number (GGUF_KERNEL_TYPES); the result has x's
        dtype. x is rounded to 8-bit integers per 32 inputs (llama.cpp's Q8_0 rule); each weight
        row is read once for up to 8 rows of x."""
        rows, row_bytes = raw.shape
        flat, (out,), code = _rows(x, rows)
        rc = self._gguf(
            int(qtype), raw.data_ptr(), row_bytes, flat.data_ptr(), code, out.data_ptr(), code,
            flat.shape[0], rows, flat.shape[-1], max(1, threads),
        )  # fmt: skip
        return _result(rc, out, x.dtype, "gguf")

    def gguf_matvec_many(
        self,
        x: torch.Tensor,
        weights: Sequence[tuple[torch.Tensor, int]] | GGUFWeights,
        threads: int,
    ) -> list[torch.Tensor]:
        """Rows x [m, in] times several GGUF weights (raw, qtype) that read it, as one job
        (x rounded once, one hand-out of rows); [m, out_i] each, in x's dtype. `weights` may be
        `gguf_weights_many(weights)`, prepared once (the per-call cost of a decode step)."""
        prepared = weights if isinstance(weights, GGUFWeights) else GGUFWeights(weights)
        flat, outs, code = _rows(x, *prepared.rows)
        count = len(outs)
        rc = self._gguf_many(
            count, prepared.qtypes, prepared.pointers, prepared.row_bytes,
            (ctypes.c_void_p * count)(*(out.data_ptr() for out in outs)), prepared.out_rows,
            flat.data_ptr(), code, code, flat.shape[0], flat.shape[-1], max(1, threads),
        )  # fmt: skip
        return [_result(rc, out, x.dtype, "gguf") for out in outs]

    def gguf_weights(
        self,
        raw: torch.Tensor,
        qtype: int,
        cols: int,
        dtype: torch.dtype,
        threads: int,
        rows: slice | None = None,
    ) -> torch.Tensor:
        """Rows `rows` of a GGUF weight (raw [out, row_bytes] uint8, `cols` inputs) written out
        transposed: [cols, rows] in `dtype` (bfloat16 or float32), each value exactly what gguf-py's
        `dequantize` computes in float32, rounded once to dtype."""
        total = raw.shape[0]
        first, stop, _ = (rows or slice(None)).indices(total)
        out = torch.empty(cols, max(0, stop - first), dtype=dtype)
        rc = self._gguf_weights(
            int(qtype), raw.data_ptr(), raw.shape[1], out.data_ptr(), X_DTYPES[dtype], total,
            cols, first, stop - first, max(1, threads),
        )  # fmt: skip
        return _result(rc, out, dtype, "gguf weights")

    def gguf_decode_block(
        self, block: ctypes.Structure, h: torch.Tensor, pos: int, threads: int
    ) -> None:
        """One decode step's transformer block (engine/kernels/gguf_step.py's `LcBlock`) on the
        row h [1, dim] in place, at position `pos`."""
        rc = self._block(ctypes.addressof(block), h.data_ptr(), pos, max(1, threads))
        if rc != 0:
            raise RuntimeError(f"native decode block failed (code {rc})")

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """engine.model.transformer.RMSNorm's result for x [..., dim] with a gain of x's dtype
        (`ops_fit`)."""
        x = x.contiguous()
        out = torch.empty_like(x)
        dim = x.shape[-1]
        rc = self._rms_norm(
            x.data_ptr(), weight.data_ptr(), out.data_ptr(), OPS_DTYPES[x.dtype],
            x.numel() // dim, dim, eps,
        )  # fmt: skip
        return _result(rc, out, x.dtype, "rms_norm")

    def rotary(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int, interleaved: bool
    ) -> torch.Tensor:
        """engine.model.transformer.Rotary's rotation of x [T, heads, d] at positions start.. with
        its float32
        tables cos and sin [positions, d / 2]."""
        x = x.contiguous()
        out = torch.empty_like(x)
        tokens, heads, dim = x.shape
        rc = self._rotary(
            x.data_ptr(), out.data_ptr(), OPS_DTYPES[x.dtype], cos.data_ptr(), sin.data_ptr(),
            start, tokens, heads, dim, int(interleaved),
        )  # fmt: skip
        return _result(rc, out, x.dtype, "rotary")


def ops_fit(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the compiled RMSNorm and rotary take activations of this dtype on this device."""
    return device.type == "cpu" and dtype in OPS_DTYPES


@functools.cache
def torch_int4_layout_fits() -> bool:
    """Whether torch's packed CPU int4 layout is the one the compiled int4 product reads.

    Why ask: torch packs int4 weights for its own kernel, and the packing depends on the CPU
    capability torch runs with. With AVX-512 a block is 64 rows (per input column, 32 bytes: low
    nibbles rows 0-31, high nibbles rows 32-63), which the C code reads; with AVX2 or none it is
    32 rows (16 bytes: rows 0-15 and 16-31). Found by packing one probe value, not assumed from
    the CPU, so an `ATEN_CPU_CAPABILITY` override is honoured too."""
    probe = torch.zeros(64, 2, dtype=torch.int32)
    probe[32, 0] = 15  # the 64-row layout puts row 32 in the high nibble of block 0's byte 0
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
    return int(packed[0, 0]) == 0xF0 and int(packed.count_nonzero()) == 1


def pack_int4_blocks64(q: torch.Tensor) -> torch.Tensor:
    """int4 values q [out, in] (0..15, out a multiple of 64) in the layout the C code reads:
    per 64-row block and input column, 32 bytes whose low nibbles are rows 0-31 and high nibbles
    rows 32-63; [out, in / 2] uint8, as torch packs them when it runs with AVX-512. The
    self-check and the tests use it, so the kernel's arithmetic is checked on every CPU."""
    out_f, in_f = q.shape
    blocks = q.to(torch.uint8).reshape(out_f // 64, 64, in_f).transpose(1, 2)  # [blocks, in, 64]
    packed = blocks[..., :32] | (blocks[..., 32:] << 4)  # [blocks, in, 32]
    return packed.reshape(out_f, in_f // 2).contiguous()


def int4_fits_native(out_features: int, group_size: int, sz_dtype: torch.dtype) -> bool:
    """Whether the compiled int4 product takes this layer (torch's 64-row layout and blocks, its
    scale dtypes)."""
    return (
        torch_int4_layout_fits()
        and out_features % 64 == 0
        and group_size % 2 == 0
        and group_size <= 256
        and (sz_dtype in X_DTYPES)
    )


def _row(x: torch.Tensor, *out_features: int) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """The activation row as the C code reads it (float16 goes through float32), an output row per
    product, and the row's dtype code."""
    row = x if x.dtype in X_DTYPES else x.float()
    row = row.contiguous()
    outs = [torch.empty(1, n, dtype=row.dtype) for n in out_features]
    return row, outs, X_DTYPES[row.dtype]


class GGUFWeights:
    """Several GGUF weights (raw [out, row_bytes] uint8, qtype) as the C code takes them, prepared
    once: keeps the tensors alive while it is held."""

    def __init__(self, weights: Sequence[tuple[torch.Tensor, int]]) -> None:
        count = len(weights)
        longs = ctypes.c_long * count
        self.tensors = [raw for raw, _ in weights]
        self.rows = [raw.shape[0] for raw, _ in weights]
        self.qtypes = (ctypes.c_int * count)(*(int(qtype) for _, qtype in weights))
        self.pointers = (ctypes.c_void_p * count)(*(raw.data_ptr() for raw, _ in weights))
        self.row_bytes = longs(*(raw.shape[1] for raw, _ in weights))
        self.out_rows = longs(*self.rows)


def _rows(x: torch.Tensor, *out_features: int) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Rows x [m, in] as the C code reads them (float16 goes through float32), an output [m, n]
    per product, and the rows' dtype code."""
    flat = x if x.dtype in X_DTYPES else x.float()
    flat = flat.reshape(-1, flat.shape[-1]).contiguous()
    outs = [torch.empty(flat.shape[0], n, dtype=flat.dtype) for n in out_features]
    return flat, outs, X_DTYPES[flat.dtype]


def _result(rc: int, out: torch.Tensor, wanted: torch.dtype, kind: str) -> torch.Tensor:
    if rc != 0:
        raise RuntimeError(f"native {kind} kernel failed (code {rc})")
    return out if out.dtype == wanted else out.to(wanted)


def _self_check(kernel: NativeKernel) -> str | None:
    """Compare the library with float arithmetic on awkward shapes; None if it agrees."""
    gen = torch.Generator().manual_seed(0)
    for rows, cols in ((37, 16), (64, 272), (130, 1040)):
        q = torch.randint(-127, 128, (rows, cols), generator=gen, dtype=torch.int8)
        scales = torch.rand(rows, generator=gen) + 0.5
        x = torch.randn(1, cols, generator=gen)
        reference = (x.double() @ q.double().T) * scales.double()
        for dtype in (torch.float32, torch.bfloat16):
            for threads in (1, 2):
                got = kernel.int8_matvec(x.to(dtype), q, scales, threads).double()
                err = (got - reference).abs().max() / reference.abs().max()
                if not err <= CHECK_TOLERANCE:
                    where = f"int8 {rows}x{cols}, {dtype}, {threads} threads"
                    return f"self-check failed ({where}: error {err:.2g})"
    from engine.kernels.quant_math import dequantize_int4, quantize_int4

    for rows, cols, group in ((64, 64, 32), (192, 384, 64), (128, 256, 128)):
        q4, sz = quantize_int4(torch.randn(rows, cols, generator=gen), group)
        packed = pack_int4_blocks64(q4)
        x = torch.randn(1, cols, generator=gen)
        for dtype in (torch.float32, torch.bfloat16):
            sz_d = sz.to(dtype).contiguous()
            reference = x.to(dtype).double() @ dequantize_int4(q4, sz_d, group).double().T
            for threads in (1, 2):
                got = kernel.int4_matvec(x.to(dtype), packed, sz_d, group, threads).double()
                err = (got - reference).abs().max() / reference.abs().max()
                if not err <= CHECK_TOLERANCE:
                    where = f"int4 {rows}x{cols} group {group}, {dtype}, {threads} threads"
                    return f"self-check failed ({where}: error {err:.2g})"
            written = kernel.int4_weights(packed, sz_d, group, dtype, 2)
            if not torch.equal(written, dequantize_int4(q4, sz_d, group).to(dtype).T):
                return f"self-check failed (int4 {rows}x{cols} weights written out, {dtype})"
    problem = _self_check_gguf(kernel, gen)
    if problem:
        return problem
    from engine.model.transformer import RMSNorm, Rotary

    for dtype in OPS_DTYPES:
        norm = RMSNorm(80, 1e-5).to(dtype)
        norm.weight.data = (torch.rand(80, generator=gen) + 0.5).to(dtype)
        x = (torch.randn(3, 80, generator=gen) * 4).to(dtype)
        reference = norm(x).double()
        err = (kernel.rms_norm(x, norm.weight, norm.eps).double() - reference).abs().max()
        if not err <= CHECK_TOLERANCE * reference.abs().max():
            return f"self-check failed (rms_norm, {dtype}: error {err:.2g})"
        for interleaved in (False, True):
            rotary = Rotary(16, 8, 10000.0, torch.device("cpu"), interleaved)
            x = torch.randn(2, 3, 16, generator=gen).to(dtype)
            got = kernel.rotary(x, rotary.cos, rotary.sin, 5, interleaved)
            if not torch.equal(got, rotary.apply(x, 5)):
                return f"self-check failed (rotary, {dtype}, interleaved={interleaved})"
    return None


GGUF_Q8_0 = 8
"""The GGUF type the self-check runs (ggml's number for Q8_0): its blocks are made here, with no
reader, so a broken product is found at load like the int8 and int4 ones."""


def _q8_0_blocks(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Q8_0 rows: int8 q [rows, cols] and float16 d [rows, cols / 32] as [rows, cols / 32 * 34]
    bytes (per block: d, then its 32 values)."""
    rows, cols = q.shape
    blocks = torch.cat(
        (d.reshape(rows, cols // 32, 1).view(torch.uint8), q.reshape(rows, cols // 32, 32).view(
            torch.uint8)), dim=-1,
    )  # fmt: skip
    return blocks.reshape(rows, -1).contiguous()


def _self_check_gguf(kernel: NativeKernel, gen: torch.Generator) -> str | None:
    """The GGUF product and write-out on one type (Q8_0) against float arithmetic."""
    for rows, cols in ((37, 64), (64, 288)):
        q = torch.randint(-127, 128, (rows, cols), generator=gen, dtype=torch.int8)
        d = (torch.rand(rows, cols // 32, generator=gen) * 0.02 + 0.001).to(torch.float16)
        weight = q.float() * d.float().repeat_interleave(32, dim=1)
        raw = _q8_0_blocks(q, d)
        x = torch.randn(1, cols, generator=gen)
        for dtype in (torch.float32, torch.bfloat16):
            reference = x.to(dtype).double() @ weight.double().T
            for threads in (1, 2):
                got = kernel.gguf_matvec(x.to(dtype), raw, GGUF_Q8_0, threads).double()
                err = (got - reference).abs().max() / reference.abs().max()
                if not err <= GGUF_CHECK_TOLERANCE:
                    where = f"gguf Q8_0 {rows}x{cols}, {dtype}, {threads} threads"
                    return f"self-check failed ({where}: error {err:.2g})"
        if not torch.equal(kernel.gguf_weights(raw, GGUF_Q8_0, cols, torch.float32, 2), weight.T):
            return f"self-check failed (gguf Q8_0 {rows}x{cols} weights written out)"
    return None


class Unavailable(Exception):
    """Why a build cannot be used here (one line, shown in the status bar's tooltip)."""


def _verified_library(variant: str, folder: Path) -> ctypes.CDLL:
    """The build, loaded only once its bytes match the digest the build wrote beside it."""
    path = folder / native_variants.library_filename(variant)
    digest_path = folder / native_variants.digest_filename(variant)
    try:
        data = path.read_bytes()
        expected = digest_path.read_text(encoding="ascii").strip()
    except FileNotFoundError as exc:
        raise Unavailable(f"{Path(exc.filename or path).name} is missing") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise Unavailable(f"cannot read {path.name}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != expected:
        raise Unavailable(
            f"{path.name} is damaged (its checksum does not match); reinstall Loopchat"
        )
    try:
        lib = ctypes.CDLL(str(path))
        abi = lib.lc_abi()
    except (OSError, AttributeError) as exc:
        raise Unavailable(f"cannot load {path.name}: {exc}") from exc
    if abi != ABI:
        raise Unavailable(f"{path.name} speaks ABI {abi}, this engine {ABI}; reinstall Loopchat")
    return lib


def cpu_level(folder: Path | None = None) -> int:
    """The highest build level (native_variants) this CPU executes, asked of the baseline build."""
    if not native_variants.is_x86_64(platform.machine()):
        return 0
    lib = _verified_library("baseline", folder or LIBRARY_DIR)
    lib.lc_cpu_level.restype = ctypes.c_int
    return int(lib.lc_cpu_level())


def runnable_variants(folder: Path | None = None) -> list[str]:
    """The builds this CPU can execute, best first (whether or not they are installed)."""
    level = cpu_level(folder)
    return [v.name for v in native_variants.variants_for(platform.machine()) if v.level <= level]


def load_variant(variant: str, folder: Path | None = None) -> NativeKernel:
    """One build, verified, loaded and self-checked; raises Unavailable with the reason."""
    folder = folder or LIBRARY_DIR
    if variant not in runnable_variants(folder):
        known = [v.name for v in native_variants.variants_for(platform.machine())]
        if variant not in known:
            raise Unavailable(f"no build named {variant!r} (builds: {', '.join(known)})")
        raise Unavailable(f"this CPU cannot run the {variant} build")
    lib = _verified_library(variant, folder)
    try:
        kernel = NativeKernel(lib, folder / native_variants.library_filename(variant))
    except AttributeError as exc:
        raise Unavailable(f"the {variant} build lacks a function: {exc}") from exc
    problem = _self_check(kernel)
    if problem:
        raise Unavailable(f"the {variant} build failed its {problem}")
    return kernel


def unavailable_reason() -> str | None:
    """Why `load()` returned None (None when it loaded or was not tried)."""
    return _unavailable


@functools.cache
def load() -> NativeKernel | None:
    """The best build this CPU runs, once per process; None where none can run (reason kept)."""
    global _unavailable
    wanted = os.environ.get("LOOPCHAT_NATIVE", "").strip().lower()
    if wanted == "0":
        _unavailable = "turned off by LOOPCHAT_NATIVE=0"
        return None
    if sys.platform == "win32":
        _unavailable = "not built for Windows"
        return None
    problems: list[str] = []
    try:
        choices = runnable_variants()
        if wanted and wanted != "1":
            choices = [wanted]  # load_variant says why, if it is not one this CPU runs
        for variant in choices:
            try:
                kernel = load_variant(variant)
            except Unavailable as exc:
                problems.append(str(exc))
                continue
            if problems:  # a better build was refused: worth a line in the log
                log.warning("compiled kernels: %s; the %s build runs", "; ".join(problems), variant)
            log.info("compiled kernels ready (%s build, %s)", variant, kernel.isa)
            _unavailable = None
            return kernel
    except Unavailable as exc:
        problems.append(str(exc))
    missing = all(p.endswith(" is missing") for p in problems)
    _unavailable = (
        "not built when Loopchat was installed (no C compiler then); reinstall with one for "
        "faster 8/4-bit weights"
        if problems and missing
        else "; ".join(problems) or "no build for this CPU"
    )
    # Installed without a compiler is a normal state (told in the tooltip); damage is not.
    report = log.info if missing else log.warning
    report("compiled kernels unavailable: %s; torch's kernels are used", _unavailable)
    return None
