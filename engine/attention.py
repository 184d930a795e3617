"""Loop attention: attention written as a loop over the cached positions.

This follows the article "You don't need tensors to understand attention": for one query, walk
over every earlier position, score it against the query, and keep two running totals — the sum of
score × value and the sum of scores — then divide. Two changes make it usable in a real engine:

* **Stability.** The scores are exp(q·k / sqrt(d)), which overflows for large q·k. We keep a running
  maximum `m` of the raw scores seen so far and store everything relative to it (online softmax):
  when a larger score arrives, the totals gathered so far are rescaled by exp(m_old - m_new).
* **Speed.** The loop walks the cache in blocks of positions. `block_size=1` is the article's loop
  verbatim (one position per iteration); the default handles a few hundred positions per iteration,
  so the loop runs a handful of times per token instead of thousands, with identical results up to
  float rounding.

Everything is vectorised across heads and across the query positions of a prefill chunk.
Grouped-query attention (fewer key/value heads than query heads) is handled by grouping the query
heads that share a key/value head, so the cache is never copied per query head.
"""

from __future__ import annotations

import math

import torch

DEFAULT_BLOCK = 256
"""Positions per loop iteration: large enough that Python overhead vanishes, small enough that
the block's scores stay in cache."""


def attend_to(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start_pos: int,
    block_size: int = DEFAULT_BLOCK,
    capture: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attend T new queries to every cached position up to their own (causal).

    q:        [n_heads, T, head_dim]   queries at absolute positions start_pos .. start_pos+T-1
    k_cache:  [n_kv_heads, L, head_dim] keys, valid at least up to start_pos+T-1
    v_cache:  [n_kv_heads, L, head_dim] values, same
    returns   ([n_heads, T, head_dim] outputs in q's dtype,
               [n_heads, start_pos+T] attention weights of the last query, if capture)
    """
    if block_size < 1:
        raise ValueError("block_size must be at least 1")
    n_heads, n_queries, head_dim = q.shape
    n_kv_heads = k_cache.shape[0]
    n_rep = n_heads // n_kv_heads
    end = start_pos + n_queries  # keys 0 .. end-1 are visible to at least the last query
    scale = 1.0 / math.sqrt(head_dim)

    # Query heads h = g * n_rep + r share key/value head g (the order HF's repeat_kv uses).
    # [n_heads, T, d] -> [n_kv, n_rep * T, d]: row r * T + t is query head g*n_rep+r at position t.
    queries = q.float().reshape(n_kv_heads, n_rep * n_queries, head_dim) * scale
    query_pos = None  # positions of the queries, built only if a block needs the causal mask

    # The three running totals of the article's loop, per (head, query). They start "empty"
    # (max = -inf, sums = 0); the first block simply initialises them.
    running_max = total_score = total_value = None
    captured: list[torch.Tensor] = []

    for block_start in range(0, end, block_size):
        block_end = min(block_start + block_size, end)
        keys = k_cache[:, block_start:block_end].float()  # [n_kv, B, d]
        values = v_cache[:, block_start:block_end].float()  # [n_kv, B, d]

        # Score every position of the block against every query: q·k / sqrt(d).
        scores = queries @ keys.transpose(1, 2)  # [n_kv, n_rep*T, B]
        if block_end - 1 > start_pos:
            # Causal: a query never sees a position after its own (only in prefill chunks).
            if query_pos is None:
                query_pos = start_pos + torch.arange(n_queries, device=q.device).repeat(n_rep)
            key_pos = torch.arange(block_start, block_end, device=q.device)  # [B]
            future = key_pos[None, :] > query_pos[:, None]  # [n_rep*T, B]
            scores = scores.masked_fill(future, -math.inf)
        if capture:
            # Only the last query of each head is kept: rows r*T + (T-1) of the group.
            captured.append(scores.unflatten(1, (n_rep, n_queries))[:, :, -1])  # [n_kv, n_rep, B]

        # Online softmax: rescale what we have so far to the new maximum, then add this block.
        # Position 0 is visible to every query, so the first block always yields a finite max.
        block_max = scores.amax(dim=-1, keepdim=True)  # [n_kv, n_rep*T, 1]
        if running_max is None:
            running_max = block_max
            weights = torch.exp(scores - running_max)  # [n_kv, n_rep*T, B], masked -> 0
            total_score = weights.sum(dim=-1, keepdim=True)
            total_value = weights @ values  # [n_kv, n_rep*T, d]
            continue
        new_max = torch.maximum(running_max, block_max)
        rescale = torch.exp(running_max - new_max)  # [n_kv, n_rep*T, 1]
        weights = torch.exp(scores - new_max)  # [n_kv, n_rep*T, B], masked -> 0
        total_score = total_score * rescale + weights.sum(dim=-1, keepdim=True)
        total_value = total_value * rescale + weights @ values  # [n_kv, n_rep*T, d]
        running_max = new_max

    out = (total_value / total_score).reshape(n_heads, n_queries, head_dim).to(q.dtype)

    attention = None
    if capture:
        # Normalise the last query's raw scores with the loop's own final max and total, so the
        # weights shown are exactly the ones that produced `out`.
        raw = torch.cat(captured, dim=-1)  # [n_kv, n_rep, end]
        last_max = running_max.unflatten(1, (n_rep, n_queries))[:, :, -1]  # [n_kv, n_rep, 1]
        last_total = total_score.unflatten(1, (n_rep, n_queries))[:, :, -1]  # [n_kv, n_rep, 1]
        attention = (torch.exp(raw - last_max) / last_total).reshape(n_heads, end)
    return out, attention
