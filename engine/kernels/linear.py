"""The model's linear layers, with weights pre-packed for oneDNN on CPUs that support it.

Batch-1 decoding is one matrix-vector product per weight per token, so its speed is how fast the
CPU streams the weights. PyTorch's default CPU kernel for `F.linear` reads a plain row-major
weight at about 17-19 GB/s on the development machine (2 cores, AVX-512); the same product on a
weight reordered once into oneDNN's blocked layout runs at 26 GB/s in bfloat16 and 31 GB/s in
float32 (2 threads; benchmarks/decode.py shows the whole-model effect). The reorder happens while
loading, in place of the copy that casts each weight anyway, so it costs no extra memory.

Packing is an optimisation only: where oneDNN is missing or cannot pack a dtype (float16 needs
AVX512-FP16 here), weights stay plain and `F.linear` is used, with the same results up to float
rounding.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

HALF_GEMM_ROWS = 64
"""From this many rows (a prefill chunk), a float16 product on a CPU whose float16 GEMM is slow runs
in float32 instead. Measured on the development machine (AMD EPYC, no AVX512-FP16): torch's float16
GEMM costs a matvec per row (256 rows x 5632 x 2048: ~260 ms on one thread), while casting the
weight to float32 and running an fp32 GEMM takes ~85 ms, with identical inputs (every float16 is a
float32) and float32 accumulation. One row (decode) stays in float16, its fastest matvec here."""
HALF_CAST_ROWS = 8192
"""Weight rows cast to float32 at a time, so a big output head never needs a whole float32 copy."""


class Linear(nn.Linear):
    """`nn.Linear` without bias whose weight may be plain or packed by `pack_weight`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.is_mkldnn:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        if (
            x.dtype == torch.float16
            and x.device.type == "cpu"
            and x.numel() >= HALF_GEMM_ROWS * x.shape[-1]
            and slow_half_gemm()
        ):
            return half_via_float(x, self.weight)
        return F.linear(x, self.weight)


def use_kernel_linears(model: nn.Module) -> None:
    """Replace the model's plain bias-free `nn.Linear` layers by `Linear` (same parameters), so
    packed weights and the float16-via-float32 path apply; the model itself knows only nn.Linear."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.bias is None:
                layer = Linear.__new__(Linear)
                nn.Module.__init__(layer)
                layer.in_features, layer.out_features = child.in_features, child.out_features
                layer.weight = child.weight
                layer.register_parameter("bias", None)
                setattr(parent, name, layer)


def half_via_float(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weightᵀ for float16 tensors, computed in float32 slice by slice, returned in float16."""
    x32 = x.float()
    out = torch.empty(*x.shape[:-1], weight.shape[0], dtype=torch.float16, device=x.device)
    for start in range(0, weight.shape[0], HALF_CAST_ROWS):
        rows = weight[start : start + HALF_CAST_ROWS]
        out[..., start : start + rows.shape[0]] = F.linear(x32, rows.float())
    return out


@functools.cache
def slow_half_gemm() -> bool:
    """Whether torch's float16 GEMM on this CPU is its slow fallback (a matvec per row).

    torch 2.13 hands float16 GEMMs to oneDNN only where `ideep::has_fp16_type_support()` holds
    (AVX512-FP16, AVX-NE-CONVERT or AMX-FP16); elsewhere it loops. A flag check, not a timing,
    so the choice cannot depend on what else runs at that moment.
    """
    if torch.cpu._is_amx_fp16_supported():
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return not FAST_HALF_FLAGS & set(line.split())
    except OSError:
        pass
    return False  # unknown: leave float16 as it is


FAST_HALF_FLAGS = {"avx512_fp16", "avx_ne_convert", "amx_fp16"}


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """Reorder a [out, in] CPU weight into oneDNN's blocked layout, tuned for one row at a time."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, 1)


@functools.cache
def can_pack(dtype: torch.dtype) -> bool:
    """Whether CPU weights of `dtype` can be packed here and give F.linear's results.

    Checked once per dtype on a small product, because oneDNN's support depends on the build
    and the CPU's instruction set. LOOPCHAT_PACKED_WEIGHTS=0 turns packing off (for comparisons).
    """
    if os.environ.get("LOOPCHAT_PACKED_WEIGHTS", "1") == "0":
        return False
    if not torch.backends.mkldnn.is_available() or dtype not in (torch.float32, torch.bfloat16):
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(96, 64, generator=generator).to(dtype)
        x = torch.randn(3, 64, generator=generator).to(dtype)
        layer = Linear(64, 96)
        layer.weight = nn.Parameter(pack_weight(weight), requires_grad=False)
        with torch.inference_mode():
            got = layer(x).float()
        want = F.linear(x.float(), weight.float())
    except RuntimeError:
        return False
    tolerance = 1e-4 if dtype == torch.float32 else 0.1
    return bool(torch.allclose(got, want, atol=tolerance, rtol=tolerance))
