"""The KV cache: keys and values of every position already seen, memoised per layer.

Preallocated once for the whole context so decoding never reallocates or concatenates: a forward
pass writes its new positions at `start_pos` and attention reads positions 0 .. start_pos+T-1.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values for one layer: [n_kv_heads, max_seq_len, head_dim] each."""

    def __init__(
        self,
        n_kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (n_kv_heads, max_seq_len, head_dim)
        # Uninitialised on purpose: attention reads only positions a forward pass has written
        # (0 .. start_pos+T-1), and fresh pages of a large allocation cost no memory until they
        # are written, so the process's memory grows with the conversation, not with the context
        # allowed (7B: 0.5 MiB per position in 16 bits, 2 GiB for 4096 positions up front).
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)

    @property
    def max_seq_len(self) -> int:
        return self.keys.shape[1]

    def write(self, start_pos: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store T new positions; keys/values arrive as [n_kv_heads, T, head_dim]."""
        end = start_pos + keys.shape[1]
        self.keys[:, start_pos:end] = keys
        self.values[:, start_pos:end] = values
