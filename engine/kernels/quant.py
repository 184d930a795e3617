"""Weight-only int8 and int4 quantization on torch's own packed kernels.

Batch-1 decoding streams every weight once per token, so fewer bytes per weight is the main lever
on a CPU (see ../shared/PERF.md): int8 halves and int4 quarters what a 16-bit model reads. Only the
weights are quantized; activations, norms, the KV cache and the logits stay in the model's dtype.

* int8: symmetric, one scale per output channel (row); `aten._weight_int8pack_mm`, or for one row
  (decoding) Loopchat's own compiled kernel where the measured kernel choice picks it
  (engine/kernels/native.py).
* int4: asymmetric, one scale and one offset per group of `group_size` input columns;
  `aten._weight_int4pack_mm_for_cpu` on CPU (`_weight_int4pack_mm` on CUDA), or for one row
  Loopchat's compiled kernel, which reads the same packed layout, where the kernel choice picks
  it. Group 64 by default: a 7B model then fits in ~4 GB (group 32 adds 0.06 bytes per weight,
  ~0.4 GB at 7B) and the measured quality difference on our models was small (README,
  Performance).
* The output head is int8 in both modes: it turns the last hidden state into the logits directly,
  so its error is the one the sampler sees, and it is a small share of a 7B model's bytes.
* The embedding is int8 per row (token) in both modes, dequantized on lookup: a lookup reads a
  handful of rows, so the cost is nil, and it halves the largest tensor's memory.

The formulas are written here from the kernels' documented contracts (int4: w = (q - 8) * scale +
zero with q in 0..15; int8: w = q * scale), and `dequantize_*` give the exact float weights each
layer computes with, which the tests compare against `F.linear`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from engine.kernels.native import NativeKernel

QUANT_MODES = ("none", "int8", "int4", "file")
"""What `--quant` and `load_model(quant=...)` accept ("file": a GGUF file's own blocks,
engine/loading/gguf_model.py; int8/int4 are for model folders)."""

DEFAULT_GROUP_SIZE = 64
PREFILL_ROWS = 16
"""From this many rows on, an int8 layer casts its weight and runs a GEMM (see Int8Linear)."""
INT4_GEMM_ROWS = 64
"""From this many rows on, an int4 layer on the compiled kernel writes its weight out in the
activation dtype and runs a GEMM. torch's int4 kernel costs about the same per row at any chunk
size, while writing the weight out costs a fixed ~2.5-4 ms per TinyLlama MLP weight: measured by
benchmarks/prefill_int4.py (AMD EPYC, 2 threads), the GEMM way takes 0.9x torch's time at 32 rows,
1.15x faster at 64, 1.6x at 128 and 2.4x at 512. The weight's rounding to bfloat16 is 2^-9 of each
weight, far below its 4-bit step."""
INT4_WRITE_OUT_BYTES = 32 * 2**20
"""Most bytes of float weight written out at once for a prefill chunk: the 7B shape's MLP weight is
90 MB in bfloat16, and the 7B int4 target (4.5 GB peak) cannot spare that much on top."""
INT8_COL_MULTIPLE = 16
"""torch 2.13's `_weight_int8pack_mm` crashes the process (SIGSEGV) for an input size that is not
a multiple of 16 (checked: 8, 24, 40, 56, 72 crash; 16, 32, 48, 64, 80 run), so such layers are
never given to it."""
INT4_ROW_MULTIPLE = 16
"""torch's int4 packing needs the output size divisible by 16."""
INT4_PACK_ROWS = 64
"""Rows packed together by torch's CPU int4 layout: packing in blocks of 64 rows equals packing
the whole matrix, so big weights can be quantized in slices without a whole float copy."""


def check_quant(quant: str) -> str:
    """The quant mode, or ValueError with a one-line message naming the choices."""
    if quant not in QUANT_MODES:
        raise ValueError(f"unknown quantization '{quant}'; use one of {', '.join(QUANT_MODES)}")
    return quant


def int8_fits(shape: tuple[int, ...]) -> bool:
    """Whether torch's int8 kernel can take a [out, in] weight of this shape."""
    return shape[1] % INT8_COL_MULTIPLE == 0


def int4_fits(shape: tuple[int, ...], group_size: int) -> bool:
    """Whether torch's int4 kernel can take a [out, in] weight of this shape and group size."""
    out_features, in_features = shape
    return (
        out_features % INT4_ROW_MULTIPLE == 0 and in_features % group_size == 0 and int8_fits(shape)
    )


# ----------------------------------------------------------------------------------------------
# Layers


class Int8Linear(nn.Module):
    """y = x Wᵀ with W = weight (int8) * scales (per output row), in x's dtype."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype) -> None:
        super().__init__()
        if not int8_fits((out_features, in_features)):
            raise ValueError(
                f"int8 layers need an input size that is a multiple of {INT8_COL_MULTIPLE}, "
                f"got {in_features}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=dtype))
        self.native: NativeKernel | None = None
        self._scales32: torch.Tensor | None = None

    def use_native(self, kernel: NativeKernel | None) -> None:
        """Run one-row products on Loopchat's compiled kernel (None: torch's kernel again)."""
        on_cpu = self.weight.device.type == "cpu" and self.weight.is_contiguous()
        self.native = kernel if on_cpu else None
        self._scales32 = None if self.native is None else self.scales.float().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # [T, in]
        if self.native is not None and flat.shape[0] == 1 and not flat.is_cuda:
            assert self._scales32 is not None
            threads = self.native.threads or torch.get_num_threads()
            out = self.native.int8_matvec(flat, self.weight, self._scales32, threads)
        elif flat.is_cuda or flat.shape[0] >= PREFILL_ROWS:
            # Many rows (a prefill chunk; or CUDA, which has no int8 pack kernel): torch's int8
            # kernel is ~4x slower than a GEMM on the weight cast to x's dtype (exact: |q| <= 127),
            # with the per-row scale applied to the product's columns instead.
            out = F.linear(flat, self.weight.to(flat.dtype)) * self.scales
        else:
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
        return out.view(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """y = x Wᵀ with W group-wise 4-bit in torch's packed layout, in x's dtype."""

    def __init__(
        self, in_features: int, out_features: int, dtype: torch.dtype, group_size: int
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.register_buffer(
            "weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8)
        )
        self.register_buffer(
            "scales_zeros", torch.empty(in_features // group_size, out_features, 2, dtype=dtype)
        )
        self.native: NativeKernel | None = None

    def use_native(self, kernel: NativeKernel | None) -> None:
        """Run one-row products on Loopchat's compiled kernel (None: torch's kernel again)."""
        from engine.kernels.native import int4_fits_native

        fits = (
            self.weight.device.type == "cpu"
            and self.weight.is_contiguous()
            and self.scales_zeros.is_contiguous()
            and int4_fits_native(self.out_features, self.group_size, self.scales_zeros.dtype)
        )
        self.native = kernel if fits else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # [T, in]
        if self.native is not None and flat.shape[0] == 1 and not flat.is_cuda:
            threads = self.native.threads or torch.get_num_threads()
            out = self.native.int4_matvec(
                flat, self.weight, self.scales_zeros, self.group_size, threads
            )
        elif flat.is_cuda:  # pragma: no cover - needs a GPU
            out = torch.ops.aten._weight_int4pack_mm(
                flat, self.weight, self.group_size, self.scales_zeros
            )
        elif self.native is not None and flat.shape[0] >= INT4_GEMM_ROWS:
            out = self._written_out_product(flat)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                flat, self.weight, self.group_size, self.scales_zeros
            )
        return out.view(*x.shape[:-1], self.out_features)

    def _written_out_product(self, flat: torch.Tensor) -> torch.Tensor:
        """A prefill chunk's product (INT4_GEMM_ROWS): the weight written out in x's dtype, a
        slice of rows at a time so the float copy never exceeds INT4_WRITE_OUT_BYTES, then GEMMs."""
        assert self.native is not None
        threads = torch.get_num_threads()
        per_row = self.in_features * flat.element_size()
        step = INT4_WRITE_OUT_BYTES // per_row // INT4_PACK_ROWS * INT4_PACK_ROWS
        step = max(INT4_PACK_ROWS, step)
        if step >= self.out_features:
            return flat @ self.native.int4_weights(
                self.weight, self.scales_zeros, self.group_size, flat.dtype, threads
            )
        out = flat.new_empty(flat.shape[0], self.out_features)
        for first in range(0, self.out_features, step):
            rows = slice(first, min(first + step, self.out_features))
            weight_t = self.native.int4_weights(
                self.weight, self.scales_zeros, self.group_size, flat.dtype, threads, rows
            )  # [in, rows]
            out[:, rows] = flat @ weight_t
        return out


def project(layers: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """x through several layers that read it (a block's q, k and v; its gate and up projections).

    Why together: in a decode step the compiled int4 kernel then rounds x once and hands out the
    64-row blocks of all of them as one job, so the short k and v products (256 rows at the
    TinyLlama shape, ~3x slower per weight than the big ones on their own) pay no wake-up and no
    tail of their own. Anything else (more rows, other formats, torch's kernels) goes layer by
    layer.
    """
    first = layers[0]
    if type(first).__name__ == "GGUFLinear":  # a GGUF file's own blocks: the same, one job
        from engine.kernels.gguf_linear import fused_projection

        fused = fused_projection(layers, x)
        if fused is not None:
            return fused
    if (
        isinstance(first, Int4Linear)
        and first.native is not None
        and x.numel() == first.in_features
        and not x.is_cuda
        and all(_fuses_with(first, layer) for layer in layers[1:])
    ):
        kernel = first.native
        outs = kernel.int4_matvec_many(
            x.reshape(1, first.in_features),
            [(layer.weight, layer.scales_zeros) for layer in layers],  # type: ignore[misc]
            first.group_size,
            kernel.threads or torch.get_num_threads(),
        )
        return [out.view(*x.shape[:-1], -1) for out in outs]
    return [layer(x) for layer in layers]


def use_fused_projections(model: nn.Module) -> None:
    """Hand every attention and MLP block `project` (above) in place of one-by-one projections."""
    from engine.model.transformer import Attention, FeedForward

    for module in model.modules():
        if isinstance(module, (Attention, FeedForward)):
            module.project = project


def _fuses_with(first: Int4Linear, other: nn.Module) -> bool:
    return (
        isinstance(other, Int4Linear)
        and other.native is first.native
        and other.group_size == first.group_size
        and other.in_features == first.in_features
        and other.scales_zeros.dtype == first.scales_zeros.dtype
    )


class Int8Embedding(nn.Module):
    """Token embedding stored as int8 rows with one scale per row, dequantized on lookup."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(num_embeddings, dtype=dtype))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(tokens, self.weight)  # [T, dim] int8
        return rows.to(self.scales.dtype) * self.scales[tokens].unsqueeze(-1)


def use_native(model: torch.nn.Module) -> str | None:
    """Switch the model's int8 and int4 layers to the compiled kernels; the instruction set used,
    or None. Both kinds switch together: during decode torch keeps one thread, so a quantized layer
    left on torch's kernel would run single-threaded."""
    from engine.kernels.native import load

    kernel = load()
    for module in model.modules():
        if isinstance(module, _native_layers()):
            module.use_native(kernel)
    return kernel.isa if kernel is not None else None


def _native_layers() -> tuple[type[nn.Module], ...]:
    """The layer types with a compiled one-row product (GGUF's are imported only when asked)."""
    from engine.kernels.gguf_linear import GGUFEmbedding, GGUFLinear

    return (Int8Linear, Int4Linear, GGUFLinear, GGUFEmbedding)


def kernel_of(model: torch.nn.Module) -> NativeKernel | None:
    """The compiled kernel the model's int8 layers run on, if any."""
    for module in model.modules():
        if isinstance(module, _native_layers()) and module.native is not None:
            return module.native
    return None
