"""Quantize and dequantize: pure functions on float tensors (engine/kernels/quant.py's formulas).

Apart from the layers so that the compiled kernel's self-check (engine/kernels/native.py) can build
its reference weights without importing the layers that use the kernel.
"""

from __future__ import annotations

import torch


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q [out, in] int8, scale [out] float32) with w ≈ q * scale."""
    w = weight.float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [out]
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # [out, in]
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 weight an int8 layer computes with."""
    return q.float() * scale.float()[:, None]


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise 4-bit: (q [out, in] int32 in 0..15, scales_zeros [in/g, out, 2]).

    w ≈ (q - 8) * scale + zero per group (torch's convention), with the group's minimum and
    maximum mapped to 0 and 15.
    """
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ValueError(
            f"int4 needs the input size ({in_features}) to be a multiple of the group size "
            f"({group_size})"
        )
    w = weight.float().view(out_features, in_features // group_size, group_size)  # [out, G, g]
    low = w.amin(dim=-1, keepdim=True)
    high = w.amax(dim=-1, keepdim=True)
    scale = ((high - low) / 15.0).clamp(min=1e-8)  # [out, G, 1]
    q = torch.round((w - low) / scale).clamp_(0, 15).to(torch.int32)  # [out, G, g]
    zero = low + 8.0 * scale  # so that (q - 8) * scale + zero == low + q * scale
    scales_zeros = torch.stack((scale[..., 0], zero[..., 0]), dim=-1)  # [out, G, 2]
    return q.view(out_features, in_features), scales_zeros.transpose(0, 1).contiguous()


def dequantize_int4(q: torch.Tensor, scales_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """The float32 weight an int4 layer computes with, from unpacked q and scales_zeros."""
    out_features, in_features = q.shape
    sz = scales_zeros.float().transpose(0, 1)  # [out, G, 2]
    groups = q.float().view(out_features, in_features // group_size, group_size)
    w = (groups - 8.0) * sz[..., :1] + sz[..., 1:]
    return w.view(out_features, in_features)


def pack_int4(q: torch.Tensor, device: torch.device) -> torch.Tensor:
    """torch's kernel layout for int4 values q [out, in] (int32, 0..15) on `device`."""
    if device.type == "cuda":  # pragma: no cover - needs a GPU
        packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        return torch.ops.aten._convert_weight_to_int4pack(packed.to(device), 8)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
