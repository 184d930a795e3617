"""The decode step's RMSNorm and rotary embedding on Loopchat's compiled kernel, as drop-in
replacements for engine.model.transformer's modules.

Why: in a decode step they are small, and as a dozen cold torch ops each they took a seventh of
an int4 step (engine/kernels/csrc/decode_kernels.c). The model keeps its plain torch code; the
loader swaps these in where the kernel takes the activations (CPU, 16- or 32-bit floats), and
they compute what the torch code computes (the tests compare them bit for bit or to rounding).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.kernels.native import NativeKernel, ops_fit
from engine.model.transformer import RMSNorm, Rotary, Transformer


class CompiledRMSNorm(RMSNorm):
    """RMSNorm on the kernel for activations of its gain's dtype; torch's code for others."""

    def __init__(self, norm: RMSNorm, kernel: NativeKernel) -> None:
        nn.Module.__init__(self)
        self.eps = norm.eps
        self.weight = norm.weight
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            return self.kernel.rms_norm(x, self.weight, self.eps)
        return super().forward(x)


class CompiledRotary(Rotary):
    """The rotary tables of `Rotary`, applied by the kernel."""

    def __init__(self, kernel: NativeKernel, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kernel = kernel

    def apply(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        return self.kernel.rotary(x, self.cos, self.sin, start_pos, self.interleaved)


def use_compiled_ops(model: Transformer, kernel: NativeKernel | None) -> bool:
    """Swap the model's norms and rotary for the compiled ones (None: back to torch's); True if
    the compiled ones now run. Only CPU 16- and 32-bit float activations go there."""
    weight = model.norm.weight
    wanted = kernel if kernel is not None and ops_fit(weight.dtype, weight.device) else None
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if not isinstance(child, RMSNorm):
                continue
            plain = child
            if isinstance(child, CompiledRMSNorm):
                plain = RMSNorm.__new__(RMSNorm)
                nn.Module.__init__(plain)
                plain.eps, plain.weight = child.eps, child.weight
            setattr(parent, name, plain if wanted is None else CompiledRMSNorm(plain, wanted))
    if wanted is None:
        model.make_rotary = Rotary
    else:
        model.make_rotary = lambda *args, **kwargs: CompiledRotary(wanted, *args, **kwargs)
    if model.cache_len:
        model.setup_rotary()
    return wanted is not None
