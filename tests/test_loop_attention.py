"""Loop attention equals the vectorised formula for every block size, and stays finite."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.model.attention import DEFAULT_BLOCK, attend_to


def sdpa_reference(q, k, v, start_pos):
    """The tensor form: softmax(q kᵀ / √d + causal mask) v, via PyTorch's SDPA (tests only)."""
    n_heads, t, _ = q.shape
    n_kv = k.shape[0]
    end = start_pos + t
    keys = k[:, :end].repeat_interleave(n_heads // n_kv, dim=0)
    values = v[:, :end].repeat_interleave(n_heads // n_kv, dim=0)
    query_pos = torch.arange(start_pos, end)[:, None]
    allowed = torch.arange(end)[None, :] <= query_pos  # [T, end]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)


def make(n_heads, n_kv, t, start_pos, d=16, cache=300, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_heads, t, d, generator=g, dtype=torch.float64).float() * scale
    k = torch.randn(n_kv, cache, d, generator=g) * scale
    v = torch.randn(n_kv, cache, d, generator=g)
    return q, k, v


@pytest.mark.parametrize(
    ("n_heads", "n_kv", "t", "start_pos"),
    [(4, 4, 1, 0), (4, 4, 1, 199), (8, 2, 37, 0), (8, 2, 16, 120), (6, 1, 5, 250)],
)
def test_block_sizes_and_sdpa_agree(n_heads, n_kv, t, start_pos) -> None:
    q, k, v = make(n_heads, n_kv, t, start_pos)
    expected = sdpa_reference(q, k, v, start_pos)
    for block in (1, 7, DEFAULT_BLOCK, 10_000):
        out, _ = attend_to(q, k, v, start_pos, block_size=block)
        assert out.shape == (n_heads, t, q.shape[-1])
        assert (out - expected).abs().max().item() < 1e-5, block


@pytest.mark.parametrize("query_block", [1, 5, 32, 1000])
def test_query_tiles_agree_with_sdpa(query_block: int) -> None:
    # A prefill chunk is walked in tiles of queries; each tile stops at its own last position.
    q, k, v = make(8, 2, 37, 20)
    expected = sdpa_reference(q, k, v, 20)
    for block in (1, 16, DEFAULT_BLOCK):
        out, weights = attend_to(
            q, k, v, 20, block_size=block, capture=True, query_block=query_block
        )
        assert (out - expected).abs().max().item() < 1e-5, (block, query_block)
        assert torch.allclose(weights.sum(-1), torch.ones(8), atol=1e-5)


def test_huge_scores_do_not_overflow() -> None:
    # Scores around 1e4: exp() of them overflows float32 without the running maximum.
    q, k, v = make(4, 2, 3, 40, scale=30.0)
    out, _ = attend_to(q, k, v, 40, block_size=1)
    assert torch.isfinite(out).all()
    expected = sdpa_reference(q.double(), k.double(), v.double(), 40).float()
    assert (out - expected).abs().max().item() < 1e-4


def test_captured_weights_are_the_last_querys_softmax() -> None:
    q, k, v = make(8, 2, 4, 30)
    _, weights = attend_to(q, k, v, 30, block_size=5, capture=True)
    assert weights.shape == (8, 34)
    assert torch.allclose(weights.sum(-1), torch.ones(8), atol=1e-5)
    keys = k[:, :34].repeat_interleave(4, dim=0)
    want = torch.softmax(q[:, -1:] @ keys.transpose(1, 2) / 4.0, dim=-1)[:, 0]
    assert (weights - want).abs().max().item() < 1e-6


def test_sixteen_bit_inputs_return_their_dtype() -> None:
    q, k, v = make(4, 4, 2, 10)
    out, _ = attend_to(q.bfloat16(), k.bfloat16(), v.bfloat16(), 10)
    assert out.dtype == torch.bfloat16
    expected = sdpa_reference(q, k.bfloat16().float(), v.bfloat16().float(), 10)
    assert (out.float() - expected).abs().max().item() < 3e-2
