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


class Linear(nn.Linear):
    """`nn.Linear` without bias whose weight may be plain or packed by `pack_weight`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.is_mkldnn:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        return F.linear(x, self.weight)


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
