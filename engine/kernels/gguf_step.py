"""A decode step's transformer block as one compiled call, for a model on a GGUF file's blocks.

Why: with the products on the compiled kernels (engine/kernels/gguf_linear.py), a TinyLlama-shaped
Q4_0 step (AMD EPYC, 2 threads) still spent ~8 of ~37 ms around them: loop attention as ~15 torch
ops per layer for a single query (4.5 ms at context 16, 11.5 ms at 512), the norms, SwiGLU and
residual adds, and Python and the pool starting each of the layer's four products. The C code
(`lc_gguf_decode_block`) runs the whole block, attention included as the same loop over the cache
in blocks of `attention_block_size` positions, on the kernel's pool.

Only where it computes what the torch code computes: one token, no attention capture (the
inspector's steps run the readable code), bfloat16 or float32 activations on the CPU, every
projection a GGUFLinear on the compiled kernel; anything else goes to TransformerBlock.forward.
"""

from __future__ import annotations

import ctypes
import weakref

import torch
from torch import nn

from engine.kernels.gguf_linear import GGUFLinear
from engine.kernels.native import X_DTYPES, NativeKernel
from engine.model.transformer import Transformer, TransformerBlock

_WEIGHTS = 7


class LcBlock(ctypes.Structure):
    """decode_kernels.c's LcBlock: one layer's weights, norms, cache and shape."""

    _fields_ = [
        ("w", ctypes.c_void_p * _WEIGHTS),  # q, k, v, o, gate (w1), up (w3), down (w2)
        ("row_bytes", ctypes.c_long * _WEIGHTS),
        ("qtype", ctypes.c_int * _WEIGHTS),
        ("dtype", ctypes.c_int),
        ("attn_norm", ctypes.c_void_p),
        ("ffn_norm", ctypes.c_void_p),
        ("k_cache", ctypes.c_void_p),
        ("v_cache", ctypes.c_void_p),
        ("cos_table", ctypes.c_void_p),
        ("sin_table", ctypes.c_void_p),
        ("dim", ctypes.c_long),
        ("hidden", ctypes.c_long),
        ("n_heads", ctypes.c_long),
        ("n_kv_heads", ctypes.c_long),
        ("head_dim", ctypes.c_long),
        ("cache_len", ctypes.c_long),
        ("block", ctypes.c_long),
        ("eps", ctypes.c_float),
        ("interleaved", ctypes.c_int),
        ("spent", ctypes.c_void_p),  # NULL or long long[3]: ns in products, attention, the rest
    ]


class CompiledGGUFBlock(TransformerBlock):
    """TransformerBlock whose one-token steps run as one compiled call (same submodules, same
    parameter names; prefill chunks, verify passes and captured steps run the torch code)."""

    def __init__(self, block: TransformerBlock, kernel: NativeKernel) -> None:
        nn.Module.__init__(self)
        self.attention = block.attention
        self.feed_forward = block.feed_forward
        self.attention_norm = block.attention_norm
        self.ffn_norm = block.ffn_norm
        self.kernel = kernel
        attention, ffn = block.attention, block.feed_forward
        self._linears = (
            attention.wq, attention.wk, attention.wv, attention.wo, ffn.w1, ffn.w3, ffn.w2,
        )  # fmt: skip
        # (what the description was made from, the description): checked by identity at every
        # step, so that a step costs no pointer reads while nothing changed. The cache and the
        # rotary tables are held weakly: setup_cache frees the old cache before allocating the
        # new one, and a reference here would keep both in memory at once.
        self._prepared: tuple[tuple, LcBlock] | None = None
        self.spent: ctypes.Array | None = None
        """None, or three ctypes.c_longlong the C code adds nanoseconds to: products, attention
        (rotary, cache, the loop), the rest (benchmarks/gguf.py's step profile)."""

    def plain(self) -> TransformerBlock:
        """The block with the readable forward only (the same submodules)."""
        block = TransformerBlock.__new__(TransformerBlock)
        nn.Module.__init__(block)
        block.attention, block.feed_forward = self.attention, self.feed_forward
        block.attention_norm, block.ffn_norm = self.attention_norm, self.ffn_norm
        return block

    def forward(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        spec = self._spec(x) if x.shape[0] == 1 and not self.attention.capture else None
        if spec is None:
            return super().forward(x, start_pos)
        spec.spent = None if self.spent is None else ctypes.addressof(self.spent)
        h = x.contiguous().clone()
        kernel = self.kernel
        kernel.gguf_decode_block(spec, h, start_pos, kernel.threads or torch.get_num_threads())
        self.attention.last_attention = None
        return h

    def _spec(self, x: torch.Tensor) -> LcBlock | None:
        """The C description of this layer for x, rebuilt when what it points into changed (a new
        cache or rotary table, another block size or dtype); None where the compiled block does not
        apply."""
        attention = self.attention
        linears = self._linears
        cache, rotary = attention.cache, attention.rotary
        for layer in linears:
            if getattr(layer, "native", None) is not self.kernel:
                return None  # not a GGUFLinear, or one switched to torch's product
        settings = (attention.block_size, x.dtype, x.device)
        prepared = self._prepared
        if prepared is not None:
            (cache_ref, rotary_ref, *made_with), spec = prepared
            if cache_ref() is cache and rotary_ref() is rotary and made_with == list(settings):
                return spec
        if x.dtype not in X_DTYPES or x.device.type != "cpu" or cache is None or rotary is None:
            return None
        if not all(isinstance(layer, GGUFLinear) for layer in linears):
            return None
        gains = (self.attention_norm.weight, self.ffn_norm.weight)
        tensors = (cache.keys, cache.values, rotary.cos, rotary.sin, *gains)
        if any(not t.is_contiguous() for t in tensors):
            return None
        if cache.keys.dtype != x.dtype or any(g.dtype != x.dtype for g in gains):
            return None
        if rotary.cos.dtype != torch.float32 or rotary.sin.dtype != torch.float32:
            return None
        spec = LcBlock()
        for i, layer in enumerate(linears):
            spec.w[i] = layer.raw.data_ptr()
            spec.row_bytes[i] = layer.raw.shape[1]
            spec.qtype[i] = layer.qtype
        spec.dtype = X_DTYPES[x.dtype]
        spec.attn_norm, spec.ffn_norm = gains[0].data_ptr(), gains[1].data_ptr()
        spec.k_cache, spec.v_cache = cache.keys.data_ptr(), cache.values.data_ptr()
        spec.cos_table, spec.sin_table = rotary.cos.data_ptr(), rotary.sin.data_ptr()
        spec.dim = linears[0].in_features
        spec.hidden = linears[4].out_features
        spec.n_heads, spec.n_kv_heads = attention.n_heads, attention.n_kv_heads
        spec.head_dim = attention.head_dim
        spec.cache_len = cache.max_seq_len
        spec.block = attention.block_size
        spec.eps = self.attention_norm.eps
        spec.interleaved = int(rotary.interleaved)
        self._prepared = ((weakref.ref(cache), weakref.ref(rotary), *settings), spec)
        return spec


def use_compiled_blocks(model: Transformer, kernel: NativeKernel | None) -> bool:
    """Give the model's blocks the compiled decode step where its projections run on `kernel`'s
    GGUF products (None: the readable blocks again); True if they now have it."""
    wanted = kernel is not None and any(
        isinstance(m, GGUFLinear) and m.native is kernel for m in model.modules()
    )
    for i, block in enumerate(model.layers):
        plain = block.plain() if isinstance(block, CompiledGGUFBlock) else block
        model.layers[i] = CompiledGGUFBlock(plain, kernel) if wanted else plain
    return wanted
