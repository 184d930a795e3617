"""The Llama 2 transformer, bottom-up: RMSNorm, rotary, attention, SwiGLU MLP, block, stack.

Batch size is always 1 (a desktop chat), so activations are [T, dim] and every shape comment below
leaves the batch out. Attention over the KV cache is `engine.model.attention.attend_to`, the loop.

This is the readable centre: plain torch, no kernel code. Faster kernels (packed and quantized
linear layers, compiled norms and rotary, fused projections) are swapped in by the loader as
modules and callables with the same interfaces (engine/kernels/), without this file knowing them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import EngineError
from engine.model.attention import DEFAULT_BLOCK, attend_to
from engine.model.config import ModelArgs
from engine.model.kv_cache import KVCache

Projector = Callable[[Sequence[nn.Module], torch.Tensor], list[torch.Tensor]]
"""How x goes through several layers that all read it (q, k, v; gate, up)."""


def project_each(layers: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """x through each layer in turn (the loader may hand a block a fused projector instead)."""
    return [layer(x) for layer in layers]


def linear(in_features: int, out_features: int) -> nn.Linear:
    """A bias-free projection, as every Llama matrix is."""
    return nn.Linear(in_features, out_features, bias=False)


class Interrupted(Exception):
    """Raised by `Transformer.forward` when its `between_layers` callback says stop."""


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 like the reference so 16-bit runs stay close."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x / sqrt(mean(x²) + eps) in float32 (one fused op), back to x's dtype, then the gain.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class Rotary:
    """Rotary position embedding tables (cos/sin per position and frequency).

    Two pairings of the head dimensions exist in the wild and describe the same model: Meta's
    checkpoints rotate interleaved pairs (0,1), (2,3)…; Hugging Face's permute the rows of wq/wk so
    that the pairs are (i, i + d/2). q·k is unchanged when q and k are permuted alike, so instead of
    copying wq/wk to undo the permutation, the model rotates in the pairing its weights came in.
    """

    def __init__(
        self,
        head_dim: int,
        max_seq_len: int,
        theta: float,
        device: torch.device,
        interleaved: bool,
    ) -> None:
        self.interleaved = interleaved
        inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
        )  # [d/2]
        positions = torch.arange(max_seq_len, dtype=torch.float32, device=device)  # [L]
        angles = torch.outer(positions, inv_freq)  # [L, d/2]
        self.cos = angles.cos()
        self.sin = angles.sin()

    def apply(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Rotate x: [T, n_heads, d] at positions start_pos.. ; returns x's dtype."""
        n = x.shape[0]
        cos = self.cos[start_pos : start_pos + n, None, :]  # [T, 1, d/2]
        sin = self.sin[start_pos : start_pos + n, None, :]  # [T, 1, d/2]
        x32 = x.float()
        if self.interleaved:
            pairs = x32.unflatten(-1, (-1, 2))  # [T, H, d/2, 2]
            a, b = pairs[..., 0], pairs[..., 1]  # [T, H, d/2] each
            out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)  # [T, H, d/2, 2]
            return out.flatten(-2).to(x.dtype)  # [T, H, d]
        a, b = x32.chunk(2, dim=-1)  # [T, H, d/2] each
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1).to(x.dtype)  # [T, H, d]


class Attention(nn.Module):
    """Multi-head (or grouped-query) self-attention over the layer's KV cache.

    What stays fixed between calls is state, set by the Transformer: the cache and rotary tables
    (`setup_cache`), the loop's block size and whether to keep the attention weights. A call
    passes only data.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = linear(args.dim, args.n_heads * args.head_dim)
        self.wk = linear(args.dim, args.n_kv_heads * args.head_dim)
        self.wv = linear(args.dim, args.n_kv_heads * args.head_dim)
        self.wo = linear(args.n_heads * args.head_dim, args.dim)
        self.project: Projector = project_each
        self.cache: KVCache | None = None
        self.rotary: Rotary | None = None
        self.block_size = DEFAULT_BLOCK
        self.capture = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.project((self.wq, self.wk, self.wv), x)
        q = q.view(n, self.n_heads, self.head_dim)  # [T, H, d]
        k = k.view(n, self.n_kv_heads, self.head_dim)  # [T, Hkv, d]
        v = v.view(n, self.n_kv_heads, self.head_dim)  # [T, Hkv, d]
        assert self.cache is not None and self.rotary is not None, "setup_cache() comes first"
        q = self.rotary.apply(q, start_pos)
        k = self.rotary.apply(k, start_pos)
        self.cache.write(start_pos, k.transpose(0, 1), v.transpose(0, 1))  # [Hkv, T, d]
        out, weights = attend_to(
            q.transpose(0, 1),  # [H, T, d]
            self.cache.keys,
            self.cache.values,
            start_pos,
            block_size=self.block_size,
            capture=self.capture,
        )  # out: [H, T, d]
        self.last_attention = weights
        return self.wo(out.transpose(0, 1).reshape(n, -1))  # [T, H*d] -> [T, dim]


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.w1 = linear(args.dim, args.hidden_dim)
        self.w2 = linear(args.hidden_dim, args.dim)
        self.w3 = linear(args.dim, args.hidden_dim)
        self.project: Projector = project_each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.project((self.w1, self.w3), x)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then + mlp(norm(x))."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), start_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """The whole model. Parameter names follow Meta's checkpoints (tok_embeddings, layers.N.…)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        # An explicit (uninitialised) weight skips nn.Embedding's random init, which on the meta
        # device imports torch._dynamo: 1-1.5 s and GUI stalls on the first load in a process.
        self.tok_embeddings = nn.Embedding(
            args.vocab_size, args.dim, _weight=torch.empty(args.vocab_size, args.dim)
        )
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = linear(args.dim, args.vocab_size)
        self._block_size = DEFAULT_BLOCK
        self._capture = False
        self.last_attention: list[torch.Tensor] = []
        self.cache_len = 0
        self._rotary: Rotary | None = None
        self.make_rotary: Callable[..., Rotary] = Rotary
        """Builds the rotary tables in setup_cache (the loader may hand in a compiled one)."""

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device  # every format keeps the norms as plain tensors

    @property
    def attention_block_size(self) -> int:
        """Cached positions per iteration of the attention loop (1 = the article's loop)."""
        return self._block_size

    @attention_block_size.setter
    def attention_block_size(self, value: int) -> None:
        if value < 1:
            raise ValueError("block_size must be at least 1")
        self._block_size = value
        for layer in self.layers:
            layer.attention.block_size = value

    @property
    def capture_attention(self) -> bool:
        """Keep each layer's attention weights of the last position (for the inspector)."""
        return self._capture

    @capture_attention.setter
    def capture_attention(self, value: bool) -> None:
        self._capture = bool(value)
        for layer in self.layers:
            layer.attention.capture = self._capture

    def setup_cache(self, max_seq_len: int | None = None) -> None:
        """(Re)allocate every layer's KV cache and the rotary tables for max_seq_len positions."""
        length = max_seq_len or self.args.max_seq_len
        dtype = self.norm.weight.dtype  # the activation dtype (a quantized head's is int8)
        for layer in self.layers:
            layer.attention.cache = None  # free the old cache before allocating the new one
        for layer in self.layers:
            layer.attention.cache = KVCache(
                self.args.n_kv_heads, length, self.args.head_dim, dtype, self.device
            )
        self.cache_len = length
        self.setup_rotary()

    def setup_rotary(self) -> None:
        """(Re)build the rotary tables for the cache's positions with `make_rotary`."""
        self._rotary = self.make_rotary(
            self.args.head_dim,
            self.cache_len,
            self.args.rope_theta,
            self.device,
            interleaved=self.args.rope_interleaved,
        )
        for layer in self.layers:
            layer.attention.rotary = self._rotary

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int,
        last_only: bool = False,
        between_layers: Callable[[int], bool] | None = None,
    ) -> torch.Tensor:
        """Run T tokens at positions start_pos..; float32 logits [T, vocab] (or [1, vocab]).

        `between_layers(i)` is called before layer i (i layers done) and a True answer raises
        `Interrupted`: a long prefill chunk (big chunks make faster GEMMs) then still stops, and
        reports its progress, within one layer's time. The KV cache then holds partial positions
        start_pos.. that the caller must not reuse.
        """
        n = tokens.shape[0]
        if self._rotary is None:
            raise EngineError("the KV cache is not set up; call setup_cache() first")
        if start_pos < 0 or start_pos + n > self.cache_len:
            raise EngineError(
                f"positions {start_pos}..{start_pos + n - 1} do not fit the context of "
                f"{self.cache_len} tokens"
            )
        h = self.tok_embeddings(tokens)  # [T, dim]
        for i, layer in enumerate(self.layers):
            if between_layers is not None and between_layers(i):
                raise Interrupted
            h = layer(h, start_pos)
        if last_only:
            h = h[-1:]  # [1, dim]
        if self.capture_attention:
            self.last_attention = [layer.attention.last_attention for layer in self.layers]
        return self.output(self.norm(h)).float()  # [T, vocab]
